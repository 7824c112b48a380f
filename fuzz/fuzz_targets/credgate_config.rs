#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| credgate::fuzzing::credgate_config(data));
