#![no_main]
//! Fuzz target `srv`: see `fedpin::fuzzing::srv` for the properties checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    fedpin::fuzzing::srv(data);
});
