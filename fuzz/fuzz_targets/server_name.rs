#![no_main]
//! Fuzz target `server_name`: see `fedpin::fuzzing::server_name` for the properties checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    fedpin::fuzzing::server_name(data);
});
