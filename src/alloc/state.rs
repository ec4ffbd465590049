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
/// Prio a bucket opened for a streaming fill starts at (probation; issue 12). A bucket whose
/// prio is at or below this value is on probation: LRU evicts it before any bucket filled normally
/// in the last `INITIAL_PRIO - PRIO_PROBATION` rescales (16 cache sizes written), and a hit
/// promotes it to `INITIAL_PRIO`. No journal record carries it: the gens checkpoint's prio does,
/// so a remount keeps what was on probation.
pub const PRIO_PROBATION: u16 = INITIAL_PRIO / 2;
/// Prio of metadata buckets (bcache `BTREE_PRIO`); never rescaled.
pub const BTREE_PRIO: u16 = u16::MAX;
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
    /// Opened for a streaming fill and not hit since (in memory; after a remount, a data
    /// bucket whose checkpointed prio is at or below [`PRIO_PROBATION`]).
    pub probation: bool,
    /// Hit at least once since it was last handed out (in memory; true after a remount for
    /// buckets not on probation, which are not known to be never-hit).
    pub hit: bool,
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
    /// Buckets opened at probation prio (streaming fills).
    pub probation_buckets: u64,
    /// Hits on a probation bucket, which moved it to the normal prio.
    pub promotions: u64,
    /// Invalidated buckets that held data and were never hit since they were filled.
    pub evicted_never_hit: u64,
    /// Of those, buckets still on probation.
    pub evicted_probation: u64,
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
                probation: prios[i] <= PRIO_PROBATION && prios[i] != 0,
                hit: !(prios[i] <= PRIO_PROBATION && prios[i] != 0),
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
            && k.gen.wrapping_sub(k.last_gc) < BUCKET_GC_GEN_MAX
    }

    /// bcache `__bch_invalidate_one_bucket`: bump gen, reset prio, pin, onto `free_inc`.
    fn invalidate_one(&mut self, b: u32) {
        debug_assert!(self.can_invalidate(b));
        let k = &mut self.buckets[b as usize];
        if k.sectors > 0 && k.mark == Mark::Data && !k.hit {
            self.counters.evicted_never_hit += 1;
            if k.probation {
                self.counters.evicted_probation += 1;
            }
        }
        k.gen = k.gen.wrapping_add(1);
        k.prio = INITIAL_PRIO;
        k.probation = false;
        k.hit = false;
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
        self.pop_free_for(reserve, false)
    }

    /// [`AllocState::pop_free`] for a data bucket that starts on probation (`probation`: its
    /// prio is [`PRIO_PROBATION`], and `min_prio` follows it down so LRU scores stay ordered).
    pub fn pop_free_for(&mut self, reserve: Reserve, probation: bool) -> Option<u32> {
        let b = match self.free[Reserve::None as usize].q.pop_front() {
            Some(b) => b,
            None => self.free[reserve as usize].q.pop_front()?,
        };
        let k = &mut self.buckets[b as usize];
        debug_assert_eq!(k.pins, 1);
        debug_assert_eq!(k.gen, k.disk_gen);
        k.loc = Loc::Idle;
        k.sectors = 0;
        k.hit = false;
        k.probation = false;
        if matches!(reserve, Reserve::Metadata | Reserve::Prio) {
            k.mark = Mark::Metadata;
            k.prio = BTREE_PRIO;
        } else if probation {
            k.mark = Mark::Data;
            k.prio = PRIO_PROBATION;
            k.probation = true;
            self.counters.probation_buckets += 1;
            self.min_prio = self.min_prio.min(PRIO_PROBATION);
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

    /// A cache hit on data bucket `b` (bcache sets the prio back to `INITIAL_PRIO`): a bucket on
    /// probation is promoted to the normal prio.
    pub fn hit(&mut self, b: u32) {
        let k = &mut self.buckets[b as usize];
        if !matches!(k.mark, Mark::Data | Mark::Dirty) {
            return;
        }
        k.prio = INITIAL_PRIO;
        k.hit = true;
        if k.probation {
            k.probation = false;
            self.counters.promotions += 1;
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
            if k.prio != 0 && k.prio != BTREE_PRIO && k.mark != Mark::Metadata {
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
            .filter(|k| matches!(k.mark, Mark::Data | Mark::Dirty))
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

#[cfg(test)]
mod tests {
    //! The prio/probation model (issue 12) on the state alone, no I/O.
    use super::*;
    use crate::device::format::Geometry;

    /// A state whose buckets are all metadata (so only what a test fills can be evicted).
    fn state(nbuckets: u64, prios: Option<&[u16]>) -> AllocState {
        let g = Geometry {
            size: (nbuckets + 8) << 20,
            journal_size: Some(1 << 20),
            ..Geometry::default()
        };
        let sb = Superblock::new_for(&g, [7; 16], 0).unwrap();
        let n = sb.nbuckets as usize;
        let gens = vec![0u8; n];
        let prios = prios.map_or(vec![0u16; n], <[u16]>::to_vec);
        let mut st = AllocState::new(&sb, &gens, &prios, &[], 0);
        st.gc_mark_valid = true;
        for k in &mut st.buckets {
            k.mark = Mark::Metadata;
        }
        st
    }

    /// Hands bucket `b` out as a data bucket of the given class and fills it (what
    /// `alloc_sectors` does, without the open-bucket list).
    fn fill(st: &mut AllocState, b: u32, probation: bool) {
        st.buckets[b as usize].pins = 1;
        st.free[Reserve::None as usize].q.push_back(b);
        st.buckets[b as usize].loc = Loc::Free(Reserve::None);
        assert_eq!(st.pop_free_for(Reserve::None, probation), Some(b));
        let k = &mut st.buckets[b as usize];
        k.sectors = st.bucket_sectors;
        k.pins = 0;
    }

    fn age(st: &mut AllocState, rescales: u32) {
        for _ in 0..rescales {
            st.rescale(st.rescale_every as u32);
        }
    }

    fn evicted(st: &mut AllocState, room: usize) -> Vec<u32> {
        st.free_inc.cap = room;
        st.invalidate_buckets();
        st.free_inc.q.iter().copied().collect()
    }

    #[test]
    fn lru_evicts_a_newer_probation_bucket_before_an_older_normal_one() {
        let mut st = state(64, None);
        for b in 0..4 {
            fill(&mut st, b, false);
        }
        age(&mut st, 1000); // the hot set is old...
        for b in 4..8 {
            fill(&mut st, b, true); // ...and the scan is new
        }
        assert!(st.buckets[4].probation && st.buckets[4].prio == PRIO_PROBATION);
        let mut out = evicted(&mut st, 4);
        out.sort_unstable();
        assert_eq!(out, vec![4, 5, 6, 7], "the scan goes first");
        assert_eq!(st.counters.evicted_never_hit, 4);
        assert_eq!(st.counters.evicted_probation, 4);
        assert_eq!(st.counters.probation_buckets, 4);
        st.check().unwrap();
    }

    #[test]
    fn without_probation_lru_evicts_the_older_hot_set() {
        // The same sequence with every fill normal (probation off): the scan is newer,
        // so the hot set is what LRU evicts. This is what probation protects against.
        let mut st = state(64, None);
        for b in 0..4 {
            fill(&mut st, b, false);
        }
        age(&mut st, 1000);
        for b in 4..8 {
            fill(&mut st, b, false);
        }
        let mut out = evicted(&mut st, 4);
        out.sort_unstable();
        assert_eq!(out, vec![0, 1, 2, 3]);
        assert_eq!(st.counters.evicted_probation, 0);
    }

    #[test]
    fn a_hit_promotes_a_probation_bucket_to_the_normal_prio() {
        let mut st = state(64, None);
        fill(&mut st, 0, false);
        fill(&mut st, 1, true);
        fill(&mut st, 2, true);
        age(&mut st, 10);
        st.hit(1);
        assert_eq!(st.buckets[1].prio, INITIAL_PRIO);
        assert!(!st.buckets[1].probation && st.buckets[1].hit);
        assert_eq!(st.counters.promotions, 1);
        st.hit(1);
        assert_eq!(st.counters.promotions, 1, "promoted once");
        // bucket 2 (still on probation) goes first, then the old normal 0, then the promoted 1
        assert_eq!(evicted(&mut st, 1), vec![2]);
        st.free_inc.q.clear();
        st.buckets[2].loc = Loc::Idle;
        st.buckets[2].pins = 0;
        st.buckets[2].mark = Mark::Data;
        st.buckets[2].sectors = 0; // empty now
        assert_eq!(evicted(&mut st, 2)[..2], [2, 0]);
        assert_eq!(st.counters.evicted_never_hit, 2, "bucket 2 and the unhit 0");
        assert_eq!(st.counters.evicted_probation, 1);
    }

    #[test]
    fn probation_ages_and_older_probation_buckets_go_first() {
        let mut st = state(64, None);
        fill(&mut st, 3, true);
        age(&mut st, 5);
        fill(&mut st, 2, true);
        assert!(st.buckets[3].prio < st.buckets[2].prio);
        assert_eq!(st.min_prio, st.buckets[3].prio);
        assert_eq!(evicted(&mut st, 1), vec![3]);
    }

    #[test]
    fn a_checkpointed_prio_below_probation_comes_back_on_probation() {
        let mut prios = vec![INITIAL_PRIO; 80];
        prios[5] = PRIO_PROBATION - 3;
        prios[6] = 0; // never used
        let st = state(64, Some(&prios));
        assert!(st.buckets[5].probation && !st.buckets[5].hit);
        assert!(!st.buckets[6].probation);
        assert!(!st.buckets[7].probation && st.buckets[7].hit);
    }

    #[test]
    fn metadata_and_free_buckets_are_not_promoted() {
        let mut st = state(64, None);
        st.buckets[1].mark = Mark::Metadata;
        st.buckets[1].prio = BTREE_PRIO;
        st.hit(1);
        assert_eq!(st.buckets[1].prio, BTREE_PRIO);
        st.buckets[2].mark = Mark::Free;
        st.buckets[2].probation = true;
        st.hit(2);
        assert_eq!(st.counters.promotions, 0);
    }
}
