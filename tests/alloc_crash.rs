//! Crash test for invariant 2: the writes of a gens checkpoint (and everything around it: the
//! journal entry, the fsyncs, the discards, data writes) are failed, torn or dropped at every
//! possible point, the cache file is reopened, and no bucket is found reused under a gen that is
//! not durable: every marker found on disk was written under a gen the recovered checkpoint has
//! reached, and every bucket whose recovered gen still validates old pointers still holds the
//! old data.

mod alloc_support;

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use alloc_support::*;
use bcachefs_lite::alloc::{read_newest_checkpoint, Allocator, Reserve};
use bcachefs_lite::device::format::{Replacement, Superblock};
use bcachefs_lite::device::{FaultKind, FaultyDevice, FileDevice};

const N: u64 = 400; // gens checkpoint spans 3 blocks, so tears inside it are possible
const BUCKET: u32 = 16 << 10;
const MAGIC: &[u8; 8] = b"MARKER!!";

fn marker(b: u32, gen: u8) -> Vec<u8> {
    let mut m = vec![0u8; 512];
    m[..8].copy_from_slice(MAGIC);
    m[8..12].copy_from_slice(&b.to_le_bytes());
    m[12] = gen;
    m
}

fn read_marker(path: &Path, sb: &Superblock, b: u32) -> Option<(u32, u8)> {
    let f = std::fs::File::open(path).unwrap();
    let mut m = [0u8; 512];
    f.read_exact_at(&mut m, sb.bucket_offset(b)).unwrap();
    (&m[..8] == MAGIC).then(|| (u32::from_le_bytes(m[8..12].try_into().unwrap()), m[12]))
}

/// Report the keys of every bucket whose marker is at the bucket's current gen.
fn gc_from_markers(c: &Allocator, path: &Path) {
    let sb = c.superblock().clone();
    let mut r = c.gc_begin();
    for b in 0..N as u32 {
        if let Some((mb, g)) = read_marker(path, &sb, b) {
            if mb == b && r.is_live(b, g) {
                r.add_key(b, g, 1, false);
            }
        }
    }
    c.gc_finish(r).unwrap();
}

/// Allocate what the lists give, write a marker under the bucket's gen, release; run the
/// allocator. Errors (injected) are ignored: the point is what reaches the disk.
fn scenario(c: &Allocator, rounds: usize) {
    for _ in 0..rounds {
        while let Ok((b, g)) = c.bucket_alloc(Reserve::MovingGc, false) {
            let _ = c.data().write(
                bcachefs_lite::BucketPtr {
                    bucket: b,
                    gen: g,
                    offset: 0,
                },
                &marker(b, g),
            );
            let _ = c.unpin(b);
        }
        let _ = c.data().sync();
        if c.allocator_run_until_idle(100).is_err() {
            return;
        }
    }
}

/// Phase A: a cache whose buckets all hold a durable marker. Returns the per-bucket marker gens.
fn setup(dir: &Path) -> (std::path::PathBuf, Vec<Option<u8>>) {
    let p = format(dir, N, BUCKET, Replacement::Fifo, true);
    let c = open_manual(&p);
    gc_empty(&c);
    scenario(&c, 80);
    let sb = c.superblock().clone();
    drop(c);
    let gens = disk_gens(&p);
    let base: Vec<Option<u8>> = (0..N as u32)
        .map(|b| {
            read_marker(&p, &sb, b)
                .filter(|&(_, g)| g == gens[b as usize])
                .map(|(_, g)| g)
        })
        .collect();
    assert!(base.iter().filter(|m| m.is_some()).count() > (N as usize) * 3 / 4);
    (p, base)
}

fn check(path: &Path, base: &[Option<u8>], what: &str) {
    let dev = FileDevice::new(std::fs::File::open(path).unwrap());
    let (sb, newest) = read_newest_checkpoint(&dev)
        .unwrap_or_else(|e| panic!("{what}: no valid checkpoint after crash: {e}"));
    let r = newest.checkpoint.gens;
    for b in 0..N as u32 {
        let rg = r[b as usize];
        if let Some((mb, mg)) = read_marker(path, &sb, b) {
            assert_eq!(mb, b, "{what}: marker of bucket {mb} found in bucket {b}");
            let ahead = rg.wrapping_sub(mg);
            assert!(
                ahead < 128,
                "{what}: bucket {b} holds data written under gen {mg} but the durable gen is {rg}"
            );
        }
        if base[b as usize] == Some(rg) {
            assert_eq!(
                read_marker(path, &sb, b),
                Some((b, rg)),
                "{what}: bucket {b} still validates gen {rg} pointers but its data is gone"
            );
        }
    }
    // The reopened cache is consistent and can go on allocating.
    let c = open_manual(path);
    c.check_invariants()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    gc_from_markers(&c, path);
    c.allocator_run_until_idle(100).unwrap();
    assert!(
        c.bucket_alloc(Reserve::MovingGc, false).is_ok(),
        "{what}: cannot allocate"
    );
    c.check_invariants()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
}

#[test]
fn torn_or_dropped_checkpoint_writes_never_reuse_a_bucket_under_a_non_durable_gen() {
    let d = tempfile::tempdir().unwrap();
    let (base_path, base) = setup(d.path());

    // A clean run to count the mutating operations of the scenario.
    let run_path = d.path().join("run.cache");
    std::fs::copy(&base_path, &run_path).unwrap();
    let total = {
        let fd = Arc::new(FaultyDevice::new(file_dev(&run_path)));
        let c = open_dev(fd.clone()).unwrap();
        gc_from_markers(&c, &run_path);
        scenario(&c, 3);
        assert!(c.stats().checkpoints >= 2, "scenario wrote no checkpoint");
        fd.ops()
    };
    assert!(total > 20);

    let kinds = [
        FaultKind::Fail,
        FaultKind::TearAndFail { keep: 1 },
        FaultKind::TearAndFail { keep: 700 },
        FaultKind::FailOnce { keep: 0 },
        FaultKind::FailOnce { keep: 600 },
        FaultKind::TearAndFreeze { keep: 0 },
        FaultKind::TearAndFreeze { keep: 1 },
        FaultKind::TearAndFreeze { keep: 511 },
        FaultKind::TearAndFreeze { keep: 512 },
        FaultKind::TearAndFreeze { keep: 1100 },
    ];
    let mut runs = 0;
    let mut poisoned = 0;
    for k in 0..=total {
        for kind in kinds {
            std::fs::copy(&base_path, &run_path).unwrap();
            let fd = Arc::new(FaultyDevice::new(file_dev(&run_path)));
            {
                let c = open_dev(fd.clone()).unwrap();
                gc_from_markers(&c, &run_path);
                fd.arm(k, kind);
                scenario(&c, 3);
                if c.is_poisoned() {
                    poisoned += 1;
                    assert!(c.bucket_alloc(Reserve::MovingGc, false).is_err());
                }
            }
            drop(fd);
            check(&run_path, &base, &format!("fault {kind:?} at op {k}"));
            runs += 1;
        }
    }
    assert!(runs > 100);
    assert!(
        poisoned > 0,
        "no injected failure ever poisoned the allocator"
    );
}
