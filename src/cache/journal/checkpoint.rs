//! Index checkpoints: writing the whole index into metadata-reserve buckets (steps 2-5 of the
//! module header of `journal`) and reading one back at mount. Locks: the writer's io lock is
//! held by the caller of `write_checkpoint`; `ckpt` briefly. May block on cache-file I/O.

use std::sync::atomic::Ordering;

use super::JournalWriter;
use crate::alloc::{Allocator, Reserve};
use crate::cache::stats::bump;
use crate::error::{expect_ok, Error, Result};
use crate::index::Index;
use crate::journal::format::Record;

/// Where the current metadata checkpoint lives: the record every index checkpoint entry
/// repeats, and the buckets kept as metadata until a newer one replaces it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaLocation {
    pub seq: u64,
    pub buckets: Vec<u32>,
    pub len: u64,
}

impl MetaLocation {
    fn record(&self) -> Record {
        Record::MetaCheckpoint {
            seq: self.seq,
            buckets: self.buckets.clone(),
            len: self.len,
        }
    }
}

/// Where the current index checkpoint lives.
#[derive(Debug, Clone, Default)]
pub struct CheckpointState {
    pub seq: u64,
    pub buckets: Vec<u32>,
    /// Ring bytes appended (since open) when it was written.
    pub at_ring_bytes: u64,
}

impl JournalWriter {
    /// Writes an index checkpoint now (steps 1-5 of the module header).
    /// A failure poisons the cache set.
    pub fn checkpoint_now(&self) -> Result<()> {
        self.flush()?;
        let _io = self.io.lock();
        self.write_checkpoint().inspect_err(|e| self.fail(e))
    }

    /// Steps 2-5 of an index checkpoint; the caller holds the io lock.
    pub(super) fn write_checkpoint(&self) -> Result<()> {
        // handles of files with dirty keys, taken before the walk and again after it, so a
        // file dirtied or cleaned meanwhile is named either way
        let mut handles = self.handles.lock().clone();
        let mut attrs = self.attrs.lock().clone();
        let blob = self.index.encode_checkpoint();
        let buckets = self.write_blob(&blob)?;
        let release = |buckets: &[u32]| release_buckets(&self.alloc, buckets);
        let seq = self.ckpt.lock().seq + 1;
        let mut records = vec![Record::IndexCheckpoint {
            seq,
            buckets: buckets.clone(),
            len: blob.len() as u64,
        }];
        records.extend(self.identity.records());
        // the metadata checkpoint too: the ring must never wrap over the only entry naming it
        records.extend(self.meta.lock().as_ref().map(MetaLocation::record));
        handles.extend(self.handles.lock().iter().map(|(k, v)| (*k, v.clone())));
        let mut handles: Vec<_> = handles.into_iter().collect();
        handles.sort_by_key(|(file, _)| *file);
        records.extend(handles.into_iter().map(|(file, (handle_type, handle))| {
            Record::FileHandle {
                file,
                handle_type,
                handle,
            }
        }));
        // the dirty files' attributes, the newest of each (a write after the walk queued its
        // own record, which lands after this entry)
        attrs.extend(self.attrs.lock().iter().map(|(k, v)| (*k, *v)));
        let mut attrs: Vec<_> = attrs.into_iter().collect();
        attrs.sort_by_key(|(file, _)| *file);
        records.extend(attrs.into_iter().map(|(file, a)| a.record(file)));
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
            expect_ok(self.alloc.unpin(b), "unpin a checkpoint bucket");
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

impl JournalWriter {
    /// Writes `blob` into fresh metadata-reserve buckets and fdatasyncs it; returns them,
    /// pinned (the caller unpins them once a journal entry names them, or releases them).
    fn write_blob(&self, blob: &[u8]) -> Result<Vec<u32>> {
        let sb = self.alloc.superblock().clone();
        let bucket_size = sb.bucket_size as usize;
        let parts = blob.len().div_ceil(bucket_size).max(1);
        let mut buckets = Vec::with_capacity(parts);
        for _ in 0..parts {
            match self.alloc.bucket_alloc(Reserve::Metadata, true) {
                Ok((b, _gen)) => buckets.push(b),
                Err(e) => {
                    release_buckets(&self.alloc, &buckets);
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
                    .map_err(|e| Error::io("pwrite checkpoint", e))?;
            }
            dev.fdatasync()
                .map_err(|e| Error::io("fdatasync checkpoint", e))
        };
        if let Err(e) = write() {
            release_buckets(&self.alloc, &buckets);
            return Err(e);
        }
        Ok(buckets)
    }

    /// Writes a metadata cache checkpoint (`blob`, see `meta::format`) and names it in the
    /// journal, alone in its entry: at a clean unmount after the final index checkpoint (so
    /// that it is the newest entry, which replay requires to trust it), or as a periodic
    /// snapshot. Its buckets stay metadata (for GC) until the next one replaces it; then the
    /// previous one's are freed.
    pub fn write_meta_checkpoint(&self, blob: &[u8]) -> Result<()> {
        self.flush()?;
        let _io = self.io.lock();
        let buckets = self.write_blob(blob)?;
        let location = MetaLocation {
            seq: self.ckpt.lock().seq,
            buckets: buckets.clone(),
            len: blob.len() as u64,
        };
        let appended = self.alloc.journal_append(vec![location.record()]);
        for &b in &buckets {
            expect_ok(self.alloc.unpin(b), "unpin a metadata checkpoint bucket");
        }
        match appended {
            Ok((_, ring)) => {
                self.ring_bytes.store(ring, Ordering::Relaxed);
                bump(&self.counters.journal_entries);
                bump(&self.counters.metadata_checkpoints);
                let old = self.meta.lock().replace(location);
                for b in old.map(|o| o.buckets).unwrap_or_default() {
                    if let Err(e) = self.alloc.bucket_free(b) {
                        tracing::debug!(
                            bucket = b,
                            "old metadata checkpoint bucket not freed: {e}"
                        );
                    }
                }
                Ok(())
            }
            Err(e) => {
                for &b in &buckets {
                    let _ = self.alloc.bucket_free(b);
                }
                Err(e)
            }
        }
    }
}

/// Unpins and frees buckets a checkpoint did not end up using.
fn release_buckets(alloc: &Allocator, buckets: &[u32]) {
    for &b in buckets {
        expect_ok(alloc.unpin(b), "unpin a checkpoint bucket");
        expect_ok(alloc.bucket_free(b), "free an unused checkpoint bucket");
    }
}

/// Reads a checkpoint blob (`magic` at its start, its length at byte 16) of `len` bytes
/// from `buckets`, checking the header before allocating for it.
pub(super) fn load_blob(
    alloc: &Allocator,
    buckets: &[u32],
    len: u64,
    magic: &[u8; 8],
) -> Result<Vec<u8>> {
    let sb = alloc.superblock();
    let bucket_size = u64::from(sb.bucket_size);
    if len > bucket_size * buckets.len() as u64
        || buckets.iter().any(|&b| u64::from(b) >= sb.nbuckets)
        || len < 24
    {
        return Err(Error::corrupt(
            "checkpoint",
            "length or bucket out of range",
        ));
    }
    let mut distinct = buckets.to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    if distinct.len() != buckets.len() {
        return Err(Error::corrupt("checkpoint", "repeated bucket"));
    }
    let mut head = vec![0u8; sb.block_size as usize];
    alloc
        .device()
        .pread(&mut head, sb.bucket_offset(buckets[0]))
        .map_err(|e| Error::io("pread checkpoint", e))?;
    if head[..8] != magic[..] || crate::device::format::le_u64(&head, 16) != len {
        return Err(Error::corrupt(
            "checkpoint",
            "its header does not match the journal record",
        ));
    }
    let mut blob = Vec::new();
    blob.try_reserve_exact(len as usize)
        .map_err(|_| Error::corrupt("checkpoint", format!("{len} bytes do not fit")))?;
    blob.resize(len as usize, 0);
    for (i, chunk) in blob.chunks_mut(bucket_size as usize).enumerate() {
        alloc
            .device()
            .pread(chunk, sb.bucket_offset(buckets[i]))
            .map_err(|e| Error::io("pread checkpoint", e))?;
    }
    Ok(blob)
}

/// Reads the blob of an index checkpoint.
pub(super) fn load_checkpoint(alloc: &Allocator, buckets: &[u32], len: u64) -> Result<Index> {
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
