//! The journal writer and replay: key inserts and drops become durable in batches,
//! index checkpoints bound replay time.
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
//! 4. append an entry naming it and repeating the current gens checkpoint's location
//!    (so the ring never wraps over the only entry naming either);
//! 5. release the pins of the new buckets and free the previous checkpoint's.
//!
//! Replay at mount: scan the ring, take the newest index checkpoint whose blob
//! decodes (an unreadable one is skipped for the previous), then apply the records
//! of every entry after it in seq order, stopping at the first missing seq (a torn
//! tail). Keys whose gen no longer matches their bucket are dropped.
//!
//! Locks: the queue mutex (held only to push or take); `ckpt` (the current checkpoint's
//! buckets) is touched by the writer thread and by GC reading it. May block: the
//! writer thread on I/O; `flush` waits for the writer.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use super::identity::{FsKey, Identity};
use super::stats::{bump, Counters};
use crate::alloc::{BucketPtr, Cache, Reserve};
use crate::device::format::SECTOR;
use crate::error::{Error, Result};
use crate::index::{Extent, Index, Validator};
use crate::journal::format::Record;

/// Queue length (records) that wakes the writer before its timer.
const WAKE_AT: usize = 4096;
/// Largest entry we append, in bytes of payload (about).
const MAX_ENTRY: usize = 256 << 10;
const INTERVAL: Duration = Duration::from_millis(50);

#[derive(Default)]
struct Queue {
    records: Vec<Record>,
}

/// Where the current index checkpoint lives.
#[derive(Debug, Clone, Default)]
pub struct CheckpointState {
    pub seq: u64,
    pub buckets: Vec<u32>,
    /// Ring bytes appended (since open) when it was written.
    pub at_ring_bytes: u64,
}

pub struct JournalWriter {
    alloc: Arc<Cache>,
    index: Arc<Index>,
    identity: Arc<Identity>,
    counters: Arc<Counters>,
    queue: Mutex<Queue>,
    wake: Condvar,
    /// Serialises appends and checkpoints (the writer thread, mount and unmount).
    io: Mutex<()>,
    ckpt: Mutex<CheckpointState>,
    ring_bytes: AtomicU64,
}

fn record_size(r: &Record) -> usize {
    match r {
        Record::KeyInsert { crcs, .. } => 40 + 4 * crcs.len(),
        _ => 40,
    }
}

impl JournalWriter {
    pub fn new(
        alloc: Arc<Cache>,
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
        self.ckpt.lock().buckets.clone()
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
    fn fail(&self, e: &Error) {
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
        self.alloc.sync()?;
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

    fn append(&self, records: Vec<Record>) -> Result<u64> {
        let (seq, ring) = self.alloc.journal_append(records)?;
        self.ring_bytes.store(ring, Ordering::Relaxed);
        bump(&self.counters.journal_entries);
        Ok(seq)
    }

    /// Writes an index checkpoint now (steps 1-5 of the module header).
    /// A failure poisons the cache set.
    pub fn checkpoint_now(&self) -> Result<()> {
        self.flush()?;
        let _io = self.io.lock();
        self.write_checkpoint().inspect_err(|e| self.fail(e))
    }

    /// Steps 2-5 of an index checkpoint; the caller holds the io lock.
    fn write_checkpoint(&self) -> Result<()> {
        let blob = self.index.encode_checkpoint();
        let sb = self.alloc.superblock().clone();
        let bucket_size = sb.bucket_size as usize;
        let parts = blob.len().div_ceil(bucket_size).max(1);
        let mut buckets = Vec::with_capacity(parts);
        let release = |buckets: &[u32]| {
            for &b in buckets {
                let _ = self.alloc.unpin(b);
                let _ = self.alloc.bucket_free(b);
            }
        };
        for _ in 0..parts {
            match self.alloc.bucket_alloc(Reserve::Metadata, true) {
                Ok((b, _gen)) => buckets.push(b),
                Err(e) => {
                    release(&buckets);
                    return Err(e);
                }
            }
        }
        let dev = self.alloc.device();
        let write = || -> Result<()> {
            for (i, &b) in buckets.iter().enumerate() {
                let start = i * bucket_size;
                let end = (start + bucket_size).min(blob.len());
                let mut part = blob.get(start..end).unwrap_or(&[]).to_vec();
                let block = sb.block_size as usize;
                part.resize(part.len().div_ceil(block).max(1) * block, 0);
                dev.pwrite(&part, sb.bucket_offset(b))
                    .map_err(|e| Error::io("pwrite index checkpoint", e))?;
            }
            dev.fdatasync()
                .map_err(|e| Error::io("fdatasync index checkpoint", e))
        };
        if let Err(e) = write() {
            release(&buckets);
            return Err(e);
        }
        let seq = self.ckpt.lock().seq + 1;
        let mut records = vec![Record::IndexCheckpoint {
            seq,
            buckets: buckets.clone(),
            len: blob.len() as u64,
        }];
        records.extend(self.identity.records());
        let appended = self
            .alloc
            .journal_append_with_gens(records)
            .map(|(seq, ring)| {
                self.ring_bytes.store(ring, Ordering::Relaxed);
                bump(&self.counters.journal_entries);
                seq
            });
        if let Err(e) = appended {
            release(&buckets);
            return Err(e);
        }
        for &b in &buckets {
            let _ = self.alloc.unpin(b);
        }
        let old = std::mem::replace(
            &mut *self.ckpt.lock(),
            CheckpointState {
                seq,
                buckets,
                at_ring_bytes: self.ring_bytes.load(Ordering::Relaxed),
            },
        );
        for b in old.buckets {
            if let Err(e) = self.alloc.bucket_free(b) {
                tracing::debug!(bucket = b, "old index checkpoint bucket not freed: {e}");
            }
        }
        bump(&self.counters.index_checkpoints);
        Ok(())
    }
}

/// Reads the blob of an index checkpoint.
fn load_checkpoint(alloc: &Cache, buckets: &[u32], len: u64) -> Result<Index> {
    let sb = alloc.superblock();
    let bucket_size = u64::from(sb.bucket_size);
    if len > bucket_size * buckets.len() as u64
        || buckets.iter().any(|&b| u64::from(b) >= sb.nbuckets)
    {
        return Err(Error::corrupt(
            "index checkpoint",
            "length or bucket out of range",
        ));
    }
    let mut distinct = buckets.to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    if distinct.len() != buckets.len() || (len as usize) < crate::index::format::INDEX_HDR {
        return Err(Error::corrupt(
            "index checkpoint",
            "repeated bucket or length below the header",
        ));
    }
    // The blob's own header must claim the same length before we allocate for it: a
    // crc-valid but crafted record cannot make us allocate more than the blob says it is.
    let mut head = vec![0u8; sb.block_size as usize];
    alloc
        .device()
        .pread(&mut head, sb.bucket_offset(buckets[0]))
        .map_err(|e| Error::io("pread index checkpoint", e))?;
    if head[..8] != crate::index::format::INDEX_MAGIC
        || crate::device::format::le_u64(&head, 16) != len
    {
        return Err(Error::corrupt(
            "index checkpoint",
            "its header does not match the journal record",
        ));
    }
    let mut blob = Vec::new();
    blob.try_reserve_exact(len as usize)
        .map_err(|_| Error::corrupt("index checkpoint", format!("{len} bytes do not fit")))?;
    blob.resize(len as usize, 0);
    for (i, chunk) in blob.chunks_mut(bucket_size as usize).enumerate() {
        alloc
            .device()
            .pread(chunk, sb.bucket_offset(buckets[i]))
            .map_err(|e| Error::io("pread index checkpoint", e))?;
    }
    Index::decode_checkpoint(sb.block_size, &blob)
}

/// What replay rebuilt.
pub struct Replayed {
    pub index: Index,
    pub identity: Identity,
    pub checkpoint: CheckpointState,
}

/// Rebuilds the index from the newest readable checkpoint and the journal after it
/// (recovery path steps 3-5 in docs/DESIGN.md).
pub fn replay(alloc: &Cache, counters: &Counters) -> Result<Replayed> {
    let sb = alloc.superblock().clone();
    let entries = crate::journal::scan(&**alloc.device(), &sb)?;
    // Slots are never reassigned, so every FsSlot record in the ring counts, wherever it is
    // (each index checkpoint entry repeats the whole table).
    let identity = Identity::new();
    for s in &entries {
        for r in &s.entry.records {
            if let Record::FsSlot {
                slot,
                fs_type,
                fsid,
                dev,
                dev_keyed,
            } = r
            {
                let key = FsKey {
                    fs_type: *fs_type,
                    fsid: *fsid,
                    dev: *dev,
                    dev_keyed: *dev_keyed,
                };
                identity.restore(*slot, key);
            }
        }
    }
    // newest checkpoint that loads
    let mut start = None;
    'find: for (pos, s) in entries.iter().enumerate().rev() {
        for r in &s.entry.records {
            if let Record::IndexCheckpoint { seq, buckets, len } = r {
                match load_checkpoint(alloc, buckets, *len) {
                    Ok(index) => {
                        start = Some((
                            pos,
                            index,
                            CheckpointState {
                                seq: *seq,
                                buckets: buckets.clone(),
                                at_ring_bytes: 0,
                            },
                        ));
                        break 'find;
                    }
                    Err(e) => tracing::warn!(seq, "skipping unreadable index checkpoint: {e}"),
                }
            }
        }
    }
    let (first, index, ckpt) = match start {
        Some((pos, index, ckpt)) => (pos + 1, index, ckpt),
        None => (
            entries.len(),
            Index::new(sb.block_size),
            CheckpointState::default(),
        ),
    };
    let mut expect = entries.get(first.wrapping_sub(1)).map(|s| s.entry.seq + 1);
    let mut applied = 0usize;
    let mut refused = 0usize;
    for s in entries.iter().skip(first) {
        if expect.is_some_and(|e| s.entry.seq != e) {
            tracing::info!(
                seq = s.entry.seq,
                "journal replay stops at a gap (torn tail)"
            );
            break;
        }
        expect = Some(s.entry.seq + 1);
        for r in &s.entry.records {
            if apply(&index, r, &sb) {
                applied += 1;
            } else {
                refused += 1;
            }
        }
    }
    if refused > 0 {
        tracing::warn!(refused, "journal replay ignored malformed keys");
    }
    // keys into buckets that were reused since are stale; keys of an unknown filesystem slot
    // (a cache file from before slots, a torn tail) cannot be trusted to name the right file
    let stale = index.retain(|file, e| {
        identity.knows_slot_of(file) && alloc.bucket_gen(e.ptr.bucket).ok() == Some(e.ptr.gen)
    });
    counters
        .stale_pointers
        .fetch_add(stale.len() as u64, Ordering::Relaxed);
    tracing::info!(
        records = applied,
        stale = stale.len(),
        extents = index.stats().extents,
        "journal replayed"
    );
    Ok(Replayed {
        index,
        identity,
        checkpoint: ckpt,
    })
}

/// Applies one replayed record; false when it was refused as malformed (a crc-valid entry
/// may still hold a crafted or buggy key: it is dropped alone, never trusted, never a panic).
fn apply(index: &Index, r: &Record, sb: &crate::device::format::Superblock) -> bool {
    let block = u64::from(sb.block_size);
    match r {
        Record::KeyInsert {
            file,
            offset,
            len,
            bucket,
            gen,
            bucket_offset,
            dirty,
            crcs,
        } => {
            let bytes = u64::from(*len) * SECTOR;
            let in_bucket = u64::from(*bucket_offset) * SECTOR + bytes;
            let well_formed = bytes > 0
                && offset % block == 0
                && bytes % block == 0
                && crcs.len() as u64 == bytes / block
                && offset.checked_add(bytes).is_some()
                && u64::from(*bucket) < sb.nbuckets
                && in_bucket <= u64::from(sb.bucket_size);
            if !well_formed {
                tracing::warn!(file, offset, "ignoring a malformed key in the journal");
                return false;
            }
            index.insert(
                *file,
                Extent {
                    offset: *offset,
                    len: bytes,
                    ptr: BucketPtr {
                        bucket: *bucket,
                        gen: *gen,
                        offset: *bucket_offset,
                    },
                    crcs: crcs.clone().into_boxed_slice(),
                    dirty: *dirty,
                },
            );
        }
        Record::KeyDelete { file, offset, len } => {
            if *offset == 0 && *len == u64::MAX {
                index.remove_file(*file);
            } else if *len == u64::MAX {
                index.truncate(*file, *offset);
            } else {
                index.remove_range(*file, *offset, *len);
            }
        }
        Record::SetValidator {
            file,
            size,
            mtime_ns,
            ctime_ns,
        } => index.set_validator(
            *file,
            Validator {
                size: *size,
                mtime_ns: *mtime_ns,
                ctime_ns: *ctime_ns,
            },
        ),
        Record::GensCheckpoint { .. } | Record::IndexCheckpoint { .. } | Record::FsSlot { .. } => {}
    }
    true
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
        Cache::format(&path, &g, false).unwrap();
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
        let alloc = Arc::new(Cache::open_device(dev.clone(), manual).unwrap());
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
        alloc.write_data(ptr, &data).unwrap();
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
