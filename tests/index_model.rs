//! Model test of the key index: random inserts (overlapping, splitting, merging), range removes,
//! truncates, file removes, remove-if-matches, GC retains, validators, lookups and checkpoint
//! round trips, checked after every step against a reference model that keeps one entry per
//! cached block: `file -> block number -> (bucket, gen, sector, crc, dirty)`.
//!
//! After every step: each file's extents are sorted, never overlap, are block-aligned with one
//! crc per block, no two neighbours are `contiguous_with` each other (merging is complete), and
//! flattened block by block they equal the model; the validators and stats agree; and every
//! displaced / removed piece an operation returned is exactly what the model removed.

use std::collections::{BTreeMap, HashMap};

use bcachefs_lite::alloc::BucketPtr;
use bcachefs_lite::index::{Extent, FileId, Index, Validator};
use proptest::prelude::*;

const FILES: u64 = 3;
const SECTOR: u64 = 512;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Blk {
    bucket: u32,
    gen: u8,
    sector: u32,
    crc: u32,
    dirty: bool,
}

#[derive(Clone, Debug)]
enum Op {
    Insert {
        file: FileId,
        start: u64,
        n: u64,
        bucket: u32,
        gen: u8,
        /// `None`: the bucket block equals the file block, so neighbours in the file are
        /// neighbours in the bucket and merge; `Some(b)`: an arbitrary bucket block.
        place: Option<u32>,
        dirty: bool,
        seed: u32,
    },
    RemoveRange {
        file: FileId,
        off: u64,
        len: u64,
    },
    Truncate {
        file: FileId,
        size: u64,
    },
    RemoveFile {
        file: FileId,
    },
    RemoveIfMatches {
        file: FileId,
        off: u64,
        bucket: u32,
        gen: u8,
    },
    SetValidator {
        file: FileId,
        size: u64,
    },
    Retain {
        bucket: u32,
    },
    Lookup {
        file: FileId,
        off: u64,
        len: u64,
    },
    Checkpoint,
}

/// Byte offsets and lengths are in units of 1/8 block so that unaligned ranges are common.
fn op() -> impl Strategy<Value = Op> {
    let file = 0..FILES;
    prop_oneof![
        8 => (
            file.clone(),
            0u64..48,
            1u64..12,
            0u32..3,
            0u8..2,
            prop::option::weighted(0.3, 0u32..64),
            prop::bool::weighted(0.2),
            any::<u32>()
        )
            .prop_map(|(file, start, n, bucket, gen, place, dirty, seed)| Op::Insert {
                file,
                start,
                n,
                bucket,
                gen,
                place,
                dirty,
                seed
            }),
        2 => (file.clone(), 0u64..480, 0u64..100)
            .prop_map(|(file, off, len)| Op::RemoveRange { file, off, len }),
        1 => (file.clone(), 0u64..480).prop_map(|(file, size)| Op::Truncate { file, size }),
        1 => file.clone().prop_map(|file| Op::RemoveFile { file }),
        2 => (file.clone(), 0u64..480, 0u32..3, 0u8..2)
            .prop_map(|(file, off, bucket, gen)| Op::RemoveIfMatches { file, off, bucket, gen }),
        1 => (file.clone(), 0u64..1000).prop_map(|(file, size)| Op::SetValidator { file, size }),
        1 => (0u32..3).prop_map(|bucket| Op::Retain { bucket }),
        4 => (file.clone(), 0u64..480, 0u64..200)
            .prop_map(|(file, off, len)| Op::Lookup { file, off, len }),
        1 => Just(Op::Checkpoint),
    ]
}

type Blocks = BTreeMap<u64, Blk>;

struct Model {
    bs: u64,
    files: HashMap<FileId, Blocks>,
    validators: HashMap<FileId, Validator>,
}

impl Model {
    fn spb(&self) -> u32 {
        (self.bs / SECTOR) as u32
    }

    /// Remove blocks `[b0, b1)` of `file`, returning them.
    fn remove_blocks(&mut self, file: FileId, b0: u64, b1: u64) -> Blocks {
        let Some(m) = self.files.get_mut(&file) else {
            return Blocks::new();
        };
        let keys: Vec<u64> = m.range(b0..b1).map(|(&k, _)| k).collect();
        keys.into_iter()
            .map(|k| (k, m.remove(&k).unwrap()))
            .collect()
    }

    /// Blocks touched by bytes `[off, off + len)`.
    fn block_range(&self, off: u64, len: u64) -> (u64, u64) {
        if len == 0 {
            return (0, 0);
        }
        (off / self.bs, (off + len).div_ceil(self.bs))
    }

    fn next_to(&self, a: &Blk, b: &Blk) -> bool {
        a.bucket == b.bucket
            && a.gen == b.gen
            && a.dirty == b.dirty
            && a.sector + self.spb() == b.sector
    }
}

fn flatten(bs: u64, xs: &[Extent]) -> Blocks {
    let spb = (bs / SECTOR) as u32;
    let mut out = Blocks::new();
    for x in xs {
        for i in 0..x.blocks() {
            let prev = out.insert(
                x.offset / bs + i,
                Blk {
                    bucket: x.ptr.bucket,
                    gen: x.ptr.gen,
                    sector: x.ptr.offset + i as u32 * spb,
                    crc: x.crcs[i as usize],
                    dirty: x.dirty,
                },
            );
            assert!(
                prev.is_none(),
                "two pieces cover block {}",
                x.offset / bs + i
            );
        }
    }
    out
}

fn check_shape(bs: u64, xs: &[Extent], ctx: &str) {
    for x in xs {
        assert!(x.len > 0, "{ctx}: empty extent {x:?}");
        assert_eq!(x.offset % bs, 0, "{ctx}: unaligned {x:?}");
        assert_eq!(x.len % bs, 0, "{ctx}: unaligned {x:?}");
        assert_eq!(x.crcs.len() as u64, x.len / bs, "{ctx}: crcs {x:?}");
    }
    for w in xs.windows(2) {
        assert!(
            w[0].end() <= w[1].offset,
            "{ctx}: overlap or unsorted {w:?}"
        );
    }
}

fn check(ix: &Index, m: &Model) {
    let bs = m.bs;
    let (mut files, mut extents, mut bytes) = (0, 0, 0);
    for f in 0..FILES {
        let xs = ix.extents(f);
        check_shape(bs, &xs, "extents");
        for w in xs.windows(2) {
            assert!(!w[0].contiguous_with(&w[1]), "unmerged neighbours {w:?}");
        }
        let empty = Blocks::new();
        let want = m.files.get(&f).unwrap_or(&empty);
        assert_eq!(&flatten(bs, &xs), want, "file {f} differs from the model");
        // A whole-file lookup returns the same extents.
        assert_eq!(ix.lookup(f, 0, u64::MAX), xs);
        assert_eq!(
            ix.validator(f),
            m.validators.get(&f).copied(),
            "validator {f}"
        );
        if !want.is_empty() || m.validators.contains_key(&f) {
            files += 1;
        }
        extents += xs.len() as u64;
        bytes += want.len() as u64 * bs;
    }
    let s = ix.stats();
    assert_eq!(
        (s.files, s.extents, s.cached_bytes),
        (files, extents, bytes)
    );
}

fn run(bs: u64, ops: Vec<Op>) {
    let mut ix = Index::new(bs as u32);
    let mut m = Model {
        bs,
        files: HashMap::new(),
        validators: HashMap::new(),
    };
    let spb = m.spb();
    for op in ops {
        match op {
            Op::Insert {
                file,
                start,
                n,
                bucket,
                gen,
                place,
                dirty,
                seed,
            } => {
                let bblock = place.unwrap_or(start as u32);
                let crcs: Vec<u32> = (0..n as u32)
                    .map(|i| seed.wrapping_mul(31).wrapping_add(i))
                    .collect();
                let x = Extent {
                    offset: start * bs,
                    len: n * bs,
                    ptr: BucketPtr {
                        bucket,
                        gen,
                        offset: bblock * spb,
                    },
                    crcs: crcs.clone().into_boxed_slice(),
                    dirty,
                };
                let displaced = ix.insert(file, x);
                check_shape(bs, &displaced, "displaced");
                let want = m.remove_blocks(file, start, start + n);
                assert_eq!(flatten(bs, &displaced), want, "displaced");
                let mf = m.files.entry(file).or_default();
                for i in 0..n {
                    mf.insert(
                        start + i,
                        Blk {
                            bucket,
                            gen,
                            sector: (bblock + i as u32) * spb,
                            crc: crcs[i as usize],
                            dirty,
                        },
                    );
                }
            }
            Op::RemoveRange { file, off, len } => {
                let (off, len) = (off * bs / 8, len * bs / 8);
                let got = ix.remove_range(file, off, len);
                check_shape(bs, &got, "removed");
                let (b0, b1) = m.block_range(off, len);
                assert_eq!(flatten(bs, &got), m.remove_blocks(file, b0, b1), "removed");
            }
            Op::Truncate { file, size } => {
                let size = size * bs / 8;
                let got = ix.truncate(file, size);
                check_shape(bs, &got, "truncated");
                let want = m.remove_blocks(file, size / bs, u64::MAX);
                assert_eq!(flatten(bs, &got), want, "truncated");
            }
            Op::RemoveFile { file } => {
                let got = ix.remove_file(file);
                check_shape(bs, &got, "remove_file");
                let want = m.files.remove(&file).unwrap_or_default();
                m.validators.remove(&file);
                assert_eq!(flatten(bs, &got), want, "remove_file");
            }
            Op::RemoveIfMatches {
                file,
                off,
                bucket,
                gen,
            } => {
                let off = off * bs / 8;
                let ptr = BucketPtr {
                    bucket,
                    gen,
                    offset: 0,
                };
                let got = ix.remove_if_matches(file, off, ptr);
                let b = off / bs;
                let hit = m
                    .files
                    .get(&file)
                    .and_then(|mf| mf.get(&b))
                    .is_some_and(|x| x.bucket == bucket && x.gen == gen);
                let want = if hit {
                    // The covering extent is the maximal contiguous run around block b.
                    let mf = &m.files[&file];
                    let (mut lo, mut hi) = (b, b + 1);
                    while lo > 0 && mf.get(&(lo - 1)).is_some_and(|p| m.next_to(p, &mf[&lo])) {
                        lo -= 1;
                    }
                    while mf.get(&hi).is_some_and(|n| m.next_to(&mf[&(hi - 1)], n)) {
                        hi += 1;
                    }
                    m.remove_blocks(file, lo, hi)
                } else {
                    Blocks::new()
                };
                assert_eq!(got.is_some(), hit, "remove_if_matches hit");
                assert_eq!(flatten(bs, got.as_slice()), want, "remove_if_matches");
            }
            Op::SetValidator { file, size } => {
                let v = Validator {
                    size,
                    mtime_ns: size as i64 * 3 - 100,
                    ctime_ns: -(size as i64),
                };
                ix.set_validator(file, v);
                m.validators.insert(file, v);
            }
            Op::Retain { bucket } => {
                let dropped = ix.retain(|_, x| x.ptr.bucket != bucket);
                let mut want = Vec::new();
                for (&f, mf) in m.files.iter_mut() {
                    let keys: Vec<u64> = mf
                        .iter()
                        .filter(|(_, x)| x.bucket == bucket)
                        .map(|(&k, _)| k)
                        .collect();
                    for k in keys {
                        want.push((f, k, mf.remove(&k).unwrap()));
                    }
                }
                let mut got = Vec::new();
                for (f, x) in &dropped {
                    for (k, b) in flatten(bs, std::slice::from_ref(x)) {
                        got.push((*f, k, b));
                    }
                }
                got.sort_by_key(|g| (g.0, g.1));
                want.sort_by_key(|g| (g.0, g.1));
                assert_eq!(got, want, "retain");
            }
            Op::Lookup { file, off, len } => {
                let (off, len) = (off * bs / 8, len * bs / 8);
                let got = ix.lookup(file, off, len);
                check_shape(bs, &got, "lookup");
                let (b0, b1) = m.block_range(off, len);
                for x in &got {
                    assert!(x.offset >= b0 * bs && x.end() <= b1 * bs, "outside range");
                }
                let want: Blocks = m
                    .files
                    .get(&file)
                    .map(|mf| mf.range(b0..b1).map(|(&k, &v)| (k, v)).collect())
                    .unwrap_or_default();
                assert_eq!(flatten(bs, &got), want, "lookup");
            }
            Op::Checkpoint => {
                let blob = ix.encode_checkpoint();
                ix = Index::decode_checkpoint(bs as u32, &blob).expect("own checkpoint decodes");
                assert_eq!(ix.encode_checkpoint(), blob, "re-encoding differs");
            }
        }
        // Files with neither blocks nor validator do not exist in the model either.
        m.files.retain(|_, mf| !mf.is_empty());
        check(&ix, &m);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn index_matches_model(
        bs in prop::sample::select(vec![512u64, 1024, 4096]),
        ops in prop::collection::vec(op(), 1..80),
    ) {
        run(bs, ops);
    }
}
