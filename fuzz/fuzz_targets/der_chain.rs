#![no_main]
//! Fuzz target `der_chain`: see `fedpin::fuzzing::der_chain` for the properties checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    fedpin::fuzzing::der_chain(data);
});
