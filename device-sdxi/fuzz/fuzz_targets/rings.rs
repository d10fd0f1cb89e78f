#![no_main]
//! Descriptor rings. The first byte picks the mode: hostile context tables and rings over
//! random guest memory; the write index versus vl protocol checked against a model; or DMA
//! maps and unmaps of the pages COPYs touch, interleaved with doorbells, through the live DMA
//! table and checked against a model of the guest's maps.
libfuzzer_sys::fuzz_target!(|data: &[u8]| match data.split_first() {
    Some((m, rest)) if m % 3 == 1 => device_sdxi::fuzzing::ring_protocol(rest),
    Some((m, rest)) if m % 3 == 2 => device_sdxi::fuzzing::ring_dma_churn(rest),
    Some((_, rest)) => device_sdxi::fuzzing::ring_processing(rest),
    None => {}
});
