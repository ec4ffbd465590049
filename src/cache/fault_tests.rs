//! The whole cache set over a fault-injecting device (issue 14, items 2 and 3): every
//! pwrite, pread, fdatasync and punch of the journal writer, the index and gens
//! checkpoints, fills and reads goes through one [`FaultyDevice`] or [`PowerCutDevice`]
//! (`CacheSet::open_device`). No FUSE: the backing is a directory of real files, read and
//! written as the FUSE layer does (`read` + `fill`, `change` + `write_fill`).
//!
//! - I/O errors at each call site and at random: every read returns the backing's bytes,
//!   a failed cache write or sync poisons the set once with its reason, and a reopen serves
//!   only correct bytes.
//! - Power cut at every sync point of a scripted workload: writes not yet synced are lost
//!   and the last one torn; the durable image, reopened, holds every invariant.

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::*;
use crate::device::{FaultKind, FaultyDevice, FileDevice, PowerCutDevice, Site};

const FILES: u64 = 4;
const FILE_LEN: usize = 192 << 10;
const BLOCK: u64 = 4096;

use super::tests::pattern;

/// splitmix64, seeded: every random test prints its seed.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) % n.max(1)
    }
}

/// A backing directory of `FILES` files and a formatted, closed cache file beside it.
struct World {
    dir: tempfile::TempDir,
    backing: Vec<std::fs::File>,
}

impl World {
    fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        let backing = (0..FILES)
            .map(|i| {
                let p = dir.path().join(format!("f{i}"));
                std::fs::write(&p, pattern(FILE_LEN, 10 + i)).unwrap();
                std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&p)
                    .unwrap()
            })
            .collect();
        let w = World { dir, backing };
        drop(CacheSet::open(&w.cfg(&w.cache_path()), "/tree").unwrap());
        w
    }

    fn cache_path(&self) -> PathBuf {
        self.dir.path().join("c.cache")
    }

    fn cfg(&self, path: &Path) -> CacheConfig {
        let mut cfg = CacheConfig::new(path.to_path_buf());
        cfg.size = Some(32 << 20);
        cfg.sequential_cutoff = 0;
        cfg.probation_after = 0;
        cfg
    }

    fn file_device(&self, path: &Path) -> FileDevice {
        FileDevice::new(
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .unwrap(),
        )
    }

    fn fd(&self, i: u64) -> RawFd {
        self.backing[i as usize].as_raw_fd()
    }

    fn backing_bytes(&self, i: u64, off: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        let n = crate::sys::pread_full(self.fd(i), &mut b, off).unwrap();
        b.truncate(n);
        b
    }

    /// The file states of every file, opened (validator checked) as an open(2) would.
    fn open_all(&self, cache: &CacheSet) -> Vec<Arc<FileState>> {
        (0..FILES)
            .map(|i| {
                let st = crate::sys::fstat_fd(self.fd(i)).unwrap();
                // through the identity table, as the FUSE layer does (replay drops keys of
                // file ids it has no slot for)
                let f = cache
                    .file_state(self.fd(i), &st)
                    .expect("the test's files can be cached");
                cache.open_check(&f, &st);
                f
            })
            .collect()
    }

    /// A read through the cache as the FUSE layer does it (fill after the reply); panics if
    /// a byte differs from the backing.
    fn read(&self, cache: &CacheSet, files: &[Arc<FileState>], i: u64, off: u64, len: u32) {
        let r = cache
            .read(&files[i as usize], self.fd(i), off, len, 7)
            .unwrap();
        let want = self.backing_bytes(i, off, len as usize);
        assert!(
            r.data == want,
            "f{i} [{off}, +{len}): the cache served wrong bytes"
        );
        if let Some(fill) = r.fill {
            cache.fill(&files[i as usize], fill);
        }
    }

    /// A writethrough write as the FUSE layer does it.
    fn write(&self, cache: &CacheSet, files: &[Arc<FileState>], i: u64, off: u64, data: &[u8]) {
        let file = &files[i as usize];
        let touch = Touch::Range {
            offset: off,
            len: data.len() as u64,
        };
        let f = &self.backing[i as usize];
        let (r, changed) = cache.change(file, self.fd(i), touch, || f.write_all_at(data, off));
        r.unwrap();
        if let Some(ticket) = changed.fill_ticket {
            if let Some(fill) = cache.write_fill(file, ticket, off, data, 7) {
                cache.fill(file, fill);
            }
        }
    }

    /// Every byte of every file, read twice (miss then hit), equals the backing's.
    fn check_all(&self, cache: &CacheSet) {
        let files = self.open_all(cache);
        for _ in 0..2 {
            for i in 0..FILES {
                self.read(cache, &files, i, 0, FILE_LEN as u32);
            }
        }
    }
}

/// The invariants a recovered cache set must hold (docs/DESIGN.md §5): lists (5), every key
/// at its bucket's current gen (1, 2), every gen within 96 of the oldest referenced (6).
fn check_invariants(cache: &CacheSet) {
    cache.alloc().check_invariants().unwrap();
    cache.index().for_each_extent(|file, ext| {
        let gen = cache.alloc().bucket_gen(ext.ptr.bucket).unwrap();
        assert_eq!(
            gen, ext.ptr.gen,
            "file {file}: a key at a stale gen survived recovery"
        );
    });
}

/// One step of the scripted workload.
fn step(w: &World, cache: &CacheSet, files: &[Arc<FileState>], rng: &mut Rng, n: u64) {
    let i = rng.below(FILES);
    let blocks = FILE_LEN as u64 / BLOCK;
    let off = rng.below(blocks) * BLOCK;
    let len = ((1 + rng.below(8)) * BLOCK).min(FILE_LEN as u64 - off);
    match rng.below(10) {
        0..=4 => w.read(cache, files, i, off, len as u32),
        5..=7 => w.write(cache, files, i, off, &pattern(len as usize, 1000 + n)),
        8 => {
            let _ = cache.journal.flush();
        }
        _ => {
            let _ = cache.journal.checkpoint_now();
        }
    }
}

// ---- I/O errors at each call site --------------------------------------------------------

type Faulty = Arc<FaultyDevice<FileDevice>>;

fn faulty_set(w: &World) -> (Faulty, CacheSet) {
    let dev = Arc::new(FaultyDevice::new(w.file_device(&w.cache_path())));
    let cache = CacheSet::open_device(&w.cfg(&w.cache_path()), dev.clone()).unwrap();
    (dev, cache)
}

/// Caches every file (and makes it durable), so reads hit.
fn warm(w: &World, cache: &CacheSet) -> Vec<Arc<FileState>> {
    let files = w.open_all(cache);
    for i in 0..FILES {
        w.read(cache, &files, i, 0, FILE_LEN as u32);
    }
    cache.journal.flush().unwrap();
    files
}

/// After a fault: poisoned once with a reason naming `what`, every read still correct, and a
/// reopen of the file on a healthy device serves only correct bytes.
fn assert_poisoned_and_correct(w: &World, cache: CacheSet, dev: &Faulty, what: &str) {
    assert!(dev.faults() > 0, "{what}: the fault never triggered");
    assert!(
        !cache.is_active(),
        "{what}: a failed cache I/O left caching on"
    );
    let reason = cache.failure().expect("a reason for stats");
    assert!(
        reason.to_lowercase().contains(what),
        "{what}: the reason says {reason:?}"
    );
    w.check_all(&cache);
    check_invariants(&cache);
    drop(cache);
    dev.disarm();
    let again = CacheSet::open(&w.cfg(&w.cache_path()), "/tree").unwrap();
    check_invariants(&again);
    w.check_all(&again);
    assert!(again.is_active());
}

#[test]
fn a_failed_cache_read_falls_back_to_the_backing() {
    for errno in [libc::EIO, libc::ENOSPC] {
        let w = World::new();
        let (dev, cache) = faulty_set(&w);
        let files = warm(&w, &cache);
        let sb = cache.alloc().superblock().clone();
        dev.set_errno(errno);
        dev.arm_reads(
            Site::Reads {
                lo: sb.first_bucket_offset,
                hi: u64::MAX,
            },
            true,
        );
        let hits = stats::get(&cache.counters.bytes_hit);
        w.read(&cache, &files, 1, 0, 64 << 10); // checks the bytes against the backing
        assert_eq!(
            stats::get(&cache.counters.bytes_hit),
            hits,
            "no hit counted"
        );
        assert_eq!(stats::get(&cache.counters.io_errors), 1);
        assert_poisoned_and_correct(&w, cache, &dev, "read");
    }
}

#[test]
fn a_failed_fill_write_poisons_once_and_loses_nothing() {
    for errno in [libc::EIO, libc::ENOSPC] {
        let w = World::new();
        let (dev, cache) = faulty_set(&w);
        let files = w.open_all(&cache);
        let sb = cache.alloc().superblock().clone();
        dev.set_errno(errno);
        dev.arm_site(
            Site::Writes {
                lo: sb.first_bucket_offset,
                hi: u64::MAX,
            },
            0,
            FaultKind::FailOnce { keep: 0 },
        );
        w.read(&cache, &files, 0, 0, FILE_LEN as u32);
        assert!(
            cache.index().extents(1).is_empty(),
            "a failed fill left a key"
        );
        assert_poisoned_and_correct(&w, cache, &dev, "write");
    }
}

#[test]
fn a_failed_journal_append_poisons_once_and_loses_nothing() {
    for errno in [libc::EIO, libc::ENOSPC] {
        let w = World::new();
        let (dev, cache) = faulty_set(&w);
        let files = warm(&w, &cache);
        let sb = cache.alloc().superblock().clone();
        dev.set_errno(errno);
        dev.arm_site(
            Site::Writes {
                lo: sb.journal_offset,
                hi: sb.journal_offset + sb.journal_size,
            },
            0,
            FaultKind::TearAndFail { keep: 100 },
        );
        w.write(&cache, &files, 2, 8192, &pattern(16384, 77));
        // this flush or the journal thread's (every 50 ms) meets the fault
        let _ = cache.journal.flush();
        assert_poisoned_and_correct(&w, cache, &dev, "journal");
    }
}

#[test]
fn a_failed_fsync_poisons_once_and_loses_nothing() {
    for errno in [libc::EIO, libc::ENOSPC] {
        let w = World::new();
        let (dev, cache) = faulty_set(&w);
        let files = warm(&w, &cache);
        dev.set_errno(errno);
        // a transient failure: the next sync would succeed, but after a failed fsync the
        // kernel may have dropped the pages, so caching must stay off
        dev.arm_site(Site::Sync, 0, FaultKind::FailOnce { keep: 0 });
        w.write(&cache, &files, 3, 0, &pattern(8192, 78));
        // this flush or the journal thread's (every 50 ms) meets the fault
        let _ = cache.journal.flush();
        w.write(&cache, &files, 3, 8192, &pattern(8192, 79));
        assert!(
            cache.journal.flush().is_err(),
            "a flush after a failed fsync succeeded"
        );
        assert_poisoned_and_correct(&w, cache, &dev, "sync");
    }
}

#[test]
fn a_failed_index_checkpoint_blob_poisons_once_and_loses_nothing() {
    for errno in [libc::EIO, libc::ENOSPC] {
        let w = World::new();
        let (dev, cache) = faulty_set(&w);
        warm(&w, &cache);
        let sb = cache.alloc().superblock().clone();
        dev.set_errno(errno);
        dev.arm_site(
            Site::Writes {
                lo: sb.first_bucket_offset,
                hi: u64::MAX,
            },
            0,
            FaultKind::FailOnce { keep: 0 },
        );
        assert!(cache.journal.checkpoint_now().is_err());
        assert_poisoned_and_correct(&w, cache, &dev, "checkpoint");
    }
}

/// EIO or ENOSPC at a random mutating operation of a random workload, failing once or for
/// good: every read is correct throughout, a fault that hit poisons, a reopen is correct.
#[test]
fn io_errors_at_random_operations_never_serve_a_wrong_byte() {
    let seed = std::env::var("BCL_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_0014);
    eprintln!("io error rounds: seed {seed} (BCL_FAULT_SEED replays)");
    let mut rng = Rng(seed);
    for round in 0..12 {
        let w = World::new();
        let (dev, cache) = faulty_set(&w);
        let files = w.open_all(&cache);
        let at = dev.ops() + rng.below(60);
        let kind = match rng.below(3) {
            0 => FaultKind::Fail,
            1 => FaultKind::FailOnce { keep: 0 },
            _ => FaultKind::TearAndFail {
                keep: rng.below(8192) as usize,
            },
        };
        dev.set_errno(if rng.below(2) == 0 {
            libc::EIO
        } else {
            libc::ENOSPC
        });
        dev.arm(at, kind);
        for n in 0..60 {
            step(&w, &cache, &files, &mut rng, n);
        }
        let _ = cache.journal.flush();
        // a failed discard is advisory (the bucket's gen was bumped before it): it is
        // logged and caching goes on; anything else poisons
        let advisory =
            dev.faulted_op() == Some("punch") && matches!(kind, FaultKind::FailOnce { .. });
        if dev.faults() > 0 && !advisory {
            assert!(
                !cache.is_active(),
                "round {round} (seed {seed}): a failed cache write left caching on"
            );
            assert!(cache.failure().is_some());
        }
        w.check_all(&cache);
        drop(cache);
        dev.disarm();
        let again = CacheSet::open(&w.cfg(&w.cache_path()), "/tree").unwrap();
        check_invariants(&again);
        w.check_all(&again);
    }
}

// ---- power cut at every sync point --------------------------------------------------------

/// The scripted workload over a power-cut device cutting at sync `cut_at`; returns how many
/// syncs it saw and the durable image.
fn run_until_cut(w: &World, cut_at: Option<u64>, tear: usize) -> (u64, bool, Vec<u8>) {
    let dev = Arc::new(PowerCutDevice::new(w.file_device(&w.cache_path()), cut_at, tear).unwrap());
    let cache = CacheSet::open_device(&w.cfg(&w.cache_path()), dev.clone()).unwrap();
    let files = w.open_all(&cache);
    let mut rng = Rng(14);
    for n in 0..40 {
        if dev.is_cut() {
            break; // the machine is off: nothing more runs
        }
        step(w, &cache, &files, &mut rng, n);
    }
    drop(files);
    drop(cache); // a clean close, unless the power is already gone
    (dev.syncs(), dev.is_cut(), dev.durable_image())
}

#[test]
fn a_power_cut_at_every_sync_point_recovers_with_every_invariant() {
    // the backing is not power-cut (it is another filesystem); each run starts from the
    // same backing bytes and the same formatted cache file
    let w = World::new();
    let pristine_cache = std::fs::read(w.cache_path()).unwrap();
    let pristine: Vec<Vec<u8>> = (0..FILES)
        .map(|i| w.backing_bytes(i, 0, FILE_LEN))
        .collect();
    let reset = |w: &World| {
        std::fs::write(w.cache_path(), &pristine_cache).unwrap();
        for (i, data) in pristine.iter().enumerate() {
            w.backing[i].set_len(0).unwrap();
            w.backing[i].write_all_at(data, 0).unwrap();
        }
    };
    let (points, cut, _) = run_until_cut(&w, None, 0);
    assert!(!cut);
    assert!(points >= 10, "the workload has only {points} sync points");
    eprintln!("power cut: {points} sync points");
    let image = w.dir.path().join("image.cache");
    let mut cuts = 0;
    for k in 0..points {
        reset(&w);
        // the last write before the cut: reaches the disk whole while the earlier ones do
        // not (the disk reordered them), is lost too, or is torn at a byte
        let tear = match k % 3 {
            0 => usize::MAX,
            1 => 0,
            _ => ((k * 1237) % 6000) as usize,
        };
        let (_, cut, durable) = run_until_cut(&w, Some(k), tear);
        cuts += u64::from(cut);
        std::fs::write(&image, &durable).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&image, std::fs::Permissions::from_mode(0o600)).unwrap();
        let cache = CacheSet::open(&w.cfg(&image), "/tree")
            .unwrap_or_else(|e| panic!("cut at sync {k} (tear {tear}): recovery refused: {e}"));
        check_invariants(&cache);
        let recovered = cache.index().stats().extents;
        w.check_all(&cache);
        eprintln!(
            "cut at sync {k} (tear {tear}): {} keys recovered, {} hits",
            recovered,
            stats::get(&cache.counters.bytes_hit)
        );
        check_invariants(&cache);
        assert!(cache.is_active(), "cut at sync {k}: {:?}", cache.failure());
        // invariant 3: no recovered key points at data that was not durable (the crc would
        // catch it and read the backing, but the key should not exist)
        assert_eq!(
            stats::get(&cache.counters.checksum_errors),
            0,
            "cut at sync {k} (tear {tear}): a recovered key points at lost data"
        );
    }
    assert!(cuts * 2 >= points, "only {cuts} of {points} runs were cut");
}

// ---- writeback: a power cut at every sync point never loses an fsync'd write ----------

/// The writeback workload over a power-cut device cutting at sync `cut_at`: block-aligned
/// dirty writes (`write_dirty`, no writeback thread: the data stays dirty), an
/// `fsync_dirty` after every third. Returns (syncs seen, cut, durable image, the bytes every
/// file must hold per the acknowledged writes, the writes not acknowledged).
#[allow(clippy::type_complexity)]
fn writeback_until_cut(
    w: &World,
    cut_at: Option<u64>,
    tear: usize,
    pristine: &[Vec<u8>],
) -> (u64, bool, Vec<u8>, Vec<Vec<u8>>, Vec<(u64, u64, Vec<u8>)>) {
    let dev = Arc::new(PowerCutDevice::new(w.file_device(&w.cache_path()), cut_at, tear).unwrap());
    let mut cfg = w.cfg(&w.cache_path());
    cfg.mode = CacheMode::Writeback;
    let cache = CacheSet::open_device(&cfg, dev.clone()).unwrap();
    let files = w.open_all(&cache);
    let mut acked: Vec<Vec<u8>> = pristine.to_vec();
    let mut pending: Vec<(u64, u64, Vec<u8>)> = Vec::new();
    // each file's size with the pending writes: every fifth write appends (the size is
    // dirty too, in the cache only)
    let mut size: Vec<u64> = pristine.iter().map(|p| p.len() as u64).collect();
    let mut rng = Rng(13);
    for n in 0..36u64 {
        if dev.is_cut() {
            break;
        }
        let i = rng.below(FILES);
        let append = n % 5 == 4;
        let (off, len) = if append {
            (size[i as usize], (1 + rng.below(2)) * BLOCK)
        } else {
            let blocks = FILE_LEN as u64 / BLOCK;
            let off = rng.below(blocks) * BLOCK;
            (off, ((1 + rng.below(6)) * BLOCK).min(FILE_LEN as u64 - off))
        };
        let data = pattern(len as usize, 5000 + n);
        let handle = (1, vec![i as u8 + 1; 8]);
        if cache
            .write_dirty(
                &files[i as usize],
                w.fd(i),
                (handle.0, &handle.1),
                if append { 0 } else { off },
                append,
                &data,
                9,
                None,
            )
            .is_err()
        {
            break;
        }
        size[i as usize] = size[i as usize].max(off + len);
        pending.push((i, off, data));
        if n % 3 == 2 {
            // an fsync "returning" once the power is gone returned to nobody
            if cache
                .fsync_dirty(&files[i as usize], w.fd(i), true)
                .is_err()
                || dev.is_cut()
            {
                break;
            }
            for (i, off, data) in pending.drain(..) {
                let a = &mut acked[i as usize];
                let end = off as usize + data.len();
                if a.len() < end {
                    a.resize(end, 0);
                }
                a[off as usize..end].copy_from_slice(&data);
            }
        }
    }
    drop(files);
    drop(cache);
    (
        dev.syncs(),
        dev.is_cut(),
        dev.durable_image(),
        acked,
        pending,
    )
}

#[test]
fn writeback_a_power_cut_at_every_sync_point_keeps_every_fsynced_write() {
    let w = World::new();
    let pristine_cache = std::fs::read(w.cache_path()).unwrap();
    let pristine: Vec<Vec<u8>> = (0..FILES)
        .map(|i| w.backing_bytes(i, 0, FILE_LEN))
        .collect();
    let (points, cut, _, _, _) = writeback_until_cut(&w, None, 0, &pristine);
    assert!(!cut);
    assert!(points >= 10, "the workload has only {points} sync points");
    let image = w.dir.path().join("image.cache");
    let mut cuts = 0;
    for k in 0..points {
        std::fs::write(w.cache_path(), &pristine_cache).unwrap();
        let tear = match k % 3 {
            0 => usize::MAX,
            1 => 0,
            _ => ((k * 1237) % 6000) as usize,
        };
        let (_, cut, durable, acked, pending) = writeback_until_cut(&w, Some(k), tear, &pristine);
        cuts += u64::from(cut);
        std::fs::write(&image, &durable).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&image, std::fs::Permissions::from_mode(0o600)).unwrap();
        let mut cfg = w.cfg(&image);
        cfg.mode = CacheMode::Writeback;
        let cache = CacheSet::open(&cfg, "/tree")
            .unwrap_or_else(|e| panic!("cut at sync {k} (tear {tear}): recovery refused: {e}"));
        check_invariants(&cache);
        let files = w.open_all(&cache);
        for i in 0..FILES {
            // the size the mount reports: at least the acknowledged one, at most what a
            // later append made it
            let file = &files[i as usize];
            let backing = crate::sys::fstat_fd(w.fd(i)).unwrap().st_size as u64;
            let reported = cache
                .dirty_attr(file.id)
                .map_or(backing, |a| a.size.max(backing));
            let most = pending
                .iter()
                .filter(|(pi, _, _)| *pi == i)
                .map(|(_, off, data)| off + data.len() as u64)
                .max()
                .unwrap_or(0)
                .max(acked[i as usize].len() as u64);
            assert!(
                reported >= acked[i as usize].len() as u64 && reported <= most,
                "cut at sync {k} (tear {tear}): f{i} reports size {reported}, acknowledged {}, at most {most}",
                acked[i as usize].len()
            );
            let got = cache
                .read(file, w.fd(i), 0, reported as u32, 7)
                .unwrap_or_else(|e| panic!("cut at sync {k}: f{i} unreadable: {e}"))
                .data;
            assert_eq!(got.len() as u64, reported);
            let mut acked_i = acked[i as usize].clone();
            acked_i.resize(got.len(), 0);
            // every block: what the acknowledged writes left, or one unacknowledged write's
            // whole block (never half of one)
            for b in 0..got.len() / BLOCK as usize {
                let r = b * BLOCK as usize..(b + 1) * BLOCK as usize;
                if got[r.clone()] == acked_i[r.clone()] {
                    continue;
                }
                let later = pending.iter().any(|(pi, off, data)| {
                    let (off, end) = (*off as usize, *off as usize + data.len());
                    *pi == i
                        && off <= r.start
                        && r.end <= end
                        && data[r.start - off..r.end - off] == got[r.clone()]
                });
                assert!(
                    later,
                    "cut at sync {k} (tear {tear}): f{i} block {b} is neither the fsync'd data nor a later write (pristine: {}, pending {:?})",
                    pristine[i as usize].get(r.clone()) == Some(&got[r.clone()]),
                    pending.iter().map(|(i, o, d)| (*i, *o / BLOCK, d.len() as u64 / BLOCK)).collect::<Vec<_>>()
                );
            }
        }
        assert_eq!(
            stats::get(&cache.counters.checksum_errors),
            0,
            "cut at sync {k} (tear {tear}): a recovered key points at lost data"
        );
        drop(files);
        drop(cache);
    }
    eprintln!("writeback power cut: {points} sync points, {cuts} cut");
    assert!(cuts * 2 >= points, "only {cuts} of {points} runs were cut");
}
