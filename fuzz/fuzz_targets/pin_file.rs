#![no_main]
//! Fuzz target `pin_file`: see `fedpin::fuzzing::pin_file` for the properties checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    fedpin::fuzzing::pin_file(data);
});
