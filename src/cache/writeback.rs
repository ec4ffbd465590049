//! Writeback (issue 13; docs/DESIGN.md §6 "Writeback"): writes land in the cache file as
//! dirty keys and reach the backing later, in file and offset order, from one thread.
//!
//! # Model
//!
//! Data and its size and mtime in the cache, namespace writethrough. A writeback write
//! ([`CacheSet::write_dirty`]) puts whole blocks into the cache (edge blocks
//! read-modify-written under the file's write lock) and touches the backing only with one
//! fstat: the size and mtime the mount reports from then on ([`DirtyAttr`], journaled after
//! the write's keys, in `JournalWriter::attrs`) are laid over the backing's stat by the FUSE
//! layer ([`CacheSet::overlay_dirty_attr`]); the validator stays the backing's. Dirty keys are
//! inserted with [`Index::insert`] (it trims what they overlap) and journaled as
//! `KeyInsert{dirty}`, after the file's `FileHandle` record the first time, and their buckets
//! are `Mark::Dirty` (never invalidated, invariant 4). `fsync` is the cache file's:
//! [`CacheSet::fsync_dirty`] flushes the journal (data fdatasync first, invariant 3), and
//! syncs the backing only after a change written through to it.
//!
//! The writeback thread ([`CacheSet::writeback_pass`]) takes the files with dirty keys in
//! file id order; for each, under its writeback lock: read the dirty extents (pinned,
//! crc-checked) in offset order, merge neighbours into runs of up to 8 MiB, `pwrite` them
//! to a descriptor reopened by handle (`open_by_handle_at`) up to the `DirtyAttr` size,
//! `ftruncate` to that size and set its mtime, `fsync`, then mark clean only the
//! ranges still covered by the same pointers ([`Index::clean_if_unchanged`]: a write since
//! then wins) and journal `KeyClean`, flushed before the write lock is released (so a later
//! writethrough change can never be followed, after a crash, by the replay of an older
//! dirty key); the metadata cache is told the new stat (`on_written`) before the
//! `DirtyAttr` moves to `just_written` (stats older than the writeback still get it).
//! `ESTALE` (the file is gone), or a file the kernel forgot with no name left, drops its
//! dirty keys; any other error keeps them
//! and is retried with backoff, counted in `writeback_errors`.
//!
//! Rate: bcache's PD controller on `writeback_percent` ([`pd_rate`]): at or below the
//! target share of the cache dirty, a file is written back once it has not been written for
//! `writeback_delay`, at the controller's floor; above it every dirty file is eligible at once,
//! at a rate that grows with the excess (written back over about 40 s) and with the dirty
//! data's growth. A flush asked for (`flush`, a mode switch, unmount) or writers waiting at
//! the bound (`dirty_max_percent` of the cache; they wait, never fail) lift the limit.
//!
//! # Invariants
//!
//! * A dirty key is dropped only by a later write over the same range (which supersedes
//!   it), by writeback after the backing fsync, or when its file no longer exists
//!   (`ESTALE`) or has no name left once the kernel forgot it ([`CacheSet::forgotten`]).
//!   Every other path that drops a file's keys keeps the dirty ones
//!   (`CacheSet::drop_all_locked`); a dirty extent that fails its gen or crc check is EIO,
//!   never a read of the older backing.
//! * Every file with dirty keys has a `FileHandle` in `JournalWriter::handles`; every
//!   index checkpoint repeats them.
//!
//! # Locks
//!
//! A file's write lock (`FileState::wlock`, writers and changes) is taken first, then its
//! writeback lock (`FileState::wb_lock`, the writeback of the file and changes), then the
//! cache's `changes` read side, the file's seq lock, the index shard, the journal queue.
//! Writeback holds only the writeback lock across the file's backing I/O, so writers go on
//! meanwhile (a range they rewrite stays dirty: it is cleaned only while the same pointer
//! covers it); a change (truncate...) holds both and writes the file back first. A write's
//! keys and `DirtyAttr` change under the file's seq lock, and writeback's cleaning and the
//! `DirtyAttr`'s removal happen under it too, so a file never looks clean with dirty keys.
//! `JournalWriter::attrs`, `Writeback::just_written`, `Writeback::forgotten` and
//! `Writeback::state` are leaves (taken alone or last); the `on_written` hook (the metadata
//! cache's locks) runs with only the file's writeback lock (and a change's write lock) held.
//!
//! # What may block
//!
//! `write_dirty` waits for a free bucket and at the dirty bound; `flush_file` and
//! `flush_all` do backing I/O; the thread blocks on I/O and its condvar.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::journal::DirtyAttr;
use super::stats::{add, bump};
use super::{round_down, round_up, validator_of, CacheSet, FileState};
use crate::alloc::{BucketPtr, KeyPos};
use crate::device::format::SECTOR;
use crate::error::{expect_ok, Error};
use crate::index::{Extent, FileId};
use crate::journal::format::Record;

/// `st`'s ctime in nanoseconds since the epoch.
fn ctime_of(st: &libc::stat) -> i64 {
    st.st_ctime
        .saturating_mul(1_000_000_000)
        .saturating_add(st.st_ctime_nsec)
}

/// Now, as nanoseconds since the epoch (a dirty write's mtime).
fn now_ns() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// Reopens a backing file by its handle (`handle_type`, bytes) with open flags (`O_WRONLY`
/// to write back, `O_RDONLY` to read an edge block the writer's descriptor may not read);
/// set by the FUSE layer, which owns the descriptor of the backing root's filesystem.
pub type Reopener = Arc<dyn Fn(i32, &[u8], i32) -> io::Result<OwnedFd> + Send + Sync>;

/// bcache's default `writeback_delay` (30 s).
pub const DEFAULT_WRITEBACK_DELAY: Duration = Duration::from_secs(30);
/// bcache's default `writeback_percent`.
pub const DEFAULT_WRITEBACK_PERCENT: u8 = 10;
/// Writers wait while this share of the cache is dirty.
pub const DEFAULT_DIRTY_MAX_PERCENT: u8 = 50;
/// Largest run of neighbouring dirty extents written back with one pwrite.
const MERGE_MAX: u64 = 8 << 20;
/// The thread's tick.
const TICK: Duration = Duration::from_millis(100);
/// The rate controller's floor (bytes per second): below the target, idle files still trickle
/// back at this rate.
pub const MIN_RATE: u64 = 4 << 20;
/// bcache's `writeback_rate_p_term_inverse`: above the target the excess is written back in
/// about this many seconds.
const P_TERM_INVERSE: f64 = 40.0;
/// The derivative term's weight: while the dirty data grows above the target, writeback also
/// goes as fast as it grows.
const D_TERM: f64 = 1.0;

/// bcache's writeback rate controller (a PD controller on `writeback_percent`), in bytes per
/// second: `dirty` bytes now, `prev` `dt` seconds ago, against `target`. At or below the
/// target the floor; above it the floor plus the excess over `P_TERM_INVERSE` seconds plus,
/// while the dirty data grows, its growth rate.
pub fn pd_rate(dirty: u64, prev: u64, target: u64, dt: f64) -> u64 {
    if dirty <= target {
        return MIN_RATE;
    }
    let p = (dirty - target) as f64 / P_TERM_INVERSE;
    let d = if dt > 0.0 && dirty > prev {
        (dirty - prev) as f64 / dt * D_TERM
    } else {
        0.0
    };
    MIN_RATE.saturating_add((p + d) as u64)
}

/// Retry backoff after a backing error: doubles from here up to `BACKOFF_MAX`.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

#[derive(Default)]
struct State {
    /// A flush was asked for (`bcachefs-lite flush`, a mode switch, unmount): write back
    /// everything now, until clean.
    urgent: bool,
    stop: bool,
    /// Last write per dirty file (for `writeback_delay`).
    touched: HashMap<FileId, Instant>,
    /// Files whose last writeback failed: when to retry, and how many failures in a row.
    retry: HashMap<FileId, (Instant, u32)>,
    /// Bytes written back since `rate_since`.
    rate_bytes: u64,
    rate_since: Option<Instant>,
    /// The controller: bytes it may still write back (a token bucket filled at its rate,
    /// at most one second's worth), the dirty bytes and time of the last pass.
    tokens: f64,
    last_pass: Option<(Instant, u64)>,
}

/// Writeback's settings, figures and thread state (one per cache set).
pub struct Writeback {
    reopen: Mutex<Option<Reopener>>,
    state: Mutex<State>,
    cond: Condvar,
    /// `writeback_delay` in ms.
    pub delay_ms: AtomicU64,
    /// `writeback_percent`.
    pub percent: AtomicU8,
    /// `dirty_max_percent`.
    pub dirty_max_percent: AtomicU8,
    /// Dirty bytes: exact after every pass, plus what writes added since.
    pub dirty: AtomicU64,
    pub dirty_files: AtomicU64,
    /// Bytes per second written back over the last second or so.
    pub rate: AtomicU64,
    /// The rate controller's allowance now (bytes per second; not applied while a flush is
    /// asked for or writers wait at the dirty bound).
    pub rate_target: AtomicU64,
    pub running: AtomicBool,
    pub errors: AtomicU64,
    pub written: AtomicU64,
    /// Outside changes seen on files with dirty data (the mount's version wins in place).
    pub conflicts: AtomicU64,
    /// A clean unmount writes everything back first (`-o noflush_on_unmount`: false).
    pub flush_on_close: AtomicBool,
    /// Files with dirty data replay found, not yet checked against the backing since.
    pub(super) recovered: Mutex<std::collections::HashSet<FileId>>,
    /// Files with dirty data the kernel forgot (no name, no descriptor through the mount can
    /// reach them any more, if the backing says they have no name): checked and dropped by
    /// the next pass, and the writeback of one under way stops at its next run.
    forgotten: Mutex<std::collections::HashSet<FileId>>,
    /// Attributes of files written back a moment ago: (what the mount reported, the backing's
    /// ctime after the writeback, when). A stat taken before the writeback (the metadata
    /// cache's, a racing getattr's) is older than that ctime and still gets them; one taken
    /// after is the truth. Pruned after `WRITTEN_KEEP` once the hook refreshed the metadata
    /// cache (`Some(when)`), else kept until a newer stat is seen.
    just_written: Mutex<HashMap<FileId, JustWritten>>,
    /// Told the backing's stat of every file written back (the FUSE layer refreshes its
    /// metadata cache: writeback moved the backing's size and mtime).
    on_written: Mutex<Option<WrittenHook>>,
}

/// A written-back file's attributes, the backing's ctime after the writeback, and when the
/// metadata cache was told (None: it could not be).
type JustWritten = (DirtyAttr, i64, Option<Instant>);

/// See [`Writeback::on_written`]; returns whether the metadata cache could be told.
pub type WrittenHook = Arc<dyn Fn(&libc::stat) -> bool + Send + Sync>;

/// How long a written-back file's attributes are laid over older stats (far longer than a
/// getattr between its stat and the overlay).
const WRITTEN_KEEP: Duration = Duration::from_secs(10);

impl Default for Writeback {
    fn default() -> Writeback {
        Writeback {
            reopen: Mutex::new(None),
            state: Mutex::new(State::default()),
            cond: Condvar::new(),
            delay_ms: AtomicU64::new(DEFAULT_WRITEBACK_DELAY.as_millis() as u64),
            percent: AtomicU8::new(DEFAULT_WRITEBACK_PERCENT),
            dirty_max_percent: AtomicU8::new(DEFAULT_DIRTY_MAX_PERCENT),
            dirty: AtomicU64::new(0),
            dirty_files: AtomicU64::new(0),
            rate: AtomicU64::new(0),
            rate_target: AtomicU64::new(MIN_RATE),
            running: AtomicBool::new(false),
            errors: AtomicU64::new(0),
            written: AtomicU64::new(0),
            conflicts: AtomicU64::new(0),
            flush_on_close: AtomicBool::new(true),
            recovered: Mutex::new(std::collections::HashSet::new()),
            forgotten: Mutex::new(std::collections::HashSet::new()),
            just_written: Mutex::new(HashMap::new()),
            on_written: Mutex::new(None),
        }
    }
}

impl Writeback {
    pub fn kick(&self) {
        self.cond.notify_all();
    }

    fn stop(&self) {
        self.state.lock().stop = true;
        self.cond.notify_all();
    }
}

fn eio() -> io::Error {
    io::Error::from_raw_os_error(libc::EIO)
}

/// What [`CacheSet::write_lock`] holds.
pub struct ChangeGuard<'a> {
    _w: parking_lot::MutexGuard<'a, ()>,
    _wb: parking_lot::MutexGuard<'a, ()>,
}

impl CacheSet {
    /// Bytes the cache's data buckets hold.
    fn data_capacity(&self) -> u64 {
        let sb = self.alloc.superblock();
        sb.nbuckets * u64::from(sb.bucket_size)
    }

    /// Writes start dirtying only once the FUSE layer gave a way to reopen files by handle;
    /// this also starts the writeback thread (and so writes back what replay found).
    pub fn start_writeback(self: &Arc<Self>, reopen: Reopener) {
        *self.wb.reopen.lock() = Some(reopen);
        let weak: Weak<CacheSet> = Arc::downgrade(self);
        let wb_stop = self.shutdown.clone();
        let t = std::thread::Builder::new()
            .name("bcl-writeback".into())
            .spawn(move || {
                let mut progress = false;
                loop {
                    let Some(set) = weak.upgrade() else { return };
                    {
                        let mut st = set.wb.state.lock();
                        if st.stop || wb_stop.load(Ordering::Acquire) {
                            return;
                        }
                        // at once again only while a flush is asked for and the last pass
                        // got somewhere (files in backoff wait for their time)
                        if !(st.urgent && progress) {
                            set.wb.cond.wait_for(&mut st, TICK);
                        }
                        if st.stop {
                            return;
                        }
                    }
                    progress = set.is_active() && set.writeback_pass(false) > 0;
                    drop(set);
                }
            })
            .expect("spawn writeback thread");
        *self.wb_thread.lock() = Some(t);
    }

    /// True when writes may go to the cache as dirty data (mode writeback, a working cache
    /// file, and the FUSE layer set a reopener).
    pub fn writeback_ready(&self) -> bool {
        self.cache_mode() == crate::device::format::CacheMode::Writeback
            && self.is_active()
            && self.wb.reopen.lock().is_some()
    }

    /// Writeback's settings and figures.
    pub fn writeback(&self) -> &Writeback {
        &self.wb
    }

    /// (files, bytes) of dirty data now (a walk of the index).
    pub fn dirty_figures(&self) -> (u64, u64) {
        let files = self.index.dirty_files();
        (files.len() as u64, files.iter().map(|(_, b)| b).sum())
    }

    /// True when `file` has dirty keys.
    pub fn has_dirty(&self, file: &FileState) -> bool {
        self.index.dirty_bytes(file.id) > 0
    }

    /// The locks every change of `file` but a writeback write holds (which flushes the file
    /// first): its write lock (no writeback write meanwhile) and its writeback lock (no
    /// writeback meanwhile).
    pub fn write_lock<'a>(&self, file: &'a FileState) -> ChangeGuard<'a> {
        let w = file.wlock.lock();
        let wb = file.wb_lock.lock();
        ChangeGuard { _w: w, _wb: wb }
    }

    /// Waits (never fails) while the dirty data is at the bound.
    fn wait_dirty_bound(&self) {
        let max = self.data_capacity() / 100
            * u64::from(self.wb.dirty_max_percent.load(Ordering::Relaxed));
        while self.wb.dirty.load(Ordering::Relaxed) >= max
            && self.is_active()
            && !self.shutdown.load(Ordering::Acquire)
        {
            let mut st = self.wb.state.lock();
            st.urgent = true;
            self.wb.cond.notify_all();
            self.wb.cond.wait_for(&mut st, Duration::from_millis(20));
        }
    }

    /// Reads the block at `at` as the mount sees it now: a cached extent (a dirty one that
    /// fails its check is EIO), else the backing (zeros past its end).
    fn read_block(
        &self,
        file: &FileState,
        handle: (i32, &[u8]),
        backing_size: u64,
        at: u64,
        out: &mut [u8],
    ) -> io::Result<()> {
        for ext in self.index.lookup(file.id, at, out.len() as u64) {
            if ext.offset == at && ext.len == out.len() as u64 {
                if self.read_extent(file.id, &ext, out) {
                    return Ok(());
                }
                if ext.dirty {
                    return Err(io::Error::from_raw_os_error(libc::EIO));
                }
            }
        }
        out.fill(0);
        if at >= backing_size {
            return Ok(()); // past the backing's end: zeros, nothing to read
        }
        // the writer's descriptor may be write-only: read through one of our own
        let reopen = self.wb.reopen.lock().clone();
        let reopen = reopen.ok_or_else(|| io::Error::from_raw_os_error(libc::EIO))?;
        let rfd = reopen(handle.0, handle.1, libc::O_RDONLY)?;
        crate::sys::pread_full(rfd.as_raw_fd(), out, at)?;
        Ok(())
    }

    /// Writeback mode's write (module header): `data` at `offset` of `file` (open as `fd`,
    /// reopened later by `handle`) goes into the cache as dirty keys; `append`: at the end of
    /// the file as the mount sees it instead (O_APPEND), whatever `offset` says. The backing is
    /// not touched but for one fstat (an outside change is noticed first). Returns the bytes
    /// written and whether an outside change was seen (drop the kernel's pages). `mtime_ns`:
    /// the mtime the write gives the file (the kernel's, for a page write of its write
    /// cache); None: now.
    #[allow(clippy::too_many_arguments)]
    pub fn write_dirty(
        &self,
        file: &FileState,
        fd: RawFd,
        handle: (i32, &[u8]),
        offset: u64,
        append: bool,
        data: &[u8],
        pid: u32,
        mtime_ns: Option<i64>,
    ) -> io::Result<(usize, bool)> {
        if data.is_empty() {
            return Ok((0, false));
        }
        self.wait_dirty_bound();
        let _w = file.wlock.lock();
        // 1. an outside change is seen before ours (it keeps dirty data: the mount wins)
        let before = crate::sys::fstat_fd(fd)?;
        let outside = !self.check_validator(file, &before);
        let backing_size = before.st_size.max(0) as u64;
        let size = self.size_seen(file.id, backing_size);
        let offset = if append { size } else { offset };
        // 2. whole blocks, the edges read-modify-written
        let bs = self.block;
        let end = offset
            .checked_add(data.len() as u64)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EFBIG))?;
        let (a, b) = (round_down(offset, bs), round_up(end, bs));
        let mut buf = vec![0u8; (b - a) as usize];
        if offset % bs != 0 {
            self.read_block(file, handle, backing_size, a, &mut buf[..bs as usize])?;
        }
        if end % bs != 0 && (b - bs > a || offset % bs == 0) {
            let at = b - bs;
            let l = buf.len();
            self.read_block(file, handle, backing_size, at, &mut buf[l - bs as usize..])?;
        }
        // past the size, the edge blocks are zeros (a cached tail block may hold bytes of a
        // size the file had before a truncate the backing did since)
        if size < b {
            let from = size.max(a);
            buf[(from - a) as usize..].fill(0);
        }
        buf[(offset - a) as usize..(end - a) as usize].copy_from_slice(data);
        // 3. into the cache, under the writer's PID as write point
        let mut pieces: Vec<(u64, BucketPtr, usize)> = Vec::new();
        let release = |pieces: &[(u64, BucketPtr, usize)]| {
            for (_, ptr, _) in pieces {
                expect_ok(
                    self.alloc.key_inserted(*ptr),
                    "release a dirty write's allocation",
                );
            }
        };
        let mut done = 0usize;
        while done < buf.len() {
            let at = a + done as u64;
            let want = ((buf.len() - done) as u64 / SECTOR) as u32;
            let key = KeyPos {
                file: file.id,
                offset: at / SECTOR,
            };
            let (ptr, granted) = match self.alloc_dirty(key, want, pid) {
                Ok(x) => x,
                Err(e) => {
                    release(&pieces);
                    return Err(e);
                }
            };
            let len = granted as usize * SECTOR as usize;
            if let Err(e) = self.alloc.data().write(ptr, &buf[done..done + len]) {
                expect_ok(
                    self.alloc.key_inserted(ptr),
                    "release a dirty write's allocation",
                );
                release(&pieces);
                self.fail("write", &e);
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
            pieces.push((at, ptr, len));
            done += len;
        }
        // 4. the keys, dirty, and the size and mtime the mount reports from now on, under the
        // file's seq lock (a read sees both or neither); the backing gets them from writeback
        {
            let _changes = self.changes.read();
            let mut seq = file.seq.lock();
            seq.bump();
            let mut records = Vec::with_capacity(pieces.len() + 2);
            {
                let mut handles = self.journal.handles.lock();
                if let std::collections::hash_map::Entry::Vacant(e) = handles.entry(file.id) {
                    e.insert((handle.0, handle.1.to_vec()));
                    records.push(Record::FileHandle {
                        file: file.id,
                        handle_type: handle.0,
                        handle: handle.1.to_vec(),
                    });
                }
            }
            for &(at, ptr, len) in &pieces {
                let piece = &buf[(at - a) as usize..(at - a) as usize + len];
                let crcs: Vec<u32> = piece.chunks(bs as usize).map(crc32c::crc32c).collect();
                self.index.insert(
                    file.id,
                    Extent {
                        offset: at,
                        len: len as u64,
                        ptr,
                        crcs: crcs.clone().into_boxed_slice(),
                        dirty: true,
                    },
                );
                if !self.alloc.mark_dirty(ptr.bucket, ptr.gen).unwrap_or(false) {
                    tracing::error!(
                        bucket = ptr.bucket,
                        "a dirty write's bucket could not be marked dirty"
                    );
                }
                records.push(Record::KeyInsert {
                    file: file.id,
                    offset: at,
                    len: (len as u64 / SECTOR) as u32,
                    bucket: ptr.bucket,
                    gen: ptr.gen,
                    bucket_offset: ptr.offset,
                    dirty: true,
                    crcs,
                });
            }
            let attr = DirtyAttr {
                size: size.max(end),
                mtime_ns: mtime_ns.unwrap_or_else(now_ns),
            };
            self.journal.attrs.lock().insert(file.id, attr);
            records.push(attr.record(file.id));
            self.journal.queue_all(records);
        }
        release(&pieces);
        add(&self.wb.dirty, buf.len() as u64);
        add(&self.counters.bytes_filled, buf.len() as u64);
        let mut st = self.wb.state.lock();
        st.touched.insert(file.id, Instant::now());
        Ok((data.len(), outside))
    }

    /// The kernel's write cache tells the mtime it gave the file's writes (a SETATTR of
    /// mtime and ctime at close, fsync or its inode writeback): with dirty data it becomes
    /// the `DirtyAttr`'s (journaled; the backing gets it at writeback), and true. False: no
    /// dirty data, the backing's mtime is the one to set.
    pub fn set_dirty_mtime(&self, file: &FileState, mtime_ns: i64) -> bool {
        let _changes = self.changes.read();
        let _seq = file.seq.lock();
        if !self.has_dirty(file) {
            return false;
        }
        let mut attrs = self.journal.attrs.lock();
        let Some(attr) = attrs.get_mut(&file.id) else {
            return false;
        };
        attr.mtime_ns = mtime_ns;
        let record = attr.record(file.id);
        drop(attrs);
        self.journal.queue(record);
        true
    }

    /// The size and mtime the mount reports for `file` while it has dirty data (module
    /// header), None when the backing's are the truth.
    pub fn dirty_attr(&self, file: FileId) -> Option<DirtyAttr> {
        self.journal.attrs.lock().get(&file).copied()
    }

    /// The size of `file` as the mount sees it, given the backing's: dirty data may reach
    /// past the backing's end (a gap there reads as zeros).
    pub fn size_seen(&self, file: FileId, backing_size: u64) -> u64 {
        self.dirty_attr(file)
            .map_or(backing_size, |a| a.size.max(backing_size))
    }

    /// `st` (the backing's stat of `file`) as the mount reports it: with the size and mtime of
    /// dirty data not yet written back (and a ctime no older than that mtime); after a
    /// writeback, with the attributes it wrote while `st` predates it.
    pub fn overlay_dirty_attr(&self, file: FileId, st: &mut libc::stat) {
        let a = match self.dirty_attr(file) {
            Some(a) => a,
            None => {
                let mut written = self.wb.just_written.lock();
                let Some(&(a, ctime_ns, _)) = written.get(&file) else {
                    return;
                };
                if ctime_of(st) >= ctime_ns {
                    written.remove(&file); // `st` is the backing's since the writeback
                    return;
                }
                a
            }
        };
        if a.size > st.st_size.max(0) as u64 {
            st.st_size = a.size as i64;
            st.st_blocks = st.st_blocks.max(a.size.div_ceil(512) as i64);
        }
        let (sec, nsec) = (
            a.mtime_ns.div_euclid(1_000_000_000),
            a.mtime_ns.rem_euclid(1_000_000_000),
        );
        st.st_mtime = sec;
        st.st_mtime_nsec = nsec;
        if a.mtime_ns > ctime_of(st) {
            st.st_ctime = sec;
            st.st_ctime_nsec = nsec;
        }
    }

    /// Sets the hook told of every file written back ([`Writeback::on_written`]).
    pub fn set_written_hook(&self, hook: WrittenHook) {
        *self.wb.on_written.lock() = Some(hook);
    }

    /// `alloc_sectors` for a dirty write: waits as long as it takes (writeback frees
    /// buckets), failing only when the cache file failed.
    fn alloc_dirty(&self, key: KeyPos, sectors: u32, pid: u32) -> io::Result<(BucketPtr, u32)> {
        let start = Instant::now();
        loop {
            if !self.is_active() {
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
            match self
                .alloc
                .alloc_sectors(key, sectors, u64::from(pid), false)
            {
                Ok(x) => return Ok(x),
                Err(Error::NoFreeBucket) => {
                    // the allocator refills (clean buckets are invalidated); dirty bytes are
                    // bounded by `wait_dirty_bound`, but dirty buckets may be fewer than half
                    // full: after a while, write back at once so they become clean
                    if start.elapsed() > Duration::from_millis(500)
                        && self.wb.dirty.load(Ordering::Relaxed) > 0
                    {
                        self.request_flush();
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => {
                    self.fail("allocate", &e);
                    return Err(io::Error::from_raw_os_error(libc::EIO));
                }
            }
        }
    }

    /// `fsync`/`fdatasync` in writeback: the cache file's journal flush (data first: the keys
    /// and the `DirtyAttr` of every write before it), and the backing's own fsync of `fd`
    /// only when a change was written through to it since the last one (a truncate, a
    /// write that had to clear set-id bits). Returns when both are durable.
    pub fn fsync_dirty(&self, file: &FileState, fd: RawFd, datasync: bool) -> io::Result<()> {
        if file.backing_unsynced.swap(false, Ordering::AcqRel) {
            let r = if datasync {
                // SAFETY: fdatasync takes no pointers; an invalid `fd` is EBADF.
                crate::sys::cvt(unsafe { libc::fdatasync(fd) }).map(drop)
            } else {
                crate::sys::fsync_fd(fd)
            };
            if let Err(e) = r {
                file.backing_unsynced.store(true, Ordering::Release);
                return Err(e);
            }
        }
        self.journal
            .flush()
            .map_err(|_| io::Error::from_raw_os_error(libc::EIO))?;
        // the journal thread may have taken our records and failed with them: the queue was
        // empty for us, but nothing is durable
        if !self.is_active() {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        Ok(())
    }

    /// Marks that `file`'s backing got a change not yet fsync'd (a write through it in
    /// writeback mode): the next `fsync_dirty` syncs the backing too.
    pub fn backing_changed(&self, file: &FileState) {
        file.backing_unsynced.store(true, Ordering::Release);
    }

    /// Writes `file`'s dirty data back now, with its write lock held by the caller
    /// ([`CacheSet::write_lock`]); retried with backoff a few times. Returns when it is clean
    /// and the `KeyClean` records are durable, or the last error (the data stays dirty).
    pub fn flush_file_locked(&self, file: &FileState) -> io::Result<()> {
        let mut wait = BACKOFF_MIN;
        for attempt in 0.. {
            match self.writeback_file_locked(file) {
                Ok(_) if !self.has_dirty(file) => return Ok(()),
                Ok(_) => {}
                Err(e) if attempt >= 4 => return Err(e),
                Err(_) => {}
            }
            if attempt >= 4 {
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
            std::thread::sleep(wait);
            wait *= 2;
        }
        Ok(())
    }

    /// Writes everything back (a mode switch, `flush`, unmount), until clean or `limit`.
    pub fn flush_all(&self, limit: Duration) -> Result<(), String> {
        let start = Instant::now();
        self.wb.state.lock().urgent = true;
        loop {
            if !self.is_active() {
                return Err("the cache file failed".into());
            }
            self.writeback_pass(true);
            if self.index.dirty_files().is_empty() {
                return Ok(());
            }
            if start.elapsed() >= limit {
                return Err(format!(
                    "{} bytes still dirty after {:?} ({} writeback errors)",
                    self.wb.dirty.load(Ordering::Relaxed),
                    limit,
                    self.wb.errors.load(Ordering::Relaxed)
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Asks the thread to write everything back now (`bcachefs-lite flush`; the client
    /// follows `dirty_data` in the stats).
    pub fn request_flush(&self) {
        self.wb.state.lock().urgent = true;
        self.wb.cond.notify_all();
    }

    /// One pass of the writeback thread (module header, "Rate"); `force` ignores the delay
    /// and the backoff. Returns the bytes written back.
    pub fn writeback_pass(&self, force: bool) -> u64 {
        self.wb
            .just_written
            .lock()
            .retain(|_, (_, _, told)| told.is_none_or(|at| at.elapsed() < WRITTEN_KEEP));
        self.drop_dirty_of_forgotten();
        let files = self.index.dirty_files();
        let total: u64 = files.iter().map(|(_, d)| d).sum();
        self.wb.dirty.store(total, Ordering::Relaxed);
        self.wb
            .dirty_files
            .store(files.len() as u64, Ordering::Relaxed);
        if files.is_empty() {
            let mut st = self.wb.state.lock();
            st.urgent = false;
            st.touched.clear();
            st.retry.clear();
            self.update_rate(&mut st, 0);
            self.wb.cond.notify_all();
            return 0;
        }
        let target =
            self.data_capacity() / 100 * u64::from(self.wb.percent.load(Ordering::Relaxed));
        let delay = Duration::from_millis(self.wb.delay_ms.load(Ordering::Relaxed));
        let urgent = force || self.wb.state.lock().urgent;
        // above the target every dirty file is eligible at once, at the controller's rate
        let above = total > target;
        {
            let mut st = self.wb.state.lock();
            let now = Instant::now();
            let (dt, prev) = st.last_pass.map_or((0.0, total), |(t, d)| {
                (now.duration_since(t).as_secs_f64(), d)
            });
            let rate = pd_rate(total, prev, target, dt) as f64;
            st.tokens = (st.tokens + rate * dt).min(rate);
            st.last_pass = Some((now, total));
            self.wb.rate_target.store(rate as u64, Ordering::Relaxed);
        }
        let mut written = 0u64;
        self.wb.running.store(true, Ordering::Relaxed);
        for (id, _) in files {
            if self.shutdown.load(Ordering::Acquire) && !force {
                break;
            }
            {
                let st = self.wb.state.lock();
                if let Some((at, _)) = st.retry.get(&id) {
                    if !force && Instant::now() < *at {
                        continue;
                    }
                }
                if !urgent && !above && st.touched.get(&id).is_some_and(|t| t.elapsed() < delay) {
                    continue;
                }
                if !urgent && st.tokens <= 0.0 {
                    break; // the controller's allowance is spent until the next pass
                }
            }
            let file = self.state_of(id);
            let result = {
                let _wb = file.wb_lock.lock();
                self.writeback_file_locked(&file)
            };
            let mut st = self.wb.state.lock();
            match result {
                Ok(n) => {
                    written += n;
                    if !urgent {
                        st.tokens -= n as f64;
                    }
                    st.retry.remove(&id);
                    st.touched.remove(&id);
                    self.update_rate(&mut st, n);
                }
                Err(e) => {
                    bump(&self.wb.errors);
                    let fails = st.retry.get(&id).map_or(0, |r| r.1) + 1;
                    let wait = BACKOFF_MIN
                        .saturating_mul(1 << fails.min(16))
                        .min(BACKOFF_MAX);
                    tracing::warn!(
                        file = id,
                        fails,
                        "writeback failed: {e}; retrying in {wait:?}, the data stays dirty"
                    );
                    st.retry.insert(id, (Instant::now() + wait, fails));
                }
            }
        }
        self.wb.running.store(false, Ordering::Relaxed);
        if written > 0 && self.index.dirty_files().is_empty() {
            // a flush asked for is done: from here on the delay applies again
            self.wb.state.lock().urgent = false;
            self.wb.dirty.store(0, Ordering::Relaxed);
            self.wb.dirty_files.store(0, Ordering::Relaxed);
            self.wb.cond.notify_all();
        }
        written
    }

    fn update_rate(&self, st: &mut State, n: u64) {
        let now = Instant::now();
        let since = *st.rate_since.get_or_insert(now);
        st.rate_bytes += n;
        let dt = now.duration_since(since);
        if dt >= Duration::from_secs(1) {
            let rate = (st.rate_bytes as f64 / dt.as_secs_f64()) as u64;
            self.wb.rate.store(rate, Ordering::Relaxed);
            st.rate_bytes = 0;
            st.rate_since = Some(now);
        } else if n == 0 && dt >= Duration::from_millis(500) && st.rate_bytes == 0 {
            self.wb.rate.store(0, Ordering::Relaxed);
        }
    }

    /// Reads a dirty extent for writeback: pinned, crc-checked; false when it cannot be
    /// trusted (the key stays; writeback of the file fails with EIO).
    fn read_for_writeback(&self, ext: &Extent, out: &mut [u8]) -> bool {
        match self.alloc.pin(ext.ptr.bucket, ext.ptr.gen) {
            Ok(true) => {}
            _ => return false,
        }
        let read = self.alloc.data().read(ext.ptr, out);
        expect_ok(
            self.alloc.unpin(ext.ptr.bucket),
            "unpin after a writeback read",
        );
        if read.is_err() {
            return false;
        }
        out.chunks(self.block as usize)
            .zip(ext.crcs.iter())
            .all(|(d, &c)| crc32c::crc32c(d) == c)
    }

    /// Writes `file`'s dirty extents back (module header); the caller holds its writeback lock
    /// (and, for a change, its write lock).
    /// Returns the bytes written.
    fn writeback_file_locked(&self, file: &FileState) -> io::Result<u64> {
        let id = file.id;
        let extents = self.index.dirty_extents(id);
        if extents.is_empty() {
            self.forget_handle_if_clean(file);
            return Ok(0);
        }
        let handle = self.journal.handles.lock().get(&id).cloned();
        let Some((htype, hbytes)) = handle else {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("file {id} has dirty data and no file handle"),
            ));
        };
        let reopen = self.wb.reopen.lock().clone();
        let Some(reopen) = reopen else {
            return Err(io::Error::from_raw_os_error(libc::EAGAIN));
        };
        let fd = match reopen(htype, &hbytes, libc::O_WRONLY) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ESTALE) => {
                // the file is gone from the backing (unlinked, last descriptor closed)
                self.drop_dirty_of_deleted(file);
                return Ok(0);
            }
            Err(e) => return Err(e),
        };
        let fd = fd.as_raw_fd();
        file.writing_back.store(true, Ordering::Release);
        let r = self.write_back_extents(file, fd, &extents);
        file.writing_back.store(false, Ordering::Release);
        let bytes = match r {
            Err(e) if e.raw_os_error() == Some(libc::ESTALE) => {
                // gone, or forgotten with no name left (`forgotten_and_nameless`)
                self.wb.forgotten.lock().remove(&id);
                self.drop_dirty_of_deleted(file);
                return Ok(0);
            }
            r => r?,
        };
        self.journal
            .flush()
            .map_err(|_| io::Error::from_raw_os_error(libc::EIO))?;
        self.forget_handle_if_clean(file);
        add(&self.wb.written, bytes);
        Ok(bytes)
    }

    /// Drops `file`'s `FileHandle` (and `DirtyAttr`) once it has no dirty key, under its seq
    /// lock: a writer inserts its keys and checks for the handle under that lock, so a write
    /// that found the handle present (and queued no `FileHandle` record) can never be left
    /// with dirty keys and no handle to write them back by (found by the differential
    /// tester: its next change then failed with EIO, "dirty data and no file handle").
    fn forget_handle_if_clean(&self, file: &FileState) {
        if self.has_dirty(file) {
            return;
        }
        let _seq = file.seq.lock();
        if !self.has_dirty(file) {
            self.journal.handles.lock().remove(&file.id);
            self.journal.attrs.lock().remove(&file.id);
        }
    }

    /// The backing I/O of [`CacheSet::writeback_file_locked`], then the `KeyClean`s and the
    /// validator (queued, not yet flushed).
    fn write_back_extents(
        &self,
        file: &FileState,
        fd: RawFd,
        extents: &[Extent],
    ) -> io::Result<u64> {
        let id = file.id;
        let st0 = {
            // with the seq lock: a write's attributes and its validator are seen together
            let _changes = self.changes.read();
            let mut seq = file.seq.lock();
            let st0 = crate::sys::fstat_fd(fd)?;
            let v0 = validator_of(&st0);
            if self.index.validator(id).is_some_and(|v| {
                // a data change (a ctime alone moves with a rename, link or chmod)
                v.ctime_ns <= v0.ctime_ns && (v.size != v0.size || v.mtime_ns != v0.mtime_ns)
            }) {
                self.conflict(file);
                // The backing's bytes outside the dirty ranges may be another version now
                // (an outside write, or after a crash possibly one): the clean extents
                // cached from the old one must go, or the validator this writeback records
                // would vouch for them (found by tests/torture.rs: after a SIGKILL and the
                // flush, the mount served old bytes in the middle of a file written outside).
                // What a fill in flight read is refused (the seq moves), and the kernel's
                // pages are dropped at the next open.
                seq.bump();
                self.drop_all_locked(file);
                file.pages_stale.store(true, Ordering::Release);
            }
            st0
        };
        let v0 = validator_of(&st0);
        // the size and mtime the mount reports (a cache file from before DirtyAttr records
        // has none: then the backing's size, grown by each write, and the validator's mtime).
        // Read after the caller took `extents`: a size at least their data's end (a write
        // since may have grown it more; its keys stay dirty and the next pass writes them).
        // Read before, a write in between could leave an extent past the size, cleaned
        // without its tail written.
        let attr = self.dirty_attr(id);
        let size = attr.map_or(st0.st_size.max(0) as u64, |a| a.size);
        // runs of neighbours, in offset order
        let mut i = 0;
        let mut bytes = 0u64;
        while i < extents.len() {
            if self.forgotten_and_nameless(id, fd) {
                return Err(io::Error::from_raw_os_error(libc::ESTALE));
            }
            let start = extents[i].offset;
            let mut j = i;
            let mut run_end = extents[i].end();
            while j + 1 < extents.len()
                && extents[j + 1].offset == run_end
                && extents[j + 1].end() - start <= MERGE_MAX
            {
                j += 1;
                run_end = extents[j].end();
            }
            let mut buf = vec![0u8; (run_end - start) as usize];
            for e in &extents[i..=j] {
                let at = (e.offset - start) as usize;
                if !self.read_for_writeback(e, &mut buf[at..at + e.len as usize]) {
                    bump(&self.counters.checksum_errors);
                    tracing::error!(
                        file = id,
                        offset = e.offset,
                        "a dirty extent failed its check in the cache; it is kept, not written back"
                    );
                    return Err(eio());
                }
            }
            // bytes past the size are block padding
            let len = run_end.min(size.max(start)) - start;
            if len > 0 {
                crate::sys::pwrite_full(fd, &buf[..len as usize], start)?;
                bytes += len;
            }
            i = j + 1;
        }
        // the size (a write may have grown the file past its last dirty block: a hole at the
        // end) and the mtime the mount reported for these bytes (a write since has recorded
        // its own and stays dirty), before the fsync that makes them durable with the data
        if crate::sys::fstat_fd(fd)?.st_size != size as i64 {
            crate::sys::ftruncate_fd(fd, size)?;
        }
        let mtime = attr.map_or_else(
            || self.index.validator(id).map_or(v0.mtime_ns, |v| v.mtime_ns),
            |a| a.mtime_ns,
        );
        if let Err(e) = crate::sys::set_mtime_fd(fd, Some(mtime)) {
            tracing::debug!(file = id, "writeback could not set the mtime: {e}");
        }
        crate::sys::fsync_fd(fd)?;
        let after = crate::sys::fstat_fd(fd);
        {
            let _changes = self.changes.read();
            let _seq = file.seq.lock();
            let mut records = Vec::new();
            for e in extents {
                if self.index.clean_if_unchanged(id, e) {
                    records.push(Record::KeyClean {
                        file: id,
                        offset: e.offset,
                        len: e.len,
                    });
                }
            }
            if let Ok(st) = &after {
                self.set_validator_locked(id, validator_of(st));
            }
            self.journal.queue_all(records);
        }
        if let Ok(st) = &after {
            // the metadata cache first, then the overlay goes (a getattr in between sees
            // the cache's old stat and the `just_written` overlay, or the new stat)
            let hook = self.wb.on_written.lock().clone();
            let told = hook.is_some_and(|hook| hook(st));
            let _seq = file.seq.lock();
            if self.index.dirty_bytes(id) == 0 {
                // the backing holds the size and mtime now (fsync'd before the KeyClean);
                // stats taken before the writeback still get them
                if let Some(a) = self.journal.attrs.lock().remove(&id) {
                    let w = (a, ctime_of(st), told.then(Instant::now));
                    self.wb.just_written.lock().insert(id, w);
                }
            }
        }
        Ok(bytes)
    }

    /// An outside change to `file`, which has dirty data (item 5 of issue 13): the mount's
    /// version wins in place (its dirty ranges are written over the outside version), and the
    /// outside version is preserved beside it as `NAME.conflict-UNIXTIME` (same mode and
    /// owner), logged and counted (`writeback_conflicts`). Best effort: a file that cannot be
    /// copied (no name left, no room) is logged. Runs under the file's seq lock (rare).
    pub(super) fn conflict(&self, file: &FileState) {
        if self.wb.recovered.lock().remove(&file.id) {
            // after a crash the backing may carry attributes of our own last writes whose
            // records were lost with them: the first difference is taken as ours
            tracing::info!(
                file = file.id,
                "replayed dirty file: the backing's attributes moved since the last journaled \
                 write; taken as the mount's own"
            );
            return;
        }
        bump(&self.wb.conflicts);
        match self.preserve_outside_version(file) {
            Ok(copy) => tracing::warn!(
                file = file.id,
                copy = %copy.display(),
                "a file with dirty data changed outside the mount: the mount's version wins in \
                 place, the outside version is kept as the copy"
            ),
            Err(e) => tracing::error!(
                file = file.id,
                "a file with dirty data changed outside the mount: the mount's version wins in \
                 place; the outside version could not be kept: {e}"
            ),
        }
    }

    fn preserve_outside_version(&self, file: &FileState) -> io::Result<std::path::PathBuf> {
        use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
        let handle = self.journal.handles.lock().get(&file.id).cloned();
        let reopen = self.wb.reopen.lock().clone();
        let (Some((t, h)), Some(reopen)) = (handle, reopen) else {
            return Err(io::Error::other("no handle to reopen it by"));
        };
        let src = std::fs::File::from(reopen(t, &h, libc::O_RDONLY)?);
        let path = std::fs::read_link(format!("/proc/self/fd/{}", src.as_raw_fd()))?;
        if path.to_string_lossy().ends_with(" (deleted)") {
            return Err(io::Error::other("it has no name left"));
        }
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut name = path.clone().into_os_string();
        name.push(format!(".conflict-{secs}"));
        let copy = std::path::PathBuf::from(name);
        let meta = src.metadata()?;
        let mut dst = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&copy)?;
        let mut reader = &src;
        std::io::copy(&mut reader, &mut dst)?;
        let _ = std::os::unix::fs::fchown(&dst, Some(meta.uid()), Some(meta.gid()));
        dst.set_permissions(std::fs::Permissions::from_mode(meta.mode() & 0o7777))?;
        dst.sync_all()?;
        Ok(copy)
    }

    /// The kernel forgot `file`'s last inode while it had dirty data (`forget` of the FUSE
    /// layer): if the backing file has no name left, nothing can ever read or write that data
    /// again, and writing it back would write to a file about to be freed (a 256 MiB file
    /// written with fsync and removed kept the backing busy for 6 s, and above
    /// `writeback_percent` its dead bytes made the controller write everything else back at
    /// once). The next pass checks and drops it; a writeback of it under way stops at its
    /// next run.
    pub fn forgotten(&self, file: &FileState) {
        if self.has_dirty(file) {
            self.wb.forgotten.lock().insert(file.id);
            self.wb.cond.notify_all();
        }
    }

    /// The start of a pass: the files [`CacheSet::forgotten`] named whose backing file has no
    /// name lose their dirty keys (journaled, logged); the others keep them.
    fn drop_dirty_of_forgotten(&self) {
        let ids: Vec<FileId> = self.wb.forgotten.lock().drain().collect();
        for id in ids {
            if self.index.dirty_bytes(id) == 0 {
                continue;
            }
            let file = self.state_of(id);
            let _wb = file.wb_lock.lock();
            if self.dirty_owner_nameless(&file) {
                self.drop_dirty_of_deleted(&file);
            }
        }
    }

    /// True when the backing file `file`'s dirty data belongs to is deleted or has no name
    /// left (its link count is 0: only descriptors already open still reach it).
    fn dirty_owner_nameless(&self, file: &FileState) -> bool {
        let handle = self.journal.handles.lock().get(&file.id).cloned();
        let reopen = self.wb.reopen.lock().clone();
        let (Some((t, h)), Some(reopen)) = (handle, reopen) else {
            return false;
        };
        match reopen(t, &h, libc::O_RDONLY) {
            Err(e) => e.raw_os_error() == Some(libc::ESTALE),
            Ok(fd) => crate::sys::fstat_fd(fd.as_raw_fd()).is_ok_and(|st| st.st_nlink == 0),
        }
    }

    /// Between the runs of a writeback: the kernel forgot the file and it has no name left,
    /// so the rest would be written to a file about to be freed.
    fn forgotten_and_nameless(&self, id: FileId, fd: RawFd) -> bool {
        self.wb.forgotten.lock().contains(&id)
            && crate::sys::fstat_fd(fd).is_ok_and(|st| st.st_nlink == 0)
    }

    /// Writeback found `file` gone from the backing (`ESTALE`): its dirty keys have nowhere to
    /// go; they are dropped, journaled, and logged.
    fn drop_dirty_of_deleted(&self, file: &FileState) {
        let _changes = self.changes.read();
        let mut seq = file.seq.lock();
        seq.bump();
        self.drop_dirty_of_gone_locked(file);
    }

    /// With the file's seq lock held: every key of `file` (dirty ones too) and its handle
    /// go, because the inode they belong to no longer exists.
    pub(super) fn drop_dirty_of_gone_locked(&self, file: &FileState) {
        let bytes = self.index.dirty_bytes(file.id);
        tracing::info!(
            file = file.id,
            bytes,
            "dirty data of a deleted file dropped"
        );
        self.index.remove_file(file.id);
        self.journal.queue(Record::KeyDelete {
            file: file.id,
            offset: 0,
            len: u64::MAX,
        });
        self.journal.handles.lock().remove(&file.id);
        self.journal.attrs.lock().remove(&file.id);
    }

    /// True when the inode `file`'s dirty data belongs to is deleted (its handle is stale),
    /// e.g. when a new file got its inode number. False when it exists or nobody can tell.
    pub(super) fn dirty_owner_gone(&self, file: &FileState) -> bool {
        let handle = self.journal.handles.lock().get(&file.id).cloned();
        let reopen = self.wb.reopen.lock().clone();
        match (handle, reopen) {
            (Some((t, h)), Some(reopen)) => matches!(
                reopen(t, &h, libc::O_RDONLY),
                Err(e) if e.raw_os_error() == Some(libc::ESTALE)
            ),
            _ => false,
        }
    }

    /// Stops the writeback thread (unmount), after a flush unless `noflush_on_unmount`.
    pub(super) fn close_writeback(&self) {
        if self.wb.reopen.lock().is_some()
            && self.is_active()
            && self.wb.flush_on_close.load(Ordering::Relaxed)
        {
            match self.flush_all(Duration::from_secs(120)) {
                Ok(()) => {}
                Err(e) => {
                    tracing::error!("unmount: writeback incomplete, kept for the next mount: {e}")
                }
            }
        }
        self.wb.stop();
        if let Some(t) = self.wb_thread.lock().take() {
            if t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The controller: the floor at or below the target; above it more the further above, and
    /// more again while the dirty data grows; never below the floor.
    #[test]
    fn pd_rate_follows_the_excess_and_its_growth() {
        let t = 100 << 20;
        assert_eq!(pd_rate(0, 0, t, 1.0), MIN_RATE);
        assert_eq!(pd_rate(t, 0, t, 1.0), MIN_RATE);
        let a = pd_rate(t + (40 << 20), t + (40 << 20), t, 1.0);
        assert_eq!(a, MIN_RATE + (1 << 20), "40 MiB over: 1 MiB/s more");
        let b = pd_rate(t + (80 << 20), t + (80 << 20), t, 1.0);
        assert!(b > a, "further above, faster");
        let growing = pd_rate(t + (80 << 20), t + (70 << 20), t, 1.0);
        assert_eq!(
            growing,
            b + (10 << 20),
            "growing 10 MiB/s: that much faster"
        );
        let shrinking = pd_rate(t + (80 << 20), t + (90 << 20), t, 1.0);
        assert_eq!(shrinking, b, "shrinking adds nothing");
        assert_eq!(
            pd_rate(t + 1, t, t, 0.0),
            MIN_RATE,
            "no interval: no derivative"
        );
    }
}
