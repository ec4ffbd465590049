//! A small journal under a burst of records: the ring must never wrap over the entry
//! naming the newest gens checkpoint or the newest index checkpoint (a crash would then
//! leave a cache that cannot be opened, or replay from nothing).

use bcachefs_lite::cache::stats::get;
use bcachefs_lite::cache::{CacheConfig, CacheSet};
use bcachefs_lite::device::FileDevice;
use bcachefs_lite::journal::format::Record;

#[test]
fn a_burst_of_records_keeps_the_checkpoint_entries_in_the_ring() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = CacheConfig::new(dir.path().join("c.cache"));
    cfg.size = Some(16 << 20); // a 128 KiB journal
    let cache = CacheSet::open(&cfg, "/tree").unwrap();
    let journal_size = cache.alloc().superblock().journal_size;
    // SAFETY: stat is plain old data (integers only); all-zero is a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // 40,000 validator changes (two records of ~40 bytes each): many times the ring, mostly in big batches
    for i in 0..40_000i64 {
        st.st_size = i;
        st.st_mtime = i;
        cache.open_check(&cache.state_of(i as u64 % 977), &st);
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(cache.is_active(), "the journal failed under the burst");
    assert!(
        get(&cache.counters.index_checkpoints) > 2,
        "no checkpoints while the ring filled"
    );
    // what a crash now would find on disk
    let dev = FileDevice::new(std::fs::File::open(&cfg.path).unwrap());
    bcachefs_lite::alloc::read_newest_checkpoint(&dev)
        .expect("the gens checkpoint entry was overwritten");
    let sb = cache.alloc().superblock().clone();
    let entries = bcachefs_lite::journal::scan(&dev, &sb).unwrap();
    assert!(
        entries.iter().any(|e| e
            .entry
            .records
            .iter()
            .any(|r| matches!(r, Record::IndexCheckpoint { .. }))),
        "no index checkpoint entry left in a {journal_size}-byte ring"
    );
    cache.close();
    // and it opens again, with the last validators
    drop(cache);
    let cache = CacheSet::open(&cfg, "/tree").unwrap();
    let v = cache.index().validator(39_999 % 977).unwrap();
    assert_eq!(v.size, 39_999);
    cache.close();
}
