#![no_main]
//! Fuzz target `pin_string`: see `fedpin::fuzzing::pin_string` for the properties checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    fedpin::fuzzing::pin_string(data);
});
