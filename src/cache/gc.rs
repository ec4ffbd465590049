//! Garbage collection (bcache's `btree_gc`): recount every bucket from the index.
//!
//! One pass: snapshot the buckets' gens (`gc_begin`); drop keys whose gen is stale;
//! report every live key's sectors and the index checkpoint's buckets; hand the
//! report to the allocator (`gc_finish`), which frees buckets nothing points into,
//! sets sector counts for LRU, and records the oldest referenced gen per bucket (the
//! gen-wrap bound, invariant 6). Stale keys need no journal record: after a crash
//! replay finds them stale again.
//!
//! Moving GC (bcache's `moving_gc`) follows a pass: data buckets at most a quarter
//! full (not open, not pinned) are compacted: their live extents are read (pinned,
//! crc-checked), written through the moving-GC write point (new buckets may come from
//! the moving-gc reserve), and put in place of the old ones only if nothing changed
//! them meanwhile; the next pass then finds the old buckets empty and frees them.
//!
//! The thread runs a pass when the allocator asks (nothing left to invalidate) and
//! every 30 s, and records the stats windows' minute snapshots.
//!
//! Locks: index shards one at a time (inside `retain` / `for_each_extent`), then the
//! allocator's state lock inside `gc_finish`; never both at once. Moving GC holds the
//! cache's change lock (write side) while it swaps an extent and queues its key, so a
//! concurrent drop of that range is journaled either before the swap (the swap then
//! fails) or after the key. May block: moving GC does cache-file I/O.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::RwLock;

use super::journal::JournalWriter;
use super::stats::{add, bump, Counters, Windows};
use crate::alloc::{Allocator, KeyPos, Mark};
use crate::device::format::SECTOR;
use crate::error::expect_ok;
use crate::index::{Extent, Index};
use crate::journal::format::Record;

/// Buckets at most this full (fraction of the bucket) are compacted.
const SPARSE_DIVISOR: u32 = 4;
/// Most buckets compacted per pass.
const MOVE_MAX: usize = 16;

const PERIOD: Duration = Duration::from_secs(30);
const TICK: Duration = Duration::from_secs(60);
const MIN_GAP: Duration = Duration::from_millis(200);

/// One GC pass. Holds the cache's change lock (write side) throughout, so no dirty key is
/// inserted between the index walk and `gc_finish` (which would then mark its bucket from a
/// report without it, and could leave a dirty bucket evictable).
pub fn run(
    alloc: &Allocator,
    index: &Index,
    journal: &JournalWriter,
    counters: &Counters,
    changes: &RwLock<()>,
) {
    let _changes = changes.write();
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

/// Compacts sparse data buckets (see the module header). Returns bytes moved.
pub fn moving(
    alloc: &Allocator,
    index: &Index,
    journal: &JournalWriter,
    counters: &Counters,
    changes: &RwLock<()>,
) -> u64 {
    let limit = alloc.bucket_sectors() / SPARSE_DIVISOR;
    let mut sparse: Vec<(u32, u8)> = Vec::new();
    for b in 0..alloc.nbuckets() {
        if let Ok(k) = alloc.bucket_info(b) {
            let idle = k.loc == crate::alloc::Loc::Idle && k.pins == 0;
            // a pinned bucket stays where it is: moving would lose its pin
            let pinned = k.prio == crate::alloc::PINNED_PRIO;
            if idle && !pinned && k.mark == Mark::Data && k.sectors > 0 && k.sectors <= limit {
                sparse.push((b, k.gen));
                if sparse.len() == MOVE_MAX {
                    break;
                }
            }
        }
    }
    // a single sparse bucket is not worth a move: nothing to pack it with
    if sparse.len() < 2 {
        return 0;
    }
    let mut victims: Vec<(u64, Extent)> = Vec::new();
    index.for_each_extent(|file, e| {
        // dirty extents stay where they are (their bucket is marked dirty, the new one would not be)
        if !e.dirty && sparse.contains(&(e.ptr.bucket, e.ptr.gen)) {
            victims.push((file, e.clone()));
        }
    });
    let mut moved = 0u64;
    let block = u64::from(alloc.superblock().block_size);
    for (file, old) in victims {
        match alloc.pin(old.ptr.bucket, old.ptr.gen) {
            Ok(true) => {}
            _ => continue,
        }
        let mut data = vec![0u8; old.len as usize];
        let read = alloc.data().read(old.ptr, &mut data);
        expect_ok(alloc.unpin(old.ptr.bucket), "unpin a moved extent's bucket");
        if read.is_err() {
            continue;
        }
        let intact = data
            .chunks(block as usize)
            .zip(old.crcs.iter())
            .all(|(d, &c)| crc32c::crc32c(d) == c);
        if !intact {
            continue;
        }
        let mut done = 0u64;
        while done < old.len {
            let piece = old.slice(old.offset + done, old.end());
            let key = KeyPos {
                file,
                offset: piece.offset / SECTOR,
            };
            let Ok((ptr, granted)) = alloc.alloc_sectors_moving(key, (piece.len / SECTOR) as u32)
            else {
                return moved;
            };
            let len = u64::from(granted) * SECTOR;
            let src = old.slice(piece.offset, piece.offset + len);
            let bytes = &data[done as usize..(done + len) as usize];
            if alloc.data().write(ptr, bytes).is_err() {
                expect_ok(
                    alloc.key_inserted(ptr),
                    "release a moved extent's allocation",
                );
                return moved;
            }
            let new = Extent {
                offset: src.offset,
                len,
                ptr,
                crcs: src.crcs.clone(),
                dirty: src.dirty,
            };
            {
                let _changes = changes.write();
                if index.replace_if_unchanged(file, &src, new.clone()) {
                    journal.queue(Record::KeyInsert {
                        file,
                        offset: new.offset,
                        len: granted,
                        bucket: ptr.bucket,
                        gen: ptr.gen,
                        bucket_offset: ptr.offset,
                        dirty: new.dirty,
                        crcs: new.crcs.to_vec(),
                    });
                    moved += len;
                }
            }
            expect_ok(
                alloc.key_inserted(ptr),
                "release a moved extent's allocation",
            );
            done += len;
        }
    }
    add(&counters.moving_gc_moved_bytes, moved);
    moved
}

pub fn thread(
    alloc: &Allocator,
    index: &Index,
    journal: &JournalWriter,
    counters: &Counters,
    windows: &Windows,
    changes: &RwLock<()>,
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
            run(alloc, index, journal, counters, changes);
            if moving(alloc, index, journal, counters, changes) > 0 {
                // the compacted buckets are empty now: let the allocator have them
                run(alloc, index, journal, counters, changes);
            }
            last_run = Instant::now();
        }
        if last_tick.elapsed() >= TICK {
            windows.tick(counters.hit_snapshot());
            last_tick = Instant::now();
        }
    }
}
