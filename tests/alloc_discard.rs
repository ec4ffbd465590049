//! Discard: freed buckets are punched out of the cache file (fallocate PUNCH_HOLE|KEEP_SIZE),
//! so the file's allocated blocks (st_blocks) drop; with discard off they do not.

mod alloc_support;

use std::os::unix::fs::MetadataExt;

use alloc_support::*;
use bcachefs_lite::alloc::{KeyPos, Reserve};
use bcachefs_lite::device::format::Replacement;

const N: u64 = 64;
const BUCKET: u32 = 64 << 10;

fn run(discard: bool) -> (u64, u64, u64) {
    let d = tempfile::tempdir().unwrap();
    // FIFO, so the cycling below reaches every bucket (LRU would keep recycling the same empty
    // buckets, all tied at prio x 0 sectors).
    let p = format(d.path(), N, BUCKET, Replacement::Fifo, discard);
    let c = open_manual(&p);
    gc_empty(&c);
    let sectors = BUCKET / 512;
    let data = vec![0xabu8; BUCKET as usize];
    // Fill every bucket the allocator can give with data.
    let mut written = 0;
    for round in 0..40u64 {
        c.allocator_run_until_idle(100).unwrap();
        while let Ok((ptr, n)) = c.alloc_sectors(
            KeyPos {
                file: round,
                offset: written * 1000,
            },
            sectors,
            1,
            false,
        ) {
            c.data().write(ptr, &data[..n as usize * 512]).unwrap();
            c.key_inserted(ptr).unwrap();
            written += 1;
        }
    }
    c.data().sync().unwrap();
    let before = std::fs::metadata(&p).unwrap().blocks();
    // GC finds no keys: every data bucket is free; the allocator cycles them all.
    gc_empty(&c);
    for _ in 0..40 {
        while let Ok((b, _)) = c.bucket_alloc(Reserve::MovingGc, false) {
            c.unpin(b).unwrap();
        }
        c.allocator_run_until_idle(100).unwrap();
    }
    let after = std::fs::metadata(&p).unwrap().blocks();
    assert_eq!(
        std::fs::metadata(&p).unwrap().len(),
        c.superblock().file_size().unwrap()
    );
    c.check_invariants().unwrap();
    (written, before, after)
}

#[test]
fn freed_buckets_are_punched_out_of_the_file() {
    let (written, before, after) = run(true);
    assert!(written > 40, "only {written} buckets written");
    // 512-byte units: a bucket of data accounts for 128 of them; buckets were recycled while
    // filling, but most of the cache holds data at the end.
    assert!(before >= 40 * 128, "data not allocated: {before} blocks");
    assert!(
        after < before / 4,
        "st_blocks did not drop: before {before}, after {after}"
    );
}

#[test]
fn without_discard_the_blocks_stay_allocated() {
    let (_written, before, after) = run(false);
    assert!(
        after >= before,
        "blocks dropped without discard: {before} -> {after}"
    );
}
