#![no_main]
//! Fuzz target `config_file`: see `fedpin::fuzzing::config_file` for the properties checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    fedpin::fuzzing::config_file(data);
});
