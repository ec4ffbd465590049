//! The stable-Rust pass over the fuzz targets (`make fuzz` runs them under libFuzzer for
//! longer): every on-disk decoder and the mount-option parser get arbitrary bytes and
//! mutated valid inputs, through the same harnesses (`bcachefs_lite::fuzzing`). They must
//! not panic, and no single allocation may be larger than the input justifies (a length
//! read off disk must be checked against the bytes that are there before it sizes a buffer).
//! `BCL_DECODER_CASES` sets the cases per target (default 300).
//!
//! `BCL_WRITE_FUZZ_CORPUS=DIR cargo test --test decoders` writes the valid seeds into
//! `DIR/<target>/` (how `fuzz/corpus/` was made).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use bcachefs_lite::fuzzing::{seeds, TARGETS};
use proptest::prelude::*;

/// Counts, per thread, the largest single allocation while a harness runs.
struct PeakAlloc;

thread_local! {
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded to the system allocator unchanged; the thread-local
// bookkeeping neither allocates nor touches the memory handed out.
unsafe impl GlobalAlloc for PeakAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = PEAK.try_with(|p| p.set(p.get().max(layout.size())));
        // SAFETY: the caller's layout is passed on as it came.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout (above).
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = PEAK.try_with(|p| p.set(p.get().max(new_size)));
        // SAFETY: as for `dealloc`; `new_size` is the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: PeakAlloc = PeakAlloc;

/// The most one input may make a harness allocate at once: the harness's own buffers (a
/// gens checkpoint of up to 65536 buckets, a 1 MiB journal bound) plus a few times the
/// input. An allocation sized by an unchecked on-disk count is far beyond this.
fn allowed(input_len: usize) -> usize {
    (2 << 20) + 16 * input_len
}

fn run_bounded(name: &str, harness: fn(&[u8]), data: &[u8]) {
    PEAK.with(|p| p.set(0));
    harness(data);
    let peak = PEAK.with(|p| p.get());
    assert!(
        peak <= allowed(data.len()),
        "{name}: one allocation of {peak} bytes for an input of {} bytes",
        data.len()
    );
}

fn cases() -> u32 {
    std::env::var("BCL_DECODER_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300)
}

#[test]
fn every_seed_is_accepted_so_mutations_start_from_valid_input() {
    use bcachefs_lite::device::format::Superblock;
    use bcachefs_lite::journal::format::Entry;
    for (name, _) in TARGETS {
        let all = seeds(name);
        assert!(!all.is_empty(), "{name} has seeds");
        for s in &all {
            let ok = match *name {
                "superblock" => Superblock::decode(s).is_ok(),
                "journal_entry" => Entry::decode(s, s.len()).is_ok(),
                "index_checkpoint" => {
                    bcachefs_lite::index::Index::decode_checkpoint(512, s).is_ok()
                }
                "mount_options" => bcachefs_lite::options::MountOptions::default()
                    .apply(std::str::from_utf8(s).unwrap())
                    .is_ok(),
                _ => true, // gens parts need the journal record's expectations
            };
            assert!(ok, "a seed of {name} does not decode");
        }
    }
    if let Some(dir) = std::env::var_os("BCL_WRITE_FUZZ_CORPUS") {
        for (name, _) in TARGETS {
            let d = std::path::Path::new(&dir).join(name);
            std::fs::create_dir_all(&d).unwrap();
            for (i, s) in seeds(name).iter().enumerate() {
                std::fs::write(d.join(format!("seed-{i}")), s).unwrap();
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn every_decoder_survives_arbitrary_bytes(data in proptest::collection::vec(any::<u8>(), 0..6000)) {
        for (name, harness) in TARGETS {
            run_bounded(name, *harness, &data);
        }
    }

    /// Valid encodings with bytes overwritten, a cut and a splice: the harness also fixes
    /// the crc, so these reach every field check behind it.
    #[test]
    fn every_decoder_survives_mutated_valid_input(
        which in any::<prop::sample::Index>(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..12),
        cut in any::<prop::sample::Index>(),
        splice in proptest::collection::vec(any::<u8>(), 0..64),
        do_cut in any::<bool>(),
    ) {
        for (name, harness) in TARGETS {
            let all = seeds(name);
            let mut data = which.get(&all).clone();
            for (at, byte) in &flips {
                let i = at.index(data.len());
                data[i] = *byte;
            }
            if do_cut {
                let at = cut.index(data.len() + 1);
                data.truncate(at);
                data.extend_from_slice(&splice);
            }
            run_bounded(name, *harness, &data);
        }
    }
}
