#![no_main]
//! Fuzz target `canonical_json`: see `fedpin::fuzzing::canonical_json` for the properties checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    fedpin::fuzzing::canonical_json(data);
});
