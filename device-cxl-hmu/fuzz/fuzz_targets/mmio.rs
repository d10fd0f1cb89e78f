#![no_main]
//! CHMU register block: MMIO sequences interleaved with accesses and epochs.
libfuzzer_sys::fuzz_target!(|data: &[u8]| device_cxl_hmu::fuzzing::mmio_sequence(data));
