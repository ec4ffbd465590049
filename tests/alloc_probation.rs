//! Probation (issue 12) through the real allocator and its gens checkpoint: a bucket filled by
//! `alloc_sectors_probation` starts at `PRIO_PROBATION` in its own open bucket, the checkpoint's
//! prio carries it across a reopen (no journal record of its own), and a hit after the reopen
//! promotes it.

mod alloc_support;

use alloc_support::*;
use bcachefs_lite::alloc::{KeyPos, INITIAL_PRIO, PRIO_PROBATION};
use bcachefs_lite::device::format::Replacement;

#[test]
fn probation_survives_a_reopen_through_the_gens_checkpoint_and_a_hit_promotes() {
    let d = tempfile::tempdir().unwrap();
    let p = format(d.path(), 64, 8192, Replacement::Lru, false);
    let c = open_manual(&p);
    gc_empty(&c);
    c.allocator_run_until_idle(100).unwrap();
    let sectors = c.bucket_sectors();
    let (scan, _) = c
        .alloc_sectors_probation(KeyPos { file: 1, offset: 0 }, sectors, 7, false)
        .unwrap();
    let (hot, _) = c
        .alloc_sectors(KeyPos { file: 2, offset: 0 }, sectors, 7, false)
        .unwrap();
    assert_ne!(
        scan.bucket, hot.bucket,
        "one write point, two classes, two buckets"
    );
    c.key_inserted(scan).unwrap();
    c.key_inserted(hot).unwrap();
    let k = c.bucket_info(scan.bucket).unwrap();
    assert!(k.probation && k.prio <= PRIO_PROBATION, "{k:?}");
    assert!(!c.bucket_info(hot.bucket).unwrap().probation);
    assert_eq!(c.stats().probation_buckets, 1);
    // more data until the allocator invalidates a batch and writes a gens checkpoint, which
    // records every bucket's prio
    let seq = c.stats().checkpoint_seq;
    for f in 3..40u64 {
        if c.stats().checkpoint_seq > seq {
            break;
        }
        c.allocator_run_until_idle(100).unwrap();
        if let Ok((ptr, _)) = c.alloc_sectors(KeyPos { file: f, offset: 0 }, sectors, 8, false) {
            c.key_inserted(ptr).unwrap();
        }
    }
    assert!(c.stats().checkpoint_seq > seq, "a new gens checkpoint");
    c.check_invariants().unwrap();
    drop(c);

    let c = open_manual(&p);
    let k = c.bucket_info(scan.bucket).unwrap();
    assert!(
        k.probation && !k.hit,
        "back on probation after the reopen: {k:?}"
    );
    assert!(!c.bucket_info(hot.bucket).unwrap().probation);
    let mut r = c.gc_begin();
    r.add_key(scan.bucket, scan.gen, sectors, false);
    r.add_key(hot.bucket, hot.gen, sectors, false);
    c.gc_finish(r).unwrap();
    assert!(c.pin_for_read(scan.bucket, scan.gen).unwrap());
    c.unpin(scan.bucket).unwrap();
    let k = c.bucket_info(scan.bucket).unwrap();
    assert!(!k.probation && k.hit && k.prio == INITIAL_PRIO, "{k:?}");
    assert_eq!(c.stats().promotions, 1);
}
