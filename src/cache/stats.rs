//! Cache statistics, as bcache shows them in sysfs.
//!
//! Counters are relaxed atomics bumped on the request path (no lock). The hit
//! counters also have bcache's five-minute, hour and day windows: a background tick
//! records a snapshot of the cumulative counters every minute in a ring of one
//! day's minutes; a window's value is "now minus the snapshot that old".
//!
//! Locks: the snapshot ring has one mutex, taken once a minute and by `stats`.
//! Nothing here blocks.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Counters of the request path. Names are bcache's where bcache has the same thing.
#[derive(Default)]
pub struct Counters {
    /// Read requests served entirely from the cache.
    pub cache_hits: AtomicU64,
    /// Read requests that needed the backing for some part.
    pub cache_misses: AtomicU64,
    /// Bytes read by processes that streamed past the sequential cutoff.
    pub bypassed: AtomicU64,
    pub cache_bypass_hits: AtomicU64,
    pub cache_bypass_misses: AtomicU64,
    /// A miss's fill was discarded because a write or a backing change raced with it.
    pub cache_miss_collisions: AtomicU64,
    /// Bytes read from the backing beyond the request (readahead) and cached.
    pub cache_readaheads: AtomicU64,
    /// A cached piece whose bucket was reused between lookup and read.
    pub cache_read_races: AtomicU64,
    pub checksum_errors: AtomicU64,
    pub stale_pointers: AtomicU64,
    /// Bytes served from the cache and from the backing.
    pub bytes_hit: AtomicU64,
    pub bytes_missed: AtomicU64,
    /// Bytes written into the cache file by fills.
    pub bytes_filled: AtomicU64,
    /// Of those, bytes of streaming fills written into probation buckets (issue 12).
    pub probation_bytes_filled: AtomicU64,
    /// Fills skipped because no bucket was free at once or the cache failed.
    pub fills_skipped: AtomicU64,
    /// Files whose extents were dropped because the backing changed underneath.
    pub invalidations: AtomicU64,
    pub journal_entries: AtomicU64,
    pub index_checkpoints: AtomicU64,
    /// Fills handed out with a reply and not yet written (a gauge).
    pub fills_pending: AtomicU64,
    /// Metadata cache checkpoints written (periodic snapshots and the clean unmount's).
    pub metadata_checkpoints: AtomicU64,
    pub gc_runs: AtomicU64,
    pub gc_stale_keys_dropped: AtomicU64,
    pub moving_gc_moved_bytes: AtomicU64,
    pub io_errors: AtomicU64,
    /// Lookups of files that cannot be cached (no filesystem slot left, inode number past
    /// 56 bits): they are served from the backing.
    pub uncacheable_files: AtomicU64,
}

pub fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

pub fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

pub fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// The hit counters a window is computed for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HitSnapshot {
    pub hits: u64,
    pub misses: u64,
    pub bypass_hits: u64,
    pub bypass_misses: u64,
    pub bypassed: u64,
}

impl HitSnapshot {
    fn minus(self, old: HitSnapshot) -> HitSnapshot {
        HitSnapshot {
            hits: self.hits.saturating_sub(old.hits),
            misses: self.misses.saturating_sub(old.misses),
            bypass_hits: self.bypass_hits.saturating_sub(old.bypass_hits),
            bypass_misses: self.bypass_misses.saturating_sub(old.bypass_misses),
            bypassed: self.bypassed.saturating_sub(old.bypassed),
        }
    }

    /// Percentage of requests that hit, 0 when there were none (bcache rounds the same way).
    pub fn hit_ratio(&self) -> u64 {
        let total = self.hits + self.misses;
        (self.hits * 100).checked_div(total).unwrap_or(0)
    }
}

/// One day of minute snapshots.
const RING: usize = 24 * 60 + 1;

pub struct Windows {
    started: Instant,
    ring: Mutex<VecDeque<(Instant, HitSnapshot)>>,
}

impl Default for Windows {
    fn default() -> Self {
        Windows {
            started: Instant::now(),
            ring: Mutex::new(VecDeque::with_capacity(RING)),
        }
    }
}

impl Counters {
    pub fn hit_snapshot(&self) -> HitSnapshot {
        HitSnapshot {
            hits: get(&self.cache_hits),
            misses: get(&self.cache_misses),
            bypass_hits: get(&self.cache_bypass_hits),
            bypass_misses: get(&self.cache_bypass_misses),
            bypassed: get(&self.bypassed),
        }
    }
}

impl Windows {
    /// Records the current cumulative counters (called once a minute).
    pub fn tick(&self, now: HitSnapshot) {
        self.tick_at(Instant::now(), now);
    }

    fn tick_at(&self, at: Instant, snap: HitSnapshot) {
        let mut ring = self.ring.lock();
        if ring.len() == RING {
            ring.pop_front();
        }
        ring.push_back((at, snap));
    }

    /// Counts over the last `window`: now minus the newest snapshot taken at or before the
    /// window's start (so up to one tick more than the window), or everything since start
    /// when the mount is younger than the window.
    pub fn over(&self, now: HitSnapshot, window: Duration) -> HitSnapshot {
        self.over_at(now, window, Instant::now())
    }

    fn over_at(&self, now: HitSnapshot, window: Duration, at: Instant) -> HitSnapshot {
        let Some(cutoff) = at.checked_sub(window).filter(|c| *c > self.started) else {
            return now;
        };
        let ring = self.ring.lock();
        match ring.iter().rev().find(|(t, _)| *t <= cutoff) {
            Some((_, base)) => now.minus(*base),
            None => now,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_rounds_down_and_handles_zero() {
        let s = HitSnapshot {
            hits: 2,
            misses: 1,
            ..Default::default()
        };
        assert_eq!(s.hit_ratio(), 66);
        assert_eq!(HitSnapshot::default().hit_ratio(), 0);
    }

    #[test]
    fn windows_subtract_the_newest_snapshot_before_their_start() {
        let w = Windows::default();
        let t0 = w.started;
        let snap = |hits| HitSnapshot {
            hits,
            ..Default::default()
        };
        let min = Duration::from_secs(60);
        w.tick_at(t0 + min, snap(10));
        w.tick_at(t0 + 2 * min, snap(30));
        w.tick_at(t0 + 3 * min, snap(60));
        let now = snap(100);
        let at = t0 + 3 * min + Duration::from_secs(30);
        // a window reaching back past the 2-minute tick: base is that tick
        assert_eq!(w.over_at(now, Duration::from_secs(80), at).hits, 70);
        // a window starting after the 1-minute tick: base is the 1-minute tick
        assert_eq!(w.over_at(now, Duration::from_secs(150), at).hits, 90);
        // a window longer than the mount's life: everything
        assert_eq!(w.over_at(now, Duration::from_secs(3600), at).hits, 100);
        // a window shorter than the last tick's age: since that tick
        assert_eq!(w.over_at(now, Duration::from_secs(10), at).hits, 40);
    }
}
