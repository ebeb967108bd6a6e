#![no_main]
//! Fuzz target `well_known`: see `fedpin::fuzzing::well_known` for the properties checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    fedpin::fuzzing::well_known(data);
});
