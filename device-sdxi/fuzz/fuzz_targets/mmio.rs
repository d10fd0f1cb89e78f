#![no_main]
//! MMIO write/read/doorbell/reset sequences against the SDXi engine.
libfuzzer_sys::fuzz_target!(|data: &[u8]| device_sdxi::fuzzing::mmio_sequence(data));
