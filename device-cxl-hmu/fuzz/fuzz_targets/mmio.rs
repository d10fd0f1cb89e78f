#![no_main]
//! CHMU register block: MMIO sequences interleaved with accesses and epochs, on a layout the
//! input picks; checks that every hotlist stays inside its instance and the block, and that no
//! enable outside the capabilities (an epoch outside CAP0's range, ...) takes.
libfuzzer_sys::fuzz_target!(|data: &[u8]| device_cxl_hmu::fuzzing::mmio_sequence(data));
