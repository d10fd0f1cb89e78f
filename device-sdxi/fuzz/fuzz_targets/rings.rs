#![no_main]
//! Descriptor rings. The first byte picks the mode: hostile context tables and rings over
//! random guest memory, or the write index versus vl protocol checked against a model.
libfuzzer_sys::fuzz_target!(|data: &[u8]| match data.split_first() {
    Some((m, rest)) if m % 2 == 1 => device_sdxi::fuzzing::ring_protocol(rest),
    Some((_, rest)) => device_sdxi::fuzzing::ring_processing(rest),
    None => {}
});
