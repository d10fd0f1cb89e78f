#![no_main]
//! Context tables and descriptor rings over random guest memory.
libfuzzer_sys::fuzz_target!(|data: &[u8]| device_sdxi::fuzzing::ring_processing(data));
