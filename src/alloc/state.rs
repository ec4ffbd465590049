//! `AllocState`: every bucket's gen/prio/pins/mark/sectors and every free list, under one mutex.
//!
//! This is the data bcache keeps under `bucket_lock`. All functions here run with the state
//! mutex held and never block or do I/O; the allocator loop (`thread.rs`) drops the lock around
//! its I/O. See `alloc/mod.rs` for the model and the invariants these functions keep.

use std::collections::{BinaryHeap, VecDeque};

use super::open::OpenBuckets;
use crate::device::format::{gens_buckets, Replacement, Superblock};

/// Prio given to a bucket when it is invalidated or hit (bcache `INITIAL_PRIO`).
pub const INITIAL_PRIO: u16 = 32768;
/// Prio of metadata buckets (bcache `BTREE_PRIO`); never rescaled.
pub const BTREE_PRIO: u16 = u16::MAX;
/// Prio of a data bucket pinned by `bcachefs-lite warm --pin`: never rescaled, never reset by a
/// hit, never invalidated while it holds data (an emptied one may be). Kept across remounts by
/// the gens checkpoint, which records every prio.
pub const PINNED_PRIO: u16 = u16::MAX - 1;
/// A bucket's gen may run at most this far ahead of the oldest gen a key still points at
/// (bcache `BUCKET_GC_GEN_MAX`).
pub const BUCKET_GC_GEN_MAX: u8 = 96;

/// Allocation classes, each with its own free list. Order = bcache's `RESERVE_*` order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reserve {
    /// Index checkpoints and other metadata (bcache `RESERVE_BTREE`).
    Metadata = 0,
    /// Gens checkpoints (bcache `RESERVE_PRIO`).
    Prio = 1,
    /// Moving GC destinations (bcache `RESERVE_MOVINGGC`).
    MovingGc = 2,
    /// Ordinary data (bcache `RESERVE_NONE`).
    None = 3,
}

impl Reserve {
    /// All reserves in bcache's order.
    pub const ALL: [Reserve; 4] = [
        Reserve::Metadata,
        Reserve::Prio,
        Reserve::MovingGc,
        Reserve::None,
    ];
}

/// What a bucket holds, as GC and the allocator see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    /// Nothing live at the current gen.
    Free,
    /// Clean cached data: may be invalidated.
    Data,
    /// Dirty data not yet written back: never invalidated.
    Dirty,
    /// Checkpoints and other metadata: never invalidated.
    Metadata,
}

/// Which list a bucket is on. Buckets handed out, open, or holding data are `Idle`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loc {
    Idle,
    FreeInc,
    Free(Reserve),
}

/// Per-bucket state (bcache `struct bucket` plus our bookkeeping); a copy of it is the
/// snapshot tests, stats and fsck see ([`super::BucketInfo`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bucket {
    /// Current gen.
    pub gen: u8,
    /// Gen recorded in the newest durable gens checkpoint.
    pub disk_gen: u8,
    /// Oldest gen any key still points at, as of the last GC.
    pub last_gc: u8,
    pub prio: u16,
    /// Open bucket, allocations not yet inserted, in-flight reads, allocator ownership.
    pub pins: u32,
    pub mark: Mark,
    pub sectors: u32,
    pub loc: Loc,
}

/// A bounded FIFO of bucket indexes (bcache `DECLARE_FIFO`).
#[derive(Debug)]
pub struct Fifo {
    pub q: VecDeque<u32>,
    pub cap: usize,
}

impl Fifo {
    fn new(cap: usize) -> Self {
        Fifo {
            q: VecDeque::with_capacity(cap),
            cap,
        }
    }
    pub fn is_full(&self) -> bool {
        self.q.len() >= self.cap
    }
    pub fn len(&self) -> usize {
        self.q.len()
    }
    pub fn is_empty(&self) -> bool {
        self.q.is_empty()
    }
}

/// Counters kept under the lock.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counters {
    pub invalidated: u64,
    pub checkpoints: u64,
    pub discards: u64,
    pub gc_requests: u64,
    pub rescales: u64,
}

/// Everything the allocator mutex protects.
pub struct AllocState {
    pub buckets: Vec<Bucket>,
    /// Per-reserve free lists, indexed by `Reserve as usize`.
    pub free: [Fifo; 4],
    /// Invalidated buckets whose new gen may not be durable yet.
    pub free_inc: Fifo,
    pub open: OpenBuckets,
    pub replacement: Replacement,
    pub bucket_sectors: u32,
    pub min_prio: u16,
    /// Sectors still to be written before the next prio rescale.
    pub rescale_left: i64,
    pub rescale_every: i64,
    pub fifo_cursor: u32,
    pub rng: u64,
    /// False until the first GC after open has reported which buckets hold data.
    pub gc_mark_valid: bool,
    /// Nothing could be invalidated: do not try again until GC finishes.
    pub invalidate_needs_gc: bool,
    /// Buckets of the newest durable gens checkpoint (marked metadata).
    pub ckpt_buckets: Vec<u32>,
    pub ckpt_seq: u64,
    pub gens_parts: usize,
    /// Set by anyone who wants the allocator thread to run a step.
    pub kick: bool,
    pub counters: Counters,
}

impl AllocState {
    /// State for a cache just opened: gens and prios from the checkpoint, every other bucket
    /// free but not yet known to be empty (`gc_mark_valid` false).
    pub fn new(sb: &Superblock, gens: &[u8], prios: &[u16], ckpt: &[u32], ckpt_seq: u64) -> Self {
        let n = sb.nbuckets as usize;
        let free = (n.next_power_of_two() >> 10).max(4);
        let btree = (n / 32).clamp(1, 8);
        let parts = gens_buckets(sb.nbuckets, sb.bucket_size) as usize;
        let mut buckets: Vec<Bucket> = (0..n)
            .map(|i| Bucket {
                gen: gens[i],
                disk_gen: gens[i],
                last_gc: gens[i],
                prio: prios[i],
                pins: 0,
                mark: Mark::Free,
                sectors: 0,
                loc: Loc::Idle,
            })
            .collect();
        for &b in ckpt {
            let bk = &mut buckets[b as usize];
            bk.mark = Mark::Metadata;
            bk.prio = BTREE_PRIO;
        }
        let rescale_every = (i64::from(sb.bucket_sectors()) * n as i64 / 1024).max(1);
        let mut st = AllocState {
            buckets,
            free: [
                Fifo::new(btree),
                Fifo::new(parts),
                Fifo::new(free),
                Fifo::new(free),
            ],
            free_inc: Fifo::new(free * 4),
            open: OpenBuckets::new((n / 8).clamp(2, super::open::MAX_OPEN_BUCKETS)),
            replacement: sb.replacement,
            bucket_sectors: sb.bucket_sectors(),
            min_prio: 0,
            rescale_left: rescale_every,
            rescale_every,
            fifo_cursor: 0,
            rng: 0x9e37_79b9_7f4a_7c15
                ^ u64::from_le_bytes(sb.uuid[..8].try_into().unwrap_or([1; 8])),
            gc_mark_valid: false,
            invalidate_needs_gc: false,
            ckpt_buckets: ckpt.to_vec(),
            ckpt_seq,
            gens_parts: parts,
            kick: true,
            counters: Counters::default(),
        };
        st.recompute_min_prio();
        st
    }

    /// bcache `bch_can_invalidate_bucket` (+ our list check): clean or empty, unpinned, on no
    /// list, and its gen may still be bumped without passing the gen-wrap bound.
    pub fn can_invalidate(&self, b: u32) -> bool {
        let k = &self.buckets[b as usize];
        k.loc == Loc::Idle
            && k.pins == 0
            && matches!(k.mark, Mark::Free | Mark::Data)
            && (k.prio != PINNED_PRIO || k.sectors == 0)
            && k.gen.wrapping_sub(k.last_gc) < BUCKET_GC_GEN_MAX
    }

    /// bcache `__bch_invalidate_one_bucket`: bump gen, reset prio, pin, onto `free_inc`.
    fn invalidate_one(&mut self, b: u32) {
        debug_assert!(self.can_invalidate(b));
        let k = &mut self.buckets[b as usize];
        k.gen = k.gen.wrapping_add(1);
        k.prio = INITIAL_PRIO;
        k.pins += 1;
        k.mark = Mark::Free;
        k.sectors = 0;
        k.loc = Loc::FreeInc;
        self.free_inc.q.push_back(b);
        self.counters.invalidated += 1;
    }

    /// Fill `free_inc` by the configured policy. Returns how many buckets were invalidated.
    pub fn invalidate_buckets(&mut self) -> usize {
        let room = self.free_inc.cap - self.free_inc.len();
        if room == 0 {
            return 0;
        }
        match self.replacement {
            Replacement::Lru => self.invalidate_lru(room),
            Replacement::Fifo => self.invalidate_fifo(room),
            Replacement::Random => self.invalidate_random(room),
        }
    }

    /// bcache `invalidate_buckets_lru`: keep the `room` buckets with the smallest
    /// `(prio - min_prio) * sectors` in a max-heap, then invalidate them smallest first.
    fn invalidate_lru(&mut self, room: usize) -> usize {
        let mut heap: BinaryHeap<(u64, u32)> = BinaryHeap::with_capacity(room + 1);
        for b in 0..self.buckets.len() as u32 {
            if !self.can_invalidate(b) {
                continue;
            }
            let k = &self.buckets[b as usize];
            // bcache scores `(prio - min_prio) * sectors`, which ties the newest data (prio
            // == min_prio) with empty buckets at 0; the +1 makes empty buckets go first.
            let key = (u64::from(k.prio.saturating_sub(self.min_prio)) + 1) * u64::from(k.sectors);
            if heap.len() < room {
                heap.push((key, b));
            } else if heap.peek().is_some_and(|&(top, _)| key < top) {
                heap.pop();
                heap.push((key, b));
            }
        }
        let picked = heap.into_sorted_vec();
        let n = picked.len();
        for (_, b) in picked {
            self.invalidate_one(b);
        }
        n
    }

    /// bcache `invalidate_buckets_fifo`: round robin from where the last pass stopped.
    fn invalidate_fifo(&mut self, room: usize) -> usize {
        let n = self.buckets.len() as u32;
        let mut done = 0;
        for _ in 0..n {
            if done == room {
                break;
            }
            let b = self.fifo_cursor;
            self.fifo_cursor = (self.fifo_cursor + 1) % n;
            if self.can_invalidate(b) {
                self.invalidate_one(b);
                done += 1;
            }
        }
        done
    }

    /// bcache `invalidate_buckets_random`: up to `nbuckets` random probes.
    fn invalidate_random(&mut self, room: usize) -> usize {
        let n = self.buckets.len() as u64;
        let mut done = 0;
        for _ in 0..n {
            if done == room {
                break;
            }
            // xorshift64
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            let b = (self.rng % n) as u32;
            if self.can_invalidate(b) {
                self.invalidate_one(b);
                done += 1;
            }
        }
        done
    }

    /// Total free-list room left.
    pub fn free_room(&self) -> usize {
        self.free.iter().map(|f| f.cap - f.len()).sum()
    }

    /// bcache `bch_allocator_push`: the prio reserve first, then every list in reserve order.
    /// The bucket's gen must be durable.
    pub fn push_free(&mut self, b: u32) -> bool {
        let k = self.buckets[b as usize];
        assert_eq!(
            k.gen, k.disk_gen,
            "bucket {b} pushed to a free list with a non-durable gen"
        );
        let order = [
            Reserve::Prio,
            Reserve::Metadata,
            Reserve::MovingGc,
            Reserve::None,
        ];
        for r in order {
            let f = &mut self.free[r as usize];
            if !f.is_full() {
                f.q.push_back(b);
                self.buckets[b as usize].loc = Loc::Free(r);
                return true;
            }
        }
        false
    }

    /// bcache `bch_bucket_alloc` fast path: pop `free[None]`, else `free[reserve]`. The bucket
    /// keeps the allocator's pin, which now belongs to the caller.
    pub fn pop_free(&mut self, reserve: Reserve) -> Option<u32> {
        let b = match self.free[Reserve::None as usize].q.pop_front() {
            Some(b) => b,
            None => self.free[reserve as usize].q.pop_front()?,
        };
        let k = &mut self.buckets[b as usize];
        debug_assert_eq!(k.pins, 1);
        debug_assert_eq!(k.gen, k.disk_gen);
        k.loc = Loc::Idle;
        k.sectors = 0;
        if matches!(reserve, Reserve::Metadata | Reserve::Prio) {
            k.mark = Mark::Metadata;
            k.prio = BTREE_PRIO;
        } else {
            k.mark = Mark::Data;
            k.prio = INITIAL_PRIO;
        }
        self.kick = true;
        Some(b)
    }

    /// bcache `bch_initial_gc_finish`: after the first GC, fill the prio and metadata reserves
    /// straight from buckets GC proved empty. No gen bump is needed: no key points at their
    /// current gen, so anything written there is reachable only through pointers created later.
    pub fn initial_fill(&mut self) {
        for b in 0..self.buckets.len() as u32 {
            if self.free[Reserve::Prio as usize].is_full()
                && self.free[Reserve::Metadata as usize].is_full()
            {
                break;
            }
            let k = self.buckets[b as usize];
            if self.can_invalidate(b) && k.mark == Mark::Free && k.gen == k.disk_gen {
                self.buckets[b as usize].pins += 1;
                let r = if self.free[Reserve::Prio as usize].is_full() {
                    Reserve::Metadata
                } else {
                    Reserve::Prio
                };
                self.free[r as usize].q.push_back(b);
                self.buckets[b as usize].loc = Loc::Free(r);
            }
        }
    }

    /// bcache `bch_rescale_priorities`: every `rescale_every` sectors written, age every data
    /// bucket's prio by one.
    pub fn rescale(&mut self, sectors: u32) {
        self.rescale_left -= i64::from(sectors);
        if self.rescale_left > 0 {
            return;
        }
        self.rescale_left = self.rescale_every;
        for k in &mut self.buckets {
            if k.prio != 0 && k.prio < PINNED_PRIO && k.mark != Mark::Metadata {
                k.prio -= 1;
            }
        }
        self.counters.rescales += 1;
        self.recompute_min_prio();
    }

    fn recompute_min_prio(&mut self) {
        self.min_prio = self
            .buckets
            .iter()
            .filter(|k| matches!(k.mark, Mark::Data | Mark::Dirty) && k.prio < PINNED_PRIO)
            .map(|k| k.prio)
            .min()
            .unwrap_or(0);
    }

    /// Check invariant 5 and the bookkeeping behind 2, 4 and 6. Returns a description of the
    /// first violation.
    pub fn check(&self) -> Result<(), String> {
        let n = self.buckets.len();
        let mut seen = vec![None::<Loc>; n];
        let mut visit = |b: u32, loc: Loc| -> Result<(), String> {
            let i = b as usize;
            if i >= n {
                return Err(format!("bucket {b} out of range on {loc:?}"));
            }
            if let Some(prev) = seen[i] {
                return Err(format!("bucket {b} on {prev:?} and {loc:?}"));
            }
            seen[i] = Some(loc);
            Ok(())
        };
        for b in &self.free_inc.q {
            visit(*b, Loc::FreeInc)?;
        }
        for r in Reserve::ALL {
            let f = &self.free[r as usize];
            if f.len() > f.cap {
                return Err(format!("free list {r:?} over capacity"));
            }
            for b in &f.q {
                visit(*b, Loc::Free(r))?;
            }
        }
        if self.free_inc.len() > self.free_inc.cap {
            return Err("free_inc over capacity".into());
        }
        for (i, k) in self.buckets.iter().enumerate() {
            let on = seen[i].unwrap_or(Loc::Idle);
            if on != k.loc {
                return Err(format!("bucket {i} says {:?} but is on {on:?}", k.loc));
            }
            if k.loc != Loc::Idle && k.pins == 0 {
                return Err(format!(
                    "bucket {i} on {:?} without the allocator's pin",
                    k.loc
                ));
            }
            if matches!(k.loc, Loc::Free(_)) && k.gen != k.disk_gen {
                return Err(format!("bucket {i} on a free list with a non-durable gen"));
            }
            if k.loc == Loc::Idle && k.gen != k.disk_gen {
                return Err(format!("bucket {i} out of free_inc with a non-durable gen"));
            }
            if k.gen.wrapping_sub(k.last_gc) > BUCKET_GC_GEN_MAX {
                return Err(format!(
                    "bucket {i} gen {} more than {BUCKET_GC_GEN_MAX} ahead of last_gc {}",
                    k.gen, k.last_gc
                ));
            }
        }
        for ob in self.open.iter() {
            let k = &self.buckets[ob.bucket as usize];
            if k.gen != ob.gen || k.pins == 0 || k.loc != Loc::Idle {
                return Err(format!("open bucket {} not pinned at its gen", ob.bucket));
            }
        }
        for &b in &self.ckpt_buckets {
            if self.buckets[b as usize].mark != Mark::Metadata {
                return Err(format!("checkpoint bucket {b} not marked metadata"));
            }
        }
        Ok(())
    }
}
