//! The request path of the read cache: hits, misses and fills, coherence with the
//! backing, persistence of keys, and GC. bcache's `request.c` and `btree.c` roles.
//!
//! # Model
//!
//! A [`CacheSet`] joins the allocator ([`Cache`]), the key index ([`Index`]) and a
//! journal writer. A key maps a block-aligned range of a backing file (by
//! [`FileId`]) to a pointer `(bucket, gen, sector)` plus one crc32c per block.
//!
//! Read (numbered as in docs/DESIGN.md, "read path"):
//! 1. round the request out to blocks, clamped to the file's validated size;
//! 2. look up the keys; for each, pin its bucket at the key's gen (a stale gen is a
//!    miss: counted, key dropped), pread the blocks from the cache file, unpin, and
//!    check every block's crc (a mismatch is a miss: counted, key dropped);
//! 3. read every gap from the backing (plus readahead), reply;
//! 4. unless the process streams past the sequential cutoff, fill the gaps into the
//!    cache after the reply: `alloc_sectors` with the caller's PID as write point,
//!    write the data, then insert the key — only if no write or backing change
//!    raced with the miss (the file's write sequence is unchanged) — and queue the
//!    key for the journal.
//!
//! Write (writethrough): the backing first; then the touched blocks are dropped and the
//! whole blocks the write covers are filled like a miss (same write-sequence check).
//!
//! # Invariants (numbers from the design brief)
//!
//! 1. A pointer is followed only while its bucket is pinned at the key's gen, and its
//!    bytes are served only when every block's crc matches.
//! 3. The journal writer fsyncs the cache file's data before it appends the keys that
//!    point at it.
//! 7. Extents are served only while the file's validator matches the backing; a
//!    change drops the file's extents (and the kernel's pages, by the fs layer).
//! 8. A bucket cannot be reused while pinned, so a read never races with reuse; the
//!    pin fails instead and the piece is read from the backing (`cache_read_races`
//!    counts keys that went stale between lookup and pin).
//!
//! # Locks
//!
//! Per file: `FileState::write_seq` (a mutex held while checking-and-inserting a
//! fill's key, or bumping the sequence and dropping a range); under it the index's
//! shard lock, then the journal queue's mutex. The allocator's state lock is taken
//! by its own calls only, never while holding a file's lock across I/O. No lock is
//! held across I/O except the journal writer's own.
//!
//! # What may block
//!
//! `read` does synchronous I/O on the cache file and the backing; `fill` on the cache
//! file; nothing waits for a free bucket on the request path (a fill without a free
//! bucket is skipped). The journal and GC threads block on I/O and their condvars.

mod gc;
pub mod journal;
pub mod seq;
pub mod stats;

use std::io;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::Mutex;

use crate::alloc::{BucketPtr, Cache, KeyPos};
use crate::device::format::{Geometry, Replacement, SECTOR};
use crate::device::{CacheDevice, FileDevice};
use crate::error::{Error, Result};
use crate::index::{Extent, FileId, Index, Validator};
use crate::journal::format::Record;
use journal::JournalWriter;
use seq::SequentialCutoff;
use stats::{add, bump, Counters, Windows};

/// What `-o cache=...` and friends ask for.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheConfig {
    pub path: PathBuf,
    /// Size for a new cache file (required when the file does not exist).
    pub size: Option<u64>,
    pub replacement: Option<Replacement>,
    pub discard: Option<bool>,
    /// Bytes a process may stream sequentially before it bypasses (0: never).
    pub sequential_cutoff: u64,
    /// Extra bytes read from the backing after a miss, and cached.
    pub readahead: u64,
    /// Reformat a cache file that serves another backing tree (or is unreadable).
    pub reformat: bool,
}

impl CacheConfig {
    pub fn new(path: PathBuf) -> CacheConfig {
        CacheConfig {
            path,
            size: None,
            replacement: None,
            discard: None,
            sequential_cutoff: 4 << 20,
            readahead: 0,
            reformat: false,
        }
    }
}

/// Per-file state the fs layer keeps in its inode.
#[derive(Debug)]
pub struct FileState {
    pub id: FileId,
    /// Bumped by every write, truncate and invalidation: a fill whose miss saw an
    /// older value must not insert its (possibly old) data.
    write_seq: Mutex<u64>,
}

impl FileState {
    pub fn new(id: FileId) -> FileState {
        FileState {
            id,
            write_seq: Mutex::new(0),
        }
    }
}

/// Data of a miss to be written into the cache after the reply.
pub struct Fill {
    write_seq: u64,
    pid: u32,
    /// Block-aligned offset and block-padded data.
    chunks: Vec<(u64, Vec<u8>)>,
}

pub struct ReadResult {
    /// Exactly the requested bytes that exist (short at end of file).
    pub data: Vec<u8>,
    pub fill: Option<Fill>,
}

pub struct CacheSet {
    alloc: Arc<Cache>,
    index: Arc<Index>,
    journal: Arc<JournalWriter>,
    block: u64,
    seq: SequentialCutoff,
    readahead: u64,
    pub counters: Arc<Counters>,
    pub windows: Arc<Windows>,
    /// Set when the cache file failed: the mount goes on from the backing alone.
    failed: AtomicBool,
    shutdown: Arc<AtomicBool>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    path: PathBuf,
    /// Taken (read side) by every change that drops keys, and (write side) by moving GC
    /// while it swaps an extent, so their journal records cannot be reordered.
    changes: Arc<parking_lot::RwLock<()>>,
    /// Holds the cache file's exclusive flock while open.
    _lock: Option<std::fs::File>,
}

fn validator_of(st: &libc::stat) -> Validator {
    Validator {
        size: st.st_size as u64,
        mtime_ns: st.st_mtime * 1_000_000_000 + st.st_mtime_nsec,
        ctime_ns: st.st_ctime * 1_000_000_000 + st.st_ctime_nsec,
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
        let alloc = Arc::new(Cache::open(&cfg.path)?);
        let counters = Arc::new(Counters::default());
        let (index, ckpt) = journal::replay(&alloc, &counters)?;
        let index = Arc::new(index);
        let journal = Arc::new(JournalWriter::new(
            alloc.clone(),
            index.clone(),
            counters.clone(),
            ckpt,
        ));
        // First GC: marks every bucket from the index; allocation starts after it.
        gc::run(&alloc, &index, &journal, &counters);
        journal.checkpoint_now()?;
        let set = CacheSet {
            block: u64::from(alloc.superblock().block_size),
            alloc,
            index,
            journal,
            seq: SequentialCutoff::new(cfg.sequential_cutoff),
            readahead: cfg.readahead,
            counters,
            windows: Arc::new(Windows::default()),
            failed: AtomicBool::new(false),
            shutdown: Arc::new(AtomicBool::new(false)),
            threads: Mutex::new(Vec::new()),
            path: cfg.path.clone(),
            changes: Arc::new(parking_lot::RwLock::new(())),
            _lock: lock,
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

    pub fn alloc(&self) -> &Cache {
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

    /// True while the cache file works; false after a failure (mode none).
    pub fn is_active(&self) -> bool {
        !self.failed.load(Ordering::Relaxed) && !self.alloc.is_poisoned()
    }

    fn fail(&self, what: &str, e: &dyn std::fmt::Display) {
        bump(&self.counters.io_errors);
        if !self.failed.swap(true, Ordering::Relaxed) {
            tracing::error!(
                "cache file {}: {what} failed: {e}; caching is off, serving from the backing",
                self.path.display()
            );
        }
    }

    /// Compares the backing's current attributes with the file's validator. Unchanged:
    /// true (the kernel may keep its pages). Changed or unknown: drops the file's
    /// extents, records the new validator, and returns false.
    pub fn check_validator(&self, file: &FileState, st: &libc::stat) -> bool {
        let now = validator_of(st);
        match self.index.validator(file.id) {
            Some(v) if v == now => true,
            known => {
                let _changes = self.changes.read();
                let mut seq = file.write_seq.lock();
                *seq += 1;
                if known.is_some() {
                    bump(&self.counters.invalidations);
                    self.index.remove_file(file.id);
                    self.journal.queue(Record::KeyDelete {
                        file: file.id,
                        offset: 0,
                        len: u64::MAX,
                    });
                }
                self.set_validator_locked(file.id, now);
                false
            }
        }
    }

    /// When the file has a validator and the backing no longer matches it: drops the
    /// file's extents, records the new validator, and returns true (the caller drops
    /// the kernel's pages). Files never opened through the cache are left alone.
    pub fn revalidate(&self, file: &FileState, st: &libc::stat) -> bool {
        match self.index.validator(file.id) {
            Some(v) if v != validator_of(st) => !self.check_validator(file, st),
            _ => false,
        }
    }

    /// Records the validator after a change made through the mount.
    pub fn set_validator(&self, file: &FileState, st: &libc::stat) {
        let _seq = file.write_seq.lock();
        self.set_validator_locked(file.id, validator_of(st));
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

    /// Bytes `[offset, offset + len)` changed through the mount: drop every block they touch.
    pub fn note_write(&self, file: &FileState, offset: u64, len: u64) {
        self.drop_range(file, offset, len);
    }

    /// Drops every block `[offset, offset + len)` touches; returns the file's new write
    /// sequence.
    fn drop_range(&self, file: &FileState, offset: u64, len: u64) -> u64 {
        let _changes = self.changes.read();
        let mut seq = file.write_seq.lock();
        *seq += 1;
        if len > 0 && !self.index.remove_range(file.id, offset, len).is_empty() {
            self.journal.queue(Record::KeyDelete {
                file: file.id,
                offset,
                len,
            });
        }
        *seq
    }

    /// Writethrough: `data` reached the backing at `offset`. Drops what the write touched
    /// and returns the whole blocks it covers as a fill for after the reply (partial blocks
    /// at its edges stay uncached). A process streaming writes past the sequential cutoff
    /// is not cached, as for reads.
    pub fn write_through(
        &self,
        file: &FileState,
        offset: u64,
        data: &[u8],
        pid: u32,
    ) -> Option<Fill> {
        let len = data.len() as u64;
        let seq = self.drop_range(file, offset, len);
        let (a, b) = (
            round_up(offset, self.block),
            round_down(offset + len, self.block),
        );
        if b <= a || !self.is_active() {
            return None;
        }
        if self.seq.should_bypass(pid, file.id, offset, len) {
            add(&self.counters.bypassed, len);
            return None;
        }
        let chunk = data[(a - offset) as usize..(b - offset) as usize].to_vec();
        Some(Fill {
            write_seq: seq,
            pid,
            chunks: vec![(a, chunk)],
        })
    }

    /// The file was truncated (or extended) to `size` through the mount.
    pub fn note_truncate(&self, file: &FileState, size: u64) {
        let _changes = self.changes.read();
        let mut seq = file.write_seq.lock();
        *seq += 1;
        self.index.truncate(file.id, size);
        self.journal.queue(Record::KeyDelete {
            file: file.id,
            offset: size,
            len: u64::MAX,
        });
    }

    /// Forget everything cached for the file.
    pub fn drop_file(&self, file: &FileState) {
        let _changes = self.changes.read();
        let mut seq = file.write_seq.lock();
        *seq += 1;
        self.index.remove_file(file.id);
        self.journal.queue(Record::KeyDelete {
            file: file.id,
            offset: 0,
            len: u64::MAX,
        });
    }

    /// Reads `size` bytes at `offset`: cached pieces from the cache file, gaps from
    /// `backing_fd`. Returns the data and, for a miss, what to fill after replying.
    pub fn read(
        &self,
        file: &FileState,
        backing_fd: RawFd,
        offset: u64,
        size: u32,
        pid: u32,
    ) -> io::Result<ReadResult> {
        let file_size = match self.index.validator(file.id) {
            Some(v) => v.size,
            None => crate::fs::sys::fstat_path(backing_fd)?.st_size as u64,
        };
        let end = (offset + u64::from(size)).min(file_size);
        if offset >= end {
            return Ok(ReadResult {
                data: Vec::new(),
                fill: None,
            });
        }
        let write_seq = *file.write_seq.lock();
        let a = round_down(offset, self.block);
        let b = round_up(end, self.block);
        let mut buf = vec![0u8; (b - a) as usize];
        let mut have = Vec::new(); // cached (start, end) ranges, sorted
        if self.is_active() {
            for ext in self.index.lookup(file.id, a, b - a) {
                if self.read_extent(
                    file.id,
                    &ext,
                    &mut buf[(ext.offset - a) as usize..(ext.end() - a) as usize],
                ) {
                    have.push((ext.offset, ext.end()));
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
        let bypass = self.seq.should_bypass(pid, file.id, offset, end - offset);
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
        for (i, (s, e)) in gaps.into_iter().enumerate() {
            let piece = &mut buf[(s - a) as usize..(e - a) as usize];
            crate::fs::sys::pread_full(backing_fd, piece, s)?;
            add(&c.bytes_missed, e - s);
            if bypass || !self.is_active() {
                continue;
            }
            let mut data = piece.to_vec();
            // readahead after the last gap, when it reaches the end of the request
            if i + 1 == gap_count && e == b && self.readahead > 0 && b < file_size {
                let extra_end = round_up((b + self.readahead).min(file_size), self.block);
                let mut extra = vec![0u8; (extra_end - b) as usize];
                let n = crate::fs::sys::pread_full(backing_fd, &mut extra, b)?;
                if n > 0 {
                    add(&c.cache_readaheads, extra.len() as u64);
                    data.extend_from_slice(&extra);
                }
            }
            chunks.push((s, data));
        }
        add(&c.bytes_hit, have.iter().map(|(s, e)| e - s).sum::<u64>());
        let start = (offset - a) as usize;
        buf.truncate((end - a) as usize);
        buf.drain(..start);
        let fill = (!chunks.is_empty()).then_some(Fill {
            write_seq,
            pid,
            chunks,
        });
        Ok(ReadResult { data: buf, fill })
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
                self.index.remove_if_matches(file, ext.offset, ptr);
                return false;
            }
            Err(e) => {
                self.fail("pin", &e);
                return false;
            }
        }
        let read = self.alloc.read_data(ptr, out);
        let _ = self.alloc.unpin(ptr.bucket);
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
            self.index.remove_if_matches(file, ext.offset, ptr);
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
                let (ptr, granted) = match self.alloc_for_fill(key, want, fill.pid) {
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
                if let Err(e) = self.alloc.write_data(ptr, piece) {
                    let _ = self.alloc.key_inserted(ptr);
                    self.fail("write", &e);
                    return;
                }
                let inserted = self.insert_if_current(file, fill.write_seq, at, ptr, piece);
                let _ = self.alloc.key_inserted(ptr);
                if !inserted {
                    bump(&self.counters.cache_miss_collisions);
                    return;
                }
                add(&self.counters.bytes_filled, len as u64);
                done += len;
            }
        }
    }

    /// `alloc_sectors` that gives the allocator a moment to refill (it writes a gens
    /// checkpoint per batch) but never waits long: a fill is only worth so much.
    fn alloc_for_fill(&self, key: KeyPos, sectors: u32, pid: u32) -> Result<(BucketPtr, u32)> {
        let mut tries = 0;
        loop {
            match self
                .alloc
                .alloc_sectors(key, sectors, u64::from(pid), false)
            {
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
        let seq = file.write_seq.lock();
        if *seq != seen {
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

    /// Runs GC and moving GC now (the control socket's `gc`). Returns bytes compacted.
    pub fn gc_now(&self) -> u64 {
        gc::run(&self.alloc, &self.index, &self.journal, &self.counters);
        let moved = gc::moving(
            &self.alloc,
            &self.index,
            &self.journal,
            &self.counters,
            &self.changes,
        );
        if moved > 0 {
            gc::run(&self.alloc, &self.index, &self.journal, &self.counters);
        }
        moved
    }

    /// Clean shutdown: journal everything, write an index checkpoint, stop the threads
    /// and the allocator. The next mount serves hits at once.
    pub fn close(&self) {
        if self.shutdown.swap(true, Ordering::AcqRel) {
            return;
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
            }
        }
        self.alloc.close();
    }
}

impl Drop for CacheSet {
    fn drop(&mut self) {
        self.close();
    }
}

/// Takes the cache file's exclusive lock, waiting up to 30 s for another daemon.
fn lock_cache_file(path: &Path) -> Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .open(path)
        .map_err(|e| Error::io("open cache file", e))?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(file);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) || std::time::Instant::now() > deadline {
            return Err(Error::InvalidArgument(format!(
                "cache file {} is in use by another mount ({e})",
                path.display()
            )));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Creates the cache file if missing, checks (and binds) the backing it serves, and
/// applies format options that can change on an existing file.
fn prepare_cache_file(cfg: &CacheConfig, backing_id: &str) -> Result<()> {
    let geometry = || -> Result<Geometry> {
        let size = cfg.size.ok_or_else(|| {
            Error::InvalidArgument(format!(
                "cache file {} does not exist; give cache_size=SIZE to create it",
                cfg.path.display()
            ))
        })?;
        let mut g = Geometry {
            size,
            backing: backing_id.to_string(),
            ..Geometry::default()
        };
        // Small caches get smaller buckets, so they still have ~128 of them.
        while g.bucket_size > 64 << 10 && size / u64::from(g.bucket_size) < 128 {
            g.bucket_size /= 2;
        }
        if let Some(r) = cfg.replacement {
            g.replacement = r;
        }
        if let Some(d) = cfg.discard {
            g.discard = d;
        }
        Ok(g)
    };
    let exists = std::fs::metadata(&cfg.path)
        .map(|m| m.len() > 0)
        .unwrap_or(false);
    if !exists {
        Cache::format(&cfg.path, &geometry()?, true)?;
        return Ok(());
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&cfg.path)
        .map_err(|e| Error::io("open cache file", e))?;
    let dev = FileDevice::new(file);
    let mut sb = match crate::alloc::read_superblock(&dev) {
        Ok(sb) => sb,
        Err(e) if cfg.reformat => {
            tracing::warn!(
                "reformatting unreadable cache file {}: {e}",
                cfg.path.display()
            );
            let mut g = geometry().or_else(|_| {
                let len = dev.len().map_err(|e| Error::io("stat cache file", e))?;
                Ok::<_, Error>(Geometry {
                    size: len,
                    backing: backing_id.to_string(),
                    ..Geometry::default()
                })
            })?;
            g.backing = backing_id.to_string();
            Cache::format(&cfg.path, &g, true)?;
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    if !sb.backing.is_empty() && sb.backing != backing_id {
        if !cfg.reformat {
            return Err(Error::InvalidArgument(format!(
                "cache file {} serves {}, not {backing_id}; mount with -o reformat to reuse it for this tree (its cached data is dropped)",
                cfg.path.display(),
                sb.backing
            )));
        }
        let mut g = geometry().unwrap_or(Geometry {
            size: sb.file_size().unwrap_or(0),
            ..Geometry::default()
        });
        g.backing = backing_id.to_string();
        drop(dev);
        Cache::format(&cfg.path, &g, true)?;
        return Ok(());
    }
    let mut changed = false;
    if sb.backing.is_empty() {
        sb.backing = backing_id.to_string();
        changed = true;
    }
    if let Some(r) = cfg.replacement {
        changed |= sb.replacement != r;
        sb.replacement = r;
    }
    if let Some(d) = cfg.discard {
        changed |= sb.discard != d;
        sb.discard = d;
    }
    if let Some(size) = cfg.size {
        if Some(size) != sb.file_size() {
            tracing::info!(
                "cache_size={size} ignored: {} is already formatted ({} bytes); reformat to resize",
                cfg.path.display(),
                sb.file_size().unwrap_or(0)
            );
        }
    }
    if changed {
        dev.pwrite(&sb.encode(), 0)
            .map_err(|e| Error::io("pwrite superblock", e))?;
        dev.fdatasync()
            .map_err(|e| Error::io("fdatasync superblock", e))?;
    }
    Ok(())
}
