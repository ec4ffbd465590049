//! The journal writer (this file), index checkpoints (`checkpoint.rs`) and replay
//! (`replay.rs`): key inserts and drops become durable in batches, index checkpoints bound
//! replay time.
//!
//! Write path: request threads `queue` records (under the file's lock, so records of
//! one file are queued in the order their changes happened). One writer thread
//! takes the queue every 50 ms (sooner when it grows), and:
//! 1. fdatasyncs the cache file, so every data block a queued key points at is
//!    durable before the key (invariant 3);
//! 2. appends the records as journal entries (pwrite + fdatasync each, through the
//!    allocator's journal cursor, so key entries and gens checkpoint entries share
//!    one sequence).
//!
//! Index checkpoint (when the ring has taken half its size since the last one, and
//! at mount and clean unmount), by the writer thread only:
//! 1. flush the queue (as above);
//! 2. encode the index (concurrent changes queue records that land after step 4);
//! 3. write the blob into buckets from the metadata reserve, fdatasync;
//! 4. append an entry naming it, repeating every filesystem slot and the current gens
//!    checkpoint's location (read under the journal lock, so never an older one), so the
//!    ring never wraps over the only entry naming any of them;
//! 5. release the pins of the new buckets and free the previous checkpoint's.
//!
//! Replay at mount: `replay.rs`. Every failure of a flush or a checkpoint poisons the
//! whole cache set (`crate::poison`).
//!
//! Locks: `io` (serialises appends and checkpoints) → the queue mutex (held only to push
//! or take) → the allocator's journal lock (inside `journal_append`); `ckpt` (the current
//! checkpoint's buckets) briefly, by the writer and by GC reading it. May block: the
//! writer thread on I/O; `flush` and `checkpoint_now` wait for `io`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use super::identity::Identity;
use super::stats::{bump, Counters};
use crate::alloc::Allocator;
use crate::error::{Error, Result};
use crate::index::Index;
use crate::journal::format::Record;

mod checkpoint;
mod replay;

pub use checkpoint::{CheckpointState, MetaLocation};
pub use replay::{may_hold_dirty, replay, ReplayReport, Replayed};

/// Queue length (records) that wakes the writer before its timer.
const WAKE_AT: usize = 4096;
/// Largest entry we append, in bytes of payload (about).
const MAX_ENTRY: usize = 256 << 10;
const INTERVAL: Duration = Duration::from_millis(50);

#[derive(Default)]
struct Queue {
    records: Vec<Record>,
}

pub struct JournalWriter {
    pub(super) alloc: Arc<Allocator>,
    pub(super) index: Arc<Index>,
    pub(super) identity: Arc<Identity>,
    pub(super) counters: Arc<Counters>,
    queue: Mutex<Queue>,
    wake: Condvar,
    /// Serialises appends and checkpoints (the writer thread, mount and unmount).
    pub(super) io: Mutex<()>,
    pub(super) ckpt: Mutex<CheckpointState>,
    pub(super) ring_bytes: AtomicU64,
    /// The current metadata checkpoint (read at mount or written since), if any.
    pub(super) meta: Mutex<Option<MetaLocation>>,
    /// The `FileHandle` of every file that has (or may have) dirty keys: every index
    /// checkpoint entry repeats them, so the ring never wraps past the only record naming
    /// one (writeback, `cache/writeback.rs`).
    pub(crate) handles: Mutex<std::collections::HashMap<crate::index::FileId, (i32, Vec<u8>)>>,
    /// The size and mtime the mount reports for every file with dirty keys (writeback keeps
    /// them here, not on the backing, until the data is written back): every index
    /// checkpoint entry repeats them as `DirtyAttr` records, like the handles.
    pub(crate) attrs: Mutex<std::collections::HashMap<crate::index::FileId, DirtyAttr>>,
}

/// A file's size and mtime as the mount sees them while it has dirty data (`DirtyAttr`
/// record): the size only grows while the data is dirty (every other change writes the file
/// back first), so it is never below the backing's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirtyAttr {
    pub size: u64,
    pub mtime_ns: i64,
}

impl DirtyAttr {
    /// The file and attributes a `DirtyAttr` record names; None for any other record.
    pub fn from_record(r: &Record) -> Option<(crate::index::FileId, DirtyAttr)> {
        match *r {
            Record::DirtyAttr {
                file,
                size,
                mtime_ns,
            } => Some((file, DirtyAttr { size, mtime_ns })),
            _ => None,
        }
    }

    pub fn record(&self, file: crate::index::FileId) -> Record {
        Record::DirtyAttr {
            file,
            size: self.size,
            mtime_ns: self.mtime_ns,
        }
    }
}

fn record_size(r: &Record) -> usize {
    match r {
        Record::KeyInsert { crcs, .. } => 40 + 4 * crcs.len(),
        Record::FileHandle { handle, .. } => 16 + handle.len(),
        _ => 40,
    }
}

impl JournalWriter {
    pub fn new(
        alloc: Arc<Allocator>,
        index: Arc<Index>,
        identity: Arc<Identity>,
        counters: Arc<Counters>,
        ckpt: CheckpointState,
    ) -> JournalWriter {
        JournalWriter {
            alloc,
            index,
            identity,
            counters,
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            io: Mutex::new(()),
            ckpt: Mutex::new(ckpt),
            ring_bytes: AtomicU64::new(0),
            meta: Mutex::new(None),
            handles: Mutex::new(std::collections::HashMap::new()),
            attrs: Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// Queues `records` together (one write's keys and its `DirtyAttr`): the journal thread
    /// takes them in one batch.
    pub fn queue_all(&self, records: impl IntoIterator<Item = Record>) {
        let mut q = self.queue.lock();
        q.records.extend(records);
        if q.records.len() >= WAKE_AT {
            self.wake.notify_one();
        }
    }

    pub fn queue(&self, r: Record) {
        let mut q = self.queue.lock();
        q.records.push(r);
        if q.records.len() >= WAKE_AT {
            self.wake.notify_one();
        }
    }

    pub fn wake(&self) {
        self.wake.notify_all();
    }

    /// Buckets of the current index checkpoint (metadata, for GC).
    pub fn checkpoint_buckets(&self) -> Vec<u32> {
        let mut b = self.ckpt.lock().buckets.clone();
        if let Some(m) = self.meta.lock().as_ref() {
            b.extend(m.buckets.iter().copied());
        }
        b
    }

    /// The metadata checkpoint found at mount: its buckets stay metadata (for GC), and index
    /// checkpoints repeat its record, until a newer one replaces it (so that a crash soon
    /// after a mount still finds it, untrusted).
    pub fn keep_meta_checkpoint(&self, location: Option<MetaLocation>) {
        *self.meta.lock() = location;
    }

    /// The writer thread: append queued records until `stop`, checkpointing as the ring fills.
    pub fn run(&self, stop: &AtomicBool) {
        let half_ring = self.alloc.superblock().journal_size / 2;
        loop {
            {
                let mut q = self.queue.lock();
                if q.records.is_empty() && !stop.load(Ordering::Acquire) {
                    self.wake.wait_for(&mut q, INTERVAL);
                }
            }
            let _ = self.flush();
            let since = self.ring_bytes.load(Ordering::Relaxed) - self.ckpt.lock().at_ring_bytes;
            if since > half_ring && !self.alloc.is_poisoned() {
                let _ = self.checkpoint_now();
            }
            if stop.load(Ordering::Acquire) {
                return;
            }
        }
    }

    /// A failed append or checkpoint poisons the whole cache set (see `crate::poison`).
    pub(super) fn fail(&self, e: &Error) {
        if !matches!(e, Error::Poisoned) {
            bump(&self.counters.io_errors);
            self.alloc.poison_with(&format!("journal: {e}"));
        }
    }

    /// Appends everything queued so far (data fsync first). Returns when it is durable.
    /// A failure poisons the cache set.
    pub fn flush(&self) -> Result<()> {
        let _io = self.io.lock();
        let records = std::mem::take(&mut self.queue.lock().records);
        self.append_all(records).inspect_err(|e| self.fail(e))
    }

    fn append_all(&self, records: Vec<Record>) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        if self.alloc.is_poisoned() {
            return Err(Error::Poisoned);
        }
        // Invariant 3: the data keys point at is durable before the keys are.
        self.alloc.data().sync()?;
        // Entries are kept below a quarter of the ring, and a checkpoint is written as soon
        // as half the ring has been used since the last one, so even one large batch never
        // wraps over the entries replay needs (the newest checkpoint's and the gens one).
        let max_entry = MAX_ENTRY.min((self.alloc.superblock().journal_size / 4) as usize);
        let mut batch = Vec::new();
        let mut size = 0;
        for r in records {
            size += record_size(&r);
            batch.push(r);
            if size >= max_entry {
                self.append(std::mem::take(&mut batch))?;
                size = 0;
                self.checkpoint_if_half_full()?;
            }
        }
        if !batch.is_empty() {
            self.append(batch)?;
        }
        Ok(())
    }

    /// With the io lock held: a checkpoint when half the ring was used since the last one.
    /// The index already reflects every record still to be appended, and those land after
    /// the checkpoint's entry, so replaying them on top of it again is harmless.
    fn checkpoint_if_half_full(&self) -> Result<()> {
        let half = self.alloc.superblock().journal_size / 2;
        let since = self.ring_bytes.load(Ordering::Relaxed) - self.ckpt.lock().at_ring_bytes;
        if since > half {
            self.write_checkpoint()?;
        }
        Ok(())
    }

    pub(super) fn append(&self, records: Vec<Record>) -> Result<u64> {
        let (seq, ring) = self.alloc.journal_append(records)?;
        self.ring_bytes.store(ring, Ordering::Relaxed);
        bump(&self.counters.journal_entries);
        Ok(seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alloc::{KeyPos, OpenOptions};
    use crate::device::format::Geometry;
    use crate::device::{CacheDevice, FileDevice};

    /// A cache file that logs every write and sync, in order.
    struct Recording {
        inner: FileDevice,
        log: Mutex<Vec<(&'static str, u64)>>,
    }

    impl CacheDevice for Recording {
        fn pread(&self, buf: &mut [u8], off: u64) -> std::io::Result<()> {
            self.inner.pread(buf, off)
        }
        fn pwrite(&self, buf: &[u8], off: u64) -> std::io::Result<()> {
            self.log.lock().push(("pwrite", off));
            self.inner.pwrite(buf, off)
        }
        fn fdatasync(&self) -> std::io::Result<()> {
            self.log.lock().push(("fdatasync", 0));
            self.inner.fdatasync()
        }
        fn punch_hole(&self, off: u64, len: u64) -> std::io::Result<()> {
            self.inner.punch_hole(off, len)
        }
        fn len(&self) -> std::io::Result<u64> {
            self.inner.len()
        }
    }

    /// Invariant 3: the data a key points at is synced before the journal entry holding
    /// the key is written.
    #[test]
    fn data_is_synced_before_the_keys_that_point_at_it_are_journaled() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.cache");
        let g = Geometry {
            size: 64 << 20,
            bucket_size: 256 << 10,
            ..Geometry::default()
        };
        Allocator::format(&path, &g, false).unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let dev = Arc::new(Recording {
            inner: FileDevice::new(file),
            log: Mutex::new(Vec::new()),
        });
        // no allocator thread: its own fsyncs must not hide a missing one of ours
        let manual = OpenOptions {
            start_allocator: false,
            ..Default::default()
        };
        let alloc = Arc::new(Allocator::open_device(dev.clone(), manual).unwrap());
        let index = Arc::new(Index::new(alloc.superblock().block_size));
        let counters = Arc::new(Counters::default());
        let jw = JournalWriter::new(
            alloc.clone(),
            index,
            Arc::new(Identity::new()),
            counters,
            CheckpointState::default(),
        );
        let r = alloc.gc_begin();
        alloc.gc_finish(r).unwrap();
        alloc.allocator_run_until_idle(100).unwrap();
        let (ptr, granted) = alloc
            .alloc_sectors(KeyPos { file: 1, offset: 0 }, 8, 1, false)
            .unwrap();
        let data = vec![7u8; granted as usize * 512];
        alloc.data().write(ptr, &data).unwrap();
        let data_off = alloc.superblock().bucket_offset(ptr.bucket) + u64::from(ptr.offset) * 512;
        jw.queue(Record::KeyInsert {
            file: 1,
            offset: 0,
            len: granted,
            bucket: ptr.bucket,
            gen: ptr.gen,
            bucket_offset: ptr.offset,
            dirty: false,
            crcs: vec![crc32c::crc32c(&data[..4096])],
        });
        alloc.key_inserted(ptr).unwrap();
        let before = dev.log.lock().len();
        jw.flush().unwrap();
        let log = dev.log.lock().clone();
        let journal = alloc.superblock().journal_offset..alloc.superblock().first_bucket_offset;
        let ours = &log[before..];
        let first_journal_write = ours
            .iter()
            .position(|(op, off)| *op == "pwrite" && journal.contains(off))
            .expect("the flush wrote a journal entry");
        assert!(
            ours[..first_journal_write]
                .iter()
                .any(|(op, _)| *op == "fdatasync"),
            "journal entry written before the data at {data_off} was synced: {ours:?}"
        );
        alloc.close();
    }
}
