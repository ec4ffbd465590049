//! Model test: random sequences of alloc / insert / abandon / pin / unpin / metadata alloc and
//! free / touch / GC / allocator steps / crash-and-reopen, checked after every step against a
//! simple reference model for invariants 2, 4, 5 and 6 of DESIGN.md:
//!
//! * 2: every bucket not on `free_inc` has the gen recorded in the newest checkpoint on disk;
//!   every fresh hand-out is under the on-disk gen; after a crash no bucket's recovered gen is
//!   behind a gen it was handed out under, and live keys keep their gen.
//! * 4: buckets that are open, pinned (allocation or read), dirty or metadata keep their gen.
//! * 5: the lists hold each bucket once (`check_invariants`), and a bucket is never handed out
//!   fresh twice under one gen; allocations inside one (bucket, gen) never overlap.
//! * 6: no key's bucket is more than 96 gens ahead of the key.

mod alloc_support;

use std::collections::{HashMap, HashSet};
use std::path::Path;

use alloc_support::*;
use bcachefs_lite::alloc::{Allocator, BucketPtr, KeyPos, Reserve, BUCKET_GC_GEN_MAX};
use bcachefs_lite::device::format::Replacement;
use proptest::prelude::*;

const N: u64 = 64;
const BUCKET: u32 = 16 << 10; // 32 sectors

#[derive(Debug, Clone)]
enum Op {
    Alloc {
        wp: u64,
        file: u64,
        off: u64,
        sectors: u32,
        seq: bool,
    },
    Insert {
        i: usize,
        dirty: bool,
    },
    Abandon {
        i: usize,
    },
    ReadPin {
        i: usize,
    },
    ReadUnpin {
        i: usize,
    },
    Meta,
    FreeMeta {
        i: usize,
    },
    Touch {
        i: usize,
    },
    Gc,
    Step {
        n: usize,
    },
    /// Many allocate-release-invalidate cycles, to push gens towards the wrap bound.
    Churn {
        rounds: usize,
    },
    Crash,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..4u64, 0..4u64, 0..64u64, 1..40u32, any::<bool>())
            .prop_map(|(wp, file, off, sectors, seq)| Op::Alloc { wp, file, off, sectors, seq }),
        5 => (any::<usize>(), prop::bool::weighted(0.15))
            .prop_map(|(i, dirty)| Op::Insert { i, dirty }),
        1 => any::<usize>().prop_map(|i| Op::Abandon { i }),
        2 => any::<usize>().prop_map(|i| Op::ReadPin { i }),
        2 => any::<usize>().prop_map(|i| Op::ReadUnpin { i }),
        1 => Just(Op::Meta),
        1 => any::<usize>().prop_map(|i| Op::FreeMeta { i }),
        1 => any::<usize>().prop_map(|i| Op::Touch { i }),
        2 => Just(Op::Gc),
        4 => (1..4usize).prop_map(|n| Op::Step { n }),
        1 => (1..150usize).prop_map(|rounds| Op::Churn { rounds }),
        1 => Just(Op::Crash),
    ]
}

#[derive(Debug, Clone, Copy)]
struct Key {
    bucket: u32,
    gen: u8,
    sectors: u32,
    dirty: bool,
}

#[derive(Default)]
struct Model {
    keys: Vec<Key>,
    pending: Vec<(BucketPtr, u32)>,
    reads: Vec<u32>,
    meta: Vec<u32>,
    /// Gen each bucket was last handed out under.
    handed_gen: HashMap<u32, u8>,
    /// Fresh hand-outs (bucket, gen) since the bucket could last legitimately be re-handed.
    handed: HashSet<(u32, u8)>,
    /// Next free sector per (bucket, gen), for the no-overlap check.
    next: HashMap<(u32, u8), u32>,
    last_end: HashMap<u64, KeyPos>,
}

fn open(path: &Path) -> Allocator {
    open_manual(path)
}

fn gc(c: &Allocator, m: &mut Model) {
    // GC drops stale keys from the index, then reports what is left.
    m.keys.retain(|k| c.bucket_gen(k.bucket).unwrap() == k.gen);
    let mut r = c.gc_begin();
    for k in &m.keys {
        r.add_key(k.bucket, k.gen, k.sectors, k.dirty);
    }
    for &b in &m.meta {
        r.add_metadata(b);
    }
    c.gc_finish(r).unwrap();
}

/// Buckets whose gen must not change during the next operation, with their gens.
fn protected(c: &Allocator, m: &Model) -> Vec<(u32, u8)> {
    let mut v: Vec<(u32, u8)> = Vec::new();
    v.extend(m.pending.iter().map(|(p, _)| (p.bucket, p.gen)));
    v.extend(m.reads.iter().map(|&b| (b, c.bucket_gen(b).unwrap())));
    v.extend(m.meta.iter().map(|&b| (b, c.bucket_gen(b).unwrap())));
    v.extend(c.open_buckets());
    // The gens checkpoint's own buckets are released when a newer checkpoint is durable, so
    // they are not in this list; `disk_gens` reading the newest checkpoint back after every
    // step shows it was never overwritten.
    for k in &m.keys {
        if k.dirty && c.bucket_gen(k.bucket).unwrap() == k.gen {
            v.push((k.bucket, k.gen));
        }
    }
    v
}

/// A hand-out ends when the bucket's gen moves on (the 8-bit gen may come back after 256 bumps).
fn prune_handed(c: &Allocator, m: &mut Model) {
    m.handed.retain(|&(b, g)| c.bucket_gen(b).unwrap() == g);
}

fn check_all(c: &Allocator, m: &Model, path: &Path, ctx: &str) -> Result<(), TestCaseError> {
    c.check_invariants()
        .map_err(|e| TestCaseError::fail(format!("{ctx}: {e}")))?;
    let disk = disk_gens(path);
    for b in 0..N as u32 {
        let i = c.bucket_info(b).unwrap();
        if i.loc != bcachefs_lite::alloc::Loc::FreeInc {
            prop_assert_eq!(
                i.gen,
                disk[b as usize],
                "{}: bucket {} gen not durable",
                ctx,
                b
            );
        }
    }
    for k in &m.keys {
        let g = c.bucket_gen(k.bucket).unwrap();
        prop_assert!(
            g.wrapping_sub(k.gen) <= BUCKET_GC_GEN_MAX,
            "{}: bucket {} gen {} runs {} ahead of key gen {}",
            ctx,
            k.bucket,
            g,
            g.wrapping_sub(k.gen),
            k.gen
        );
    }
    Ok(())
}

fn fresh_handout(
    m: &mut Model,
    b: u32,
    g: u8,
    path: &Path,
    ctx: &str,
) -> Result<(), TestCaseError> {
    prop_assert!(
        m.handed.insert((b, g)),
        "{}: bucket {} handed out twice under gen {}",
        ctx,
        b,
        g
    );
    prop_assert_eq!(
        disk_gens(path)[b as usize],
        g,
        "{}: bucket {} handed out under non-durable gen",
        ctx,
        b
    );
    m.handed_gen.insert(b, g);
    Ok(())
}

fn run(ops: Vec<Op>, rep: Replacement, discard: bool) -> Result<(), TestCaseError> {
    let d = tempfile::tempdir().unwrap();
    let path = format(d.path(), N, BUCKET, rep, discard);
    let mut c = open(&path);
    let mut m = Model::default();
    gc(&c, &mut m);
    for (step, op) in ops.into_iter().enumerate() {
        let ctx = format!("step {step} {op:?}");
        let guard = protected(&c, &m);
        match op {
            Op::Alloc {
                wp,
                file,
                off,
                sectors,
                seq,
            } => {
                let key = match (seq, m.last_end.get(&wp)) {
                    (true, Some(&k)) => k,
                    _ => KeyPos {
                        file: file * 1000 + wp,
                        offset: off * 8,
                    },
                };
                if let Ok((p, n)) = c.alloc_sectors(key, sectors, wp, false) {
                    prop_assert!(n >= 1 && n <= sectors);
                    if p.offset == 0 {
                        fresh_handout(&mut m, p.bucket, p.gen, &path, &ctx)?;
                    }
                    let next = m.next.entry((p.bucket, p.gen)).or_insert(0);
                    prop_assert!(p.offset >= *next, "{}: overlapping allocation", ctx);
                    *next = p.offset + n;
                    prop_assert!(*next <= BUCKET / 512);
                    m.pending.push((p, n));
                    m.last_end.insert(
                        wp,
                        KeyPos {
                            file: key.file,
                            offset: key.offset + u64::from(n),
                        },
                    );
                }
            }
            Op::Insert { i, dirty } if !m.pending.is_empty() => {
                let (p, n) = m.pending.remove(i % m.pending.len());
                if dirty {
                    prop_assert!(
                        c.mark_dirty(p.bucket, p.gen).unwrap(),
                        "{}: pinned bucket stale",
                        ctx
                    );
                }
                c.key_inserted(p).unwrap();
                m.keys.push(Key {
                    bucket: p.bucket,
                    gen: p.gen,
                    sectors: n,
                    dirty,
                });
            }
            Op::Abandon { i } if !m.pending.is_empty() => {
                let (p, _) = m.pending.remove(i % m.pending.len());
                c.unpin(p.bucket).unwrap();
            }
            Op::ReadPin { i } if !m.keys.is_empty() => {
                let k = m.keys[i % m.keys.len()];
                let live = c.bucket_gen(k.bucket).unwrap() == k.gen;
                let pinned = c.pin(k.bucket, k.gen).unwrap();
                prop_assert_eq!(
                    pinned,
                    live,
                    "{}: pin of a {} key",
                    ctx,
                    if live { "live" } else { "stale" }
                );
                if pinned {
                    m.reads.push(k.bucket);
                }
            }
            Op::ReadUnpin { i } if !m.reads.is_empty() => {
                let b = m.reads.remove(i % m.reads.len());
                c.unpin(b).unwrap();
            }
            Op::Meta => {
                if let Ok((b, g)) = c.bucket_alloc(Reserve::Metadata, false) {
                    fresh_handout(&mut m, b, g, &path, &ctx)?;
                    c.unpin(b).unwrap();
                    m.meta.push(b);
                }
            }
            Op::FreeMeta { i } if !m.meta.is_empty() => {
                let b = m.meta.remove(i % m.meta.len());
                c.bucket_free(b).unwrap();
            }
            Op::Touch { i } if !m.keys.is_empty() => {
                c.touch(m.keys[i % m.keys.len()].bucket).unwrap();
            }
            Op::Gc => gc(&c, &mut m),
            Op::Step { n } => {
                for _ in 0..n {
                    c.allocator_step()
                        .map_err(|e| TestCaseError::fail(format!("{ctx}: {e}")))?;
                }
            }
            Op::Churn { rounds } => {
                for _ in 0..rounds {
                    while let Ok((b, g)) = c.bucket_alloc(Reserve::MovingGc, false) {
                        prop_assert!(
                            m.handed.insert((b, g)),
                            "{}: bucket {} handed twice",
                            ctx,
                            b
                        );
                        m.handed_gen.insert(b, g);
                        c.unpin(b).unwrap();
                    }
                    c.allocator_run_until_idle(10)
                        .map_err(|e| TestCaseError::fail(format!("{ctx}: {e}")))?;
                    prune_handed(&c, &mut m);
                }
            }
            Op::Crash => {
                let before: HashMap<u32, u8> = (0..N as u32)
                    .map(|b| (b, c.bucket_gen(b).unwrap()))
                    .collect();
                drop(c);
                c = open(&path);
                for (&b, &g) in &m.handed_gen {
                    let r = c.bucket_gen(b).unwrap();
                    prop_assert!(
                        r.wrapping_sub(g) < 128,
                        "{}: bucket {} recovered at gen {} behind hand-out gen {}",
                        ctx,
                        b,
                        r,
                        g
                    );
                }
                for k in &m.keys {
                    if before[&k.bucket] == k.gen {
                        prop_assert_eq!(
                            c.bucket_gen(k.bucket).unwrap(),
                            k.gen,
                            "{}: live key lost its gen",
                            ctx
                        );
                    }
                }
                m.pending.clear();
                m.reads.clear();
                m.last_end.clear();
                gc(&c, &mut m);
                // Buckets no live key points at may legitimately be handed out again under
                // the same gen (nothing can reach what was written there).
                let live: HashSet<(u32, u8)> = m.keys.iter().map(|k| (k.bucket, k.gen)).collect();
                m.handed
                    .retain(|h| live.contains(h) || m.meta.contains(&h.0));
                m.next.retain(|h, _| live.contains(h));
            }
            _ => {}
        }
        for (b, g) in guard {
            let now = c.bucket_gen(b).unwrap();
            prop_assert_eq!(now, g, "{}: protected bucket {} was invalidated", ctx, b);
        }
        check_all(&c, &m, &path, &ctx)?;
        prune_handed(&c, &mut m);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, max_shrink_iters: 200, ..ProptestConfig::default() })]

    #[test]
    fn allocator_matches_model_lru(ops in prop::collection::vec(op(), 1..160), discard in any::<bool>()) {
        run(ops, Replacement::Lru, discard)?;
    }

    #[test]
    fn allocator_matches_model_fifo(ops in prop::collection::vec(op(), 1..160)) {
        run(ops, Replacement::Fifo, false)?;
    }

    #[test]
    fn allocator_matches_model_random(ops in prop::collection::vec(op(), 1..160)) {
        run(ops, Replacement::Random, true)?;
    }
}
