#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mirante_fuzz::manifest(data));
