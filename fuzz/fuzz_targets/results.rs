//! brokerbench::fuzz::results on whatever libFuzzer makes up.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| brokerbench::fuzz::results(data));
