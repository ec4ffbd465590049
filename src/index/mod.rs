//! The in-memory key index: which blocks of which backing file are cached where.
//!
//! # Model
//!
//! For every backing file (a [`FileId`]) the index keeps a `FileExtents`: the file's
//! [`Validator`] (size, mtime, ctime when it was cached) and a `BTreeMap` from file offset to
//! [`Extent`]. An extent is a key in bcache's sense: a block-aligned run of the file that lives
//! contiguously in one bucket of the cache file, at `(bucket, gen, offset in sectors)`, with one
//! crc32c per block. Block `i` of an extent lives at sector `ptr.offset + i * block_size / 512`
//! of bucket `ptr.bucket`.
//!
//! The index does not know bucket gens: it stores pointers as given. Whether a pointer is still
//! valid (`ptr.gen == bucket.gen`, crc matches) is decided by the reader, which then drops the
//! key with [`Index::remove_if_matches`]; GC drops stale keys in bulk with [`Index::retain`].
//!
//! [`Index::insert`] overwrites: every existing extent under the new one is trimmed (split in
//! two when the new one lands in its middle) and the overwritten pieces are returned so the
//! caller can give their sectors back to their buckets. The new extent is then merged with a
//! neighbour that is adjacent both in the file and in the same bucket (same gen, same dirty
//! flag), so sequential fills make one extent per bucket rather than one per write.
//!
//! # Invariants
//!
//! * Per file, extents never overlap, and the map key is the extent's `offset`.
//! * Every extent is block-aligned: `offset % block_size == 0`, `len % block_size == 0`,
//!   `len > 0`, `crcs.len() == len / block_size`; `offset + len` does not overflow, and the
//!   extent's sectors fit in a `u32` offset (it never crosses a bucket, by its writer's promise).
//! * No two extents adjacent in a file are [`Extent::contiguous_with`] each other (they were
//!   merged on insert; removals only ever leave gaps). The model test checks this.
//! * A file entry exists only while it has an extent or a validator.
//!
//! # Locks and blocking
//!
//! The map is cut into [`SHARDS`] shards, each a `parking_lot::Mutex<HashMap<FileId,
//! FileExtents>>`; a file lives in one shard chosen by a hash of its id. Every method takes one
//! shard lock at a time, briefly, and never holds it across I/O or across a call into another
//! subsystem. There is no global lock: lookups of files in different shards never contend.
//! [`Index::for_each_extent`] and [`Index::retain`] call their closure with the shard lock held,
//! so the closure must not call back into the index (it would deadlock on that shard).
//! Nothing here blocks except on a shard lock; nothing does I/O.
//!
//! Multi-shard walks ([`Index::for_each_extent`], [`Index::retain`], [`Index::stats`],
//! [`Index::encode_checkpoint`]) see each shard at a different instant: they are not a snapshot
//! of the whole index. A checkpoint is therefore only consistent together with the journal
//! records written after the journal position taken *before* the walk began (replaying an
//! insert or a delete twice is harmless: both are idempotent overwrites).

pub mod format;

use std::collections::{BTreeMap, HashMap};

use parking_lot::Mutex;

use crate::device::format::SECTOR;
use crate::key::BucketPtr;

pub use crate::key::FileId;

/// Number of shards of the index map (a power of two).
pub const SHARDS: usize = 64;

/// A cached, block-aligned run of a file that lives contiguously in one bucket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Extent {
    /// File byte offset of the first block (block aligned).
    pub offset: u64,
    /// Length in bytes (a positive multiple of the block size).
    pub len: u64,
    /// Where the first block lives; block `i` is at sector `ptr.offset + i * block_size / 512`.
    pub ptr: BucketPtr,
    /// crc32c of each block, `len / block_size` entries.
    pub crcs: Box<[u32]>,
    /// Not yet written back to the backing (writeback mode).
    pub dirty: bool,
}

impl Extent {
    /// File offset one past the last byte.
    pub fn end(&self) -> u64 {
        self.offset + self.len
    }

    /// Number of blocks (== `crcs.len()`).
    pub fn blocks(&self) -> u64 {
        self.crcs.len() as u64
    }

    /// Length in 512-byte sectors (what the extent uses of its bucket).
    pub fn sectors(&self) -> u64 {
        self.len / SECTOR
    }

    /// Block size this extent was built with (`len / blocks`); 0 for a malformed empty extent.
    pub fn block_size(&self) -> u64 {
        self.len.checked_div(self.blocks()).unwrap_or(0)
    }

    /// The block-aligned sub-range `[from, to)` of this extent: `ptr.offset` advanced by the
    /// sectors skipped, `crcs` sliced.
    ///
    /// # Panics
    ///
    /// When `[from, to)` is empty, not inside the extent, or not block-aligned.
    pub fn slice(&self, from: u64, to: u64) -> Extent {
        let bs = self.block_size();
        assert!(
            bs > 0 && self.offset <= from && from < to && to <= self.end(),
            "Extent::slice({from}, {to}) outside [{}, {})",
            self.offset,
            self.end()
        );
        assert!(
            (from - self.offset) % bs == 0 && (to - self.offset) % bs == 0,
            "Extent::slice({from}, {to}) not aligned to {bs}-byte blocks"
        );
        if from == self.offset && to == self.end() {
            return self.clone();
        }
        let first = ((from - self.offset) / bs) as usize;
        let last = ((to - self.offset) / bs) as usize;
        Extent {
            offset: from,
            len: to - from,
            ptr: BucketPtr {
                offset: self.ptr.offset + ((from - self.offset) / SECTOR) as u32,
                ..self.ptr
            },
            crcs: self.crcs[first..last].into(),
            dirty: self.dirty,
        }
    }

    /// True when `next` continues this extent both in the file and in the cache file: same
    /// bucket and gen, `next` starts where this ends in the file and in the bucket, same dirty
    /// flag. Two such extents can be one.
    pub fn contiguous_with(&self, next: &Extent) -> bool {
        self.ptr.bucket == next.ptr.bucket
            && self.ptr.gen == next.ptr.gen
            && self.dirty == next.dirty
            && self.offset.checked_add(self.len) == Some(next.offset)
            && u64::from(self.ptr.offset) + self.sectors() == u64::from(next.ptr.offset)
    }

    /// Concatenate `next` (which must be `contiguous_with` self) onto self.
    fn merge(self, next: Extent) -> Extent {
        debug_assert!(self.contiguous_with(&next));
        let mut crcs = Vec::with_capacity(self.crcs.len() + next.crcs.len());
        crcs.extend_from_slice(&self.crcs);
        crcs.extend_from_slice(&next.crcs);
        Extent {
            offset: self.offset,
            len: self.len + next.len,
            ptr: self.ptr,
            crcs: crcs.into_boxed_slice(),
            dirty: self.dirty,
        }
    }
}

/// What says a backing file is unchanged since it was cached (invariant 7).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Validator {
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
}

/// One file's state in the index.
#[derive(Debug, Default)]
struct FileExtents {
    validator: Option<Validator>,
    /// Keyed by `Extent::offset`; never overlapping.
    extents: BTreeMap<u64, Extent>,
}

impl FileExtents {
    fn is_empty(&self) -> bool {
        self.validator.is_none() && self.extents.is_empty()
    }
}

/// Counters over the whole index (each shard counted at its own instant).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IndexStats {
    /// Files with an extent or a validator.
    pub files: u64,
    /// Extents (after merging).
    pub extents: u64,
    /// Sum of extent lengths, bytes (of the live ones, from [`Index::stats_live`]).
    pub cached_bytes: u64,
    /// Estimate of the heap the index uses, bytes (tables, tree nodes, crc arrays, malloc
    /// overhead). `tests/index_memory.rs` checks it against a counting allocator.
    pub heap_bytes_estimate: u64,
}

type Shard = HashMap<FileId, FileExtents>;

/// The key index: a sharded map from file to its extents. See the module header.
pub struct Index {
    block_size: u32,
    shards: Box<[Mutex<Shard>]>,
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index")
            .field("block_size", &self.block_size)
            .field("stats", &self.stats())
            .finish()
    }
}

/// True for a block size the index accepts: a power of two, at least one sector.
pub fn valid_block_size(block_size: u32) -> bool {
    u64::from(block_size) >= SECTOR && block_size.is_power_of_two()
}

impl Index {
    /// An empty index for a cache with `block_size`-byte blocks.
    ///
    /// # Panics
    ///
    /// When `block_size` is not a power of two of at least 512 (the superblock guarantees it).
    pub fn new(block_size: u32) -> Index {
        assert!(
            valid_block_size(block_size),
            "index block size {block_size} is not a power of two >= 512"
        );
        Index {
            block_size,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    /// The block size every extent is aligned to.
    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    fn bs(&self) -> u64 {
        u64::from(self.block_size)
    }

    fn shard(&self, file: FileId) -> &Mutex<Shard> {
        // Fibonacci hashing: file ids are often sequential inode numbers.
        let h = file.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - SHARDS.trailing_zeros());
        &self.shards[h as usize]
    }

    /// The largest block-aligned file offset representable in a u64.
    fn max_end(&self) -> u64 {
        u64::MAX / self.bs() * self.bs()
    }

    /// `[offset, offset + len)` rounded out to whole blocks; `None` when empty.
    fn round_out(&self, offset: u64, len: u64) -> Option<(u64, u64)> {
        if len == 0 {
            return None;
        }
        let bs = self.bs();
        let start = offset / bs * bs;
        let end = offset.saturating_add(len);
        let end = match end.checked_next_multiple_of(bs) {
            Some(e) => e.min(self.max_end()),
            None => self.max_end(),
        };
        (start < end).then_some((start, end))
    }

    fn check_extent(&self, ext: &Extent) {
        let bs = self.bs();
        assert!(
            ext.len > 0
                && ext.offset % bs == 0
                && ext.len % bs == 0
                && ext.crcs.len() as u64 == ext.len / bs
                && ext.offset.checked_add(ext.len).is_some()
                && u64::from(ext.ptr.offset) + ext.len / SECTOR <= u64::from(u32::MAX),
            "malformed extent for {bs}-byte blocks: offset {} len {} crcs {} ptr {:?}",
            ext.offset,
            ext.len,
            ext.crcs.len(),
            ext.ptr
        );
    }

    /// Insert `ext` for `file`, overwriting whatever it overlaps, and merge it with contiguous
    /// neighbours. Returns the displaced pieces (exactly the overwritten ranges), in file order.
    ///
    /// # Panics
    ///
    /// When `ext` breaks the extent invariants (see the module header).
    pub fn insert(&self, file: FileId, ext: Extent) -> Vec<Extent> {
        self.check_extent(&ext);
        let mut shard = self.shard(file).lock();
        let fe = shard.entry(file).or_default();
        let displaced = cut(&mut fe.extents, ext.offset, ext.end());
        insert_merged(&mut fe.extents, ext);
        displaced
    }

    /// The extents overlapping `[offset, offset + len)` rounded out to blocks, each sliced to
    /// that rounded range, in file order. Gaps are absent.
    pub fn lookup(&self, file: FileId, offset: u64, len: u64) -> Vec<Extent> {
        let Some((start, end)) = self.round_out(offset, len) else {
            return Vec::new();
        };
        let shard = self.shard(file).lock();
        let Some(fe) = shard.get(&file) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        if let Some((_, x)) = fe.extents.range(..start).next_back() {
            if x.end() > start {
                out.push(x.slice(start, x.end().min(end)));
            }
        }
        for (_, x) in fe.extents.range(start..end) {
            out.push(x.slice(x.offset, x.end().min(end)));
        }
        out
    }

    /// Every extent of `file`, in file order.
    pub fn extents(&self, file: FileId) -> Vec<Extent> {
        let shard = self.shard(file).lock();
        shard
            .get(&file)
            .map(|fe| fe.extents.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Drop every block that `[offset, offset + len)` touches (rounded outward). Returns the
    /// removed pieces in file order.
    pub fn remove_range(&self, file: FileId, offset: u64, len: u64) -> Vec<Extent> {
        let Some((start, end)) = self.round_out(offset, len) else {
            return Vec::new();
        };
        self.cut_file(file, start, end)
    }

    /// Forget `file`: its extents (returned, in file order) and its validator.
    pub fn remove_file(&self, file: FileId) -> Vec<Extent> {
        let mut shard = self.shard(file).lock();
        shard
            .remove(&file)
            .map(|fe| fe.extents.into_values().collect())
            .unwrap_or_default()
    }

    /// The file was truncated to `new_size`: keep only blocks entirely below it (a partial last
    /// block is dropped). Returns the removed pieces in file order. The validator is untouched.
    pub fn truncate(&self, file: FileId, new_size: u64) -> Vec<Extent> {
        let bs = self.bs();
        self.cut_file(file, new_size / bs * bs, u64::MAX)
    }

    fn cut_file(&self, file: FileId, start: u64, end: u64) -> Vec<Extent> {
        let mut shard = self.shard(file).lock();
        let Some(fe) = shard.get_mut(&file) else {
            return Vec::new();
        };
        let removed = cut(&mut fe.extents, start, end);
        if fe.is_empty() {
            shard.remove(&file);
        }
        removed
    }

    /// Drop the whole extent covering `offset`, but only if it still points at `ptr.bucket`
    /// with `ptr.gen` (`ptr.offset` is not compared). For a reader that found a stale gen or a
    /// bad crc: an extent a concurrent insert put there since (another bucket or gen) is kept.
    pub fn remove_if_matches(&self, file: FileId, offset: u64, ptr: BucketPtr) -> Option<Extent> {
        let mut shard = self.shard(file).lock();
        let fe = shard.get_mut(&file)?;
        let (&k, x) = fe.extents.range(..=offset).next_back()?;
        if x.end() <= offset || x.ptr.bucket != ptr.bucket || x.ptr.gen != ptr.gen {
            return None;
        }
        let removed = fe.extents.remove(&k);
        if fe.is_empty() {
            shard.remove(&file);
        }
        removed
    }

    /// Moving GC: put `new` (the same file range, data copied elsewhere) in place of `old`,
    /// but only if `[old.offset, old.end())` is still covered exactly by pieces of `old` (same
    /// bucket and gen, same sectors). Anything changed since the copy was read (a write, a
    /// fill, an invalidation) wins and `new` is dropped. True when replaced.
    pub fn replace_if_unchanged(&self, file: FileId, old: &Extent, new: Extent) -> bool {
        self.check_extent(&new);
        if new.offset != old.offset || new.len != old.len {
            return false;
        }
        let mut shard = self.shard(file).lock();
        let Some(fe) = shard.get_mut(&file) else {
            return false;
        };
        let mut at = old.offset;
        let first = fe.extents.range(..=old.offset).next_back().map(|(&k, _)| k);
        let keys: Vec<u64> = match first {
            Some(k) => fe.extents.range(k..old.end()).map(|(&k, _)| k).collect(),
            None => return false,
        };
        for k in keys {
            let x = &fe.extents[&k];
            if x.end() <= at {
                continue;
            }
            let same_place = x.ptr.bucket == old.ptr.bucket
                && x.ptr.gen == old.ptr.gen
                && x.offset <= at
                && u64::from(x.ptr.offset) + (at - x.offset) / SECTOR
                    == u64::from(old.ptr.offset) + (at - old.offset) / SECTOR;
            if !same_place {
                return false;
            }
            at = x.end().min(old.end());
            if at == old.end() {
                break;
            }
        }
        if at != old.end() {
            return false;
        }
        drop(shard);
        // Nothing else can change this range between the check and the insert while the
        // caller holds the cache's change lock; fills of the same data are harmless.
        self.insert(file, new);
        true
    }

    // ---- writeback (dirty extents) ----

    /// Writeback: make `written` (a slice of `file`'s index read before its bytes were
    /// written back) clean, but only if its range is still covered exactly by the same
    /// pointer, as [`Index::replace_if_unchanged`] checks; a write since then wins and the
    /// range stays dirty. True when cleaned.
    pub fn clean_if_unchanged(&self, file: FileId, written: &Extent) -> bool {
        let mut shard = self.shard(file).lock();
        let Some(fe) = shard.get_mut(&file) else {
            return false;
        };
        if !covered_by(&fe.extents, written) {
            return false;
        }
        let mut clean = written.clone();
        clean.dirty = false;
        cut(&mut fe.extents, clean.offset, clean.end());
        insert_merged(&mut fe.extents, clean);
        true
    }

    /// Replay of a `KeyClean`: every extent in `[offset, offset + len)` becomes clean.
    pub fn mark_clean_range(&self, file: FileId, offset: u64, len: u64) {
        let Some((start, end)) = self.round_out(offset, len) else {
            return;
        };
        let mut shard = self.shard(file).lock();
        let Some(fe) = shard.get_mut(&file) else {
            return;
        };
        for mut x in cut(&mut fe.extents, start, end) {
            x.dirty = false;
            insert_merged(&mut fe.extents, x);
        }
    }

    /// Bytes of `file` not yet written back.
    pub fn dirty_bytes(&self, file: FileId) -> u64 {
        let shard = self.shard(file).lock();
        shard.get(&file).map_or(0, |fe| {
            fe.extents.values().filter(|x| x.dirty).map(|x| x.len).sum()
        })
    }

    /// The dirty extents of `file`, in file order.
    pub fn dirty_extents(&self, file: FileId) -> Vec<Extent> {
        let shard = self.shard(file).lock();
        shard
            .get(&file)
            .map(|fe| fe.extents.values().filter(|x| x.dirty).cloned().collect())
            .unwrap_or_default()
    }

    /// Every file holding dirty extents, with its dirty bytes (a walk of every shard).
    pub fn dirty_files(&self) -> Vec<(FileId, u64)> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let shard = shard.lock();
            for (&file, fe) in shard.iter() {
                let d: u64 = fe.extents.values().filter(|x| x.dirty).map(|x| x.len).sum();
                if d > 0 {
                    out.push((file, d));
                }
            }
        }
        out
    }

    /// Forget `file`'s clean extents, keeping its dirty ones and its validator. Returns the
    /// removed extents, in file order. With no dirty extent this is [`Index::remove_file`]
    /// (the validator goes too).
    pub fn remove_clean(&self, file: FileId) -> Vec<Extent> {
        let mut shard = self.shard(file).lock();
        let Some(fe) = shard.get_mut(&file) else {
            return Vec::new();
        };
        if !fe.extents.values().any(|x| x.dirty) {
            return shard
                .remove(&file)
                .map(|fe| fe.extents.into_values().collect())
                .unwrap_or_default();
        }
        let doomed: Vec<u64> = fe
            .extents
            .iter()
            .filter(|(_, x)| !x.dirty)
            .map(|(&k, _)| k)
            .collect();
        doomed
            .into_iter()
            .filter_map(|k| fe.extents.remove(&k))
            .collect()
    }

    /// The validator recorded for `file`.
    pub fn validator(&self, file: FileId) -> Option<Validator> {
        self.shard(file)
            .lock()
            .get(&file)
            .and_then(|fe| fe.validator)
    }

    /// Record `file`'s validator. Extents are left alone: dropping them when the validator
    /// changed is the caller's decision.
    pub fn set_validator(&self, file: FileId, v: Validator) {
        self.shard(file).lock().entry(file).or_default().validator = Some(v);
    }

    /// Call `f` for every extent, shard by shard, with that shard's lock held: `f` must not call
    /// into the index. Order: files in no particular order, extents of a file in file order.
    pub fn for_each_extent(&self, mut f: impl FnMut(FileId, &Extent)) {
        for shard in self.shards.iter() {
            let shard = shard.lock();
            for (&file, fe) in shard.iter() {
                for x in fe.extents.values() {
                    f(file, x);
                }
            }
        }
    }

    /// Keep only the extents for which `f` returns true; returns the dropped ones. `f` runs with
    /// a shard lock held and must not call into the index.
    pub fn retain(&self, mut f: impl FnMut(FileId, &Extent) -> bool) -> Vec<(FileId, Extent)> {
        let mut dropped = Vec::new();
        for shard in self.shards.iter() {
            let mut shard = shard.lock();
            for (&file, fe) in shard.iter_mut() {
                let doomed: Vec<u64> = fe
                    .extents
                    .iter()
                    .filter(|(_, x)| !f(file, x))
                    .map(|(&k, _)| k)
                    .collect();
                for k in doomed {
                    if let Some(x) = fe.extents.remove(&k) {
                        dropped.push((file, x));
                    }
                }
            }
            shard.retain(|_, fe| !fe.is_empty());
        }
        dropped
    }

    /// Counters and a heap estimate, shard by shard; every extent counts as cached.
    pub fn stats(&self) -> IndexStats {
        self.stats_live(|_| true)
    }

    /// As [`Index::stats`], but `cached_bytes` counts only the extents `live` accepts (the
    /// others are stale keys into reused buckets, still indexed until GC or a read drops them).
    pub fn stats_live(&self, live: impl Fn(&crate::alloc::BucketPtr) -> bool) -> IndexStats {
        let mut s = IndexStats {
            heap_bytes_estimate: (SHARDS * std::mem::size_of::<Mutex<Shard>>()) as u64,
            ..IndexStats::default()
        };
        for shard in self.shards.iter() {
            let shard = shard.lock();
            s.files += shard.len() as u64;
            s.heap_bytes_estimate += heap::table(shard.capacity());
            for fe in shard.values() {
                s.extents += fe.extents.len() as u64;
                s.heap_bytes_estimate += heap::tree(fe.extents.len());
                for x in fe.extents.values() {
                    if live(&x.ptr) {
                        s.cached_bytes += x.len;
                    }
                    s.heap_bytes_estimate += heap::crcs(x.crcs.len());
                }
            }
        }
        s
    }
}

/// True when `[old.offset, old.end())` is covered exactly by pieces of `old` (same bucket,
/// gen and sectors, dirty as it was).
fn covered_by(map: &BTreeMap<u64, Extent>, old: &Extent) -> bool {
    let mut at = old.offset;
    let Some(first) = map.range(..=old.offset).next_back().map(|(&k, _)| k) else {
        return false;
    };
    for (_, x) in map.range(first..old.end()) {
        if x.end() <= at {
            continue;
        }
        let same_place = x.ptr.bucket == old.ptr.bucket
            && x.ptr.gen == old.ptr.gen
            && x.dirty == old.dirty
            && x.offset <= at
            && u64::from(x.ptr.offset) + (at - x.offset) / SECTOR
                == u64::from(old.ptr.offset) + (at - old.offset) / SECTOR;
        if !same_place {
            return false;
        }
        at = x.end().min(old.end());
        if at == old.end() {
            break;
        }
    }
    at == old.end()
}

/// Put `ext` into `map` where nothing overlaps it, merged with contiguous neighbours.
fn insert_merged(map: &mut BTreeMap<u64, Extent>, ext: Extent) {
    let mut ext = ext;
    let left = map.range(..ext.offset).next_back();
    if let Some((&k, left)) = left {
        if left.contiguous_with(&ext) {
            if let Some(left) = map.remove(&k) {
                ext = left.merge(ext);
            }
        }
    }
    if let Some(right) = map.get(&ext.end()) {
        if ext.contiguous_with(right) {
            if let Some(right) = map.remove(&ext.end()) {
                ext = ext.merge(right);
            }
        }
    }
    map.insert(ext.offset, ext);
}

/// Remove everything in `[start, end)` from `map`, putting back the parts of cut extents that
/// lie outside. Returns the removed pieces in file order.
fn cut(map: &mut BTreeMap<u64, Extent>, start: u64, end: u64) -> Vec<Extent> {
    // Extents never overlap, so their ends increase with their offsets: walk back from `end`
    // until one ends at or before `start`.
    let mut keys = Vec::new();
    for (&k, x) in map.range(..end).rev() {
        if x.end() <= start {
            break;
        }
        keys.push(k);
    }
    let mut removed = Vec::with_capacity(keys.len());
    for k in keys.into_iter().rev() {
        let Some(old) = map.remove(&k) else { continue };
        let (lo, hi) = (old.offset.max(start), old.end().min(end));
        if old.offset < start {
            map.insert(old.offset, old.slice(old.offset, start));
        }
        if old.end() > end {
            map.insert(end, old.slice(end, old.end()));
        }
        if lo == old.offset && hi == old.end() {
            removed.push(old);
        } else {
            removed.push(old.slice(lo, hi));
        }
    }
    removed
}

/// Heap-size estimates (std `HashMap` = hashbrown, std `BTreeMap` with B = 6, glibc malloc).
mod heap {
    use super::{Extent, FileExtents, FileId};
    use std::mem::size_of;

    /// What glibc malloc really takes for a request of `n` bytes (8-byte header, 16-byte
    /// alignment, 32-byte minimum chunk).
    pub(super) fn chunk(n: usize) -> u64 {
        if n == 0 {
            0
        } else {
            ((n + 8).next_multiple_of(16)).max(32) as u64
        }
    }

    /// A hashbrown table with `capacity` usable slots: buckets (capacity * 8 / 7, a power of
    /// two) of one entry plus one control byte.
    pub(super) fn table(capacity: usize) -> u64 {
        if capacity == 0 {
            return 0;
        }
        let buckets = if capacity < 8 {
            (capacity + 1).next_power_of_two()
        } else {
            (capacity * 8 / 7).next_power_of_two()
        };
        chunk(buckets * (size_of::<(FileId, FileExtents)>() + 1) + 16)
    }

    /// Leaf and internal node sizes of a `BTreeMap<u64, Extent>` (11 keys per node).
    const LEAF: usize = 16 + 11 * (8 + size_of::<Extent>());
    const INTERNAL: usize = LEAF + 12 * 8;

    /// A B-tree of `n` entries: leaves about 60 % full (appends split 6/5, random inserts fill
    /// ~70 %), one internal node per ~7 children.
    pub(super) fn tree(n: usize) -> u64 {
        if n == 0 {
            return 0;
        }
        let leaves = n.div_ceil(11).max(n * 10 / 65);
        let internal = if leaves > 1 { leaves.div_ceil(6) } else { 0 };
        leaves as u64 * chunk(LEAF) + internal as u64 * chunk(INTERNAL)
    }

    /// The boxed crc array of an extent with `blocks` blocks.
    pub(super) fn crcs(blocks: usize) -> u64 {
        chunk(blocks * 4)
    }
}

#[cfg(test)]
mod tests;
