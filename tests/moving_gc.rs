//! Moving GC, driven through the cache's request API without FUSE: sparse buckets are
//! compacted, what was in them is still served from the cache with the right bytes,
//! and the emptied buckets are freed.

mod common;

use std::os::fd::AsRawFd;

use bcachefs_lite::cache::{CacheConfig, CacheSet, Touch};
use common::pattern;

fn fstat(f: &std::fs::File) -> libc::stat {
    // SAFETY: stat is plain old data (integers only); all-zero is a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid out pointer; `f` keeps the descriptor open for the call.
    assert_eq!(unsafe { libc::fstat(f.as_raw_fd(), &mut st) }, 0);
    st
}

#[test]
fn sparse_buckets_are_compacted_and_still_hit() {
    let dir = tempfile::tempdir().unwrap();
    let backing = dir.path().join("file");
    let data = pattern(8 << 20, 5);
    std::fs::write(&backing, &data).unwrap();
    let file = std::fs::File::open(&backing).unwrap();
    let mut cfg = CacheConfig::new(dir.path().join("c.cache"));
    cfg.size = Some(64 << 20);
    cfg.sequential_cutoff = 0;
    let cache = CacheSet::open(&cfg, "/test/tree").unwrap();
    let fs = cache.state_of(42);
    cache.open_check(&fs, &fstat(&file));
    let chunk = 128u64 << 10;
    for off in (0..8u64 << 20).step_by(chunk as usize) {
        let r = cache
            .read(&fs, file.as_raw_fd(), off, chunk as u32, 7)
            .unwrap();
        assert!(r.data == data[off as usize..(off + chunk) as usize]);
        cache.fill(&fs, r.fill.expect("a miss fills"));
    }
    cache.gc_now();
    let data_buckets_before = cache.alloc().mark_counts()[1];
    // drop three chunks of every four: every data bucket is left a quarter full
    for (i, off) in (0..8u64 << 20).step_by(chunk as usize).enumerate() {
        if i % 4 != 0 {
            let touch = Touch::Range {
                offset: off,
                len: chunk,
            };
            cache
                .change(&fs, file.as_raw_fd(), touch, || Ok(()))
                .0
                .unwrap();
        }
    }
    let moved = cache.gc_now();
    assert!(moved >= 1 << 20, "moving gc moved only {moved} bytes");
    let data_buckets_after = cache.alloc().mark_counts()[1];
    assert!(
        data_buckets_after * 2 <= data_buckets_before,
        "{data_buckets_before} data buckets before, {data_buckets_after} after compaction"
    );
    // the compacted chunks are still hits, with the right bytes
    let hits = bcachefs_lite::cache::stats::get(&cache.counters.cache_hits);
    for (i, off) in (0..8u64 << 20).step_by(chunk as usize).enumerate() {
        if i % 4 == 0 {
            let r = cache
                .read(&fs, file.as_raw_fd(), off, chunk as u32, 8)
                .unwrap();
            assert!(r.fill.is_none(), "chunk at {off} missed after compaction");
            assert!(
                r.data == data[off as usize..(off + chunk) as usize],
                "chunk at {off}"
            );
        }
    }
    let hits_after = bcachefs_lite::cache::stats::get(&cache.counters.cache_hits);
    assert_eq!(hits_after - hits, 16);
    assert!(cache.alloc().check_invariants().is_ok());
    cache.close();
}
