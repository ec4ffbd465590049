//! Garbage collection (bcache's `btree_gc`): recount every bucket from the index.
//!
//! One pass: snapshot the buckets' gens (`gc_begin`); drop keys whose gen is stale;
//! report every live key's sectors and the index checkpoint's buckets; hand the
//! report to the allocator (`gc_finish`), which frees buckets nothing points into,
//! sets sector counts for LRU, and records the oldest referenced gen per bucket (the
//! gen-wrap bound, invariant 6). Stale keys need no journal record: after a crash
//! replay finds them stale again.
//!
//! The thread runs a pass when the allocator asks (nothing left to invalidate) and
//! every 30 s, and records the stats windows' minute snapshots.
//!
//! Locks: index shards one at a time (inside `retain` / `for_each_extent`), then the
//! allocator's state lock inside `gc_finish`; never both at once. May block: no I/O.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::journal::JournalWriter;
use super::stats::{add, bump, Counters, Windows};
use crate::alloc::Cache;
use crate::device::format::SECTOR;
use crate::index::Index;

const PERIOD: Duration = Duration::from_secs(30);
const TICK: Duration = Duration::from_secs(60);
const MIN_GAP: Duration = Duration::from_millis(200);

pub fn run(alloc: &Cache, index: &Index, journal: &JournalWriter, counters: &Counters) {
    let mut report = alloc.gc_begin();
    let stale = index.retain(|_, e| report.is_live(e.ptr.bucket, e.ptr.gen));
    add(&counters.gc_stale_keys_dropped, stale.len() as u64);
    index.for_each_extent(|_, e| {
        report.add_key(e.ptr.bucket, e.ptr.gen, (e.len / SECTOR) as u32, e.dirty);
    });
    for b in journal.checkpoint_buckets() {
        report.add_metadata(b);
    }
    if let Err(e) = alloc.gc_finish(report) {
        tracing::error!("gc: {e}");
        return;
    }
    bump(&counters.gc_runs);
}

pub fn thread(
    alloc: &Cache,
    index: &Index,
    journal: &JournalWriter,
    counters: &Counters,
    windows: &Windows,
    stop: &AtomicBool,
) {
    let mut seen = alloc.gc_requests();
    let mut last_run = Instant::now();
    let mut last_tick = Instant::now();
    while !stop.load(Ordering::Acquire) {
        let requests = alloc.wait_gc_request(seen, Duration::from_secs(1));
        if stop.load(Ordering::Acquire) {
            return;
        }
        // asked for, but not more often than every MIN_GAP (a small cache asks often)
        if (requests > seen && last_run.elapsed() >= MIN_GAP) || last_run.elapsed() >= PERIOD {
            seen = requests;
            run(alloc, index, journal, counters);
            last_run = Instant::now();
        }
        if last_tick.elapsed() >= TICK {
            windows.tick(counters.hit_snapshot());
            last_tick = Instant::now();
        }
    }
}
