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
    /// Fills skipped because no bucket was free at once or the cache failed.
    pub fills_skipped: AtomicU64,
    /// Files whose extents were dropped because the backing changed underneath.
    pub invalidations: AtomicU64,
    pub journal_entries: AtomicU64,
    pub index_checkpoints: AtomicU64,
    pub gc_runs: AtomicU64,
    pub gc_stale_keys_dropped: AtomicU64,
    pub moving_gc_moved_bytes: AtomicU64,
    pub io_errors: AtomicU64,
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
        let mut ring = self.ring.lock();
        if ring.len() == RING {
            ring.pop_front();
        }
        ring.push_back((Instant::now(), now));
    }

    /// Counts over the last `window` (or since start when younger than that).
    pub fn over(&self, now: HitSnapshot, window: Duration) -> HitSnapshot {
        let ring = self.ring.lock();
        let cutoff = Instant::now().checked_sub(window).unwrap_or(self.started);
        // the oldest snapshot not older than the window; none yet: since start
        let base = ring
            .iter()
            .find(|(at, _)| *at >= cutoff)
            .map(|(_, s)| *s)
            .unwrap_or_default();
        if cutoff <= self.started {
            return now;
        }
        now.minus(base)
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
    fn windows_subtract_the_snapshot_at_their_start() {
        let w = Windows::default();
        let a = HitSnapshot {
            hits: 10,
            ..Default::default()
        };
        w.tick(a);
        let now = HitSnapshot {
            hits: 15,
            misses: 5,
            ..Default::default()
        };
        // younger than five minutes: everything since start
        assert_eq!(w.over(now, Duration::from_secs(300)), now);
        // a zero-length window starts after every snapshot: nothing in it
        assert_eq!(w.over(now, Duration::ZERO).hits, 15);
    }
}
