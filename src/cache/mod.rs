//! The request path of the cache: hits, misses and fills, the one change protocol every
//! write goes through, coherence with the backing, persistence of keys, and GC. bcache's
//! `request.c` and `btree.c` roles.
//!
//! # Model
//!
//! A [`CacheSet`] joins the allocator ([`Allocator`]), the key index ([`Index`]), the file
//! identity table ([`identity::Identity`]) and a journal writer. A key maps a
//! block-aligned range of a backing file (by [`FileId`]) to a pointer `(bucket, gen,
//! sector)` plus one crc32c per block. Every holder of a file (each FUSE inode object,
//! each fill in flight) shares the one [`FileState`] of its id ([`CacheSet::file_state`]).
//!
//! Read (numbered as in docs/DESIGN.md, "read path"):
//! 1. once per revalidation interval (the attribute timeout), fstat the open descriptor
//!    and compare the validator: a change made outside the mount drops the file's extents
//!    and tells the caller to drop the kernel's pages;
//! 2. round the request out to blocks, clamped to the file's validated size;
//! 3. look up the keys; for each, pin its bucket at the key's gen (a stale gen is a
//!    miss: counted, key dropped), pread the blocks from the cache file, unpin, and
//!    check every block's crc (a mismatch is a miss: counted, key dropped);
//! 4. read every gap from the backing (plus readahead), reply;
//! 5. unless the process streams past the sequential cutoff (off by default), fill the
//!    gaps into the cache after the reply: `alloc_sectors` with the caller's PID as write
//!    point (a process streaming past `probation_after`: `alloc_sectors_probation`, its
//!    own open buckets at probation prio, see [`seq`]), write the data, then insert the key — only if no change raced with the miss (the
//!    file's change sequence is unchanged) — and queue the key for the journal.
//!
//! Change (docs/DESIGN.md, "change protocol"): every operation that changes a file's bytes,
//! size or times through the mount calls [`CacheSet::change`], which
//! 1. fstats the backing and, if it no longer matches the validator, drops the file's
//!    extents and marks its kernel pages stale (an outside change is never hidden by ours);
//! 2. bumps the change sequence and drops the keys the change touches, before the backing
//!    changes;
//! 3. runs the change on the backing;
//! 4. bumps the sequence again, drops the touched keys again (a fill that raced in is gone),
//!    and records the validator from a fresh fstat;
//! 5. hands back a fill ticket only when no other change overlapped this one, so the data
//!    it wrote may be cached (writethrough).
//!
//! Cache modes ([`CacheMode`], `-o cache_mode=`, switchable live with
//! [`CacheSet::set_cache_mode`]): every mode runs every change through the change protocol,
//! so the keys a change touches are dropped in all of them and a later switch back never
//! serves old bytes.
//! * writethrough: the backing first, then the written whole blocks are filled (step 5);
//! * writearound: the backing only; overlapping keys dropped, nothing filled from a write;
//!   reads still hit and fill;
//! * none: reads go to the backing (no hit, no fill); switched on a live mount the keys stay
//!   coherent as above. A mount that *starts* in none never opens the cache file (the
//!   daemon makes no [`CacheSet`]);
//! * writeback: writes go to the cache as dirty keys and reach the backing later
//!   ([`writeback`]: write path, fsync, the writeback thread, flush); every other change of
//!   a file with dirty data writes it back first (the FUSE layer calls
//!   [`CacheSet::flush_file_locked`] under the file's write lock before [`CacheSet::change`]).
//!   Leaving writeback ([`CacheSet::set_cache_mode`]) flushes first.
//!
//! # Invariants (numbers from the design brief)
//!
//! 1. A pointer is followed only while its bucket is pinned at the key's gen, and its
//!    bytes are served only when every block's crc matches.
//! 3. The journal writer fsyncs the cache file's data before it appends the keys that
//!    point at it.
//! 7. Extents are served only while the file's validator matches the backing (checked at
//!    open, on getattr and lookup, and on the read path once per interval); a change made
//!    elsewhere drops the file's extents and its kernel pages.
//! 8. A bucket cannot be reused while pinned, so a read never races with reuse; the
//!    pin fails instead and the piece is read from the backing (`cache_read_races`
//!    counts keys that went stale between lookup and pin).
//! * A fill is inserted only if the file's change sequence is the one it saw before it
//!   read (or wrote) the backing; a change bumps it both before and after the backing
//!   changes, so neither a racing read nor a racing write can leave old bytes cached.
//! * One poison signal ([`crate::poison`]): after any failed write or fsync of the cache
//!   file nothing is cached or served from it, and stats say why.
//!
//! # Locks
//!
//! Order: a file's write lock (`FileState::wlock`) → its writeback lock
//! (`FileState::wb_lock`; both: module [`writeback`]) → `changes` (read side, per change;
//! write side, moving GC swapping an extent and a GC pass) → a file's `FileState::seq`
//! mutex → the index's shard lock → the journal queue's mutex. The identity table's mutex
//! is taken alone (it queues its slot record under it). The allocator's state lock is taken
//! by its own calls only, never while holding a file's lock across I/O. Held across I/O:
//! the journal writer's own lock; a file's writeback lock across its writeback, its write
//! lock across a writeback write; its seq lock across the backing's metadata calls of a
//! writeback write and, rarely, a conflict copy.
//!
//! # What may block
//!
//! `read` does synchronous I/O on the cache file and the backing; `change` runs the
//! caller's backing I/O with no lock held; `fill` does cache-file I/O; nothing waits for
//! a free bucket on the request path (a fill without a free bucket is skipped). The
//! journal and GC threads block on I/O and their condvars.

mod gc;
pub mod identity;
pub mod journal;
mod provision;
pub mod seq;
pub mod stats;
pub mod writeback;
pub use writeback::ChangeGuard;

use std::io;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use parking_lot::Mutex;

use crate::alloc::{Allocator, BucketPtr, KeyPos};
use crate::device::format::{CacheMode, Replacement, SECTOR};
use crate::error::{expect_ok, Error, Result};
use crate::index::{Extent, FileId, Index, Validator};
use crate::journal::format::Record;
use identity::Identity;
use journal::JournalWriter;
use provision::{lock_cache_file, prepare_cache_file};
use seq::{Admission, SequentialCutoff};
use stats::{add, bump, Counters, Windows};

/// What `-o cache=...` and friends ask for.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheConfig {
    pub path: PathBuf,
    /// Size for a new cache file (required when the file does not exist).
    pub size: Option<u64>,
    pub replacement: Option<Replacement>,
    pub discard: Option<bool>,
    /// Bytes a process may stream sequentially before it bypasses (0: never, the default).
    pub sequential_cutoff: u64,
    /// Bytes a process may stream sequentially before its fills go on probation (0: never;
    /// then every fill enters at the normal prio, plain LRU).
    pub probation_after: u64,
    /// Extra bytes read from the backing after a miss, and cached.
    pub readahead: u64,
    /// Reformat a cache file that serves another backing tree (or is unreadable).
    pub reformat: bool,
    /// Most bytes `warm --pin` may pin (None: a quarter of the cache file).
    pub pin_limit: Option<u64>,
    /// How often the read path re-checks an open file against the backing (the attribute
    /// timeout): a change made elsewhere is seen within this time, also by descriptors
    /// opened before it.
    pub revalidate: Duration,
    /// The write mode this mount starts in (see "Cache modes" in the module header).
    /// Writeback is refused ([`CacheSet::set_cache_mode`]); none is normally not opened at
    /// all (the daemon leaves the cache file untouched).
    pub mode: CacheMode,
    /// A clean unmount writes the dirty data back first (`-o noflush_on_unmount`: false).
    pub flush_on_unmount: bool,
    /// Mount even when replay finds dirty keys it cannot write back (no file handle, a
    /// stale gen, an unknown slot), dropping them: `-o drop_dirty`, loud.
    pub drop_dirty: bool,
    /// `writeback_delay`, `writeback_percent` (see [`writeback`]).
    pub writeback_delay: Duration,
    pub writeback_percent: u8,
}

impl CacheConfig {
    pub fn new(path: PathBuf) -> CacheConfig {
        CacheConfig {
            path,
            size: None,
            replacement: None,
            discard: None,
            sequential_cutoff: 0,
            probation_after: DEFAULT_PROBATION_AFTER,
            readahead: 0,
            reformat: false,
            pin_limit: None,
            revalidate: Duration::from_secs(1),
            mode: CacheMode::Writethrough,
            flush_on_unmount: true,
            drop_dirty: false,
            writeback_delay: writeback::DEFAULT_WRITEBACK_DELAY,
            writeback_percent: writeback::DEFAULT_WRITEBACK_PERCENT,
        }
    }
}

/// Default `probation_after`: bcache's old `sequential_cutoff` default, now the point where a
/// stream's fills go on probation instead of bypassing.
pub const DEFAULT_PROBATION_AFTER: u64 = 4 << 20;

/// Largest readahead a mount may ask for (larger is refused at option parsing).
pub const MAX_READAHEAD: u64 = 64 << 20;

type Registry = DashMap<FileId, Weak<FileState>>;

/// The change sequence of one file (see "Change" in the module header). Values come from
/// one process-wide counter, so a file whose state was dropped and made again (FORGET, then
/// a new lookup) can never repeat a value a fill in flight still holds.
#[derive(Debug)]
struct ChangeSeq {
    seq: u64,
}

static CHANGE_SEQ: AtomicU64 = AtomicU64::new(1);

impl ChangeSeq {
    fn start() -> ChangeSeq {
        ChangeSeq {
            seq: CHANGE_SEQ.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// Moves to a value no fill can hold yet; returns it.
    fn bump(&mut self) -> u64 {
        self.seq = CHANGE_SEQ.fetch_add(1, Ordering::Relaxed);
        self.seq
    }
}

/// The cache's state for one backing file, shared by every holder of its id.
#[derive(Debug)]
pub struct FileState {
    pub id: FileId,
    /// Bumped before and after every change and by every invalidation: a fill whose
    /// miss saw an older value must not insert its (possibly old) data.
    seq: Mutex<ChangeSeq>,
    /// When the read path last compared the validator (ns since the cache set opened).
    checked_ns: AtomicU64,
    /// An outside change was seen since the kernel's pages were last dropped: the next
    /// open must not keep them (FOPEN_KEEP_CACHE).
    pages_stale: AtomicBool,
    /// Writeback: held by a dirty write (edge blocks are read-modify-written), by the
    /// writeback of this file and by every other change of it (module `writeback`).
    wlock: Mutex<()>,
    /// Held by the writeback of this file (its backing writes must not interleave with a
    /// second writeback's, nor with a change: a late pwrite would undo a truncate) and by
    /// every change but a writeback write. Taken after `wlock`.
    wb_lock: Mutex<()>,
    /// A write grew the backing (or wrote through it) since the last writeback-mode fsync.
    backing_unsynced: AtomicBool,
    /// Writeback is writing this file's dirty data to the backing now: the attributes it
    /// changes are ours, not an outside change (as for a change in flight, whose step 4
    /// records what the backing says after it).
    writing_back: AtomicBool,
    registry: Weak<Registry>,
}

impl Drop for FileState {
    fn drop(&mut self) {
        if let Some(map) = self.registry.upgrade() {
            map.remove_if(&self.id, |_, w| w.strong_count() == 0);
        }
    }
}

/// What a change touches, for the keys it drops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Touch {
    /// Bytes `[offset, offset + len)` (write, copy_file_range, fallocate of a range).
    Range { offset: u64, len: u64 },
    /// Everything from `offset` on (truncate incl. an O_TRUNC open's size-0 SETATTR,
    /// collapse and insert range).
    From(u64),
    /// No bytes: times, mode or owner only (the validator still changes).
    Attributes,
    /// An append the kernel placed at `offset` from a size it may have cached before an
    /// outside growth: everything from the smaller of `offset` and the backing's size before
    /// the write (the change's own first fstat says which).
    Append { offset: u64 },
}

/// What [`CacheSet::revalidate_detail`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revalidated {
    Unchanged,
    /// Changed outside the mount: the file's extents were dropped.
    Changed {
        size_or_mtime_moved: bool,
    },
}

/// What [`CacheSet::change`] found and allows.
#[derive(Debug, Clone, Copy, Default)]
pub struct Changed {
    /// The backing had changed underneath before this change: the kernel's pages for the
    /// file must be dropped.
    pub outside_change: bool,
    /// Set when no other change overlapped this one: the data it wrote may be cached.
    pub fill_ticket: Option<u64>,
}

/// Data of a miss to be written into the cache after the reply.
pub struct Fill {
    /// The file's change sequence before the backing was read (or, for a write, its fill
    /// ticket): the key is inserted only while the sequence still has this value.
    seen_seq: u64,
    pid: u32,
    /// A streaming fill: into probation buckets.
    probation: bool,
    /// Block-aligned offset and block-padded data.
    chunks: Vec<(u64, Vec<u8>)>,
    /// Counts it in `fills_pending` from before the reply until it is done or dropped.
    _pending: PendingFill,
}

/// One fill not yet done (`stats`: `fills_pending`), so a test can wait for the fills of
/// the replies it has seen instead of sleeping.
struct PendingFill(Arc<Counters>);

impl PendingFill {
    fn new(counters: &Arc<Counters>) -> PendingFill {
        counters.fills_pending.fetch_add(1, Ordering::Relaxed);
        PendingFill(counters.clone())
    }
}

impl Drop for PendingFill {
    fn drop(&mut self) {
        self.0.fills_pending.fetch_sub(1, Ordering::Relaxed);
    }
}

pub struct ReadResult {
    /// Exactly the requested bytes that exist (short at end of file).
    pub data: Vec<u8>,
    pub fill: Option<Fill>,
    /// The read path found the backing changed underneath: drop the kernel's pages.
    pub outside_change: bool,
}

/// What [`CacheSet::read_into`] did: the bytes are `buf[data]`.
pub struct ReadInto {
    pub data: std::ops::Range<usize>,
    pub fill: Option<Fill>,
    /// The read path found the backing changed underneath: drop the kernel's pages.
    pub outside_change: bool,
}

/// Makes `buf` at least `len` long; it never shrinks, and what it holds is not zeroed again
/// (only a part that grows is zeroed, once): the read path overwrites every byte it serves.
fn grow_to(buf: &mut Vec<u8>, len: usize) {
    if buf.len() < len {
        buf.resize(len, 0);
    }
}

pub struct CacheSet {
    alloc: Arc<Allocator>,
    index: Arc<Index>,
    identity: Arc<Identity>,
    journal: Arc<JournalWriter>,
    files: Arc<Registry>,
    block: u64,
    seq: SequentialCutoff,
    /// Changeable at run time ([`CacheSet::set_readahead`]).
    readahead: AtomicU64,
    /// Changeable at run time ([`CacheSet::set_revalidate_interval`]).
    revalidate_ns: AtomicU64,
    /// Most bytes pinned (`warm --pin`); changeable at run time.
    pin_limit: AtomicU64,
    epoch: Instant,
    pub counters: Arc<Counters>,
    pub windows: Arc<Windows>,
    shutdown: Arc<AtomicBool>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    path: PathBuf,
    /// Taken (read side) by every change that drops keys, and (write side) by moving GC
    /// while it swaps an extent, so their journal records cannot be reordered.
    changes: Arc<parking_lot::RwLock<()>>,
    /// The current [`CacheMode`] (as its `u8`), switchable on a live mount.
    mode: AtomicU8,
    /// Holds the cache file's exclusive flock while open.
    _lock: Option<std::fs::File>,
    /// The metadata checkpoint replay found (blob, trusted), until the metadata cache
    /// takes it.
    meta_checkpoint: Mutex<Option<(Vec<u8>, bool)>>,
    /// Makes the metadata checkpoints (set by the FUSE layer): the periodic snapshots and
    /// the one at a clean unmount. Its lock also orders a snapshot in flight before the
    /// unmount's checkpoint, which must be the newest entry.
    meta_saver: Mutex<Option<MetaSaver>>,
    /// Writeback's settings, figures and thread state.
    wb: writeback::Writeback,
    wb_thread: Mutex<Option<JoinHandle<()>>>,
    /// Debug: every read request, one line each, when `BCACHEFS_LITE_TRACE=FILE` is set at mount
    /// (the trace simulator's input, bench/sim.rs).
    trace: Option<Mutex<std::io::BufWriter<std::fs::File>>>,
}

/// Returns the metadata cache's checkpoint blob (see `meta::format`). `clean`: for the
/// clean unmount, after the final index checkpoint (the saver syncs the backing first);
/// otherwise a periodic snapshot, None when nothing changed since the last one.
pub type MetaSaver = Box<dyn Fn(bool) -> Option<Vec<u8>> + Send>;

fn validator_of(st: &libc::stat) -> Validator {
    Validator {
        size: st.st_size as u64,
        mtime_ns: st.st_mtime * 1_000_000_000 + st.st_mtime_nsec,
        ctime_ns: st.st_ctime * 1_000_000_000 + st.st_ctime_nsec,
    }
}

/// `BCACHEFS_LITE_TRACE=FILE`: append a line `FILE_ID OFFSET LEN PID` per read request (a debug aid for
/// recording traces; see bench/README.md). Unset: no trace.
fn open_trace() -> Option<Mutex<std::io::BufWriter<std::fs::File>>> {
    let path = std::env::var_os("BCACHEFS_LITE_TRACE")?;
    use std::os::unix::fs::OpenOptionsExt;
    // 0600: the trace names files and offsets the backing's permissions may guard
    match std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&path)
    {
        Ok(f) => Some(Mutex::new(std::io::BufWriter::new(f))),
        Err(e) => {
            tracing::warn!(
                "BCACHEFS_LITE_TRACE {}: {e}; not tracing",
                path.to_string_lossy()
            );
            None
        }
    }
}

fn round_down(v: u64, b: u64) -> u64 {
    v / b * b
}

fn round_up(v: u64, b: u64) -> u64 {
    v.div_ceil(b) * b
}

impl CacheSet {
    /// Opens (or formats) the cache file for the backing tree `backing_id` and replays
    /// its journal. Refuses a file that serves another tree unless `reformat`.
    pub fn open(cfg: &CacheConfig, backing_id: &str) -> Result<CacheSet> {
        check_mode(cfg.mode)?;
        // One user at a time: a daemon still writing its last checkpoint after umount
        // holds the lock, and the next mount waits for it.
        let exists = cfg.path.exists();
        let mut lock = if exists {
            Some(lock_cache_file(&cfg.path)?)
        } else {
            None
        };
        prepare_cache_file(cfg, backing_id)?;
        if lock.is_none() {
            lock = Some(lock_cache_file(&cfg.path)?);
        }
        let alloc = Allocator::open(&cfg.path)?;
        Self::open_allocator(cfg, alloc, lock)
    }

    /// Opens the cache set on `dev` instead of the file at `cfg.path` (which must exist
    /// and be formatted): tests put a fault-injecting device under the whole set (the
    /// journal writer, index and gens checkpoints, fills, reads and discards all go
    /// through it). Takes no lock on the file.
    #[cfg(any(test, feature = "fault-injection"))]
    pub fn open_device(
        cfg: &CacheConfig,
        dev: Arc<dyn crate::device::CacheDevice>,
    ) -> Result<CacheSet> {
        check_mode(cfg.mode)?;
        let alloc = Allocator::open_device(dev, crate::alloc::OpenOptions::default())?;
        Self::open_allocator(cfg, alloc, None)
    }

    fn open_allocator(
        cfg: &CacheConfig,
        alloc: Allocator,
        lock: Option<std::fs::File>,
    ) -> Result<CacheSet> {
        let alloc = Arc::new(alloc);
        let counters = Arc::new(Counters::default());
        let replayed = journal::replay(&alloc, &counters)?;
        // Dirty keys replay could not trust, or cannot write back (no file handle): refused
        // before the first GC (the allocator has invalidated nothing yet), unless the mount
        // says, loudly, to drop them.
        let index = Arc::new(replayed.index);
        let dirty = index.dirty_files();
        let orphans: Vec<_> = dirty
            .iter()
            .filter(|(id, _)| !replayed.handles.contains_key(id))
            .collect();
        let orphan_bytes: u64 = orphans.iter().map(|(_, b)| b).sum();
        if (replayed.untrusted_dirty > 0 || orphan_bytes > 0) && !cfg.drop_dirty {
            alloc.close();
            return Err(Error::Config(format!(
                "cache file {} holds dirty data (not yet written back) that cannot be written \
                 back: {} bytes under keys replay cannot trust, {} bytes of {} files without a \
                 file handle; refusing to mount. Mount with -o drop_dirty to drop them (that \
                 data is lost)",
                cfg.path.display(),
                replayed.untrusted_dirty,
                orphan_bytes,
                orphans.len()
            )));
        }
        if replayed.untrusted_dirty > 0 || orphan_bytes > 0 {
            tracing::error!(
                untrusted = replayed.untrusted_dirty,
                orphaned = orphan_bytes,
                "drop_dirty: dropping dirty data that cannot be written back"
            );
            for (id, _) in &orphans {
                index.remove_file(*id);
            }
        }
        if !dirty.is_empty() {
            tracing::info!(
                files = dirty.len(),
                bytes = dirty.iter().map(|(_, b)| b).sum::<u64>(),
                "replayed dirty data; writing it back"
            );
        }
        let identity = Arc::new(replayed.identity);
        let journal = Arc::new(JournalWriter::new(
            alloc.clone(),
            index.clone(),
            identity.clone(),
            counters.clone(),
            replayed.checkpoint,
        ));
        journal.keep_meta_checkpoint(replayed.meta_location);
        {
            // the dirty files that kept their data (those without a handle were refused or
            // dropped above) keep their handle and the size and mtime they reported
            let (mut handles, mut attrs) = (journal.handles.lock(), journal.attrs.lock());
            for (id, _) in &dirty {
                if let Some(h) = replayed.handles.get(id) {
                    handles.insert(*id, h.clone());
                    if let Some(a) = replayed.attrs.get(id) {
                        attrs.insert(*id, *a);
                    }
                }
            }
        }
        // First GC: marks every bucket from the index; allocation starts after it.
        let changes = Arc::new(parking_lot::RwLock::new(()));
        gc::run(&alloc, &index, &journal, &counters, &changes);
        journal.checkpoint_now()?;
        let wb = writeback::Writeback::default();
        wb.flush_on_close
            .store(cfg.flush_on_unmount, Ordering::Relaxed);
        wb.delay_ms.store(
            cfg.writeback_delay.as_millis().min(u128::from(u64::MAX)) as u64,
            Ordering::Relaxed,
        );
        wb.percent
            .store(cfg.writeback_percent.min(100), Ordering::Relaxed);
        wb.recovered.lock().extend(dirty.iter().map(|(id, _)| *id));
        let pin_limit = cfg
            .pin_limit
            .unwrap_or_else(|| alloc.superblock().file_size().unwrap_or(0) / 4);
        let set = CacheSet {
            block: u64::from(alloc.superblock().block_size),
            alloc,
            index,
            identity,
            journal,
            files: Arc::new(DashMap::new()),
            seq: SequentialCutoff::new(cfg.sequential_cutoff, cfg.probation_after),
            pin_limit: AtomicU64::new(pin_limit),
            readahead: AtomicU64::new(cfg.readahead.min(MAX_READAHEAD)),
            revalidate_ns: AtomicU64::new(
                cfg.revalidate.as_nanos().min(u128::from(u64::MAX)) as u64
            ),
            epoch: Instant::now(),
            counters,
            windows: Arc::new(Windows::default()),
            shutdown: Arc::new(AtomicBool::new(false)),
            threads: Mutex::new(Vec::new()),
            path: cfg.path.clone(),
            changes,
            mode: AtomicU8::new(cfg.mode as u8),
            _lock: lock,
            meta_checkpoint: Mutex::new(replayed.meta),
            meta_saver: Mutex::new(None),
            trace: open_trace(),
            wb,
            wb_thread: Mutex::new(None),
        };
        set.start_threads();
        Ok(set)
    }

    fn start_threads(&self) {
        let mut threads = self.threads.lock();
        let j = self.journal.clone();
        let stop = self.shutdown.clone();
        threads.push(
            std::thread::Builder::new()
                .name("bcl-journal".into())
                .spawn(move || j.run(&stop))
                .expect("spawn journal thread"),
        );
        let (alloc, index, journal) =
            (self.alloc.clone(), self.index.clone(), self.journal.clone());
        let (counters, windows, stop) = (
            self.counters.clone(),
            self.windows.clone(),
            self.shutdown.clone(),
        );
        let changes = self.changes.clone();
        threads.push(
            std::thread::Builder::new()
                .name("bcl-gc".into())
                .spawn(move || {
                    gc::thread(
                        &alloc, &index, &journal, &counters, &windows, &changes, &stop,
                    )
                })
                .expect("spawn gc thread"),
        );
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn alloc(&self) -> &Allocator {
        &self.alloc
    }

    pub fn index(&self) -> &Index {
        &self.index
    }

    pub fn block_size(&self) -> u64 {
        self.block
    }

    pub fn sequential_cutoff(&self) -> u64 {
        self.seq.cutoff()
    }

    // ---- cache modes (issue 13) -------------------------------------------------------

    /// The write mode in force now.
    pub fn cache_mode(&self) -> CacheMode {
        CacheMode::from_u8(self.mode.load(Ordering::Acquire)).unwrap_or(CacheMode::Writethrough)
    }

    /// Switches the write mode of the live mount (what `bcachefs-lite set MOUNTPOINT
    /// cache_mode=...` calls); returns the mode it replaced. Leaving writeback flushes
    /// first, as bcache does: new writes go writethrough at once, then every dirty byte is
    /// written back, then the new mode takes effect (a flush that fails puts writeback back
    /// and returns the error; nothing is dropped). Every other switch takes effect with the
    /// next request: writes in flight finish under the mode they started in, and a fill
    /// they queue is still checked against the file's change sequence.
    pub fn set_cache_mode(&self, mode: CacheMode) -> Result<CacheMode> {
        check_mode(mode)?;
        if self.cache_mode() == CacheMode::Writeback && mode != CacheMode::Writeback {
            self.mode
                .store(CacheMode::Writethrough as u8, Ordering::Release);
            if let Err(e) = self.flush_all(Duration::from_secs(600)) {
                self.mode
                    .store(CacheMode::Writeback as u8, Ordering::Release);
                return Err(Error::Config(format!(
                    "leaving writeback needs a flush, which failed: {e}; still in writeback"
                )));
            }
            self.mode
                .store(CacheMode::Writeback as u8, Ordering::Release);
        }
        let old = self.mode.swap(mode as u8, Ordering::AcqRel);
        let old = CacheMode::from_u8(old).unwrap_or(CacheMode::Writethrough);
        if old != mode {
            tracing::info!(
                "cache {}: cache_mode {} -> {}",
                self.path.display(),
                old.name(),
                mode.name()
            );
        }
        Ok(old)
    }

    /// Reads are served from and filled into the cache (every mode but none).
    fn caches_reads(&self) -> bool {
        self.cache_mode() != CacheMode::None && self.is_active()
    }

    /// The stream length after which fills go on probation (0 = never).
    pub fn probation_after(&self) -> u64 {
        self.seq.probation_after()
    }

    /// Runtime knob (`set sequential_cutoff`): bcache's bypass threshold, 0 = off.
    pub fn set_sequential_cutoff(&self, bytes: u64) {
        self.seq.set_cutoff(bytes);
    }

    /// Runtime knob (`set probation_after`): the stream length after which fills go on
    /// probation, 0 = off (plain LRU).
    pub fn set_probation_after(&self, bytes: u64) {
        self.seq.set_probation_after(bytes);
    }

    pub fn readahead(&self) -> u64 {
        self.readahead.load(Ordering::Relaxed)
    }

    /// Changes the readahead of the next misses (at most [`MAX_READAHEAD`]).
    pub fn set_readahead(&self, bytes: u64) {
        self.readahead
            .store(bytes.min(MAX_READAHEAD), Ordering::Relaxed);
    }

    /// How often the read path re-checks an open file against the backing.
    pub fn revalidate_interval(&self) -> Duration {
        Duration::from_nanos(self.revalidate_ns.load(Ordering::Relaxed))
    }

    /// Changes the read path's re-check interval (follows the attribute timeout).
    pub fn set_revalidate_interval(&self, d: Duration) {
        self.revalidate_ns.store(
            d.as_nanos().min(u128::from(u64::MAX)) as u64,
            Ordering::Relaxed,
        );
    }

    /// True while the cache file works; false after a failure (mode none).
    pub fn is_active(&self) -> bool {
        !self.alloc.is_poisoned()
    }

    /// Why caching stopped, once it has.
    pub fn failure(&self) -> Option<String> {
        self.alloc.poison().reason()
    }

    fn fail(&self, what: &str, e: &dyn std::fmt::Display) {
        bump(&self.counters.io_errors);
        if !self.alloc.is_poisoned() {
            tracing::error!(
                "cache file {}: {what} failed: {e}; caching is off, serving from the backing",
                self.path.display()
            );
        }
        self.alloc.poison_with(&format!("{what}: {e}"));
    }

    /// The one [`FileState`] of the backing inode `st` (held open by `fd`), shared with every
    /// other holder of the same file id. `None`: the file cannot be cached (see
    /// [`identity`]); it is served from the backing.
    pub fn file_state(&self, fd: RawFd, st: &libc::stat) -> Option<Arc<FileState>> {
        let journal = &self.journal;
        let Some(id) = self.identity.file_id(fd, st, |r| journal.queue(r)) else {
            bump(&self.counters.uncacheable_files);
            return None;
        };
        Some(self.state_of(id))
    }

    /// The metadata checkpoint found at mount (blob, trusted: written at a clean unmount
    /// with nothing after it); once.
    pub fn take_meta_checkpoint(&self) -> Option<(Vec<u8>, bool)> {
        self.meta_checkpoint.lock().take()
    }

    /// What makes the metadata checkpoints.
    pub fn set_meta_saver(&self, saver: MetaSaver) {
        *self.meta_saver.lock() = Some(saver);
    }

    /// Whether the cache set is closing (a clean unmount is under way).
    pub fn is_closing(&self) -> bool {
        self.shutdown.load(Ordering::Acquire)
    }

    /// A periodic snapshot of the metadata cache (not trusted after a crash: its entries
    /// start expired and are checked with one stat each, which still saves the listings);
    /// true when one was written. Nothing once the cache set is closing.
    pub fn snapshot_meta(&self) -> bool {
        let saver = self.meta_saver.lock();
        if self.shutdown.load(Ordering::Acquire) || !self.is_active() {
            return false;
        }
        let Some(blob) = saver.as_ref().and_then(|f| f(false)) else {
            return false;
        };
        match self.journal.write_meta_checkpoint(&blob) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!("metadata snapshot not written: {e}");
                false
            }
        }
    }

    /// As [`CacheSet::file_state`] without a descriptor, when that needs no syscall (the
    /// file's filesystem has a live slot); the outer None: it would need one.
    pub fn file_state_known(&self, st: &libc::stat) -> Option<Option<Arc<FileState>>> {
        match self.identity.file_id_known(st)? {
            Some(id) => Some(Some(self.state_of(id))),
            None => {
                bump(&self.counters.uncacheable_files);
                Some(None)
            }
        }
    }

    /// The shared state of `id`, created on first use.
    pub fn state_of(&self, id: FileId) -> Arc<FileState> {
        use dashmap::mapref::entry::Entry;
        match self.files.entry(id) {
            Entry::Occupied(mut e) => {
                if let Some(live) = e.get().upgrade() {
                    return live;
                }
                let fresh = self.new_state(id);
                e.insert(Arc::downgrade(&fresh));
                fresh
            }
            Entry::Vacant(e) => {
                let fresh = self.new_state(id);
                e.insert(Arc::downgrade(&fresh));
                fresh
            }
        }
    }

    fn new_state(&self, id: FileId) -> Arc<FileState> {
        Arc::new(FileState {
            id,
            seq: Mutex::new(ChangeSeq::start()),
            checked_ns: AtomicU64::new(self.now_ns()),
            pages_stale: AtomicBool::new(false),
            wlock: Mutex::new(()),
            wb_lock: Mutex::new(()),
            backing_unsynced: AtomicBool::new(false),
            writing_back: AtomicBool::new(false),
            registry: Arc::downgrade(&self.files),
        })
    }

    /// Files whose state is held right now (stats; bounded by the kernel's inodes).
    pub fn live_files(&self) -> usize {
        self.files.len()
    }

    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos().min(u128::from(u64::MAX)) as u64
    }

    /// Open of a regular file: compares the validator with the backing's attributes
    /// `st`. True when the kernel may keep the pages it has (FOPEN_KEEP_CACHE): the file is
    /// unchanged and no outside change was seen since its pages were last dropped. Any
    /// other answer drops the file's extents (if it changed) and clears the stale mark,
    /// because an open without KEEP_CACHE makes the kernel drop its pages.
    pub fn open_check(&self, file: &FileState, st: &libc::stat) -> bool {
        let unchanged = self.check_validator(file, st);
        let stale = file.pages_stale.swap(false, Ordering::AcqRel);
        file.checked_ns.store(self.now_ns(), Ordering::Relaxed);
        unchanged && !stale
    }

    /// [`CacheSet::open_check`] for a file the kernel opened without asking (`no_open`: it
    /// keeps its pages whatever the daemon would answer): true when those pages must be
    /// dropped, because the file changed since its validator was recorded or an outside
    /// change was seen since its pages were last dropped. A file without a validator yet
    /// (its first read through the mount) has nothing to drop.
    pub fn implicit_open_check(&self, file: &FileState, st: &libc::stat) -> bool {
        let known = self.index.validator(file.id).is_some();
        let stale = file.pages_stale.load(Ordering::Acquire);
        !self.open_check(file, st) && (known || stale)
    }

    /// Compares the backing's current attributes with the file's validator. Unchanged:
    /// true. Changed or unknown: drops the file's extents, records the new validator, and
    /// returns false.
    fn check_validator(&self, file: &FileState, st: &libc::stat) -> bool {
        let now = validator_of(st);
        match self.index.validator(file.id) {
            Some(v) if v == now => true,
            _ => {
                let _changes = self.changes.read();
                let mut seq = file.seq.lock();
                // again under the lock: a change of ours may have recorded a newer validator
                // since `st` was taken; a stat older than it (its ctime is) is no outside
                // change, only late
                let known = self.index.validator(file.id);
                if known.is_some_and(|v| v == now || v.ctime_ns > now.ctime_ns)
                    || file.writing_back.load(Ordering::Acquire)
                {
                    return true;
                }
                seq.bump();
                if known.is_some() {
                    bump(&self.counters.invalidations);
                    if self.index.dirty_bytes(file.id) > 0 && self.dirty_owner_gone(file) {
                        // the inode the dirty data belonged to is deleted and its number
                        // reused: that data has nowhere to go, and is not this file's
                        self.drop_dirty_of_gone_locked(file);
                    } else if self.index.dirty_bytes(file.id) > 0
                        && known.is_some_and(|v| v.size != now.size || v.mtime_ns != now.mtime_ns)
                    {
                        // a data change (a ctime alone moves with a rename, link or chmod)
                        self.conflict(file);
                    }
                    self.drop_all_locked(file);
                    file.pages_stale.store(true, Ordering::Release);
                }
                self.set_validator_locked(file.id, now);
                false
            }
        }
    }

    /// Fresh attributes `st` of a file reached us (getattr after the TTL, a lookup): when the
    /// file has a validator and the backing no longer matches it, drops the file's extents,
    /// records the new validator, marks its kernel pages stale and returns true (the caller
    /// drops the kernel's pages of open descriptors). Files never opened through the cache
    /// are left alone.
    pub fn revalidate(&self, file: &FileState, st: &libc::stat) -> bool {
        self.revalidate_detail(file, st) != Revalidated::Unchanged
    }

    /// [`CacheSet::revalidate`], saying whether the size or mtime moved (then attributes
    /// in a reply make the kernel drop its pages itself, `FUSE_AUTO_INVAL_DATA`) or only
    /// the ctime (a rewrite that kept the mtime: only an `inval_inode` drops them).
    pub fn revalidate_detail(&self, file: &FileState, st: &libc::stat) -> Revalidated {
        file.checked_ns.store(self.now_ns(), Ordering::Relaxed);
        let now = validator_of(st);
        match self.index.validator(file.id) {
            Some(v) if v != now => {
                let moved = v.size != now.size || v.mtime_ns != now.mtime_ns;
                if self.check_validator(file, st) {
                    Revalidated::Unchanged
                } else {
                    Revalidated::Changed {
                        size_or_mtime_moved: moved,
                    }
                }
            }
            _ => Revalidated::Unchanged,
        }
    }

    /// True when `file` has a validator (its data is or was cached).
    pub fn has_validator(&self, file: &FileState) -> bool {
        self.index.validator(file.id).is_some()
    }

    /// A rename or link through the mount moved `file`'s ctime and nothing else (`st`, its
    /// stat after it): the validator takes the new ctime, so the next check does not take our
    /// own rename for an outside change and drop the file's cached data (git renames every
    /// index and ref it writes over the old one: after a remount `.git/index` was read from
    /// the backing each time). Size or mtime moved too: left to the next check.
    pub fn ctime_moved_by_us(&self, file: &FileState, st: &libc::stat) {
        let now = validator_of(st);
        let _changes = self.changes.read();
        let _seq = file.seq.lock();
        if let Some(v) = self.index.validator(file.id) {
            if v.size == now.size && v.mtime_ns == now.mtime_ns && v.ctime_ns < now.ctime_ns {
                self.set_validator_locked(file.id, now);
            }
        }
    }

    fn set_validator_locked(&self, id: FileId, v: Validator) {
        self.index.set_validator(id, v);
        self.journal.queue(Record::SetValidator {
            file: id,
            size: v.size,
            mtime_ns: v.mtime_ns,
            ctime_ns: v.ctime_ns,
        });
    }

    /// With the file's seq lock held: forget every clean extent and the validator. Dirty
    /// extents are never dropped here (writeback): with any, only the clean ranges go, one
    /// `KeyDelete` each (a whole-file delete replayed would drop the dirty keys too), and
    /// the validator stays for the caller to replace.
    fn drop_all_locked(&self, file: &FileState) {
        if self.index.dirty_bytes(file.id) == 0 {
            self.index.remove_file(file.id);
            self.journal.queue(Record::KeyDelete {
                file: file.id,
                offset: 0,
                len: u64::MAX,
            });
            return;
        }
        for e in self.index.remove_clean(file.id) {
            self.journal.queue(Record::KeyDelete {
                file: file.id,
                offset: e.offset,
                len: e.len,
            });
        }
    }

    /// With the file's seq lock held: drop the keys `touch` covers.
    fn drop_touched_locked(&self, file: &FileState, touch: Touch) {
        match touch {
            Touch::Range { offset, len } => {
                if len > 0 && !self.index.remove_range(file.id, offset, len).is_empty() {
                    self.journal.queue(Record::KeyDelete {
                        file: file.id,
                        offset,
                        len,
                    });
                }
            }
            Touch::From(offset) | Touch::Append { offset } => {
                if !self.index.truncate(file.id, offset).is_empty() {
                    self.journal.queue(Record::KeyDelete {
                        file: file.id,
                        offset,
                        len: u64::MAX,
                    });
                }
            }
            Touch::Attributes => {}
        }
    }

    /// The change protocol (module header, "Change"): every change of a file's bytes, size
    /// or times through the mount runs `apply` (the backing call) through here. `fd` is a
    /// descriptor of the backing file, to fstat before and after.
    pub fn change<T>(
        &self,
        file: &FileState,
        fd: RawFd,
        touch: Touch,
        apply: impl FnOnce() -> io::Result<T>,
    ) -> (io::Result<T>, Changed) {
        let mut changed = Changed::default();
        // 1. an outside change is dropped before ours could hide it
        let before = crate::sys::fstat_fd(fd).ok();
        if let Some(st) = &before {
            changed.outside_change = self.revalidate(file, st);
        }
        let touch = match touch {
            Touch::Append { offset } => {
                Touch::From(before.map_or(0, |st| (st.st_size as u64).min(offset)))
            }
            t => t,
        };
        // 2. drop the touched keys before the backing changes
        let mine = {
            let _changes = self.changes.read();
            let mut seq = file.seq.lock();
            let mine = seq.bump();
            self.drop_touched_locked(file, touch);
            mine
        };
        // 3. the backing
        let result = apply();
        // 4. and again after it; the validator from what the backing says now
        let after = crate::sys::fstat_fd(fd);
        let _changes = self.changes.read();
        let mut seq = file.seq.lock();
        let alone = seq.seq == mine;
        seq.bump();
        self.drop_touched_locked(file, touch);
        match after {
            Ok(st) => self.set_validator_locked(file.id, validator_of(&st)),
            Err(_) => self.drop_all_locked(file),
        }
        // 5. a fill only for a change nobody overlapped
        if alone && result.is_ok() {
            changed.fill_ticket = Some(seq.seq);
        }
        (result, changed)
    }

    /// Writethrough: `data` reached the backing at `offset` in a change that handed out
    /// `ticket`. Returns the whole blocks it covers as a fill for after the reply (partial
    /// blocks at its edges stay uncached). A process streaming writes past the sequential
    /// cutoff is not cached, as for reads. In writearound and none nothing is filled from a
    /// write (the change protocol already dropped the keys it overlapped).
    pub fn write_fill(
        &self,
        file: &FileState,
        ticket: u64,
        offset: u64,
        data: &[u8],
        pid: u32,
    ) -> Option<Fill> {
        let len = data.len() as u64;
        let (a, b) = (
            round_up(offset, self.block),
            round_down(offset + len, self.block),
        );
        let fills = matches!(
            self.cache_mode(),
            CacheMode::Writethrough | CacheMode::Writeback
        );
        if b <= a || !self.is_active() || !fills {
            // writearound and none: the data went to the backing only
            return None;
        }
        let admission = self.seq.admit(pid, file.id, offset, len);
        if admission == Admission::Bypass {
            add(&self.counters.bypassed, len);
            return None;
        }
        let chunk = data[(a - offset) as usize..(b - offset) as usize].to_vec();
        Some(Fill {
            seen_seq: ticket,
            pid,
            probation: admission == Admission::Probation,
            chunks: vec![(a, chunk)],
            _pending: PendingFill::new(&self.counters),
        })
    }

    /// Read path step 1: at most once per interval, compare the open descriptor's
    /// attributes with the validator. True when the backing changed underneath.
    fn revalidate_on_read(&self, file: &FileState, backing_fd: RawFd) -> bool {
        let now = self.now_ns();
        let last = file.checked_ns.load(Ordering::Relaxed);
        if now.saturating_sub(last) < self.revalidate_ns.load(Ordering::Relaxed) {
            return false;
        }
        match crate::sys::fstat_fd(backing_fd) {
            Ok(st) => self.revalidate(file, &st),
            Err(_) => false,
        }
    }

    /// Reads `size` bytes at `offset`: cached pieces from the cache file, gaps from
    /// `backing_fd`. Returns the data and, for a miss, what to fill after replying.
    /// Allocates the data; the request path uses [`CacheSet::read_into`].
    pub fn read(
        &self,
        file: &FileState,
        backing_fd: RawFd,
        offset: u64,
        size: u32,
        pid: u32,
    ) -> io::Result<ReadResult> {
        let mut buf = Vec::new();
        let r = self.read_into(file, backing_fd, offset, size, pid, &mut buf)?;
        buf.truncate(r.data.end);
        buf.drain(..r.data.start);
        Ok(ReadResult {
            data: buf,
            fill: r.fill,
            outside_change: r.outside_change,
        })
    }

    /// [`CacheSet::read`] into `buf`, a buffer the caller keeps from request to request
    /// (one per FUSE worker thread): it grows to the largest request but is never zeroed
    /// again, and the returned range of it holds the bytes. Every byte of the block-rounded
    /// span is written before it is used, by a cache read that passed its checks or by the
    /// backing read of a gap (a short backing read zeroes the rest), so nothing of an earlier
    /// request is served.
    pub fn read_into(
        &self,
        file: &FileState,
        backing_fd: RawFd,
        offset: u64,
        size: u32,
        pid: u32,
        buf: &mut Vec<u8>,
    ) -> io::Result<ReadInto> {
        let outside_change = self.revalidate_on_read(file, backing_fd);
        if !self.caches_reads() {
            // mode none (or a failed cache file): the backing only, no hit, no fill
            grow_to(buf, size as usize);
            let n = crate::sys::pread_full(backing_fd, &mut buf[..size as usize], offset)?;
            return Ok(ReadInto {
                data: 0..n,
                fill: None,
                outside_change,
            });
        }
        // the sequence before anything is read: a change from here on voids the fill
        let seen_seq = file.seq.lock().seq;
        let backing_size = match self.index.validator(file.id) {
            Some(v) => v.size,
            None => crate::sys::fstat_fd(backing_fd)?.st_size as u64,
        };
        let file_size = self.size_seen(file.id, backing_size);
        let end = offset.saturating_add(u64::from(size)).min(file_size);
        if let Some(t) = &self.trace {
            use std::io::Write;
            let _ = writeln!(
                t.lock(),
                "{} {} {} {pid}",
                file.id,
                offset,
                end.saturating_sub(offset)
            );
        }
        if offset >= end {
            return Ok(ReadInto {
                data: 0..0,
                fill: None,
                outside_change,
            });
        }
        let a = round_down(offset, self.block);
        let b = round_up(end, self.block);
        grow_to(buf, (b - a) as usize);
        let mut have = Vec::new(); // cached (start, end) ranges, sorted
        if self.is_active() {
            for ext in self.index.lookup(file.id, a, b - a) {
                if self.read_extent(
                    file.id,
                    &ext,
                    &mut buf[(ext.offset - a) as usize..(ext.end() - a) as usize],
                ) {
                    have.push((ext.offset, ext.end()));
                } else if ext.dirty {
                    // the backing holds older bytes: never serve them for dirty data
                    return Err(io::Error::from_raw_os_error(libc::EIO));
                }
            }
        }
        // gaps, in order
        let mut gaps = Vec::new();
        let mut at = a;
        for &(s, e) in &have {
            if s > at {
                gaps.push((at, s));
            }
            at = at.max(e);
        }
        if at < b {
            gaps.push((at, b));
        }
        let hit = gaps.is_empty();
        let admission = self.seq.admit(pid, file.id, offset, end - offset);
        let bypass = admission == Admission::Bypass;
        let c = &self.counters;
        match (hit, bypass) {
            (true, false) => bump(&c.cache_hits),
            (false, false) => bump(&c.cache_misses),
            (true, true) => bump(&c.cache_bypass_hits),
            (false, true) => bump(&c.cache_bypass_misses),
        }
        if bypass {
            add(&c.bypassed, end - offset);
        }
        let mut chunks = Vec::new();
        let gap_count = gaps.len();
        let readahead = self.readahead.load(Ordering::Relaxed);
        for (i, (s, e)) in gaps.into_iter().enumerate() {
            let piece = &mut buf[(s - a) as usize..(e - a) as usize];
            let n = crate::sys::pread_full(backing_fd, piece, s)?;
            // past the backing's end (it shrank since the validator): zeros, as a fresh
            // buffer had, never an earlier request's bytes
            piece[n..].fill(0);
            add(&c.bytes_missed, e - s);
            if bypass || !self.is_active() {
                continue;
            }
            let mut data = piece.to_vec();
            // readahead after the last gap, when it reaches the end of the request
            if i + 1 == gap_count && e == b && readahead > 0 && b < file_size {
                let extra_end = round_up((b + readahead).min(file_size), self.block);
                let mut extra = vec![0u8; (extra_end - b) as usize];
                // speculative: a backing error here fails nothing the caller asked for,
                // and caches nothing of the range that was not read
                match crate::sys::pread_full(backing_fd, &mut extra, b) {
                    Ok(n) if n > 0 => {
                        add(&c.cache_readaheads, extra.len() as u64);
                        data.extend_from_slice(&extra);
                    }
                    Ok(_) => {}
                    Err(e) => tracing::debug!("readahead at {b} not cached: {e}"),
                }
            }
            chunks.push((s, data));
        }
        add(&c.bytes_hit, have.iter().map(|(s, e)| e - s).sum::<u64>());
        let fill = (!chunks.is_empty()).then(|| Fill {
            seen_seq,
            pid,
            probation: admission == Admission::Probation,
            chunks,
            _pending: PendingFill::new(&self.counters),
        });
        Ok(ReadInto {
            data: (offset - a) as usize..(end - a) as usize,
            fill,
            outside_change,
        })
    }

    /// Reads one extent into `out` under a pin; false (key dropped) when it cannot be
    /// trusted.
    fn read_extent(&self, file: FileId, ext: &Extent, out: &mut [u8]) -> bool {
        let ptr = ext.ptr;
        // pin (so the bucket cannot be reused while we read) and refresh its LRU prio
        match self.alloc.pin_for_read(ptr.bucket, ptr.gen) {
            Ok(true) => {}
            Ok(false) => {
                bump(&self.counters.stale_pointers);
                bump(&self.counters.cache_read_races);
                if !ext.dirty {
                    self.index.remove_if_matches(file, ext.offset, ptr);
                } else {
                    tracing::error!(file, offset = ext.offset, "a dirty key's bucket is stale");
                }
                return false;
            }
            Err(e) => {
                self.fail("pin", &e);
                return false;
            }
        }
        let read = self.alloc.data().read(ptr, out);
        expect_ok(self.alloc.unpin(ptr.bucket), "unpin after a cache read");
        if let Err(e) = read {
            self.fail("read", &e);
            return false;
        }
        let block = self.block as usize;
        let good = out
            .chunks(block)
            .zip(ext.crcs.iter())
            .all(|(data, &crc)| crc32c::crc32c(data) == crc);
        if !good {
            bump(&self.counters.checksum_errors);
            tracing::warn!(
                file,
                offset = ext.offset,
                bucket = ptr.bucket,
                "checksum mismatch in the cache; reading the backing"
            );
            if !ext.dirty {
                self.index.remove_if_matches(file, ext.offset, ptr);
            }
            return false;
        }
        true
    }

    /// Writes a miss's data into the cache and inserts its keys (after the reply).
    pub fn fill(&self, file: &FileState, fill: Fill) {
        for (offset, data) in fill.chunks {
            if !self.is_active() {
                return;
            }
            let mut done = 0usize;
            while done < data.len() {
                let at = offset + done as u64;
                let want = ((data.len() - done) as u64 / SECTOR) as u32;
                let key = KeyPos {
                    file: file.id,
                    offset: at / SECTOR,
                };
                let (ptr, granted) = match self.alloc_for_fill(key, want, fill.pid, fill.probation)
                {
                    Ok(x) => x,
                    Err(Error::NoFreeBucket) => {
                        bump(&self.counters.fills_skipped);
                        return;
                    }
                    Err(e) => {
                        self.fail("allocate", &e);
                        return;
                    }
                };
                let len = granted as usize * SECTOR as usize;
                let piece = &data[done..done + len];
                if let Err(e) = self.alloc.data().write(ptr, piece) {
                    expect_ok(self.alloc.key_inserted(ptr), "release a fill's allocation");
                    self.fail("write", &e);
                    return;
                }
                let inserted = self.insert_if_current(file, fill.seen_seq, at, ptr, piece);
                expect_ok(self.alloc.key_inserted(ptr), "release a fill's allocation");
                if !inserted {
                    bump(&self.counters.cache_miss_collisions);
                    return;
                }
                add(&self.counters.bytes_filled, len as u64);
                if fill.probation {
                    add(&self.counters.probation_bytes_filled, len as u64);
                }
                done += len;
            }
        }
    }

    /// `alloc_sectors` that gives the allocator a moment to refill (it writes a gens
    /// checkpoint per batch) but never waits long: a fill is only worth so much.
    fn alloc_for_fill(
        &self,
        key: KeyPos,
        sectors: u32,
        pid: u32,
        probation: bool,
    ) -> Result<(BucketPtr, u32)> {
        let mut tries = 0;
        loop {
            let wp = u64::from(pid);
            let got = if probation {
                self.alloc.alloc_sectors_probation(key, sectors, wp, false)
            } else {
                self.alloc.alloc_sectors(key, sectors, wp, false)
            };
            match got {
                Err(Error::NoFreeBucket) if tries < 20 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                other => return other,
            }
        }
    }

    fn insert_if_current(
        &self,
        file: &FileState,
        seen: u64,
        offset: u64,
        ptr: BucketPtr,
        data: &[u8],
    ) -> bool {
        let crcs: Vec<u32> = data
            .chunks(self.block as usize)
            .map(crc32c::crc32c)
            .collect();
        let seq = file.seq.lock();
        if seq.seq != seen {
            return false;
        }
        let ext = Extent {
            offset,
            len: data.len() as u64,
            ptr,
            crcs: crcs.clone().into_boxed_slice(),
            dirty: false,
        };
        self.index.insert(file.id, ext);
        self.journal.queue(Record::KeyInsert {
            file: file.id,
            offset,
            len: (data.len() as u64 / SECTOR) as u32,
            bucket: ptr.bucket,
            gen: ptr.gen,
            bucket_offset: ptr.offset,
            dirty: false,
            crcs,
        });
        true
    }

    // ---- `bcachefs-lite warm` ----

    /// Reads `[offset, offset + len)` of `file` (open as `fd`, attributes `st`) into the
    /// cache (`bcachefs-lite warm`): first the validator check an open does (an outside
    /// change drops the file's extents; a file never seen gets its validator, so nothing is
    /// filled without one), then the read path with the warm write point, which the
    /// sequential cutoff never bypasses; misses are filled before this returns. Cached
    /// pieces are hits, never read from the backing. Returns (bytes hit, bytes read from the
    /// backing).
    ///
    /// With `pin`, the buckets holding the range are pinned against eviction afterwards
    /// ([`Allocator::pin_bucket`], bounded by [`CacheSet::pin_limit`]); a later
    /// [`CacheSet::sync_pins`] makes the pins durable.
    pub fn warm(
        &self,
        file: &FileState,
        fd: RawFd,
        st: &libc::stat,
        offset: u64,
        len: u64,
        pin: bool,
    ) -> Result<(u64, u64)> {
        self.check_validator(file, st);
        let end = offset.saturating_add(len).min(st.st_size as u64);
        let (mut hit, mut read) = (0u64, 0u64);
        let mut at = offset;
        while at < end {
            let size = (end - at).min(1 << 20) as u32;
            // what the index holds of this piece now is what the read serves from the cache
            let cached: u64 = self
                .index
                .lookup(file.id, at, u64::from(size))
                .iter()
                .map(|e| {
                    e.end()
                        .min(at + u64::from(size))
                        .saturating_sub(e.offset.max(at))
                })
                .sum();
            let r = self
                .read(file, fd, at, size, seq::WARM_PID)
                .map_err(|e| Error::io("read the backing", e))?;
            if let Some(fill) = r.fill {
                self.fill(file, fill);
            }
            if pin {
                self.pin_range(file.id, at, u64::from(size))?;
            }
            if r.data.is_empty() {
                break;
            }
            let n = r.data.len() as u64;
            hit += cached.min(n);
            read += n - cached.min(n);
            at += n;
        }
        Ok((hit, read))
    }

    /// Most bytes that may be pinned.
    pub fn pin_limit(&self) -> u64 {
        self.pin_limit.load(Ordering::Relaxed)
    }

    /// Changes the pin limit; what is pinned already stays pinned.
    pub fn set_pin_limit(&self, bytes: u64) {
        self.pin_limit.store(bytes, Ordering::Relaxed);
    }

    /// Bytes in pinned buckets.
    pub fn pinned_bytes(&self) -> u64 {
        self.alloc.pinned_buckets() as u64 * u64::from(self.alloc.superblock().bucket_size)
    }

    fn pin_range(&self, file: FileId, offset: u64, len: u64) -> Result<()> {
        let limit = (self.pin_limit() / u64::from(self.alloc.superblock().bucket_size)) as usize;
        for e in self.index.lookup(file, offset, len) {
            self.alloc.pin_bucket(e.ptr.bucket, e.ptr.gen, limit)?;
        }
        Ok(())
    }

    /// Unpins the buckets that hold `file`'s data (`bcachefs-lite unpin`). Returns how many
    /// were pinned.
    pub fn unpin_file(&self, file: &FileState) -> usize {
        let mut n = 0;
        for e in self.index.extents(file.id) {
            if self.alloc.unpin_bucket(e.ptr.bucket).unwrap_or(false) {
                n += 1;
            }
        }
        n
    }

    /// Makes pins durable: a gens checkpoint now (it records every bucket's prio).
    pub fn sync_pins(&self) -> Result<()> {
        self.alloc.write_gens_checkpoint_now()
    }

    // ---- `bcachefs-lite drop` ----

    /// Drops every clean cached extent of `file` and its validator (`bcachefs-lite drop`; dirty
    /// data is kept, see `drop_all_locked`), as a
    /// change does: under the file's lock, with its change sequence bumped so a fill in
    /// flight is not inserted, journaled. Returns the bytes dropped. Metadata caching (issue
    /// 11) adds its own drop next to the call of this in `control.rs` (`drop_tree`).
    pub fn drop_file(&self, file: &FileState) -> u64 {
        let _changes = self.changes.read();
        let mut seq = file.seq.lock();
        seq.bump();
        // dirty data (writeback) is kept: only the clean extents count
        let bytes = self
            .index
            .extents(file.id)
            .iter()
            .filter(|e| !e.dirty)
            .map(|e| e.len)
            .sum::<u64>();
        self.drop_all_locked(file);
        bytes
    }

    /// Drops every file's cached data ([`CacheSet::drop_file`] for each file in the index).
    /// Returns (files, bytes) dropped.
    pub fn drop_everything(&self) -> (u64, u64) {
        let mut ids = std::collections::BTreeSet::new();
        self.index.for_each_extent(|id, _| {
            ids.insert(id);
        });
        let mut bytes = 0;
        for &id in &ids {
            bytes += self.drop_file(&self.state_of(id));
        }
        (ids.len() as u64, bytes)
    }

    /// Runs GC and moving GC now (the control socket's `gc`). Returns bytes compacted.
    pub fn gc_now(&self) -> u64 {
        gc::run(
            &self.alloc,
            &self.index,
            &self.journal,
            &self.counters,
            &self.changes,
        );
        let moved = gc::moving(
            &self.alloc,
            &self.index,
            &self.journal,
            &self.counters,
            &self.changes,
        );
        if moved > 0 {
            gc::run(
                &self.alloc,
                &self.index,
                &self.journal,
                &self.counters,
                &self.changes,
            );
        }
        moved
    }

    /// Clean shutdown: journal everything, write an index checkpoint, stop the threads
    /// and the allocator. The next mount serves hits at once.
    pub fn close(&self) {
        if self.shutdown.load(Ordering::Acquire) {
            return;
        }
        // before the threads stop: the journal writer is still there
        self.close_writeback();
        if self.shutdown.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Some(t) = &self.trace {
            use std::io::Write;
            let _ = t.lock().flush();
        }
        self.journal.wake();
        for t in self.threads.lock().drain(..) {
            let _ = t.join();
        }
        if self.is_active() {
            if let Err(e) = self
                .journal
                .flush()
                .and_then(|()| self.journal.checkpoint_now())
            {
                tracing::error!("final index checkpoint failed: {e}");
            } else if let Some(blob) = self.meta_saver.lock().take().and_then(|f| f(true)) {
                // last, so that it is the newest entry: the next mount trusts it only then
                match self.journal.write_meta_checkpoint(&blob) {
                    Ok(()) => tracing::info!(bytes = blob.len(), "metadata checkpoint written"),
                    Err(e) => tracing::warn!("no metadata checkpoint: {e}"),
                }
            }
        }
        self.alloc.close();
    }
}

/// Refuses the modes this build cannot run (none: every mode is built).
fn check_mode(_mode: CacheMode) -> Result<()> {
    Ok(())
}

impl Drop for CacheSet {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod fault_tests;

// ---- Offline (issue 16): serving from the cache alone --------------------------------

impl CacheSet {
    /// Whether all of file `file` can be served without the backing: reads are cached
    /// (a mode that reads through the cache, not failed), its validator is the one `st`
    /// (the metadata cache's last known attributes) describes, and its extents cover it
    /// from 0 to its size. Offline, only such files are opened.
    pub fn offline_servable(&self, file: &FileState, st: &libc::stat) -> bool {
        if !self.caches_reads() {
            return false;
        }
        let v = validator_of(st);
        if self.index.validator(file.id) != Some(v) {
            return false;
        }
        let end = round_up(v.size, self.block);
        covered(&self.index.lookup(file.id, 0, end), 0, end)
    }

    /// Reads `size` bytes at `offset` from the cache file only (offline): every piece must
    /// be cached and pass its gen and crc checks (invariant 1); None otherwise (a piece
    /// missing, or dropped as untrustworthy: the caller refuses the read).
    pub fn read_cached(&self, file: &FileState, offset: u64, size: u32) -> Option<Vec<u8>> {
        if !self.caches_reads() {
            return None;
        }
        let file_size = self.size_seen(file.id, self.index.validator(file.id)?.size);
        let end = offset.saturating_add(u64::from(size)).min(file_size);
        if offset >= end {
            return Some(Vec::new());
        }
        let a = round_down(offset, self.block);
        let b = round_up(end, self.block);
        let extents = self.index.lookup(file.id, a, b - a);
        if !covered(&extents, a, b) {
            return None;
        }
        let mut buf = vec![0u8; (b - a) as usize];
        for ext in &extents {
            // the index slices the extents to the range asked for
            let out = &mut buf[(ext.offset - a) as usize..(ext.end() - a) as usize];
            if !self.read_extent(file.id, ext, out) {
                return None;
            }
        }
        bump(&self.counters.cache_hits);
        add(&self.counters.bytes_hit, end - offset);
        buf.truncate((end - a) as usize);
        buf.drain(..(offset - a) as usize);
        Some(buf)
    }
}

/// Whether `extents` (sorted, as the index returns them) cover `[a, b)` without a gap.
fn covered(extents: &[Extent], a: u64, b: u64) -> bool {
    let mut at = a;
    for ext in extents {
        if ext.offset > at {
            return false;
        }
        at = at.max(ext.end());
        if at >= b {
            return true;
        }
    }
    at >= b
}
