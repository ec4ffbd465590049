//! libFuzzer target: the `gens_part` harness of `bcachefs_lite::fuzzing` (shared with tests/decoders.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| bcachefs_lite::fuzzing::gens_part(data));
