#![no_main]
//! Fuzz target `access_log`: see `fedpin::fuzzing::access_log` for the properties checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    fedpin::fuzzing::access_log(data);
});
