#![no_main]
//! Fuzz target `connect_head`: see `fedpin::fuzzing::connect_head` for the properties checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    fedpin::fuzzing::connect_head(data);
});
