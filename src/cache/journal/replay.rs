//! Replay at mount (recovery path steps 4-5 in docs/DESIGN.md): the slot table from every
//! `FsSlot` record, the newest index checkpoint that loads, then every entry after it in seq
//! order up to a torn tail; malformed keys are dropped alone. Runs before the cache set is
//! shared: no locks of ours. May block on cache-file I/O.

use std::sync::atomic::Ordering;

use super::checkpoint::{load_blob, load_checkpoint, CheckpointState, MetaLocation};
use crate::alloc::{Allocator, BucketPtr};
use crate::cache::identity::{FsKey, Identity};
use crate::cache::stats::Counters;
use crate::device::format::SECTOR;
use crate::error::Result;
use crate::index::{Extent, Index, Validator};
use crate::journal::format::Record;

/// What replay rebuilt.
pub struct Replayed {
    pub index: Index,
    /// Bytes of dirty (not yet written back) data the replayed keys held, before stale or
    /// untrusted keys were dropped.
    pub dirty_bytes: u64,
    /// Bytes of dirty keys replay could not trust (stale gen, unknown slot): the cache set
    /// refuses to mount such a file unless told to drop them (`-o drop_dirty`), never a
    /// silent drop.
    pub untrusted_dirty: u64,
    /// The newest `FileHandle` of every file the ring names (writeback reopens dirty files
    /// by it).
    pub handles: std::collections::HashMap<crate::index::FileId, (i32, Vec<u8>)>,
    /// The newest `DirtyAttr` of every file the replayed entries name; the mount keeps those
    /// of files still dirty once untrusted keys are dropped (a file whose keys are all clean
    /// has its attributes on the backing: writeback sets them before its `KeyClean`).
    pub attrs: std::collections::HashMap<crate::index::FileId, super::DirtyAttr>,
    pub identity: Identity,
    pub checkpoint: CheckpointState,
    /// What replay found and left out, for `fsck` (the mount only logs it).
    pub report: ReplayReport,
    /// The newest metadata cache checkpoint's blob, and whether it may be trusted: its record
    /// is alone in the journal's newest entry (a clean unmount wrote it, nothing after).
    pub meta: Option<(Vec<u8>, bool)>,
    /// Where it lives (metadata buckets until a newer metadata checkpoint replaces it).
    pub meta_location: Option<MetaLocation>,
}

/// What replay skipped or dropped.
#[derive(Debug, Default)]
pub struct ReplayReport {
    /// Index checkpoints named by a journal entry that did not load: (seq, why).
    pub unreadable_checkpoints: Vec<(u64, String)>,
    /// Malformed key records refused.
    pub refused_records: usize,
    /// Keys dropped because their gen is not their bucket's (or their slot is unknown).
    pub stale: Vec<(crate::index::FileId, Extent)>,
    /// Journal entries scanned.
    pub entries: usize,
    /// Replay stopped at a gap in the sequence (a torn tail, as a crash leaves one): the
    /// seq it expected, and how many later entries it ignored.
    pub torn_tail: Option<(u64, usize)>,
    /// Metadata checkpoints named in the journal that did not load, newest first: (seq, why).
    pub unreadable_meta: Vec<(u64, String)>,
}

/// Rebuilds the index from the newest readable checkpoint and the journal after it
/// (recovery path steps 3-5 in docs/DESIGN.md).
pub fn replay(alloc: &Allocator, counters: &Counters) -> Result<Replayed> {
    let sb = alloc.superblock().clone();
    let entries = crate::journal::scan(&**alloc.device(), &sb)?;
    // Slots are never reassigned, so every FsSlot record in the ring counts, wherever it is
    // (each index checkpoint entry repeats the whole table).
    let identity = Identity::new();
    for s in &entries {
        for (slot, key) in s.entry.records.iter().filter_map(FsKey::from_record) {
            identity.restore(slot, key);
        }
    }
    // Handles never change for a file id (one inode), so every FileHandle in the ring
    // counts; each index checkpoint entry repeats those of the files with dirty keys.
    let mut handles = std::collections::HashMap::new();
    for s in &entries {
        for r in &s.entry.records {
            if let Record::FileHandle {
                file,
                handle_type,
                handle,
            } = r
            {
                handles.insert(*file, (*handle_type, handle.clone()));
            }
        }
    }
    // newest checkpoint that loads
    let mut start = None;
    let mut report = ReplayReport {
        entries: entries.len(),
        ..ReplayReport::default()
    };
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
                    Err(e) => {
                        tracing::warn!(seq, "skipping unreadable index checkpoint: {e}");
                        report.unreadable_checkpoints.push((*seq, e.to_string()));
                    }
                }
            }
        }
    }
    let start_found = start.is_some();
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
    // dirty files' attributes: the checkpoint's entry repeats the current ones, later
    // entries carry each dirty write's, newest last
    let mut attrs = std::collections::HashMap::new();
    if start_found {
        attrs.extend(
            entries[first - 1]
                .entry
                .records
                .iter()
                .filter_map(super::DirtyAttr::from_record),
        );
    }
    for (pos, s) in entries.iter().enumerate().skip(first) {
        if let Some(e) = expect.filter(|&e| s.entry.seq != e) {
            tracing::info!(
                seq = s.entry.seq,
                "journal replay stops at a gap (torn tail)"
            );
            report.torn_tail = Some((e, entries.len() - pos));
            break;
        }
        expect = Some(s.entry.seq + 1);
        for r in &s.entry.records {
            attrs.extend(super::DirtyAttr::from_record(r));
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
    let mut dirty_bytes = 0u64;
    index.for_each_extent(|_, e| {
        if e.dirty {
            dirty_bytes += e.len;
        }
    });
    // keys into buckets that were reused since are stale; keys of an unknown filesystem slot
    // (a cache file from before slots, a torn tail) cannot be trusted to name the right file
    let stale = index.retain(|file, e| {
        identity.knows_slot_of(file) && alloc.bucket_gen(e.ptr.bucket).ok() == Some(e.ptr.gen)
    });
    counters
        .stale_pointers
        .fetch_add(stale.len() as u64, Ordering::Relaxed);
    let untrusted_dirty: u64 = stale
        .iter()
        .filter(|(_, e)| e.dirty)
        .map(|(_, e)| e.len)
        .sum();
    if untrusted_dirty > 0 {
        tracing::error!(
            bytes = untrusted_dirty,
            "journal replay found dirty keys it cannot trust (stale gen or unknown slot)"
        );
    }
    tracing::info!(
        records = applied,
        stale = stale.len(),
        extents = index.stats().extents,
        "journal replayed"
    );
    report.refused_records = refused;
    report.stale = stale;
    let (meta, meta_location) = match newest_meta_checkpoint(alloc, &entries, &mut report) {
        Some((blob, trusted, location)) => (Some((blob, trusted)), Some(location)),
        None => (None, None),
    };
    Ok(Replayed {
        index,
        dirty_bytes,
        untrusted_dirty,
        handles,
        attrs,
        identity,
        checkpoint: ckpt,
        report,
        meta,
        meta_location,
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
        Record::KeyClean { file, offset, len } => index.mark_clean_range(*file, *offset, *len),
        Record::GensCheckpoint { .. }
        | Record::FileHandle { .. }
        | Record::DirtyAttr { .. }
        | Record::IndexCheckpoint { .. }
        | Record::MetaCheckpoint { .. }
        | Record::FsSlot { .. } => {}
    }
    true
}

/// The newest metadata checkpoint that loads, and whether it may be trusted: its record is
/// the journal's newest entry and alone in it, as a clean unmount writes it. (Every index
/// checkpoint entry repeats the current record so that the ring never wraps over it; such
/// a repetition, e.g. the one a mount writes, says the checkpoint is no longer the last
/// word. The blob's own clean flag is the other half of the rule, checked by its reader.)
fn newest_meta_checkpoint(
    alloc: &Allocator,
    entries: &[crate::journal::Scanned],
    report: &mut ReplayReport,
) -> Option<(Vec<u8>, bool, MetaLocation)> {
    let last = entries.last()?.entry.seq;
    for s in entries.iter().rev() {
        for r in &s.entry.records {
            if let Record::MetaCheckpoint { seq, buckets, len } = r {
                match load_blob(alloc, buckets, *len, &crate::meta::format::META_MAGIC) {
                    Ok(blob) => {
                        let alone = s.entry.seq == last && s.entry.records.len() == 1;
                        let location = MetaLocation {
                            seq: *seq,
                            buckets: buckets.clone(),
                            len: *len,
                        };
                        return Some((blob, alone, location));
                    }
                    // the usual cause: a mount loaded it and reused its buckets, then crashed
                    // before its own clean unmount wrote a newer one; the cache starts cold
                    Err(e) => {
                        tracing::info!(seq, "older metadata checkpoint not used: {e}");
                        report.unreadable_meta.push((*seq, e.to_string()));
                    }
                }
            }
        }
    }
    None
}

/// Without opening the cache file for writing: may it hold dirty data? True when the
/// newest index checkpoint entry names a file handle (a file with dirty keys) or a dirty
/// key was journaled after it. Conservative (a key cleaned since still counts): a mount in
/// mode none, which never opens the file, refuses on it unless told to go on.
pub fn may_hold_dirty(path: &std::path::Path) -> Result<bool> {
    let f = std::fs::File::open(path).map_err(|e| crate::error::Error::io("open cache file", e))?;
    let dev = crate::device::FileDevice::new(f);
    let sb = crate::alloc::read_superblock(&dev)?;
    let entries = crate::journal::scan(&dev, &sb)?;
    let newest_ckpt = entries.iter().rposition(|s| {
        s.entry
            .records
            .iter()
            .any(|r| matches!(r, Record::IndexCheckpoint { .. }))
    });
    let from = match newest_ckpt {
        Some(pos) => {
            let named = entries[pos]
                .entry
                .records
                .iter()
                .any(|r| matches!(r, Record::FileHandle { .. }));
            if named {
                return Ok(true);
            }
            pos + 1
        }
        None => 0,
    };
    Ok(entries[from..].iter().any(|s| {
        s.entry
            .records
            .iter()
            .any(|r| matches!(r, Record::KeyInsert { dirty: true, .. }))
    }))
}
