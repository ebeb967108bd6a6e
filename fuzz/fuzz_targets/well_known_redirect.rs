#![no_main]
//! Fuzz target `well_known_redirect`: see `fedpin::fuzzing::well_known_redirect` for the properties checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    fedpin::fuzzing::well_known_redirect(data);
});
