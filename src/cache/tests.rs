//! Unit tests of the request path that need exact interleavings or a failing device, which
//! a mount cannot give deterministically.

use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use super::*;
use crate::alloc::OpenOptions;
use crate::device::format::Geometry;
use crate::device::{FaultKind, FaultyDevice, FileDevice};

/// Deterministic pseudo-random bytes (xorshift: no period a misplaced block could hide in),
/// for these tests and `fault_tests`.
pub(super) fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

struct Fixture {
    _dir: tempfile::TempDir,
    cache: CacheSet,
    backing: std::fs::File,
}

fn fixture() -> Fixture {
    fixture_with(std::time::Duration::from_secs(1))
}

fn fixture_with(revalidate: std::time::Duration) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("file");
    std::fs::write(&path, pattern(64 << 10, 0)).unwrap();
    let backing = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let mut cfg = CacheConfig::new(dir.path().join("c.cache"));
    cfg.size = Some(32 << 20);
    cfg.sequential_cutoff = 0;
    cfg.revalidate = revalidate;
    let cache = CacheSet::open(&cfg, "/tree").unwrap();
    Fixture {
        _dir: dir,
        cache,
        backing,
    }
}

impl Fixture {
    fn fd(&self) -> RawFd {
        self.backing.as_raw_fd()
    }

    fn open(&self, id: FileId) -> Arc<FileState> {
        let file = self.cache.state_of(id);
        let st = crate::sys::fstat_fd(self.fd()).unwrap();
        self.cache.open_check(&file, &st);
        file
    }

    /// A read through the cache, filling what missed; returns the bytes.
    fn read(&self, file: &FileState, offset: u64, len: u32) -> Vec<u8> {
        let r = self.cache.read(file, self.fd(), offset, len, 1).unwrap();
        if let Some(fill) = r.fill {
            self.cache.fill(file, fill);
        }
        r.data
    }

    /// A writethrough write of `data` at `offset`, whose backing write runs `during` first.
    fn write(&self, file: &FileState, offset: u64, data: &[u8], during: impl FnOnce()) -> Changed {
        let touch = Touch::Range {
            offset,
            len: data.len() as u64,
        };
        let (r, changed) = self.cache.change(file, self.fd(), touch, || {
            self.backing.write_all_at(data, offset)?;
            during();
            Ok(())
        });
        r.unwrap();
        if let Some(ticket) = changed.fill_ticket {
            if let Some(fill) = self.cache.write_fill(file, ticket, offset, data, 1) {
                self.cache.fill(file, fill);
            }
        }
        changed
    }

    fn backing_bytes(&self, offset: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        self.backing.read_exact_at(&mut b, offset).unwrap();
        b
    }
}

/// Bug 4 of the wrong-bytes issue: W1 writes the backing, W2 writes it after and finishes
/// (its fill lands), then W1 finishes. W1 must not cache its bytes: the backing holds W2's.
#[test]
fn a_write_overlapped_by_a_later_one_does_not_cache_its_bytes() {
    let fx = fixture();
    let file = fx.open(1);
    let (w1, w2) = (pattern(8192, 1), pattern(8192, 2));
    let changed = fx.write(&file, 0, &w1, || {
        fx.write(&file, 0, &w2, || {});
    });
    assert!(
        changed.fill_ticket.is_none(),
        "an overlapped write got a fill ticket"
    );
    assert_eq!(fx.backing_bytes(0, 8192), w2);
    assert_eq!(
        fx.read(&file, 0, 8192),
        w2,
        "the cache serves the earlier write's bytes"
    );
    let hits = stats::get(&fx.cache.counters.cache_hits);
    assert_eq!(fx.read(&file, 0, 8192), w2);
    assert!(
        stats::get(&fx.cache.counters.cache_hits) > hits,
        "w2 is cached"
    );
}

/// The other order: W2 starts after W1 but W1's backing write lands last, while W2 finishes
/// first and fills its (now wrong) bytes. W1's second drop must remove them.
#[test]
fn a_write_that_lands_last_drops_what_an_earlier_finisher_cached() {
    let fx = fixture();
    let file = fx.open(1);
    let (w1, w2) = (pattern(8192, 1), pattern(8192, 2));
    let touch = Touch::Range {
        offset: 0,
        len: 8192,
    };
    let (r, _) = fx.cache.change(&file, fx.fd(), touch, || {
        // W2 runs whole inside W1, and W1's bytes reach the backing inside W2's window
        fx.write(&file, 0, &w2, || {
            fx.backing.write_all_at(&w1, 0).unwrap();
        });
        Ok(())
    });
    r.unwrap();
    assert_eq!(fx.backing_bytes(0, 8192), w1);
    assert_eq!(fx.read(&file, 0, 8192), w1, "the cache serves W2's bytes");
}

/// A read whose miss raced with a change does not insert what it read.
#[test]
fn a_miss_that_raced_with_a_change_is_not_filled() {
    let fx = fixture();
    let file = fx.open(1);
    let r = fx.cache.read(&file, fx.fd(), 0, 8192, 1).unwrap();
    fx.write(&file, 0, &pattern(8192, 9), || {});
    fx.cache.fill(&file, r.fill.unwrap());
    assert_eq!(stats::get(&fx.cache.counters.cache_miss_collisions), 1);
    assert_eq!(fx.read(&file, 0, 8192), pattern(8192, 9));
}

/// Bug 6: every holder of a file id shares one state, so a change through one inode object
/// voids a fill taken through another; the registry forgets states nobody holds.
#[test]
fn every_holder_of_a_file_id_shares_one_state() {
    let fx = fixture();
    let a = fx.open(5);
    let b = fx.cache.state_of(5);
    assert!(Arc::ptr_eq(&a, &b));
    let r = fx.cache.read(&a, fx.fd(), 0, 4096, 1).unwrap();
    drop(a);
    fx.write(&b, 0, &pattern(4096, 3), || {});
    fx.cache.fill(&b, r.fill.unwrap());
    assert_eq!(fx.read(&b, 0, 4096), pattern(4096, 3));
    drop(b);
    assert_eq!(fx.cache.live_files(), 0, "a dropped state stays registered");
    // a state made again never repeats a sequence value an old fill could hold
    let c = fx.cache.state_of(5);
    let seen = c.seq.lock().seq;
    drop(c);
    let d = fx.cache.state_of(5);
    assert_ne!(d.seq.lock().seq, seen);
}

/// Read path step 1: a change made outside the mount is noticed on the read path once
/// the revalidation interval has passed, also for a descriptor opened before it.
#[test]
fn the_read_path_revalidates_once_per_interval() {
    for (interval, noticed) in [(3600, false), (0, true)] {
        let fx = fixture_with(std::time::Duration::from_secs(interval));
        let file = fx.open(1);
        assert_eq!(fx.read(&file, 0, 4096), pattern(4096, 0));
        std::thread::sleep(std::time::Duration::from_millis(20));
        fx.backing.write_all_at(&pattern(4096, 7), 0).unwrap();
        let r = fx.cache.read(&file, fx.fd(), 0, 4096, 1).unwrap();
        assert_eq!(r.outside_change, noticed, "interval {interval} s");
        if noticed {
            assert_eq!(r.data, pattern(4096, 7));
        }
    }
}

type Faulty = Arc<FaultyDevice<FileDevice>>;

/// A 32 MiB cache file behind a fault-injecting device, its allocator opened without the
/// background thread (the test drives it).
fn faulty_cache() -> (tempfile::TempDir, Faulty, Arc<Allocator>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.cache");
    let g = Geometry {
        size: 32 << 20,
        bucket_size: 256 << 10,
        ..Geometry::default()
    };
    Allocator::format(&path, &g, false).unwrap();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let dev = Arc::new(FaultyDevice::new(FileDevice::new(file)));
    let manual = OpenOptions {
        start_allocator: false,
        ..Default::default()
    };
    let alloc = Arc::new(Allocator::open_device(dev.clone(), manual).unwrap());
    (dir, dev, alloc)
}

/// A journal writer over `alloc` with an empty index.
fn writer(alloc: &Arc<Allocator>) -> journal::JournalWriter {
    journal::JournalWriter::new(
        alloc.clone(),
        Arc::new(Index::new(alloc.superblock().block_size)),
        Arc::new(Identity::new()),
        Arc::new(Counters::default()),
        journal::CheckpointState::default(),
    )
}

/// Bug 7: a failed journal write poisons the whole cache set: the allocator stops, nothing
/// more is served from the cache, and the reason is kept for stats.
#[test]
fn a_failed_journal_write_stops_caching_everywhere() {
    let (_dir, dev, alloc) = faulty_cache();
    let jw = writer(&alloc);
    jw.queue(Record::KeyDelete {
        file: 1,
        offset: 0,
        len: u64::MAX,
    });
    dev.arm(dev.ops(), FaultKind::Fail);
    assert!(jw.flush().is_err());
    assert!(
        alloc.is_poisoned(),
        "the journal failed but the allocator goes on"
    );
    assert!(alloc.poison().reason().is_some());
    assert!(matches!(
        alloc.bucket_alloc(crate::alloc::Reserve::None, false),
        Err(Error::Poisoned)
    ));
    alloc.close();
}

/// The same for an index checkpoint whose blob cannot be written (the journal itself works).
#[test]
fn a_failed_index_checkpoint_stops_caching_everywhere() {
    let (_dir, dev, alloc) = faulty_cache();
    let r = alloc.gc_begin();
    alloc.gc_finish(r).unwrap();
    alloc.allocator_run_until_idle(100).unwrap();
    let jw = writer(&alloc);
    // the checkpoint's flush has nothing to sync; its first write is the blob
    dev.arm(dev.ops(), FaultKind::FailOnce { keep: 0 });
    assert!(jw.checkpoint_now().is_err());
    assert!(
        alloc.is_poisoned(),
        "a failed index checkpoint left caching on"
    );
    alloc.close();
}

#[test]
fn a_metadata_checkpoint_is_trusted_only_while_it_is_alone_in_the_newest_entry() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = CacheConfig::new(dir.path().join("c.cache"));
    cfg.size = Some(32 << 20);
    let blob = |n: u64| {
        crate::meta::format::Checkpoint {
            root_ino: n,
            ..Default::default()
        }
        .encode()
    };
    {
        let cache = CacheSet::open(&cfg, "/tree").unwrap();
        assert!(cache.take_meta_checkpoint().is_none());
        cache.set_meta_saver(Box::new(move |clean| Some(blob(if clean { 1 } else { 2 }))));
        // a periodic snapshot, then the clean unmount's
        assert!(cache.snapshot_meta());
        cache.close();
    }
    {
        // a clean unmount wrote it last, alone: trusted
        let cache = CacheSet::open(&cfg, "/tree").unwrap();
        assert_eq!(cache.take_meta_checkpoint(), Some((blob(1), true)));
        // this mount ends without one (a crash, or a saver that gives none); the mount's own
        // index checkpoint repeated its record
        cache.close();
    }
    {
        let cache = CacheSet::open(&cfg, "/tree").unwrap();
        // still there (its buckets are kept until a newer one replaces them), not trusted
        assert_eq!(
            cache.take_meta_checkpoint(),
            Some((blob(1), false)),
            "an out-of-date metadata checkpoint was trusted, or lost"
        );
        cache.set_meta_saver(Box::new(move |clean| (!clean).then(|| blob(3))));
        assert!(cache.snapshot_meta());
        // index checkpoints now name the snapshot, and the ring wraps over the entry that
        // wrote it: it must still be found
        let sb = cache.alloc.superblock().clone();
        for _ in 0..=sb.journal_size / u64::from(sb.block_size) {
            cache.journal.checkpoint_now().unwrap();
        }
        cache.close();
    }
    let cache = CacheSet::open(&cfg, "/tree").unwrap();
    // found through the repetitions; not trusted (the unmount's index checkpoint came after)
    assert_eq!(cache.take_meta_checkpoint(), Some((blob(3), false)));
}

/// `fills_pending` counts a fill from the miss that made it until it is written or dropped
/// (tests wait on it instead of sleeping).
#[test]
fn a_fill_is_pending_from_its_miss_until_written_or_dropped() {
    let fx = fixture();
    let file = fx.open(11);
    let pending = || stats::get(&fx.cache.counters.fills_pending);
    let r = fx.cache.read(&file, fx.fd(), 0, 8192, 1).unwrap();
    assert_eq!(pending(), 1);
    let again = fx.cache.read(&file, fx.fd(), 16384, 4096, 1).unwrap();
    assert_eq!(pending(), 2);
    fx.cache.fill(&file, r.fill.unwrap());
    assert_eq!(pending(), 1);
    drop(again);
    assert_eq!(pending(), 0);
}

/// The request path reuses one buffer per thread without zeroing it (`read_into`): every
/// byte it serves must be one it wrote in this request. A backing that shrank underneath
/// (before the read path's next check) reads short; the rest is zeros, never the bytes an
/// earlier request left in the buffer. Hits and misses in one buffer serve the right bytes.
#[test]
fn a_reused_read_buffer_never_serves_an_earlier_requests_bytes() {
    let fx = fixture_with(std::time::Duration::from_secs(3600));
    let file = fx.open(1);
    let want = pattern(64 << 10, 0);
    let mut buf = vec![0xAAu8; 1 << 20];
    // a miss (filled), then a hit of the same range and a miss beside it, in the same buffer
    for (offset, len) in [(0u64, 16384u32), (0, 16384), (4096, 32768), (100, 5000)] {
        let r = fx
            .cache
            .read_into(&file, fx.fd(), offset, len, 1, &mut buf)
            .unwrap();
        assert_eq!(
            &buf[r.data.clone()],
            &want[offset as usize..offset as usize + len as usize]
        );
        if let Some(fill) = r.fill {
            fx.cache.fill(&file, fill);
        }
    }
    buf.fill(0xAA);
    // the backing shrinks to 40000 bytes behind the validator's back (no check for an hour)
    fx.backing.set_len(40000).unwrap();
    let r = fx
        .cache
        .read_into(&file, fx.fd(), 32768, 32768, 1, &mut buf)
        .unwrap();
    let got = &buf[r.data.clone()];
    assert_eq!(got.len(), 32768, "the validator's size still says 64 KiB");
    assert_eq!(&got[..40000 - 32768], &want[32768..40000]);
    assert!(
        got[40000 - 32768..].iter().all(|&b| b == 0),
        "bytes past the backing's end are not zeros: an earlier request's buffer leaked"
    );
}

/// Offline (issue 16): a file is servable from the cache alone only when all of it is cached
/// under the validator the caller names, and `read_cached` never reads the backing: after
/// the backing changed behind it, it still answers the cached bytes (the return revalidates).
#[test]
fn offline_serves_a_wholly_cached_file_only_and_never_reads_the_backing() {
    let fx = fixture();
    let file = fx.open(1);
    let st = crate::sys::fstat_fd(fx.fd()).unwrap();
    let len = 64 << 10;
    let old = pattern(len, 0);
    assert!(!fx.cache.offline_servable(&file, &st), "nothing cached yet");
    fx.read(&file, 0, 32 << 10);
    assert!(!fx.cache.offline_servable(&file, &st), "half cached");
    assert_eq!(fx.cache.read_cached(&file, 0, 4096).unwrap(), old[..4096]);
    assert!(
        fx.cache.read_cached(&file, 40 << 10, 4096).is_none(),
        "a gap"
    );
    fx.read(&file, 32 << 10, 32 << 10);
    assert!(fx.cache.offline_servable(&file, &st));
    let mut other = st;
    other.st_mtime += 1;
    assert!(
        !fx.cache.offline_servable(&file, &other),
        "attributes other than the cached validator"
    );
    fx.backing.write_all_at(&pattern(len, 9), 0).unwrap();
    assert_eq!(
        fx.cache.read_cached(&file, 1000, 10000).unwrap(),
        old[1000..11000]
    );
    assert_eq!(fx.cache.read_cached(&file, len as u64, 10).unwrap(), b"");
    assert_eq!(
        fx.cache.read_cached(&file, len as u64 - 10, 100).unwrap(),
        old[len - 10..]
    );
}
