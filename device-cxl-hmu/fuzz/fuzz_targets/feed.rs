#![no_main]
//! The access feed's record decoder and the trace parser.
libfuzzer_sys::fuzz_target!(|data: &[u8]| device_cxl_hmu::fuzzing::feed_decoder(data));
