#![no_main]
//! Fuzz target `xmatrix`: see `fedpin::fuzzing::xmatrix` for the properties checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    fedpin::fuzzing::xmatrix(data);
});
