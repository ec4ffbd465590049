//! The bucket allocator, after Linux bcache's `drivers/md/bcache/alloc.c`.
//!
//! # Model
//!
//! The cache file is cut into buckets. Data is appended into a bucket and a bucket is reused
//! only whole. Every bucket has an 8-bit gen; a pointer `(bucket, gen, offset)` into it is valid
//! only while its gen equals the bucket's gen. A bucket is reused by *invalidating* it: its gen
//! is bumped, which makes every existing pointer into it stale at once, without searching the
//! index for them.
//!
//! The new gen must be on disk before the bucket receives new data: otherwise, after a crash,
//! the old gen comes back and old pointers would look valid while pointing at data that has been
//! overwritten. So invalidated buckets wait on `free_inc` until a gens checkpoint recording their
//! new gens has been written and fsync'd, and only then move to the free lists.
//!
//! Free lists, one per [`Reserve`] (metadata, prio, moving-gc, none), so that writing a gens
//! checkpoint or an index checkpoint can always find a bucket even when data has taken every
//! other one. `free_inc` feeds them through `push_free` (bcache `bch_allocator_push`: the prio
//! reserve first, then metadata, moving-gc, none). [`Allocator::bucket_alloc`] pops `free[None]`
//! first and digs into the caller's own reserve only when that is empty (bcache
//! `bch_bucket_alloc`); data allocations have no reserve of their own.
//!
//! The allocator loop (`thread.rs`, bcache `bch_allocator_thread`), one step at a time:
//! 1. move `free_inc` buckets whose gens are durable onto the free lists, discarding each
//!    (`fallocate(PUNCH_HOLE)`) on the way when discard is on;
//! 2. when `free_inc` is empty and a free list has room, invalidate buckets by the replacement
//!    policy (lru / fifo / random) until `free_inc` is full or nothing else qualifies;
//! 3. write the gens checkpoint into buckets from the prio reserve, fsync; append a journal entry
//!    naming it, fsync; only then mark the new gens durable, release the previous checkpoint's
//!    buckets, and let step 1 move the batch on;
//! 4. when nothing at all can be invalidated, ask GC (a counter and a condvar) and sleep until
//!    GC reports instead of spinning.
//!
//! Prios (bcache's): a bucket handed out for data starts at `INITIAL_PRIO`, every prio ages by
//! one each rescale, a hit sets it back to `INITIAL_PRIO`; LRU evicts the smallest
//! `(prio - min_prio + 1) x sectors`. Probation (issue 12): a bucket opened for a streaming fill
//! ([`Allocator::alloc_sectors_probation`], its own class of open buckets) starts at
//! [`PRIO_PROBATION`], below every bucket filled normally in the last 16384 rescales, so LRU
//! evicts scans first; a hit promotes it like any hit. The gens checkpoint's prio carries it
//! across a remount.
//!
//! # Invariants (numbers from DESIGN.md)
//!
//! * 2: a bucket leaves `free_inc` only after its gen is durable (`Bucket::disk_gen == gen`,
//!   asserted in `push_free` and checked by [`Allocator::check_invariants`]).
//! * 4: open, pinned (in-flight I/O, or `warm --pin`: prio `PINNED_PRIO` while it holds data), dirty
//!   and metadata buckets are never invalidated (`can_invalidate`).
//! * 5: a bucket is on at most one list and is handed out only by popping a free list, which it
//!   reaches only through invalidation, which requires that nobody holds it.
//! * 6: a gen is bumped only while `gen - last_gc < 96`, `last_gc` being the oldest gen any key
//!   still points at as reported by GC ([`Allocator::gc_finish`]).
//!
//! # Locks and blocking
//!
//! One `Mutex<AllocState>` (bcache's `bucket_lock`) guards every bucket's state and every list.
//! It is never held across I/O. Lock order: `step` (serialises allocator steps) → `journal`
//! (the journal cursor: one append at a time, held by a gens checkpoint from its entry until
//! its location is in `state`) → `state`. May block: [`Allocator::bucket_alloc`] and
//! [`Allocator::alloc_sectors`] with `wait = true` sleep until the allocator refills a list; the
//! allocator thread sleeps on its condvar; every other call only takes the state lock briefly.
//!
//! # Crash ordering
//!
//! Gens checkpoint `pwrite` → `fdatasync` → journal entry `pwrite` → `fdatasync` → (in memory)
//! gens durable, buckets released → discard. A failed write or fsync poisons the cache: nothing
//! more is allocated, and the invalidated batch never reaches a free list.

mod data;
pub mod format;
pub mod open;
mod recovery;
pub mod state;
mod thread;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use crate::device::format::{Geometry, Replacement, Superblock};
use crate::device::CacheDevice;
use crate::error::{Error, Result};
use crate::journal::format::Record;
use crate::journal::JournalRing;
pub use data::CacheData;
pub use open::MAX_OPEN_BUCKETS;
pub use recovery::{read_newest_checkpoint, read_superblock, NewestCheckpoint};
use state::AllocState;
pub use state::{
    Loc, Mark, Reserve, BTREE_PRIO, BUCKET_GC_GEN_MAX, INITIAL_PRIO, PINNED_PRIO, PRIO_PROBATION,
};
pub use thread::StepOutcome;

/// The write point moving GC writes through (no process has this PID).
pub const MOVING_GC_WRITE_POINT: u64 = u64::MAX;

pub use crate::key::{BucketPtr, KeyPos};

/// A snapshot of one bucket's state, for tests, stats and fsck.
pub type BucketInfo = state::Bucket;

/// Counters and list lengths.
#[derive(Debug, Clone, Copy, Default)]
pub struct AllocStats {
    /// Lengths of the free lists, in `Reserve` order.
    pub free: [usize; 4],
    pub free_inc: usize,
    pub open_buckets: usize,
    pub invalidated: u64,
    pub checkpoints: u64,
    pub discards: u64,
    pub gc_requests: u64,
    pub rescales: u64,
    pub checkpoint_seq: u64,
    /// Admission (issue 12): see [`state::Counters`].
    pub probation_buckets: u64,
    pub promotions: u64,
    pub evicted_never_hit: u64,
    pub evicted_probation: u64,
}

/// How to open a cache file.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// Start the background allocator thread. Tests and benchmarks that drive the allocator one
    /// step at a time ([`Allocator::allocator_step`]) turn it off.
    pub start_allocator: bool,
    /// The failure signal to share (a fresh one by default).
    pub poison: crate::poison::Poison,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            start_allocator: true,
            poison: crate::poison::Poison::new(),
        }
    }
}

/// What GC found: per bucket, the oldest gen any key points at, and the sectors and dirtiness of
/// keys at the bucket's current gen. Built with [`Allocator::gc_begin`], filled by the index walk,
/// handed to [`Allocator::gc_finish`].
#[derive(Debug, Clone)]
pub struct GcReport {
    snap_gen: Vec<u8>,
    oldest: Vec<Option<u8>>,
    sectors: Vec<u32>,
    dirty: Vec<bool>,
    metadata: Vec<bool>,
}

impl GcReport {
    /// Record one key pointing at `bucket` with `gen`, covering `sectors`. Keys whose gen is
    /// stale count only for the gen-wrap bound; GC should drop them from the index.
    pub fn add_key(&mut self, bucket: u32, gen: u8, sectors: u32, dirty: bool) {
        let i = bucket as usize;
        let Some(&cur) = self.snap_gen.get(i) else {
            return;
        };
        let rel = cur.wrapping_sub(gen);
        match self.oldest[i] {
            Some(o) if cur.wrapping_sub(o) >= rel => {}
            _ => self.oldest[i] = Some(gen),
        }
        if rel == 0 {
            self.sectors[i] = self.sectors[i].saturating_add(sectors);
            self.dirty[i] |= dirty;
        }
    }

    /// Record that `bucket` holds metadata (an index checkpoint).
    pub fn add_metadata(&mut self, bucket: u32) {
        if let Some(m) = self.metadata.get_mut(bucket as usize) {
            *m = true;
        }
    }

    /// True when `gen` is the bucket's gen as of [`Allocator::gc_begin`] (the key is live).
    pub fn is_live(&self, bucket: u32, gen: u8) -> bool {
        self.snap_gen.get(bucket as usize) == Some(&gen)
    }
}

pub(crate) struct Shared {
    pub dev: Arc<dyn CacheDevice>,
    /// The superblock as opened. Its `replacement` and `discard` may be stale: the live
    /// values are `state.replacement` and `discard` ([`Allocator::set_policy`]).
    pub sb: Superblock,
    /// Discard freed buckets (punch holes); changeable at run time.
    pub discard: AtomicBool,
    pub state: Mutex<AllocState>,
    /// The allocator thread sleeps here; `bucket_alloc` and `gc_finish` wake it.
    pub alloc_wait: Condvar,
    /// `bucket_alloc(wait)` sleeps here; the allocator wakes it after refilling.
    pub bucket_wait: Condvar,
    /// GC sleeps here; the allocator wakes it when nothing can be invalidated.
    pub gc_wait: Condvar,
    /// Serialises allocator steps. Taken before `journal` and `state`.
    pub step: Mutex<()>,
    /// The journal cursor, shared by the allocator's gens checkpoint entries and the cache's
    /// journal writer (one sequence). Held only for one append (and, by a gens checkpoint,
    /// until its new location is in `state`), never across a discard or a gens write, so a
    /// key flush never waits behind an allocator step. Taken before `state`.
    pub journal: Mutex<JournalRing>,
    /// The cache set's one failure signal, shared with the journal and the request path.
    pub poison: crate::poison::Poison,
    pub shutdown: AtomicBool,
}

/// An open cache file and its allocator. All methods take `&self` and may be called from many
/// threads.
pub struct Allocator {
    shared: Arc<Shared>,
    data: CacheData,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Number of gens checkpoints newer than the loaded one that were skipped as invalid.
    skipped_checkpoints: usize,
}

impl Allocator {
    /// Create a new cache file at `path` (sparse, mode 0600) and return its superblock.
    /// Refuses an existing non-empty file unless `force`.
    pub fn format(path: &Path, geometry: &Geometry, force: bool) -> Result<Superblock> {
        recovery::format_path(path, geometry, force)
    }

    /// Write a fresh cache layout onto `dev`, which must already have the superblock's size.
    pub fn format_device(dev: &dyn CacheDevice, sb: &Superblock) -> Result<()> {
        recovery::format_device(dev, sb)
    }

    /// Open the cache file at `path` and start the allocator thread.
    pub fn open(path: &Path) -> Result<Allocator> {
        Self::open_with(path, OpenOptions::default())
    }

    /// Open the cache file at `path` with options.
    pub fn open_with(path: &Path, opts: OpenOptions) -> Result<Allocator> {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| Error::io("open cache file", e))?;
        check_cache_file_access(path, &f)?;
        Self::open_device(Arc::new(crate::device::FileDevice::new(f)), opts)
    }

    /// Open a cache on any device (tests pass a fault-injecting one). Loads the newest valid gens
    /// checkpoint; a torn or corrupt newer one is skipped. Allocation starts after the first
    /// [`Allocator::gc_finish`], once GC has said which buckets hold data.
    pub fn open_device(dev: Arc<dyn CacheDevice>, opts: OpenOptions) -> Result<Allocator> {
        let r = recovery::recover(&*dev)?;
        if r.newest.skipped > 0 {
            tracing::warn!(
                skipped = r.newest.skipped,
                seq = r.newest.checkpoint.seq,
                "newer gens checkpoints were invalid; using the newest valid one"
            );
        }
        let st = AllocState::new(
            &r.sb,
            &r.newest.checkpoint.gens,
            &r.newest.checkpoint.prios,
            &r.newest.buckets,
            r.newest.checkpoint.seq,
        );
        let shared = Arc::new(Shared {
            dev,
            discard: AtomicBool::new(r.sb.discard),
            sb: r.sb,
            state: Mutex::new(st),
            alloc_wait: Condvar::new(),
            bucket_wait: Condvar::new(),
            gc_wait: Condvar::new(),
            step: Mutex::new(()),
            journal: Mutex::new(r.ring),
            poison: opts.poison.clone(),
            shutdown: AtomicBool::new(false),
        });
        let cache = Allocator {
            data: CacheData::new(shared.dev.clone(), shared.sb.clone(), shared.poison.clone()),
            shared,
            thread: Mutex::new(None),
            skipped_checkpoints: r.newest.skipped,
        };
        if opts.start_allocator {
            let s = cache.shared.clone();
            let h = std::thread::Builder::new()
                .name("bcfs-alloc".into())
                .spawn(move || thread::run(&s))
                .map_err(|e| Error::io("spawn allocator thread", e))?;
            *cache.thread.lock() = Some(h);
        }
        Ok(cache)
    }

    /// The superblock.
    pub fn superblock(&self) -> &Superblock {
        &self.shared.sb
    }

    /// How many newer gens checkpoints were found invalid and skipped when opening.
    pub fn skipped_checkpoints(&self) -> usize {
        self.skipped_checkpoints
    }

    /// The replacement policy in force.
    pub fn replacement(&self) -> Replacement {
        self.shared.state.lock().replacement
    }

    /// Whether freed buckets are discarded (punched out of the cache file).
    pub fn discard(&self) -> bool {
        self.shared.discard.load(Ordering::Relaxed)
    }

    /// Changes the replacement policy and/or discard of a live cache (`bcachefs-lite set`):
    /// writes them into the superblock first (fdatasync), so they are the cache file's from
    /// now on, as the mount options `replacement=` and `discard` make them, then applies
    /// them to the next allocator step. On an I/O error nothing changed. Takes the step
    /// lock, so it never runs inside an allocator step.
    pub fn set_policy(
        &self,
        replacement: Option<Replacement>,
        discard: Option<bool>,
    ) -> Result<()> {
        let _step = self.shared.step.lock();
        let mut sb = self.shared.sb.clone();
        sb.replacement = replacement.unwrap_or_else(|| self.replacement());
        sb.discard = discard.unwrap_or_else(|| self.discard());
        self.shared
            .dev
            .pwrite(&sb.encode(), 0)
            .and_then(|()| self.shared.dev.fdatasync())
            .map_err(|e| Error::io("write superblock", e))?;
        self.shared.state.lock().replacement = sb.replacement;
        self.shared.discard.store(sb.discard, Ordering::Relaxed);
        Ok(())
    }

    /// Number of buckets.
    pub fn nbuckets(&self) -> u32 {
        self.shared.sb.nbuckets as u32
    }

    /// Sectors per bucket.
    pub fn bucket_sectors(&self) -> u32 {
        self.shared.sb.bucket_sectors()
    }

    fn check_live(&self) -> Result<()> {
        if self.shared.poison.is_set() {
            return Err(Error::Poisoned);
        }
        if self.shared.shutdown.load(Ordering::Acquire) {
            return Err(Error::Shutdown);
        }
        Ok(())
    }

    fn check_bucket(&self, b: u32) -> Result<()> {
        if u64::from(b) >= self.shared.sb.nbuckets {
            return Err(Error::InvalidArgument(format!("bucket {b} out of range")));
        }
        Ok(())
    }

    /// Take one bucket from a free list (bcache `bch_bucket_alloc`). The bucket comes back pinned
    /// and marked metadata (for `Metadata`/`Prio`) or data; release the pin with [`Allocator::unpin`]
    /// once its use is recorded. Without `wait`, fails at once with [`Error::NoFreeBucket`].
    /// With `wait`, sleeps until the allocator refills a list (on a cache opened without the
    /// allocator thread, until another thread runs [`Allocator::allocator_step`]).
    pub fn bucket_alloc(&self, reserve: Reserve, wait: bool) -> Result<(u32, u8)> {
        let sh = &*self.shared;
        let mut st = sh.state.lock();
        loop {
            self.check_live()?;
            if let Some(b) = st.pop_free(reserve) {
                sh.alloc_wait.notify_one();
                return Ok((b, st.buckets[b as usize].gen));
            }
            if !wait {
                st.kick = true;
                sh.alloc_wait.notify_one();
                return Err(Error::NoFreeBucket);
            }
            st.kick = true;
            sh.alloc_wait.notify_one();
            sh.bucket_wait.wait_for(&mut st, Duration::from_millis(100));
        }
    }

    /// Allocate up to `sectors` sectors for data at key position `key`, from the open bucket
    /// chosen for `write_point` (bcache `bch_alloc_sectors`). Returns the pointer and how many
    /// sectors were granted (fewer when the bucket has less room). The bucket stays pinned until
    /// [`Allocator::key_inserted`] (or [`Allocator::unpin`]) is called for the returned pointer.
    pub fn alloc_sectors(
        &self,
        key: KeyPos,
        sectors: u32,
        write_point: u64,
        wait: bool,
    ) -> Result<(BucketPtr, u32)> {
        self.alloc_sectors_from(Reserve::None, key, sectors, write_point, wait, false)
    }

    /// [`Allocator::alloc_sectors`] for a streaming fill (admission, issue 12): the data goes
    /// into open buckets of its own (never shared with normal fills) that start at
    /// [`PRIO_PROBATION`], so LRU evicts them first unless a hit promotes them.
    pub fn alloc_sectors_probation(
        &self,
        key: KeyPos,
        sectors: u32,
        write_point: u64,
        wait: bool,
    ) -> Result<(BucketPtr, u32)> {
        self.alloc_sectors_from(Reserve::None, key, sectors, write_point, wait, true)
    }

    /// [`Allocator::alloc_sectors`] for moving GC: its own write point, and a new bucket may come
    /// from the moving-gc reserve when the general free list is empty (bcache's
    /// `RESERVE_MOVINGGC`), so compaction can go on when data has taken every other bucket.
    pub fn alloc_sectors_moving(&self, key: KeyPos, sectors: u32) -> Result<(BucketPtr, u32)> {
        self.alloc_sectors_from(
            Reserve::MovingGc,
            key,
            sectors,
            MOVING_GC_WRITE_POINT,
            false,
            false,
        )
    }

    fn alloc_sectors_from(
        &self,
        reserve: Reserve,
        key: KeyPos,
        sectors: u32,
        write_point: u64,
        wait: bool,
        probation: bool,
    ) -> Result<(BucketPtr, u32)> {
        if sectors == 0 {
            return Err(Error::InvalidArgument("zero sectors".into()));
        }
        let sh = &*self.shared;
        let mut st = sh.state.lock();
        loop {
            self.check_live()?;
            let i = match st.open.pick(key, write_point, probation) {
                open::Pick::Existing(i) => i,
                open::Pick::New => match st.pop_free_for(reserve, probation) {
                    Some(b) => {
                        sh.alloc_wait.notify_one();
                        let (gen, bs) = (st.buckets[b as usize].gen, st.bucket_sectors);
                        st.open.push(b, gen, bs, write_point, probation)
                    }
                    None if !wait => {
                        st.kick = true;
                        sh.alloc_wait.notify_one();
                        return Err(Error::NoFreeBucket);
                    }
                    None => {
                        st.kick = true;
                        sh.alloc_wait.notify_one();
                        sh.bucket_wait.wait_for(&mut st, Duration::from_millis(100));
                        continue;
                    }
                },
            };
            let (bucket, gen, offset, granted, full) = st.open.take(i, key, sectors, write_point);
            let k = &mut st.buckets[bucket as usize];
            k.pins += 1;
            k.sectors += granted;
            if full {
                k.pins -= 1; // the open bucket's own pin
            }
            st.rescale(granted);
            return Ok((
                BucketPtr {
                    bucket,
                    gen,
                    offset,
                },
                granted,
            ));
        }
    }

    /// The key for `ptr` is in the index: drop the allocation's pin.
    pub fn key_inserted(&self, ptr: BucketPtr) -> Result<()> {
        self.unpin(ptr.bucket)
    }

    /// Pin `bucket` for an in-flight read at `gen`. Returns false (and pins nothing) when the
    /// gen is stale.
    pub fn pin(&self, bucket: u32, gen: u8) -> Result<bool> {
        self.pin_at(bucket, gen, false)
    }

    /// A cache hit: [`Allocator::pin`] and [`Allocator::touch`] under one lock acquisition (the warm
    /// read path takes the state lock twice per piece instead of three times).
    pub fn pin_for_read(&self, bucket: u32, gen: u8) -> Result<bool> {
        self.pin_at(bucket, gen, true)
    }

    fn pin_at(&self, bucket: u32, gen: u8, hit: bool) -> Result<bool> {
        self.check_bucket(bucket)?;
        let mut st = self.shared.state.lock();
        let k = &mut st.buckets[bucket as usize];
        if k.gen != gen || k.loc != Loc::Idle {
            return Ok(false);
        }
        k.pins += 1;
        if hit {
            st.hit(bucket);
        }
        Ok(true)
    }

    /// Drop one pin of `bucket`.
    pub fn unpin(&self, bucket: u32) -> Result<()> {
        self.check_bucket(bucket)?;
        let mut st = self.shared.state.lock();
        let k = &mut st.buckets[bucket as usize];
        if k.pins == 0 || k.loc != Loc::Idle {
            return Err(Error::InvalidArgument(format!(
                "unpin of unpinned bucket {bucket}"
            )));
        }
        k.pins -= 1;
        // Wake the allocator only when the bucket may be what it is waiting for: a free list
        // has room (or it asked for GC). Waking it on every hit cost a futex syscall and a
        // context switch per read (a third of the warm read path's time, measured with perf).
        if k.pins == 0 && (st.free_room() > 0 || st.invalidate_needs_gc) {
            st.kick = true;
            self.shared.alloc_wait.notify_one();
        }
        Ok(())
    }

    /// Mark `bucket` as holding dirty data at `gen` (writeback). Returns false when stale.
    pub fn mark_dirty(&self, bucket: u32, gen: u8) -> Result<bool> {
        self.check_bucket(bucket)?;
        let mut st = self.shared.state.lock();
        let k = &mut st.buckets[bucket as usize];
        if k.gen != gen || k.loc != Loc::Idle || k.mark == Mark::Metadata {
            return Ok(false);
        }
        k.mark = Mark::Dirty;
        Ok(true)
    }

    /// Mark `bucket` as holding metadata (an index checkpoint written into a bucket obtained
    /// some other way than `bucket_alloc(Metadata)`). Returns false when stale.
    pub fn mark_metadata(&self, bucket: u32, gen: u8) -> Result<bool> {
        self.check_bucket(bucket)?;
        let mut st = self.shared.state.lock();
        let k = &mut st.buckets[bucket as usize];
        if k.gen != gen || k.loc != Loc::Idle {
            return Ok(false);
        }
        k.mark = Mark::Metadata;
        k.prio = BTREE_PRIO;
        Ok(true)
    }

    /// A metadata bucket is no longer needed (bcache `bch_bucket_free`): it becomes empty and
    /// may be invalidated once unpinned.
    pub fn bucket_free(&self, bucket: u32) -> Result<()> {
        self.check_bucket(bucket)?;
        let mut st = self.shared.state.lock();
        if st.ckpt_buckets.contains(&bucket) {
            return Err(Error::InvalidArgument(format!(
                "bucket {bucket} holds the current gens checkpoint"
            )));
        }
        let k = &mut st.buckets[bucket as usize];
        if k.mark != Mark::Metadata || k.loc != Loc::Idle {
            return Err(Error::InvalidArgument(format!(
                "bucket {bucket} is not metadata"
            )));
        }
        k.mark = Mark::Free;
        k.sectors = 0;
        k.prio = 0;
        st.kick = true;
        self.shared.alloc_wait.notify_one();
        Ok(())
    }

    /// The current gen of `bucket`.
    pub fn bucket_gen(&self, bucket: u32) -> Result<u8> {
        self.check_bucket(bucket)?;
        Ok(self.shared.state.lock().buckets[bucket as usize].gen)
    }

    /// Every bucket's gen, as of one moment (for figures that must not count stale keys).
    pub fn gens(&self) -> Vec<u8> {
        self.shared
            .state
            .lock()
            .buckets
            .iter()
            .map(|b| b.gen)
            .collect()
    }

    /// A cache hit on `bucket`: its prio goes back to the initial value (LRU).
    pub fn touch(&self, bucket: u32) -> Result<()> {
        self.check_bucket(bucket)?;
        self.shared.state.lock().hit(bucket);
        Ok(())
    }

    // ---- pinning (`bcachefs-lite warm --pin`, `unpin`) ----

    /// Pins `bucket` against eviction while it holds data at `gen` (prio [`PINNED_PRIO`]),
    /// unless that would make more than `limit` buckets pinned. Ok(false): the bucket no longer
    /// holds that data (nothing pinned); Err(PinLimit): the limit is reached. Durable with the
    /// next gens checkpoint ([`Allocator::write_gens_checkpoint_now`]).
    pub fn pin_bucket(&self, bucket: u32, gen: u8, limit: usize) -> Result<bool> {
        self.check_bucket(bucket)?;
        let mut st = self.shared.state.lock();
        let k = st.buckets[bucket as usize];
        if k.gen != gen || !matches!(k.mark, Mark::Data | Mark::Dirty) {
            return Ok(false);
        }
        if k.prio == PINNED_PRIO {
            return Ok(true);
        }
        if pinned_in(&st) >= limit {
            return Err(Error::PinLimit(limit));
        }
        st.buckets[bucket as usize].prio = PINNED_PRIO;
        Ok(true)
    }

    /// Unpins `bucket` (back to the initial prio, evictable as any other). True if it was pinned.
    pub fn unpin_bucket(&self, bucket: u32) -> Result<bool> {
        self.check_bucket(bucket)?;
        let mut st = self.shared.state.lock();
        let k = &mut st.buckets[bucket as usize];
        if k.prio != PINNED_PRIO {
            return Ok(false);
        }
        k.prio = INITIAL_PRIO;
        Ok(true)
    }

    /// Buckets pinned that hold data.
    pub fn pinned_buckets(&self) -> usize {
        pinned_in(&self.shared.state.lock())
    }

    /// Writes a gens checkpoint now (so pins survive a crash or remount), between allocator
    /// steps. Needs a bucket in the prio reserve (else `NoFreeBucket`); returns without writing
    /// when allocation has not started yet (before the first GC).
    pub fn write_gens_checkpoint_now(&self) -> Result<()> {
        let _step = self.shared.step.lock();
        if self.shared.poison.is_set() {
            return Err(Error::Poisoned);
        }
        let st = self.shared.state.lock();
        if !st.gc_mark_valid {
            return Ok(());
        }
        match thread::write_gens_checkpoint(&self.shared, st)? {
            StepOutcome::Progress => Ok(()),
            // the prio reserve was empty (only when nearly every bucket holds data)
            _ => Err(Error::NoFreeBucket),
        }
    }

    /// Start a GC pass: a report sized for this cache with every bucket's current gen.
    pub fn gc_begin(&self) -> GcReport {
        let st = self.shared.state.lock();
        let n = st.buckets.len();
        GcReport {
            snap_gen: st.buckets.iter().map(|k| k.gen).collect(),
            oldest: vec![None; n],
            sectors: vec![0; n],
            dirty: vec![false; n],
            metadata: vec![false; n],
        }
    }

    /// Finish a GC pass (bcache `bch_btree_gc_finish`): set every bucket's `last_gc`, mark and
    /// sectors from the report, make allocation possible after open, and wake the allocator.
    /// Buckets invalidated since [`Allocator::gc_begin`] keep their new state; open or pinned buckets
    /// keep at least their in-memory sectors; metadata marks set in memory stay until
    /// [`Allocator::bucket_free`].
    pub fn gc_finish(&self, report: GcReport) -> Result<()> {
        let sh = &*self.shared;
        let mut st = sh.state.lock();
        if report.snap_gen.len() != st.buckets.len() {
            return Err(Error::InvalidArgument("GC report for another cache".into()));
        }
        let first = !st.gc_mark_valid;
        for i in 0..st.buckets.len() {
            let k = &mut st.buckets[i];
            let snap = report.snap_gen[i];
            let oldest = report.oldest[i].unwrap_or(snap);
            if k.gen != snap {
                // Invalidated during GC: keys seen at `snap` or older are all stale now.
                // Keep the older of the two, so the gen-wrap bound stays conservative.
                if k.gen.wrapping_sub(oldest) > k.gen.wrapping_sub(k.last_gc) {
                    k.last_gc = oldest;
                }
                continue;
            }
            k.last_gc = oldest;
            if k.loc != Loc::Idle {
                continue;
            }
            if report.metadata[i] {
                k.mark = Mark::Metadata;
                k.prio = BTREE_PRIO;
                continue;
            }
            if k.mark == Mark::Metadata {
                continue;
            }
            let pinned = k.pins > 0;
            let sectors = report.sectors[i];
            if pinned {
                k.sectors = k.sectors.max(sectors);
                if report.dirty[i] {
                    k.mark = Mark::Dirty;
                }
            } else {
                k.sectors = sectors;
                k.mark = if report.dirty[i] {
                    Mark::Dirty
                } else if sectors > 0 {
                    Mark::Data
                } else {
                    Mark::Free
                };
            }
        }
        st.gc_mark_valid = true;
        st.invalidate_needs_gc = false;
        if first {
            st.initial_fill();
        }
        st.kick = true;
        sh.alloc_wait.notify_all();
        sh.bucket_wait.notify_all();
        Ok(())
    }

    /// Number of times the allocator has asked for GC so far.
    pub fn gc_requests(&self) -> u64 {
        self.shared.state.lock().counters.gc_requests
    }

    /// Sleep until the allocator asks for GC more than `seen` times (or `timeout`, or
    /// shutdown). Returns the current request count. For the GC thread.
    pub fn wait_gc_request(&self, seen: u64, timeout: Duration) -> u64 {
        let mut st = self.shared.state.lock();
        if st.counters.gc_requests <= seen && !self.shared.shutdown.load(Ordering::Acquire) {
            self.shared.gc_wait.wait_for(&mut st, timeout);
        }
        st.counters.gc_requests
    }

    /// Run one step of the allocator loop on the calling thread. For tests and benchmarks that
    /// opened the cache without the allocator thread.
    pub fn allocator_step(&self) -> Result<StepOutcome> {
        thread::step(&self.shared)
    }

    /// Run allocator steps until one makes no progress (at most `max_steps`).
    pub fn allocator_run_until_idle(&self, max_steps: usize) -> Result<StepOutcome> {
        let mut last = StepOutcome::Idle;
        for _ in 0..max_steps {
            last = self.allocator_step()?;
            if last != StepOutcome::Progress {
                break;
            }
        }
        Ok(last)
    }

    /// Data I/O on the cache file: writing fills, reading hits, syncing before keys.
    pub fn data(&self) -> &CacheData {
        &self.data
    }

    /// Append one journal entry with `records` and fsync it. The journal ring has one cursor
    /// (its own lock), so key records and gens checkpoint entries share one sequence. Returns
    /// the entry's seq and the bytes appended to the ring since open. A failure poisons the
    /// cache.
    pub fn journal_append(&self, records: Vec<Record>) -> Result<(u64, u64)> {
        let mut ring = self.shared.journal.lock();
        if self.shared.poison.is_set() {
            return Err(Error::Poisoned);
        }
        match ring.append(&*self.shared.dev, &self.shared.sb, records) {
            Ok(seq) => Ok((seq, ring.appended_bytes())),
            Err(e) => {
                thread::poison(&self.shared, "journal append");
                Err(e)
            }
        }
    }

    /// Like [`Allocator::journal_append`], and the entry also repeats the location of the newest
    /// durable gens checkpoint (so the ring never wraps over the only record naming it). The
    /// location is read under the journal lock, which a gens checkpoint holds from its own
    /// entry until its location is in `state` (before it releases the previous one), so this
    /// entry names the checkpoint of the newest entry before it, never an older one.
    pub fn journal_append_with_gens(&self, mut records: Vec<Record>) -> Result<(u64, u64)> {
        let mut ring = self.shared.journal.lock();
        if self.shared.poison.is_set() {
            return Err(Error::Poisoned);
        }
        {
            let st = self.shared.state.lock();
            records.push(Record::GensCheckpoint {
                seq: st.ckpt_seq,
                buckets: st.ckpt_buckets.clone(),
            });
        }
        match ring.append(&*self.shared.dev, &self.shared.sb, records) {
            Ok(seq) => Ok((seq, ring.appended_bytes())),
            Err(e) => {
                thread::poison(&self.shared, "journal append");
                Err(e)
            }
        }
    }

    /// The newest durable gens checkpoint: its seq and buckets.
    pub fn gens_checkpoint_location(&self) -> (u64, Vec<u32>) {
        let st = self.shared.state.lock();
        (st.ckpt_seq, st.ckpt_buckets.clone())
    }

    /// The cache file, for journal replay and index checkpoints.
    pub fn device(&self) -> &Arc<dyn CacheDevice> {
        &self.shared.dev
    }

    /// True once a failed write or fsync stopped caching (see [`crate::poison`]).
    pub fn is_poisoned(&self) -> bool {
        self.shared.poison.is_set()
    }

    /// The cache set's failure signal.
    pub fn poison(&self) -> &crate::poison::Poison {
        &self.shared.poison
    }

    /// Stops caching after a failure outside the allocator (journal, checkpoint, fill).
    pub fn poison_with(&self, what: &str) {
        thread::poison(&self.shared, what);
    }

    /// A snapshot of one bucket.
    pub fn bucket_info(&self, bucket: u32) -> Result<BucketInfo> {
        self.check_bucket(bucket)?;
        Ok(self.shared.state.lock().buckets[bucket as usize])
    }

    /// How many buckets are free, hold data, dirty data and metadata (by [`Mark`]), in that
    /// order; buckets on the free lists and `free_inc` count as free.
    pub fn mark_counts(&self) -> [usize; 4] {
        let st = self.shared.state.lock();
        let mut n = [0usize; 4];
        for k in &st.buckets {
            let i = match (k.loc, k.mark) {
                (Loc::FreeInc | Loc::Free(_), _) | (Loc::Idle, Mark::Free) => 0,
                (Loc::Idle, Mark::Data) => 1,
                (Loc::Idle, Mark::Dirty) => 2,
                (Loc::Idle, Mark::Metadata) => 3,
            };
            n[i] += 1;
        }
        n
    }

    /// The open buckets as `(bucket, gen)`.
    pub fn open_buckets(&self) -> Vec<(u32, u8)> {
        self.shared
            .state
            .lock()
            .open
            .iter()
            .map(|o| (o.bucket, o.gen))
            .collect()
    }

    /// Buckets of the newest durable gens checkpoint.
    pub fn checkpoint_buckets(&self) -> Vec<u32> {
        self.shared.state.lock().ckpt_buckets.clone()
    }

    /// Counters and list lengths.
    pub fn stats(&self) -> AllocStats {
        let st = self.shared.state.lock();
        AllocStats {
            free: [
                st.free[0].len(),
                st.free[1].len(),
                st.free[2].len(),
                st.free[3].len(),
            ],
            free_inc: st.free_inc.len(),
            open_buckets: st.open.len(),
            invalidated: st.counters.invalidated,
            checkpoints: st.counters.checkpoints,
            discards: st.counters.discards,
            gc_requests: st.counters.gc_requests,
            rescales: st.counters.rescales,
            checkpoint_seq: st.ckpt_seq,
            probation_buckets: st.counters.probation_buckets,
            promotions: st.counters.promotions,
            evicted_never_hit: st.counters.evicted_never_hit,
            evicted_probation: st.counters.evicted_probation,
        }
    }

    /// Check invariant 5 and the bookkeeping behind 2, 4 and 6 over the whole state.
    pub fn check_invariants(&self) -> Result<(), String> {
        self.shared.state.lock().check()
    }

    /// Stop the allocator thread (also done on drop). Later allocations fail with `Shutdown`;
    /// nothing is written (a later open recovers from the newest durable checkpoint).
    pub fn close(&self) {
        self.shared.shutdown.store(true, Ordering::Release);
        {
            let _st = self.shared.state.lock();
            self.shared.alloc_wait.notify_all();
            self.shared.bucket_wait.notify_all();
            self.shared.gc_wait.notify_all();
        }
        if let Some(h) = self.thread.lock().take() {
            let _ = h.join();
        }
    }
}

fn pinned_in(st: &AllocState) -> usize {
    st.buckets
        .iter()
        .filter(|k| k.prio == PINNED_PRIO && matches!(k.mark, Mark::Data | Mark::Dirty))
        .count()
}

impl Drop for Allocator {
    fn drop(&mut self) {
        self.close();
    }
}

/// The cache file holds copies of backing data that the backing's permission checks no
/// longer guard, so only the user running the daemon may read or change it: a file owned
/// by someone else, or open to its group or others, is refused with a line that says how
/// to fix it (`format` creates it 0600).
///
/// A file that is not a cache file at all is left to recovery, which says so (that is
/// the more useful message, and nothing in it is ours to protect).
fn check_cache_file_access(path: &Path, f: &std::fs::File) -> Result<()> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;
    let mut magic = [0u8; 8];
    let read = crate::sys::pread_full(f.as_raw_fd(), &mut magic, 0)
        .map_err(|e| Error::io("read cache file", e))?;
    if read < magic.len() || magic != crate::device::format::SB_MAGIC {
        return Ok(());
    }
    let m = f.metadata().map_err(|e| Error::io("stat cache file", e))?;
    let euid = crate::sys::euid();
    let shown = path.display();
    if m.uid() != euid {
        return Err(Error::Config(format!(
            "cache file {shown} is owned by uid {}, not by uid {euid} that runs the daemon; \
             refusing it (its owner could read or change cached data): chown it or use another file",
            m.uid()
        )));
    }
    if m.mode() & 0o077 != 0 {
        return Err(Error::Config(format!(
            "cache file {shown} is accessible by its group or others (mode {:04o}); refusing it \
             (it holds copies of backing data): chmod 600 {shown}",
            m.mode() & 0o7777
        )));
    }
    Ok(())
}
