//! Stream detection for admission (issue 12) and bcache's `sequential_cutoff`.
//!
//! A process streaming through a file (a backup, a big copy) would flush everything
//! useful out of an LRU cache. Two answers, per read or write, by the length of the
//! process's current sequential run:
//! * past `probation_after` (default 4 MiB; 0 = off) the data is still cached, but on
//!   probation: into open buckets of its own at a low prio, evicted first unless read
//!   again (the default: the second read of a big file comes from the SSD);
//! * past `sequential_cutoff` (default 0 = off) it bypasses the cache as in bcache:
//!   hits are still served, misses are not filled.
//!
//! Model: per PID, the file and offset where its last read ended and how many bytes
//! it has read contiguously up to there. A read that starts where the last one
//! ended (or within the kernel's readahead window of it) continues the run; a late request
//! of the stream (ending before the run's end, at most 8 MiB behind it) neither restarts nor
//! extends it, and counts only bytes a forward jump skipped.
//!
//! Locks: one mutex over a small map; held for a lookup and an update. Never blocks.
//! Both thresholds may be changed at run time (relaxed atomics).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// The write point (pseudo PID) of `bcachefs-lite warm`: always admitted normally (never
/// bypassed, never on probation), whatever the cutoffs.
pub const WARM_PID: u32 = u32::MAX;

/// Runs idle this long are forgotten.
const IDLE: Duration = Duration::from_secs(5);
const MAX_TRACKED: usize = 1024;
/// The kernel may issue readahead slightly out of order; a read starting this close
/// after the last one's end still counts as sequential.
const SLACK: u64 = 1 << 20;
/// A read that ends before the run's end and starts at most this far behind it is a late
/// request of the same stream (the kernel's readahead requests, 1 MiB each with
/// `kernel_readahead=`, are served by several threads, so one may arrive after the next):
/// it neither extends nor restarts the run. Covers kernel readahead windows up to 8 MiB.
const BEHIND_SLACK: u64 = 8 << 20;

#[derive(Clone, Copy)]
struct Run {
    file: u64,
    next: u64,
    bytes: u64,
    /// Bytes a read that started past `next` (within [`SLACK`]) skipped: a late request of
    /// the stream that fills them counts them.
    holes: u64,
    seen: Instant,
}

/// How a read's (or write's) data enters the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Cached at the normal prio.
    Normal,
    /// Streaming past `probation_after`: cached into probation buckets.
    Probation,
    /// Streaming past `sequential_cutoff`: not cached.
    Bypass,
}

pub struct SequentialCutoff {
    /// Runtime-changeable (`set`): relaxed atomics, read once per call.
    cutoff: AtomicU64,
    probation_after: AtomicU64,
    runs: Mutex<HashMap<u32, Run>>,
}

impl SequentialCutoff {
    /// `cutoff` 0 turns bypassing off; `probation_after` 0 turns probation off.
    pub fn new(cutoff: u64, probation_after: u64) -> SequentialCutoff {
        SequentialCutoff {
            cutoff: AtomicU64::new(cutoff),
            probation_after: AtomicU64::new(probation_after),
            runs: Mutex::new(HashMap::new()),
        }
    }

    pub fn cutoff(&self) -> u64 {
        self.cutoff.load(Ordering::Relaxed)
    }

    pub fn probation_after(&self) -> u64 {
        self.probation_after.load(Ordering::Relaxed)
    }

    /// Changes `sequential_cutoff` at run time (0: off); runs in progress keep their length.
    pub fn set_cutoff(&self, bytes: u64) {
        self.cutoff.store(bytes, Ordering::Relaxed);
    }

    /// Changes `probation_after` at run time (0: off).
    pub fn set_probation_after(&self, bytes: u64) {
        self.probation_after.store(bytes, Ordering::Relaxed);
    }

    /// Records a read of `len` bytes at `offset` of `file` by `pid`; true when the
    /// process has now streamed past the cutoff and this read should bypass.
    pub fn should_bypass(&self, pid: u32, file: u64, offset: u64, len: u64) -> bool {
        self.admit(pid, file, offset, len) == Admission::Bypass
    }

    /// Records a read (or write) of `len` bytes at `offset` of `file` by `pid` and says
    /// how its data enters the cache.
    pub fn admit(&self, pid: u32, file: u64, offset: u64, len: u64) -> Admission {
        let (cutoff, probation_after) = (self.cutoff(), self.probation_after());
        if pid == WARM_PID || (cutoff == 0 && probation_after == 0) {
            return Admission::Normal;
        }
        let now = Instant::now();
        let mut runs = self.runs.lock();
        if runs.len() >= MAX_TRACKED {
            runs.retain(|_, r| now.duration_since(r.seen) < IDLE);
        }
        let run = runs.entry(pid).or_insert(Run {
            file,
            next: offset,
            bytes: 0,
            holes: 0,
            seen: now,
        });
        let continues = run.file == file
            && offset <= run.next.saturating_add(SLACK)
            && offset + len > run.next
            && now.duration_since(run.seen) < IDLE;
        let late = run.file == file
            && offset + len <= run.next
            && offset >= run.next.saturating_sub(BEHIND_SLACK);
        if continues {
            run.holes += offset.saturating_sub(run.next);
            run.bytes += offset + len - run.next.max(offset);
            run.next = run.next.max(offset + len);
        } else if late {
            let filled = len.min(run.holes);
            run.bytes += filled;
            run.holes -= filled;
        } else {
            *run = Run {
                file,
                next: offset + len,
                bytes: len,
                holes: 0,
                seen: now,
            };
        }
        run.seen = now;
        if cutoff > 0 && run.bytes > cutoff {
            Admission::Bypass
        } else if probation_after > 0 && run.bytes > probation_after {
            Admission::Probation
        } else {
            Admission::Normal
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streaming_past_the_cutoff_bypasses() {
        let s = SequentialCutoff::new(4 << 20, 0);
        let mut off = 0;
        let mut bypassed_at = None;
        while off < 16 << 20 {
            if s.should_bypass(7, 1, off, 128 << 10) && bypassed_at.is_none() {
                bypassed_at = Some(off);
            }
            off += 128 << 10;
        }
        assert_eq!(bypassed_at, Some(4 << 20));
    }

    #[test]
    fn one_mib_requests_arriving_out_of_order_stay_one_stream() {
        // pairs swapped, as two threads serve the kernel's 1 MiB readahead requests
        let s = SequentialCutoff::new(4 << 20, 0);
        let mut bypassed = 0;
        for pair in 0..12u64 {
            for i in [2 * pair + 1, 2 * pair] {
                if s.should_bypass(7, 1, i << 20, 1 << 20) {
                    bypassed += 1;
                }
            }
        }
        // 24 MiB read, the first 4 MiB (and the one request that crossed it) admitted
        assert!(bypassed >= 19, "only {bypassed} of 24 requests bypassed");
    }

    #[test]
    fn random_reads_and_other_processes_do_not() {
        let s = SequentialCutoff::new(1 << 20, 0);
        for i in 0..1000u64 {
            let off = (i * 7919 % 1000) * (64 << 10);
            assert!(!s.should_bypass(1, 1, off, 4096));
        }
        for i in 0..100u64 {
            // two processes interleaving on different files each stream alone
            s.should_bypass(2, 2, i * 65536, 65536);
            s.should_bypass(3, 3, i * 65536, 65536);
        }
        assert!(s.should_bypass(2, 2, 100 * 65536, 65536));
        assert!(
            !s.should_bypass(4, 2, 0, 65536),
            "a new process starts its own run"
        );
    }

    #[test]
    fn zero_turns_it_off() {
        let s = SequentialCutoff::new(0, 0);
        assert!(!(0..1000).any(|i| s.should_bypass(1, 1, i * 65536, 65536)));
    }

    #[test]
    fn a_stream_goes_on_probation_then_past_an_explicit_cutoff_bypasses() {
        let s = SequentialCutoff::new(8 << 20, 2 << 20);
        let seen: Vec<Admission> = (0..16u64)
            .map(|i| s.admit(9, 1, i * (1 << 20), 1 << 20))
            .collect();
        assert_eq!(&seen[..2], &[Admission::Normal; 2]);
        assert_eq!(&seen[2..8], &[Admission::Probation; 6]);
        assert_eq!(&seen[8..], &[Admission::Bypass; 8]);
        // probation alone never bypasses
        let p = SequentialCutoff::new(0, 1 << 20);
        assert!((0..64u64).all(|i| p.admit(1, 1, i << 20, 1 << 20) != Admission::Bypass));
        assert_eq!(p.admit(1, 1, 64 << 20, 1 << 20), Admission::Probation);
        // changed at run time
        p.set_probation_after(0);
        assert_eq!(p.admit(1, 1, 65 << 20, 1 << 20), Admission::Normal);
        p.set_cutoff(1 << 20);
        assert_eq!(p.admit(1, 1, 66 << 20, 1 << 20), Admission::Bypass);
        // random reads stay normal
        let r = SequentialCutoff::new(0, 1 << 20);
        assert!(
            (0..500u64).all(|i| r.admit(1, 1, (i * 7919 % 500) << 16, 4096) == Admission::Normal)
        );
    }
}
