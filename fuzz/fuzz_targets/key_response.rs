#![no_main]
//! Fuzz target `key_response`: see `fedpin::fuzzing::key_response` for the properties checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    fedpin::fuzzing::key_response(data);
});
