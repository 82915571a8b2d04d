//! Fuzz target: `tally_client::fuzzing::run_manifest` (see that module for what it checks).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tally_client::fuzzing::run_manifest(data));
