//! Unit-level tests of the free lists, reserves, precedence rules, replacement policies, the
//! gen-wrap guard, prio rescaling, GC requests and recovery of the newest valid checkpoint.

mod alloc_support;

use std::time::{Duration, Instant};

use alloc_support::*;
use bcachefs_lite::alloc::{
    Allocator, KeyPos, Loc, Mark, Reserve, StepOutcome, BUCKET_GC_GEN_MAX, INITIAL_PRIO,
};
use bcachefs_lite::device::format::Replacement;
use bcachefs_lite::Error;

const N: u64 = 64;
const BUCKET: u32 = 16 << 10;

fn fresh(rep: Replacement) -> (tempfile::TempDir, std::path::PathBuf, Allocator) {
    let d = tempfile::tempdir().unwrap();
    let p = format(d.path(), N, BUCKET, rep, false);
    let c = open_manual(&p);
    (d, p, c)
}

#[test]
fn nothing_is_allocated_before_the_first_gc() {
    let (_d, _p, c) = fresh(Replacement::Lru);
    assert_eq!(c.allocator_step().unwrap(), StepOutcome::WaitingForGc);
    assert!(matches!(
        c.bucket_alloc(Reserve::Metadata, false),
        Err(Error::NoFreeBucket)
    ));
}

#[test]
fn initial_gc_fills_prio_and_metadata_reserves_without_bumping() {
    let (_d, _p, c) = fresh(Replacement::Lru);
    gc_empty(&c);
    let s = c.stats();
    assert_eq!(s.free[Reserve::Prio as usize], 1);
    assert_eq!(s.free[Reserve::Metadata as usize], 2);
    assert_eq!(s.free[Reserve::None as usize], 0);
    for b in 0..N as u32 {
        assert_eq!(c.bucket_gen(b).unwrap(), 0);
    }
    c.check_invariants().unwrap();
}

#[test]
fn allocator_fills_lists_in_push_order_after_a_durable_checkpoint() {
    let (_d, p, c) = fresh(Replacement::Lru);
    gc_empty(&c);
    assert_eq!(c.allocator_run_until_idle(100).unwrap(), StepOutcome::Idle);
    let s = c.stats();
    // prio and metadata full, then moving-gc, then none (bch_allocator_push order).
    assert_eq!(s.free, [2, 1, 4, 4]);
    assert!(s.checkpoints >= 1);
    let on_disk = disk_gens(&p);
    for b in 0..N as u32 {
        let i = c.bucket_info(b).unwrap();
        if matches!(i.loc, Loc::Free(_)) {
            assert_eq!(
                i.gen, on_disk[b as usize],
                "bucket {b} free with a gen not on disk"
            );
        }
    }
    c.check_invariants().unwrap();
}

#[test]
fn bucket_alloc_pops_none_first_and_only_metadata_may_dig_into_its_reserve() {
    let (_d, _p, c) = fresh(Replacement::Lru);
    gc_empty(&c);
    c.allocator_run_until_idle(100).unwrap();
    // Drain free[None] with data allocations.
    for _ in 0..4 {
        let (b, _) = c.bucket_alloc(Reserve::None, false).unwrap();
        assert_eq!(c.bucket_info(b).unwrap().mark, Mark::Data);
    }
    assert!(matches!(
        c.bucket_alloc(Reserve::None, false),
        Err(Error::NoFreeBucket)
    ));
    assert_eq!(c.stats().free[Reserve::Metadata as usize], 2);
    let (m, _) = c.bucket_alloc(Reserve::Metadata, false).unwrap();
    assert_eq!(c.bucket_info(m).unwrap().mark, Mark::Metadata);
    assert_eq!(c.stats().free[Reserve::Metadata as usize], 1);
    assert_eq!(c.stats().free[Reserve::MovingGc as usize], 4);
    let (g, _) = c.bucket_alloc(Reserve::MovingGc, false).unwrap();
    assert_eq!(c.bucket_info(g).unwrap().mark, Mark::Data);
    assert_eq!(c.stats().free[Reserve::MovingGc as usize], 3);
    c.check_invariants().unwrap();
}

/// Allocate every bucket the lists can give, run the allocator, repeat; returns what was
/// handed out (still pinned).
fn drain_all(c: &Allocator) -> Vec<u32> {
    let mut out = Vec::new();
    for _ in 0..200 {
        while let Ok((b, _)) = c.bucket_alloc(Reserve::MovingGc, false) {
            out.push(b);
        }
        if c.allocator_run_until_idle(100).unwrap() != StepOutcome::Progress
            && c.stats().free.iter().sum::<usize>() == c.stats().free[0] + c.stats().free[1]
        {
            break;
        }
    }
    out
}

#[test]
fn protected_buckets_are_never_invalidated() {
    let (_d, _p, c) = fresh(Replacement::Lru);
    gc_empty(&c);
    c.allocator_run_until_idle(100).unwrap();
    let held = drain_all(&c);
    assert!(held.len() > 40, "only {} buckets handed out", held.len());
    // held[0] stays pinned, held[1] becomes dirty, held[2] metadata, the rest are released.
    let pinned = held[0];
    let dirty = held[1];
    let (meta, mgen) = c.bucket_alloc(Reserve::Metadata, false).unwrap();
    assert!(c.mark_dirty(dirty, c.bucket_gen(dirty).unwrap()).unwrap());
    c.unpin(meta).unwrap();
    for &b in &held[1..] {
        c.unpin(b).unwrap();
    }
    let before: Vec<u8> = [pinned, dirty, meta]
        .iter()
        .map(|&b| c.bucket_gen(b).unwrap())
        .collect();
    for _ in 0..50 {
        while let Ok((b, _)) = c.bucket_alloc(Reserve::MovingGc, false) {
            c.unpin(b).unwrap();
        }
        c.allocator_run_until_idle(100).unwrap();
    }
    assert!(c.stats().invalidated > 200);
    let after: Vec<u8> = [pinned, dirty, meta]
        .iter()
        .map(|&b| c.bucket_gen(b).unwrap())
        .collect();
    assert_eq!(before, after);
    assert_eq!(c.bucket_gen(meta).unwrap(), mgen);
    for b in c.checkpoint_buckets() {
        assert_eq!(c.bucket_info(b).unwrap().mark, Mark::Metadata);
    }
    c.check_invariants().unwrap();
}

#[test]
fn lru_invalidates_smallest_prio_times_sectors_first() {
    let (_d, _p, c) = fresh(Replacement::Lru);
    gc_empty(&c);
    c.allocator_run_until_idle(100).unwrap();
    let held = drain_all(&c);
    // Give every held bucket data: sectors = 1 + index, so lower index = cheaper to drop.
    let mut r = c.gc_begin();
    for (i, &b) in held.iter().enumerate() {
        r.add_key(b, c.bucket_gen(b).unwrap(), 1 + i as u32, false);
    }
    for &b in &held {
        c.unpin(b).unwrap();
    }
    c.gc_finish(r).unwrap();
    let free_inc_cap = 16;
    // Make room for one batch.
    while let Ok((b, _)) = c.bucket_alloc(Reserve::MovingGc, false) {
        c.unpin(b).unwrap();
    }
    let gens: Vec<u8> = held.iter().map(|&b| c.bucket_gen(b).unwrap()).collect();
    c.allocator_step().unwrap(); // invalidate + checkpoint
    let bumped: Vec<usize> = (0..held.len())
        .filter(|&i| c.bucket_gen(held[i]).unwrap() != gens[i])
        .collect();
    assert!(!bumped.is_empty());
    assert!(bumped.len() <= free_inc_cap);
    // The buckets that were handed out and released without data (sectors 0) go first; among
    // the data buckets only the cheapest may have been taken.
    let max_bumped = *bumped.iter().max().unwrap();
    let not_bumped_min = (0..held.len())
        .find(|i| !bumped.contains(i))
        .unwrap_or(held.len());
    assert!(
        max_bumped < not_bumped_min + bumped.len(),
        "bumped {bumped:?}"
    );
    assert_eq!(
        bumped,
        (0..bumped.len()).collect::<Vec<_>>(),
        "LRU took expensive buckets"
    );
}

#[test]
fn fifo_invalidates_in_bucket_order() {
    let (_d, _p, c) = fresh(Replacement::Fifo);
    gc_empty(&c);
    let before: Vec<u8> = (0..N as u32).map(|b| c.bucket_gen(b).unwrap()).collect();
    c.allocator_step().unwrap();
    let bumped: Vec<u32> = (0..N as u32)
        .filter(|&b| c.bucket_gen(b).unwrap() != before[b as usize])
        .collect();
    assert_eq!(bumped.len(), 16);
    // Round robin from bucket 0 skipping the checkpoint and reserve buckets.
    let mut expect = Vec::new();
    for b in 0..N as u32 {
        let i = c.bucket_info(b).unwrap();
        if expect.len() < 16 && i.gen != before[b as usize] {
            expect.push(b);
        }
    }
    assert!(bumped.windows(2).all(|w| w[0] < w[1]));
    assert!(bumped[15] < 32, "fifo skipped ahead: {bumped:?}");
    assert_eq!(bumped, expect);
}

#[test]
fn random_invalidates_only_eligible_buckets_and_reaches_all_of_them() {
    let (_d, _p, c) = fresh(Replacement::Random);
    gc_empty(&c);
    let mut seen = std::collections::HashSet::new();
    for _ in 0..100 {
        while let Ok((b, _)) = c.bucket_alloc(Reserve::MovingGc, false) {
            seen.insert(b);
            c.unpin(b).unwrap();
        }
        c.allocator_run_until_idle(100).unwrap();
        c.check_invariants().unwrap();
    }
    assert!(
        seen.len() > 50,
        "random policy reached only {} buckets",
        seen.len()
    );
}

#[test]
fn nothing_to_invalidate_asks_for_gc_and_does_not_spin() {
    let (_d, _p, c) = fresh(Replacement::Lru);
    gc_empty(&c);
    c.allocator_run_until_idle(100).unwrap();
    let held = drain_all(&c);
    for &b in &held {
        assert!(c.mark_dirty(b, c.bucket_gen(b).unwrap()).unwrap());
        c.unpin(b).unwrap();
    }
    let inv = c.stats().invalidated;
    while c.bucket_alloc(Reserve::None, false).is_ok() {}
    assert_eq!(c.allocator_step().unwrap(), StepOutcome::NeedsGc);
    assert!(c.gc_requests() > 0);
    let req2 = c.gc_requests();
    assert_eq!(c.allocator_step().unwrap(), StepOutcome::NeedsGc);
    assert_eq!(
        c.gc_requests(),
        req2,
        "a second step without GC asked again (spinning)"
    );
    assert_eq!(c.stats().invalidated, inv);
    // GC finds the data clean (written back): invalidation resumes.
    let mut r = c.gc_begin();
    for &b in &held {
        r.add_key(b, c.bucket_gen(b).unwrap(), 4, false);
    }
    c.gc_finish(r).unwrap();
    assert_eq!(c.allocator_step().unwrap(), StepOutcome::Progress);
    assert!(c.stats().invalidated > inv);
}

#[test]
fn gen_never_runs_more_than_96_ahead_of_the_oldest_referenced_gen() {
    let (_d, _p, c) = fresh(Replacement::Fifo);
    // A key at gen 0 in every bucket, never dropped by GC.
    let mut r = c.gc_begin();
    for b in 0..N as u32 {
        r.add_key(b, 0, 0, false);
    }
    c.gc_finish(r).unwrap();
    let mut needs_gc = false;
    for _ in 0..2000 {
        while let Ok((b, _)) = c.bucket_alloc(Reserve::MovingGc, false) {
            c.unpin(b).unwrap();
        }
        if c.allocator_run_until_idle(100).unwrap() == StepOutcome::NeedsGc {
            needs_gc = true;
            break;
        }
    }
    assert!(needs_gc, "allocator never stopped at the gen-wrap bound");
    let max = (0..N as u32)
        .map(|b| c.bucket_gen(b).unwrap())
        .max()
        .unwrap();
    assert_eq!(max, BUCKET_GC_GEN_MAX);
    c.check_invariants().unwrap();
    // GC drops the old keys: invalidation may go on.
    gc_empty(&c);
    while let Ok((b, _)) = c.bucket_alloc(Reserve::MovingGc, false) {
        c.unpin(b).unwrap();
    }
    assert_eq!(c.allocator_step().unwrap(), StepOutcome::Progress);
    assert!((0..N as u32).any(|b| c.bucket_gen(b).unwrap() > BUCKET_GC_GEN_MAX));
}

#[test]
fn prios_age_as_data_is_written_and_hits_reset_them() {
    let (_d, _p, c) = fresh(Replacement::Lru);
    gc_empty(&c);
    c.allocator_run_until_idle(100).unwrap();
    let (p0, n0) = c
        .alloc_sectors(KeyPos { file: 1, offset: 0 }, 8, 1, false)
        .unwrap();
    c.key_inserted(p0).unwrap();
    // Writing 8 sectors already crossed one rescale period.
    assert_eq!(c.bucket_info(p0.bucket).unwrap().prio, INITIAL_PRIO - 1);
    // rescale every bucket_sectors * nbuckets / 1024 = 32 * 64 / 1024 = 2 sectors.
    let mut off = u64::from(n0);
    for _ in 0..20 {
        let Ok((p, n)) = c.alloc_sectors(
            KeyPos {
                file: 2,
                offset: off,
            },
            2,
            2,
            false,
        ) else {
            c.allocator_run_until_idle(100).unwrap();
            continue;
        };
        off += u64::from(n);
        c.key_inserted(p).unwrap();
    }
    assert!(c.stats().rescales >= 10);
    let aged = c.bucket_info(p0.bucket).unwrap().prio;
    assert!(aged < INITIAL_PRIO - 5, "prio {aged} did not age");
    c.touch(p0.bucket).unwrap();
    assert_eq!(c.bucket_info(p0.bucket).unwrap().prio, INITIAL_PRIO);
}

#[test]
fn waiting_bucket_alloc_is_woken_by_the_allocator_thread() {
    let d = tempfile::tempdir().unwrap();
    let p = format(d.path(), N, BUCKET, Replacement::Lru, false);
    let c = Allocator::open(&p).unwrap();
    gc_empty(&c);
    let t = Instant::now();
    for _ in 0..500 {
        let (b, _) = c.bucket_alloc(Reserve::None, true).unwrap();
        c.unpin(b).unwrap();
    }
    assert!(t.elapsed() < Duration::from_secs(60));
    assert!(c.stats().checkpoints > 10);
    c.check_invariants().unwrap();
    c.close();
    assert!(matches!(
        c.bucket_alloc(Reserve::None, true),
        Err(Error::Shutdown)
    ));
}

#[test]
fn reopen_restores_durable_gens_and_prios() {
    let (_d, p, c) = fresh(Replacement::Lru);
    gc_empty(&c);
    for _ in 0..5 {
        while let Ok((b, _)) = c.bucket_alloc(Reserve::MovingGc, false) {
            c.unpin(b).unwrap();
        }
        c.allocator_run_until_idle(100).unwrap();
    }
    let gens: Vec<u8> = (0..N as u32)
        .map(|b| c.bucket_info(b).unwrap().disk_gen)
        .collect();
    let seq = c.stats().checkpoint_seq;
    drop(c);
    let c = open_manual(&p);
    assert_eq!(c.stats().checkpoint_seq, seq);
    let again: Vec<u8> = (0..N as u32).map(|b| c.bucket_gen(b).unwrap()).collect();
    assert_eq!(gens, again);
    assert_eq!(c.skipped_checkpoints(), 0);
}

#[test]
fn a_corrupt_newest_checkpoint_is_skipped_for_the_previous_one() {
    let (_d, p, c) = fresh(Replacement::Lru);
    gc_empty(&c);
    c.allocator_run_until_idle(100).unwrap();
    while let Ok((b, _)) = c.bucket_alloc(Reserve::MovingGc, false) {
        c.unpin(b).unwrap();
    }
    c.allocator_step().unwrap();
    c.allocator_step().unwrap();
    let prev = disk_gens(&p);
    let seq_prev = c.stats().checkpoint_seq;
    for _ in 0..10 {
        while let Ok((b, _)) = c.bucket_alloc(Reserve::MovingGc, false) {
            c.unpin(b).unwrap();
        }
        c.allocator_run_until_idle(100).unwrap();
        if c.stats().checkpoint_seq > seq_prev {
            break;
        }
    }
    let newest = c.checkpoint_buckets();
    assert!(c.stats().checkpoint_seq > seq_prev);
    let sb = c.superblock().clone();
    drop(c);
    // Flip one bit in the entries of the newest checkpoint.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&p)
        .unwrap();
    use std::os::unix::fs::FileExt;
    let off = sb.bucket_offset(newest[0]) + 100;
    let mut byte = [0u8; 1];
    f.read_exact_at(&mut byte, off).unwrap();
    byte[0] ^= 0x10;
    f.write_all_at(&byte, off).unwrap();
    drop(f);
    let c = open_manual(&p);
    assert!(c.skipped_checkpoints() >= 1);
    assert_eq!(c.stats().checkpoint_seq, seq_prev);
    let now: Vec<u8> = (0..N as u32).map(|b| c.bucket_gen(b).unwrap()).collect();
    assert_eq!(now, prev, "gens not from the previous valid checkpoint");
    c.check_invariants().unwrap();
}

/// `bcachefs-lite set replacement=...` calls `Allocator::set_policy`: the next allocator step
/// invalidates by the new policy, and the superblock says it from then on.
#[test]
fn set_policy_changes_which_buckets_the_next_step_invalidates() {
    let run = |set: Option<Replacement>| -> Vec<u32> {
        let (_d, p, c) = fresh(Replacement::Lru);
        // every data bucket holds a key; the higher the bucket, the fewer sectors (cheaper
        // for LRU), while FIFO starts at bucket 0
        let ckpt = c.checkpoint_buckets();
        let mut r = c.gc_begin();
        for b in 0..N as u32 {
            if !ckpt.contains(&b) {
                r.add_key(b, c.bucket_gen(b).unwrap(), (N as u32 - b) * 4, false);
            }
        }
        c.gc_finish(r).unwrap();
        if let Some(rep) = set {
            c.set_policy(Some(rep), None).unwrap();
            assert_eq!(c.replacement(), rep);
            let sb = bcachefs_lite::alloc::read_superblock(&file_dev(&p)).unwrap();
            assert_eq!(sb.replacement, rep, "not written into the superblock");
        }
        let before: Vec<u8> = (0..N as u32).map(|b| c.bucket_gen(b).unwrap()).collect();
        c.allocator_step().unwrap();
        c.check_invariants().unwrap();
        (0..N as u32)
            .filter(|&b| c.bucket_gen(b).unwrap() != before[b as usize])
            .collect()
    };
    let lru = run(None);
    let fifo = run(Some(Replacement::Fifo));
    assert!(!lru.is_empty() && !fifo.is_empty());
    assert!(
        lru.iter().all(|&b| b >= N as u32 / 2),
        "lru took expensive buckets: {lru:?}"
    );
    assert!(
        fifo.iter().all(|&b| b < N as u32 / 2),
        "after set_policy(fifo) the step still invalidated by lru: {fifo:?}"
    );
}

/// `set discard=off` on a live cache: buckets freed from then on are not punched out.
#[test]
fn set_policy_turns_discard_off_for_the_next_frees() {
    let d = tempfile::tempdir().unwrap();
    let p = format(d.path(), N, BUCKET, Replacement::Fifo, true);
    let c = open_manual(&p);
    gc_empty(&c);
    c.set_policy(None, Some(false)).unwrap();
    assert!(!c.discard());
    for _ in 0..20 {
        while let Ok((b, _)) = c.bucket_alloc(Reserve::MovingGc, false) {
            c.unpin(b).unwrap();
        }
        c.allocator_run_until_idle(100).unwrap();
    }
    assert!(c.stats().invalidated > 0);
    assert_eq!(c.stats().discards, 0, "discarded after discard was set off");
    let sb = bcachefs_lite::alloc::read_superblock(&file_dev(&p)).unwrap();
    assert!(!sb.discard);
}

/// `warm --pin`: a pinned bucket holding data is never invalidated, by any policy, while every
/// other data bucket is; once emptied (its data dropped) it may be; the pin limit holds; a
/// gens checkpoint written on demand keeps the pin across a reopen.
#[test]
fn pinned_buckets_are_never_invalidated_and_their_pins_survive_a_reopen() {
    use bcachefs_lite::alloc::PINNED_PRIO;
    for rep in [Replacement::Lru, Replacement::Fifo, Replacement::Random] {
        let (_d, p, c) = fresh(rep);
        let ckpt = c.checkpoint_buckets();
        // keys in every other bucket: the rest keep the reserves filled
        let data: Vec<u32> = (0..N as u32)
            .filter(|b| !ckpt.contains(b) && b % 2 == 0)
            .collect();
        let mut r = c.gc_begin();
        for &b in &data {
            r.add_key(b, c.bucket_gen(b).unwrap(), 8, false);
        }
        c.gc_finish(r).unwrap();
        let (pinned, other) = (data[3], data[4]);
        assert!(c
            .pin_bucket(pinned, c.bucket_gen(pinned).unwrap(), 1)
            .unwrap());
        assert!(
            matches!(
                c.pin_bucket(other, c.bucket_gen(other).unwrap(), 1),
                Err(Error::PinLimit(1))
            ),
            "the pin limit let a second bucket in"
        );
        assert!(!c
            .pin_bucket(other, c.bucket_gen(other).unwrap().wrapping_add(1), 9)
            .unwrap());
        c.write_gens_checkpoint_now().unwrap();
        assert_eq!(
            read_newest_checkpoint_prio(&p, pinned),
            PINNED_PRIO,
            "not written"
        );
        let gen = c.bucket_gen(pinned).unwrap();
        for _ in 0..200 {
            while let Ok((b, _)) = c.bucket_alloc(Reserve::MovingGc, false) {
                c.unpin(b).unwrap();
            }
            c.allocator_run_until_idle(100).unwrap();
        }
        assert_eq!(
            c.bucket_gen(pinned).unwrap(),
            gen,
            "{rep:?} invalidated a pinned bucket"
        );
        if rep != Replacement::Lru {
            // (LRU reuses the emptied buckets first and would reach a pinned one last anyway)
            let reached = data
                .iter()
                .filter(|&&b| b != pinned && c.bucket_gen(b).unwrap() != 0)
                .count();
            assert!(
                reached > 0,
                "{rep:?}: no data bucket was invalidated (test is void)"
            );
        }
        c.check_invariants().unwrap();
        drop(c);
        let c = open_manual(&p);
        assert_eq!(
            c.bucket_info(pinned).unwrap().prio,
            PINNED_PRIO,
            "pin lost at reopen"
        );
        assert_eq!(
            c.pinned_buckets(),
            0,
            "counted before GC says it holds data"
        );
        // its data gone (GC finds no key): it may be reused
        gc_empty(&c);
        for _ in 0..200 {
            while let Ok((b, _)) = c.bucket_alloc(Reserve::MovingGc, false) {
                c.unpin(b).unwrap();
            }
            c.allocator_run_until_idle(100).unwrap();
        }
        if rep != Replacement::Lru {
            assert_ne!(
                c.bucket_gen(pinned).unwrap(),
                gen,
                "{rep:?}: an empty pinned bucket stuck"
            );
        }
    }
}

fn read_newest_checkpoint_prio(p: &std::path::Path, b: u32) -> u16 {
    let dev = file_dev(p);
    let ck = bcachefs_lite::alloc::read_newest_checkpoint(&dev)
        .unwrap()
        .1
        .checkpoint;
    ck.prios[b as usize]
}
