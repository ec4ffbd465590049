//! Crash ordering and hostile journals: recovery always uses the newest gens checkpoint,
//! and crc-valid but crafted records are dropped one by one, never a panic, never caching
//! turned off, never an allocation sized by a length read off disk.

use bcachefs_lite::alloc::{read_newest_checkpoint, Allocator, OpenOptions};
use bcachefs_lite::cache::{CacheConfig, CacheSet};
use bcachefs_lite::device::format::Geometry;
use bcachefs_lite::device::FileDevice;
use bcachefs_lite::journal::format::Record;

fn manual() -> OpenOptions {
    OpenOptions {
        start_allocator: false,
        ..Default::default()
    }
}

/// An index checkpoint entry used to repeat the gens checkpoint location read before the
/// allocator's step lock, so it could name the previous checkpoint after a newer one was
/// written. Recovery must still load the newest one, or bumped gens revert after a crash.
#[test]
fn recovery_uses_the_newest_gens_checkpoint_wherever_it_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.cache");
    let g = Geometry {
        size: 32 << 20,
        bucket_size: 256 << 10,
        discard: false, // the old checkpoint's bytes stay readable
        ..Geometry::default()
    };
    Allocator::format(&path, &g, false).unwrap();
    let cache = Allocator::open_with(&path, manual()).unwrap();
    let (old_seq, old_buckets) = cache.gens_checkpoint_location();
    let r = cache.gc_begin();
    cache.gc_finish(r).unwrap();
    cache.allocator_run_until_idle(100).unwrap();
    let (new_seq, _) = cache.gens_checkpoint_location();
    assert!(new_seq > old_seq, "the allocator wrote no gens checkpoint");
    // the racing entry, appended after the newer checkpoint's
    cache
        .journal_append(vec![Record::GensCheckpoint {
            seq: old_seq,
            buckets: old_buckets,
        }])
        .unwrap();
    cache.close();
    drop(cache);
    let dev = FileDevice::new(std::fs::File::open(&path).unwrap());
    let (_, newest) = read_newest_checkpoint(&dev).unwrap();
    assert_eq!(
        newest.checkpoint.seq, new_seq,
        "recovery followed the newest entry to an older gens checkpoint"
    );
}

/// And the writer side: every index checkpoint entry names a gens checkpoint at least as new
/// as every one named before it in the ring (the allocator keeps running meanwhile).
#[test]
fn an_index_checkpoint_entry_never_names_an_older_gens_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = CacheConfig::new(dir.path().join("c.cache"));
    cfg.size = Some(16 << 20);
    for _ in 0..3 {
        let cache = CacheSet::open(&cfg, "/tree").unwrap();
        cache.close();
    }
    let dev = FileDevice::new(std::fs::File::open(&cfg.path).unwrap());
    let sb = bcachefs_lite::alloc::read_superblock(&dev).unwrap();
    let entries = bcachefs_lite::journal::scan(&dev, &sb).unwrap();
    let mut newest_so_far = 0;
    let mut index_entries = 0;
    for e in &entries {
        let named = e.entry.records.iter().filter_map(|r| match r {
            Record::GensCheckpoint { seq, .. } => Some(*seq),
            _ => None,
        });
        let is_index =
            (e.entry.records.iter()).any(|r| matches!(r, Record::IndexCheckpoint { .. }));
        for seq in named {
            if is_index {
                index_entries += 1;
                assert!(
                    seq >= newest_so_far,
                    "entry {} names gens checkpoint {seq} after {newest_so_far}",
                    e.entry.seq
                );
            }
            newest_so_far = newest_so_far.max(seq);
        }
    }
    assert!(index_entries >= 3);
}

#[test]
fn crafted_but_crc_valid_records_are_dropped_alone() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = CacheConfig::new(dir.path().join("c.cache"));
    cfg.size = Some(16 << 20);
    let cache = CacheSet::open(&cfg, "/tree").unwrap();
    let nbuckets = cache.alloc().nbuckets();
    let bucket_sectors = cache.alloc().bucket_sectors();
    let block = cache.alloc().superblock().block_size;
    cache.close();
    drop(cache);
    let raw = Allocator::open_with(&cfg.path, manual()).unwrap();
    // one block each, well formed but for the field under test
    let key = |file: u64, offset: u64, bucket: u32, bucket_offset: u32| Record::KeyInsert {
        file,
        offset,
        len: block / 512,
        bucket,
        gen: 0,
        bucket_offset,
        dirty: false,
        crcs: vec![0],
    };
    raw.journal_append(vec![
        // offset + length overflows u64
        key(1, u64::MAX / u64::from(block) * u64::from(block), 10, 0),
        // past the end of its bucket
        key(2, 0, 10, bucket_sectors - 1),
        // a bucket that does not exist
        key(3, 0, nbuckets + 5, 0),
        // an index checkpoint claiming every bucket of the cache (its blob header says
        // otherwise: nothing is allocated for it)
        Record::IndexCheckpoint {
            seq: 99,
            buckets: (0..nbuckets).collect(),
            len: u64::from(nbuckets) * u64::from(bucket_sectors) * 512,
        },
        // and one that repeats its bucket
        Record::IndexCheckpoint {
            seq: 100,
            buckets: vec![3, 3],
            len: 8192,
        },
    ])
    .unwrap();
    raw.close();
    drop(raw);
    let cache = CacheSet::open(&cfg, "/tree").expect("a crafted journal refused the mount");
    assert!(cache.is_active(), "one bad key turned caching off");
    for f in 1..=3 {
        assert!(
            cache.index().extents(f).is_empty(),
            "crafted key for file {f} kept"
        );
    }
    cache.close();
}

/// Dirty keys (writeback) are replayed and kept when they can be written back: their slot is
/// known, their gen current and their file has a `FileHandle` record. A dirty key that cannot
/// be written back (unknown slot, no handle) is never dropped silently: the open is refused,
/// the file left alone (a second open refuses again), until `drop_dirty` says to drop it.
#[test]
fn dirty_keys_are_replayed_or_refused_loudly_never_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = CacheConfig::new(dir.path().join("c.cache"));
    cfg.size = Some(16 << 20);
    let cache = CacheSet::open(&cfg, "/tree").unwrap();
    let block = cache.alloc().superblock().block_size;
    cache.close();
    drop(cache);
    let key = |file: u64, dirty: bool| Record::KeyInsert {
        file,
        offset: 0,
        len: block / 512,
        bucket: 10,
        gen: 0,
        bucket_offset: 0,
        dirty,
        crcs: vec![0],
    };
    let append = |records: Vec<Record>| {
        let raw = Allocator::open_with(&cfg.path, manual()).unwrap();
        raw.journal_append(records).unwrap();
        raw.close();
    };
    append(vec![key(1, false)]);
    let cache = CacheSet::open(&cfg, "/tree").expect("a clean key refused the mount");
    cache.close();
    drop(cache);
    // dirty keys at the bucket's current gen (the mounts since may have bumped it)
    let raw = Allocator::open_with(&cfg.path, manual()).unwrap();
    let gen = raw.bucket_gen(10).unwrap();
    raw.close();
    drop(raw);
    let key = |file: u64, dirty: bool| match key(file, dirty) {
        Record::KeyInsert { .. } if dirty => Record::KeyInsert {
            file,
            offset: 0,
            len: block / 512,
            bucket: 10,
            gen,
            bucket_offset: 0,
            dirty,
            crcs: vec![0],
        },
        r => r,
    };
    // slot 0 unknown: the dirty key cannot be trusted to name the right file
    append(vec![key(2, true)]);
    for attempt in 0..2 {
        let e = CacheSet::open(&cfg, "/tree")
            .err()
            .unwrap_or_else(|| panic!("open {attempt}: untrusted dirty data accepted"))
            .to_string();
        assert!(e.contains("dirty data") && e.contains("4096 bytes"), "{e}");
    }
    // the slot becomes known, but the file has no handle: still refused
    let slot = Record::FsSlot {
        slot: 0,
        fs_type: 0xef53,
        fsid: 7,
        dev: 8,
        dev_keyed: false,
    };
    append(vec![slot.clone(), key(2, true)]);
    let e = CacheSet::open(&cfg, "/tree")
        .err()
        .expect("dirty data without a file handle accepted")
        .to_string();
    assert!(
        e.contains("without a file handle") && e.contains("drop_dirty"),
        "{e}"
    );
    // with its handle it is replayed, dirty, and kept across a clean close (no writeback
    // without a mount to reopen files: the data stays dirty)
    append(vec![
        slot,
        Record::FileHandle {
            file: 2,
            handle_type: 1,
            handle: vec![9; 8],
        },
        key(2, true),
        // the size and mtime the mount reported for it (the newest record wins)
        Record::DirtyAttr {
            file: 2,
            size: 100,
            mtime_ns: 1,
        },
        Record::DirtyAttr {
            file: 2,
            size: 3000,
            mtime_ns: 1_700_000_000_123_456_789,
        },
    ]);
    // twice: the second open finds the DirtyAttr only in the first one's index checkpoint
    // entries (each open and close writes one), which must repeat it
    for _ in 0..2 {
        let cache = CacheSet::open(&cfg, "/tree").expect("dirty data with a handle refused");
        let ext = cache.index().extents(2);
        assert!(
            ext.len() == 1 && ext[0].dirty && ext[0].len == u64::from(block),
            "the dirty key was not kept: {ext:?}"
        );
        let attr = cache
            .dirty_attr(2)
            .expect("the dirty size was not replayed");
        assert_eq!(
            (attr.size, attr.mtime_ns),
            (3000, 1_700_000_000_123_456_789)
        );
        cache.close();
    }
    // KeyClean makes it clean
    append(vec![Record::KeyClean {
        file: 2,
        offset: 0,
        len: u64::from(block),
    }]);
    let cache = CacheSet::open(&cfg, "/tree").unwrap();
    assert!(
        cache.index().extents(2).iter().all(|e| !e.dirty),
        "KeyClean not replayed"
    );
    assert!(
        cache.dirty_attr(2).is_none(),
        "a clean file kept a dirty size: the backing's is the truth"
    );
    cache.close();
    drop(cache);
    // drop_dirty drops what cannot be written back, loudly, and mounts
    append(vec![key(3 | (5 << 56), true)]);
    assert!(CacheSet::open(&cfg, "/tree").is_err());
    cfg.drop_dirty = true;
    let cache = CacheSet::open(&cfg, "/tree").expect("drop_dirty did not mount");
    assert!(cache.index().extents(3 | (5 << 56)).is_empty());
    cache.close();
}
