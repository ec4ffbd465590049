//! The allocator loop (bcache `bch_allocator_thread` and `bch_prio_write`).
//!
//! Model: [`step`] does one unit of work — drain durable `free_inc` buckets into the free lists
//! (discarding them), or invalidate a batch and write its gens checkpoint — and says whether it
//! made progress. [`run`] is the background thread: steps while there is progress, otherwise
//! sleeps on `alloc_wait` until kicked.
//!
//! Crash ordering of one checkpoint (the fsync points of DESIGN.md section 4):
//! 1. take the checkpoint's buckets from the prio reserve and snapshot every gen and prio;
//! 2. `pwrite` the parts, `fdatasync`;
//! 3. under the journal lock, append a journal entry naming the parts (`pwrite`, `fdatasync`);
//! 4. still under it, mark the snapshot gens durable, record the new location, free the
//!    previous checkpoint's buckets.
//!
//! A crash before 3 completes leaves the previous journal entry the newest valid one, naming the
//! previous checkpoint, which has not been freed. Any I/O error poisons the cache; the batch
//! stays on `free_inc` and is never handed out.
//!
//! Locks: `step` is held for the whole step; `journal` (the cursor) only for steps 3-4, so a key
//! flush waits for one entry at most, never for discards or a gens write; `state` is taken
//! briefly and never across I/O. Order: step → journal → state. What may block: the I/O in
//! steps 2 and 3 and the discards.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::format::{encode, GensCheckpoint};
use super::state::{Loc, Mark, Reserve};
use super::Shared;
use crate::error::{Error, Result};
use crate::journal::format::Record;

/// What one allocator step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepOutcome {
    /// Buckets moved to the free lists, or a batch was invalidated and checkpointed.
    Progress,
    /// Nothing to do: the free lists are full (or `free_inc` waits for room in them).
    Idle,
    /// Nothing could be invalidated; GC was asked for.
    NeedsGc,
    /// The first GC after open has not reported yet.
    WaitingForGc,
}

/// Stop allocating after a failed write or fsync (fjall's poison dart).
pub(crate) fn poison(sh: &Shared, what: &str) {
    if sh.poison.set(format!("{what} failed")) {
        tracing::error!(
            what,
            "cache file write failed; caching stops, serving from the backing"
        );
    }
    let _st = sh.state.lock();
    sh.bucket_wait.notify_all();
    sh.alloc_wait.notify_all();
}

/// One step of the allocator loop.
pub(crate) fn step(sh: &Shared) -> Result<StepOutcome> {
    let _step = sh.step.lock();
    if sh.poison.is_set() {
        return Err(Error::Poisoned);
    }
    let mut st = sh.state.lock();
    if !st.gc_mark_valid {
        return Ok(StepOutcome::WaitingForGc);
    }

    // 1. free_inc -> free lists, for buckets whose gens are durable.
    let mut batch = Vec::new();
    let room = st.free_room();
    while batch.len() < room {
        let Some(&b) = st.free_inc.q.front() else {
            break;
        };
        let k = st.buckets[b as usize];
        if k.gen != k.disk_gen {
            break;
        }
        st.free_inc.q.pop_front();
        st.buckets[b as usize].loc = Loc::Idle; // owned by this step until pushed
        batch.push(b);
    }
    if !batch.is_empty() {
        if sh.discard.load(Ordering::Relaxed) {
            drop(st);
            let mut discarded = 0u64;
            for &b in &batch {
                match sh
                    .dev
                    .punch_hole(sh.sb.bucket_offset(b), u64::from(sh.sb.bucket_size))
                {
                    Ok(()) => discarded += 1,
                    Err(e) => tracing::warn!(bucket = b, error = %e, "discard failed"),
                }
            }
            st = sh.state.lock();
            st.counters.discards += discarded;
        }
        for &b in &batch {
            let pushed = st.push_free(b);
            debug_assert!(
                pushed,
                "free list room shrank while the step held the batch"
            );
        }
        sh.bucket_wait.notify_all();
        return Ok(StepOutcome::Progress);
    }
    if !st.free_inc.is_empty()
        && st.buckets[st.free_inc.q[0] as usize].gen
            == st.buckets[st.free_inc.q[0] as usize].disk_gen
    {
        // Durable buckets wait for room in the free lists.
        return Ok(StepOutcome::Idle);
    }

    // 2. invalidate, only when there is somewhere for the batch to go.
    if st.free_inc.is_empty() {
        if st.free_room() == 0 {
            return Ok(StepOutcome::Idle);
        }
        if st.invalidate_needs_gc {
            return Ok(StepOutcome::NeedsGc);
        }
    }
    let n = if st.invalidate_needs_gc {
        0
    } else {
        st.invalidate_buckets()
    };
    if !st.free_inc.is_full() {
        // bcache waits for GC here; we checkpoint what we have and ask for GC.
        st.counters.gc_requests += 1;
        sh.gc_wait.notify_all();
        if n == 0 && st.free_inc.is_empty() {
            st.invalidate_needs_gc = true;
            return Ok(StepOutcome::NeedsGc);
        }
    }

    // 3. gens checkpoint.
    write_gens_checkpoint(sh, st)
}

/// Step 3 of the loop: writes a gens checkpoint of every bucket's gen and prio, appends its
/// journal entry, then marks the gens durable and releases the previous checkpoint's buckets.
/// The caller holds the step lock and hands over the state guard.
pub(crate) fn write_gens_checkpoint(
    sh: &Shared,
    mut st: parking_lot::MutexGuard<'_, super::state::AllocState>,
) -> Result<StepOutcome> {
    let parts = st.gens_parts;
    let mut new_buckets = Vec::with_capacity(parts);
    for _ in 0..parts {
        match st.pop_free(Reserve::Prio) {
            Some(b) => new_buckets.push(b),
            None => {
                // Cannot happen while the prio reserve is refilled first; give them back.
                for &b in &new_buckets {
                    let k = &mut st.buckets[b as usize];
                    k.mark = Mark::Free;
                    k.pins -= 1;
                }
                st.counters.gc_requests += 1;
                st.invalidate_needs_gc = true;
                sh.gc_wait.notify_all();
                return Ok(StepOutcome::NeedsGc);
            }
        }
    }
    let seq = st.ckpt_seq + 1;
    let ck = GensCheckpoint {
        seq,
        gens: st.buckets.iter().map(|k| k.gen).collect(),
        prios: st.buckets.iter().map(|k| k.prio).collect(),
    };
    drop(st);

    let parts_buf = encode(&ck, &sh.sb.uuid, sh.sb.bucket_size, sh.sb.block_size);
    let io = (|| -> Result<()> {
        for (b, p) in new_buckets.iter().zip(&parts_buf) {
            sh.dev
                .pwrite(p, sh.sb.bucket_offset(*b))
                .map_err(|e| Error::io("pwrite gens", e))?;
        }
        sh.dev
            .fdatasync()
            .map_err(|e| Error::io("fdatasync gens", e))
    })();
    if let Err(e) = io {
        poison(sh, "gens checkpoint");
        return Err(e);
    }
    // The journal lock is held from this entry until the new location is in `state`, so an
    // entry that repeats "the current location" can never name the previous checkpoint after
    // this one's entry (its buckets are released below).
    let mut journal = sh.journal.lock();
    let appended = journal.append(
        &*sh.dev,
        &sh.sb,
        vec![Record::GensCheckpoint {
            seq,
            buckets: new_buckets.clone(),
        }],
    );
    if let Err(e) = appended {
        poison(sh, "gens checkpoint entry");
        return Err(e);
    }

    // 4. the new gens are durable.
    let mut st = sh.state.lock();
    for (k, &g) in st.buckets.iter_mut().zip(&ck.gens) {
        k.disk_gen = g;
    }
    let old = std::mem::replace(&mut st.ckpt_buckets, new_buckets.clone());
    st.ckpt_seq = seq;
    for b in old {
        let k = &mut st.buckets[b as usize];
        k.mark = Mark::Free;
        k.sectors = 0;
        k.prio = 0;
    }
    for b in new_buckets {
        st.buckets[b as usize].pins -= 1;
    }
    st.counters.checkpoints += 1;
    drop(st);
    drop(journal);
    Ok(StepOutcome::Progress)
}

/// The background allocator thread.
pub(crate) fn run(sh: &Shared) {
    loop {
        if sh.shutdown.load(Ordering::Acquire) {
            return;
        }
        match step(sh) {
            Ok(StepOutcome::Progress) => continue,
            Ok(_) => {
                let mut st = sh.state.lock();
                if !st.kick && !sh.shutdown.load(Ordering::Acquire) {
                    sh.alloc_wait.wait_for(&mut st, Duration::from_millis(500));
                }
                st.kick = false;
            }
            Err(e) => {
                tracing::error!(error = %e, "allocator stopped");
                poison(sh, "allocator");
                return;
            }
        }
    }
}
