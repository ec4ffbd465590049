//! Memory per extent of the key index, measured with a counting global allocator, and checked
//! against `IndexStats::heap_bytes_estimate`.
//!
//! Typical extent: 128 KiB with 4 KiB blocks (32 crcs); also 4 KiB (worst case: random 4 KiB
//! reads that never merge) and 1 MiB (a whole default bucket). Two insertion orders: file order (a
//! sequential read filling the cache; B-tree leaves split 6/5 and stay ~55 % full) and random
//! order. Extents are placed so they never merge. The allocator counts both the bytes asked for
//! and what glibc malloc really takes for them (8-byte header, 16-byte rounding, 32-byte minimum).
//!
//! Run with `--nocapture` to see the figures. This file holds one test so that no other test's
//! allocations are counted.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicI64, Ordering::Relaxed};

use bcachefs_lite::alloc::BucketPtr;
use bcachefs_lite::index::{Extent, Index};

struct Counting;

static REQUESTED: AtomicI64 = AtomicI64::new(0);
static CHUNKS: AtomicI64 = AtomicI64::new(0);

fn chunk(size: usize) -> i64 {
    ((size + 8).next_multiple_of(16)).max(32) as i64
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so System's
// guarantees hold; the counters are atomics and never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        REQUESTED.fetch_add(l.size() as i64, Relaxed);
        CHUNKS.fetch_add(chunk(l.size()), Relaxed);
        // SAFETY: our caller upholds `GlobalAlloc::alloc`'s contract for `l`, which System needs.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        REQUESTED.fetch_sub(l.size() as i64, Relaxed);
        CHUNKS.fetch_sub(chunk(l.size()), Relaxed);
        // SAFETY: `p` came from this allocator, i.e. from System, with layout `l` (the caller's
        // contract).
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        REQUESTED.fetch_add(new as i64 - l.size() as i64, Relaxed);
        CHUNKS.fetch_add(chunk(new) - chunk(l.size()), Relaxed);
        // SAFETY: `p` came from System with layout `l` and `new` is valid for it (the caller's
        // contract).
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static A: Counting = Counting;

const BS: u64 = 4096;
const N: u64 = 100_000;
const FILES: u64 = 1000;

fn extent(i: u64, ext: u64) -> Extent {
    let blocks = (ext / BS) as usize;
    Extent {
        // Every other 128 KiB slot of the file, so neighbours never merge.
        offset: (i / FILES) * 2 * ext,
        len: ext,
        ptr: BucketPtr {
            bucket: i as u32,
            gen: 0,
            offset: 0,
        },
        crcs: vec![i as u32; blocks].into_boxed_slice(),
        dirty: false,
    }
}

/// Returns (requested bytes per extent, malloc bytes per extent, estimate per extent).
fn measure(order: &[u64], ext: u64) -> (f64, f64, f64) {
    let ix = Index::new(BS as u32);
    let base_est = ix.stats().heap_bytes_estimate as f64;
    let (r0, c0) = (REQUESTED.load(Relaxed), CHUNKS.load(Relaxed));
    for &i in order {
        ix.insert(i % FILES, extent(i, ext));
    }
    let (r1, c1) = (REQUESTED.load(Relaxed), CHUNKS.load(Relaxed));
    let s = ix.stats();
    assert_eq!(s.extents, N);
    assert_eq!(s.cached_bytes, N * ext);
    let n = N as f64;
    (
        (r1 - r0) as f64 / n,
        (c1 - c0) as f64 / n,
        (s.heap_bytes_estimate as f64 - base_est) / n,
    )
}

#[test]
fn memory_per_extent() {
    let seq: Vec<u64> = (0..N).collect();
    // A fixed pseudo-random permutation (multiplier coprime to N).
    let rnd: Vec<u64> = (0..N).map(|i| (i * 7919 + 13) % N).collect();
    for (ext, name, order) in [
        (128 << 10, "file order", &seq),
        (128 << 10, "random order", &rnd),
        (4 << 10, "file order", &seq),
        (1 << 20, "file order", &seq),
    ] {
        let (req, mal, est) = measure(order, ext);
        let per_gib = mal * ((1u64 << 30) / ext) as f64 / (1 << 20) as f64;
        println!(
            "{} KiB extents, {name}: {req:.0} B requested, {mal:.0} B with malloc overhead, \
             estimate {est:.0} B per extent; {per_gib:.2} MiB per GiB cached",
            ext >> 10
        );
        // The estimate is within 25 % of what malloc really holds.
        assert!(
            (est - mal).abs() / mal < 0.25,
            "{name}: estimate {est:.0} vs measured {mal:.0}"
        );
        // And the whole thing stays small: under 400 bytes per 128 KiB extent.
        if ext == 128 << 10 {
            assert!(mal < 400.0, "{name}: {mal:.0} bytes per extent");
        }
    }
}
