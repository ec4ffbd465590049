//! libFuzzer target: the `journal_entry` harness of `bcachefs_lite::fuzzing` (shared with tests/decoders.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| bcachefs_lite::fuzzing::journal_entry(data));
