//! Fuzz target: `tally_common::fuzzing::client_message` (see that module for what it checks).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tally_common::fuzzing::client_message(data));
