//! Open buckets and write points: segregation by write point, sequential continuation, short
//! grants at the end of a bucket, and pins held until the key is inserted.

mod alloc_support;

use std::collections::HashSet;

use alloc_support::*;
use bcachefs_lite::alloc::{Allocator, BucketPtr, KeyPos, Reserve};
use bcachefs_lite::device::format::Replacement;

fn ready(n: u64, bucket: u32) -> (tempfile::TempDir, Allocator) {
    let d = tempfile::tempdir().unwrap();
    let p = format(d.path(), n, bucket, Replacement::Lru, false);
    let c = open_manual(&p);
    gc_empty(&c);
    c.allocator_run_until_idle(100).unwrap();
    (d, c)
}

fn alloc(c: &Allocator, file: u64, offset: u64, sectors: u32, wp: u64) -> (BucketPtr, u32) {
    loop {
        match c.alloc_sectors(KeyPos { file, offset }, sectors, wp, false) {
            Ok(r) => return r,
            Err(_) => {
                c.allocator_run_until_idle(100).unwrap();
            }
        }
    }
}

#[test]
fn two_write_points_interleaved_end_up_in_different_buckets() {
    let (_d, c) = ready(256, 64 << 10); // 128 sectors per bucket
    let mut buckets = [HashSet::new(), HashSet::new()];
    // Non-sequential offsets, so only the write point can keep them apart.
    for i in 0..200u64 {
        for wp in 0..2u64 {
            let off = (i * 7919 + wp * 104_729) % 10_000 * 8;
            let (ptr, n) = alloc(&c, 100 + wp, off, 8, wp + 1);
            assert_eq!(n, 8);
            // A bucket may be reused later under a new gen; segregation is per (bucket, gen).
            buckets[wp as usize].insert((ptr.bucket, ptr.gen));
            c.key_inserted(ptr).unwrap();
        }
    }
    assert!(buckets[0].len() >= 12 && buckets[1].len() >= 12);
    assert!(
        buckets[0].is_disjoint(&buckets[1]),
        "write points shared buckets: {:?}",
        buckets[0].intersection(&buckets[1]).collect::<Vec<_>>()
    );
    c.check_invariants().unwrap();
}

#[test]
fn a_sequential_stream_continues_in_its_bucket() {
    let (_d, c) = ready(64, 64 << 10);
    // Stream A (file 1) interleaved with random writes from another write point.
    let (first, _) = alloc(&c, 1, 0, 16, 7);
    c.key_inserted(first).unwrap();
    let mut prev = first;
    let mut off = 16u64;
    for i in 0..6u64 {
        let (noise, _) = alloc(&c, 9, i * 1000, 8, 8);
        c.key_inserted(noise).unwrap();
        assert_ne!(noise.bucket, first.bucket);
        // The stream is continued even by a different write point (a reader helping out).
        let wp = if i % 2 == 0 { 7 } else { 77 };
        let (p, n) = alloc(&c, 1, off, 16, wp);
        assert_eq!(p.bucket, prev.bucket, "stream left its bucket at step {i}");
        assert_eq!(p.offset, prev.offset + 16);
        assert_eq!(n, 16);
        c.key_inserted(p).unwrap();
        prev = p;
        off += 16;
    }
}

#[test]
fn the_last_allocation_of_a_bucket_is_short_and_the_next_starts_a_new_bucket() {
    let (_d, c) = ready(64, 16 << 10); // 32 sectors per bucket
    let (a, n) = alloc(&c, 1, 0, 24, 1);
    assert_eq!((a.offset, n), (0, 24));
    let (b, n) = alloc(&c, 1, 24, 24, 1);
    assert_eq!(
        (b.bucket, b.offset, n),
        (a.bucket, 24, 8),
        "short grant at the bucket end"
    );
    assert!(
        !c.open_buckets().iter().any(|&(x, _)| x == a.bucket),
        "full bucket still open"
    );
    let (d, n) = alloc(&c, 1, 32, 24, 1);
    assert_ne!(d.bucket, a.bucket);
    assert_eq!((d.offset, n), (0, 24));
    // The full bucket is still pinned by the two allocations until their keys are inserted.
    assert_eq!(c.bucket_info(a.bucket).unwrap().pins, 2);
    c.key_inserted(a).unwrap();
    c.key_inserted(b).unwrap();
    assert_eq!(c.bucket_info(a.bucket).unwrap().pins, 0);
    assert_eq!(c.bucket_info(a.bucket).unwrap().sectors, 32);
}

#[test]
fn open_buckets_are_bounded_and_reused_least_recently_used_first() {
    let (_d, c) = ready(256, 16 << 10);
    let max = 256 / 8; // the cap for this cache size
    for wp in 0..(max as u64 + 10) {
        let (p, _) = alloc(&c, wp, 0, 1, wp + 1);
        c.key_inserted(p).unwrap();
        assert!(c.open_buckets().len() <= max);
    }
    assert_eq!(c.open_buckets().len(), max);
    c.check_invariants().unwrap();
    // Open buckets hold a pin, so a full sweep of invalidation leaves them alone.
    let open = c.open_buckets();
    for _ in 0..20 {
        while let Ok((b, _)) = c.bucket_alloc(Reserve::MovingGc, false) {
            c.unpin(b).unwrap();
        }
        c.allocator_run_until_idle(100).unwrap();
    }
    for (b, g) in open {
        assert_eq!(c.bucket_gen(b).unwrap(), g);
    }
}
