#![no_main]
//! Memory device block: register accesses and mailbox commands with any payload, the clock
//! moving so background operations run; the doorbell always clears.
libfuzzer_sys::fuzz_target!(|data: &[u8]| device_cxl_hmu::fuzzing::mailbox_sequence(data));
