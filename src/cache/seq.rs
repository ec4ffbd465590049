//! Sequential cutoff, as bcache's `sequential_cutoff`: a process streaming through a
//! file (a backup, a big copy) would flush everything useful out of the cache, so
//! once a process has read more than the cutoff sequentially, its reads bypass the
//! cache: hits are still served, misses are not filled.
//!
//! Model: per PID, the file and offset where its last read ended and how many bytes
//! it has read contiguously up to there. A read that starts where the last one
//! ended (or within the kernel's readahead window of it) continues the run.
//!
//! Locks: one mutex over a small map; held for a lookup and an update. Never blocks.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// The write point (pseudo PID) of `bcachefs-lite warm`: never bypassed, whatever the cutoff.
pub const WARM_PID: u32 = u32::MAX;

/// Runs idle this long are forgotten.
const IDLE: Duration = Duration::from_secs(5);
const MAX_TRACKED: usize = 1024;
/// The kernel may issue readahead slightly out of order; a read starting this close
/// after the last one's end still counts as sequential.
const SLACK: u64 = 1 << 20;

#[derive(Clone, Copy)]
struct Run {
    file: u64,
    next: u64,
    bytes: u64,
    seen: Instant,
}

pub struct SequentialCutoff {
    /// Changeable at run time ([`SequentialCutoff::set_cutoff`]).
    cutoff: AtomicU64,
    runs: Mutex<HashMap<u32, Run>>,
}

impl SequentialCutoff {
    /// `cutoff` 0 turns bypassing off.
    pub fn new(cutoff: u64) -> SequentialCutoff {
        SequentialCutoff {
            cutoff: AtomicU64::new(cutoff),
            runs: Mutex::new(HashMap::new()),
        }
    }

    pub fn cutoff(&self) -> u64 {
        self.cutoff.load(Ordering::Relaxed)
    }

    /// A new cutoff, applied from the next read on (runs in progress keep their byte
    /// counts, so a lowered cutoff bypasses a stream already past it at once; while the
    /// cutoff is 0 no run is tracked, so after turning it on streams count from there).
    pub fn set_cutoff(&self, cutoff: u64) {
        self.cutoff.store(cutoff, Ordering::Relaxed);
    }

    /// Records a read of `len` bytes at `offset` of `file` by `pid`; true when the
    /// process has now streamed past the cutoff and this read should bypass.
    pub fn should_bypass(&self, pid: u32, file: u64, offset: u64, len: u64) -> bool {
        let cutoff = self.cutoff();
        if cutoff == 0 || pid == WARM_PID {
            return false;
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
            seen: now,
        });
        let continues = run.file == file
            && offset <= run.next.saturating_add(SLACK)
            && offset + len > run.next
            && now.duration_since(run.seen) < IDLE;
        if continues {
            run.bytes += offset + len - run.next.max(offset);
            run.next = run.next.max(offset + len);
        } else if !(run.file == file
            && offset + len <= run.next
            && offset >= run.next.saturating_sub(SLACK))
        {
            *run = Run {
                file,
                next: offset + len,
                bytes: len,
                seen: now,
            };
        }
        run.seen = now;
        run.bytes > cutoff
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streaming_past_the_cutoff_bypasses() {
        let s = SequentialCutoff::new(4 << 20);
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
    fn random_reads_and_other_processes_do_not() {
        let s = SequentialCutoff::new(1 << 20);
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
    fn a_new_cutoff_applies_to_the_next_read() {
        let s = SequentialCutoff::new(8 << 20);
        for i in 0..32 {
            assert!(!s.should_bypass(1, 1, i * 65536, 65536));
        }
        s.set_cutoff(1 << 20);
        assert!(s.should_bypass(1, 1, 32 * 65536, 65536), "already 2 MiB in");
        s.set_cutoff(0);
        assert!(!s.should_bypass(1, 1, 33 * 65536, 65536));
    }

    #[test]
    fn zero_turns_it_off() {
        let s = SequentialCutoff::new(0);
        assert!(!(0..1000).any(|i| s.should_bypass(1, 1, i * 65536, 65536)));
    }
}
