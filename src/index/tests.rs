//! Unit tests of the index operations. The random model test is `tests/index_model.rs`.

use super::*;

const BS: u64 = 4096;
const SPB: u32 = (BS / SECTOR) as u32; // sectors per block

/// An extent of `blocks` blocks at file block `fblock`, in `bucket`/`gen` at block `bblock` of
/// the bucket; crc of each block = its (bucket, sector) so slices and merges can be checked.
fn ext(fblock: u64, blocks: u32, bucket: u32, gen: u8, bblock: u32) -> Extent {
    Extent {
        offset: fblock * BS,
        len: u64::from(blocks) * BS,
        ptr: BucketPtr {
            bucket,
            gen,
            offset: bblock * SPB,
        },
        crcs: (0..blocks).map(|i| crc_of(bucket, bblock + i)).collect(),
        dirty: false,
    }
}

fn crc_of(bucket: u32, bblock: u32) -> u32 {
    bucket << 16 | bblock
}

/// Every extent is internally consistent: crc of each block matches its location.
fn check_consistent(x: &Extent) {
    assert_eq!(x.crcs.len() as u64, x.len / BS);
    assert_eq!(x.offset % BS, 0);
    assert!(x.len > 0);
    for (i, c) in x.crcs.iter().enumerate() {
        assert_eq!(
            *c,
            crc_of(x.ptr.bucket, x.ptr.offset / SPB + i as u32),
            "{x:?}"
        );
    }
}

/// (offset, len, bucket, sector) of every extent of `file`, after checking them.
fn shape(ix: &Index, file: FileId) -> Vec<(u64, u64, u32, u32)> {
    let v = ix.extents(file);
    for w in v.windows(2) {
        assert!(w[0].end() <= w[1].offset, "overlap: {w:?}");
        assert!(!w[0].contiguous_with(&w[1]), "unmerged: {w:?}");
    }
    v.iter()
        .inspect(|x| check_consistent(x))
        .map(|x| (x.offset / BS, x.len / BS, x.ptr.bucket, x.ptr.offset / SPB))
        .collect()
}

fn blocks(v: &[Extent]) -> Vec<(u64, u64)> {
    v.iter().map(|x| (x.offset / BS, x.len / BS)).collect()
}

#[test]
fn extent_helpers() {
    let x = ext(10, 8, 3, 1, 4);
    assert_eq!(x.end(), 18 * BS);
    assert_eq!(x.blocks(), 8);
    assert_eq!(x.sectors(), 64);
    assert_eq!(x.block_size(), BS);
    let s = x.slice(12 * BS, 15 * BS);
    assert_eq!(s, ext(12, 3, 3, 1, 6));
    assert_eq!(x.slice(x.offset, x.end()), x);
    assert!(ext(0, 2, 3, 1, 0).contiguous_with(&ext(2, 1, 3, 1, 2)));
    assert!(
        !ext(0, 2, 3, 1, 0).contiguous_with(&ext(2, 1, 3, 2, 2)),
        "gen"
    );
    assert!(
        !ext(0, 2, 3, 1, 0).contiguous_with(&ext(2, 1, 4, 1, 2)),
        "bucket"
    );
    assert!(
        !ext(0, 2, 3, 1, 0).contiguous_with(&ext(3, 1, 3, 1, 2)),
        "file gap"
    );
    assert!(
        !ext(0, 2, 3, 1, 0).contiguous_with(&ext(2, 1, 3, 1, 3)),
        "bucket gap"
    );
    assert!(
        !ext(2, 1, 3, 1, 2).contiguous_with(&ext(0, 2, 3, 1, 0)),
        "order"
    );
    let mut d = ext(2, 1, 3, 1, 2);
    d.dirty = true;
    assert!(!ext(0, 2, 3, 1, 0).contiguous_with(&d), "dirty");
}

#[test]
#[should_panic(expected = "not aligned")]
fn slice_unaligned_panics() {
    ext(0, 2, 0, 0, 0).slice(1, BS);
}

#[test]
#[should_panic(expected = "malformed extent")]
fn insert_rejects_crc_count_mismatch() {
    let mut x = ext(0, 2, 0, 0, 0);
    x.crcs = vec![0].into_boxed_slice();
    Index::new(4096).insert(1, x);
}

#[test]
fn insert_disjoint_and_lookup_gaps() {
    let ix = Index::new(4096);
    assert!(ix.insert(1, ext(0, 2, 1, 0, 0)).is_empty());
    assert!(ix.insert(1, ext(5, 2, 2, 0, 0)).is_empty());
    assert_eq!(shape(&ix, 1), vec![(0, 2, 1, 0), (5, 2, 2, 0)]);
    // Lookup of [1 block, 6 blocks) sees two pieces, sliced, gap absent.
    let v = ix.lookup(1, BS, 5 * BS);
    assert_eq!(blocks(&v), vec![(1, 1), (5, 1)]);
    v.iter().for_each(check_consistent);
    assert_eq!(v[0].ptr.offset, SPB);
    // Unaligned byte range rounds out to whole blocks.
    let v = ix.lookup(1, BS + 1, 1);
    assert_eq!(blocks(&v), vec![(1, 1)]);
    let v = ix.lookup(1, 2 * BS - 1, 2);
    assert_eq!(blocks(&v), vec![(1, 1)]);
    let v = ix.lookup(1, 2 * BS - 1, 3 * BS + 2);
    assert_eq!(blocks(&v), vec![(1, 1), (5, 1)]);
    assert!(ix.lookup(1, 2 * BS, 3 * BS).is_empty());
    assert!(ix.lookup(1, 0, 0).is_empty());
    assert!(ix.lookup(2, 0, 100 * BS).is_empty());
    // A huge length does not overflow.
    assert_eq!(blocks(&ix.lookup(1, 3, u64::MAX)), vec![(0, 2), (5, 2)]);
    assert_eq!(blocks(&ix.lookup(1, u64::MAX - 5, 10)), vec![]);
}

#[test]
fn insert_splits_in_the_middle() {
    let ix = Index::new(4096);
    ix.insert(1, ext(0, 10, 1, 0, 0));
    let d = ix.insert(1, ext(3, 2, 2, 0, 0));
    assert_eq!(d, vec![ext(3, 2, 1, 0, 3)]);
    assert_eq!(
        shape(&ix, 1),
        vec![(0, 3, 1, 0), (3, 2, 2, 0), (5, 5, 1, 5)]
    );
}

#[test]
fn insert_trims_both_ends_and_swallows_the_middle() {
    let ix = Index::new(4096);
    ix.insert(1, ext(0, 4, 1, 0, 0));
    ix.insert(1, ext(4, 2, 2, 0, 0));
    ix.insert(1, ext(7, 3, 3, 0, 0));
    // New extent covers blocks 2..8: trims the left one's tail, swallows the middle one, trims
    // the right one's head.
    let d = ix.insert(1, ext(2, 6, 4, 0, 0));
    assert_eq!(
        d,
        vec![ext(2, 2, 1, 0, 2), ext(4, 2, 2, 0, 0), ext(7, 1, 3, 0, 0)]
    );
    assert_eq!(
        shape(&ix, 1),
        vec![(0, 2, 1, 0), (2, 6, 4, 0), (8, 2, 3, 1)]
    );
    // Exact overwrite displaces the whole old extent.
    let d = ix.insert(1, ext(2, 6, 5, 0, 0));
    assert_eq!(d, vec![ext(2, 6, 4, 0, 0)]);
    // Trim only the left end of an extent.
    let d = ix.insert(1, ext(1, 1, 6, 0, 0));
    assert_eq!(d, vec![ext(1, 1, 1, 0, 1)]);
    assert_eq!(
        shape(&ix, 1),
        vec![(0, 1, 1, 0), (1, 1, 6, 0), (2, 6, 5, 0), (8, 2, 3, 1)]
    );
}

#[test]
fn merges_left_right_and_both() {
    let ix = Index::new(4096);
    ix.insert(1, ext(0, 2, 1, 0, 0));
    // Right after in file and bucket: merged into the left one, crcs concatenated.
    ix.insert(1, ext(2, 3, 1, 0, 2));
    assert_eq!(shape(&ix, 1), vec![(0, 5, 1, 0)]);
    assert_eq!(ix.extents(1)[0], ext(0, 5, 1, 0, 0));
    // Right neighbour: inserted before an extent it continues into.
    ix.insert(1, ext(10, 2, 1, 0, 10));
    ix.insert(1, ext(8, 2, 1, 0, 8));
    assert_eq!(shape(&ix, 1), vec![(0, 5, 1, 0), (8, 4, 1, 8)]);
    // Filling the gap joins all three.
    ix.insert(1, ext(5, 3, 1, 0, 5));
    assert_eq!(shape(&ix, 1), vec![(0, 12, 1, 0)]);
    assert_eq!(ix.extents(1)[0], ext(0, 12, 1, 0, 0));
    assert_eq!(ix.stats().extents, 1);
}

#[test]
fn no_merge_across_gen_dirty_or_bucket_gap() {
    let ix = Index::new(4096);
    ix.insert(1, ext(0, 2, 1, 0, 0));
    ix.insert(1, ext(2, 2, 1, 1, 2)); // other gen
    let mut d = ext(4, 2, 1, 1, 4);
    d.dirty = true;
    ix.insert(1, d); // other dirty flag
    ix.insert(1, ext(6, 2, 1, 1, 7)); // gap in the bucket
    assert_eq!(ix.stats().extents, 4);
    shape(&ix, 1);
}

#[test]
fn overwrite_with_same_location_merges_back() {
    // Rewriting a range to the place it already lives in leaves one extent.
    let ix = Index::new(4096);
    ix.insert(1, ext(0, 8, 1, 0, 0));
    let d = ix.insert(1, ext(2, 2, 1, 0, 2));
    assert_eq!(d, vec![ext(2, 2, 1, 0, 2)]);
    assert_eq!(shape(&ix, 1), vec![(0, 8, 1, 0)]);
}

#[test]
fn remove_range_rounds_outward() {
    let ix = Index::new(4096);
    ix.insert(1, ext(0, 10, 1, 0, 0));
    // Bytes [BS + 1, 3 BS - 1) touch blocks 1 and 2.
    let r = ix.remove_range(1, BS + 1, 2 * BS - 2);
    assert_eq!(r, vec![ext(1, 2, 1, 0, 1)]);
    assert_eq!(shape(&ix, 1), vec![(0, 1, 1, 0), (3, 7, 1, 3)]);
    // One byte drops one whole block.
    let r = ix.remove_range(1, 5 * BS + 100, 1);
    assert_eq!(blocks(&r), vec![(5, 1)]);
    assert!(ix.remove_range(1, 0, 0).is_empty());
    assert!(ix.remove_range(7, 0, 100).is_empty());
    // Spanning several extents and gaps, to the end of the key space.
    let r = ix.remove_range(1, 0, u64::MAX);
    assert_eq!(blocks(&r), vec![(0, 1), (3, 2), (6, 4)]);
    assert_eq!(ix.stats(), IndexStats::default().with_heap(ix.stats()));
}

impl IndexStats {
    fn with_heap(mut self, other: IndexStats) -> IndexStats {
        self.heap_bytes_estimate = other.heap_bytes_estimate;
        self
    }
}

#[test]
fn truncate_keeps_only_whole_blocks_below_new_size() {
    let ix = Index::new(4096);
    ix.insert(1, ext(0, 10, 1, 0, 0));
    // Aligned: blocks at and above 8 go.
    assert_eq!(blocks(&ix.truncate(1, 8 * BS)), vec![(8, 2)]);
    // Unaligned: the block holding new_size goes too.
    assert_eq!(blocks(&ix.truncate(1, 5 * BS + 1)), vec![(5, 3)]);
    assert_eq!(blocks(&ix.truncate(1, 5 * BS - 1)), vec![(4, 1)]);
    assert_eq!(shape(&ix, 1), vec![(0, 4, 1, 0)]);
    // Growing is a no-op.
    assert!(ix.truncate(1, 100 * BS).is_empty());
    assert_eq!(blocks(&ix.truncate(1, 0)), vec![(0, 4)]);
    assert_eq!(ix.stats().files, 0);
}

#[test]
fn validator_lifecycle() {
    let ix = Index::new(4096);
    let v = Validator {
        size: 10,
        mtime_ns: 20,
        ctime_ns: 30,
    };
    assert_eq!(ix.validator(1), None);
    ix.set_validator(1, v);
    assert_eq!(ix.validator(1), Some(v));
    assert_eq!(ix.stats().files, 1);
    ix.insert(1, ext(0, 1, 1, 0, 0));
    // Removing every extent keeps the validator (and the file entry).
    ix.remove_range(1, 0, BS);
    assert_eq!(ix.validator(1), Some(v));
    assert_eq!(ix.stats().files, 1);
    ix.insert(1, ext(0, 1, 1, 0, 0));
    assert_eq!(ix.remove_file(1), vec![ext(0, 1, 1, 0, 0)]);
    assert_eq!(ix.validator(1), None);
    assert_eq!(ix.stats().files, 0);
    assert!(ix.remove_file(1).is_empty());
}

#[test]
fn remove_if_matches_only_the_same_bucket_and_gen() {
    let ix = Index::new(4096);
    ix.insert(1, ext(0, 4, 1, 5, 0));
    let looked = ix.lookup(1, 2 * BS, BS).remove(0);
    // A concurrent insert replaced the range with a newer pointer (same bucket, newer gen).
    ix.insert(1, ext(0, 4, 1, 6, 0));
    assert_eq!(ix.remove_if_matches(1, 2 * BS, looked.ptr), None);
    assert_eq!(shape(&ix, 1), vec![(0, 4, 1, 0)]);
    // The reader of the new pointer finds a bad crc: the covering extent goes, whole.
    let looked = ix.lookup(1, 2 * BS, BS).remove(0);
    assert_eq!(
        ix.remove_if_matches(1, 2 * BS + 7, looked.ptr),
        Some(ext(0, 4, 1, 6, 0))
    );
    assert!(ix.extents(1).is_empty());
    // Gaps and unknown files are no-ops.
    ix.insert(1, ext(10, 1, 2, 0, 0));
    assert_eq!(ix.remove_if_matches(1, 9 * BS, looked.ptr), None);
    assert_eq!(
        ix.remove_if_matches(1, 11 * BS, ext(0, 1, 2, 0, 0).ptr),
        None
    );
    assert_eq!(ix.remove_if_matches(3, 0, looked.ptr), None);
    assert_eq!(ix.stats().extents, 1);
}

#[test]
fn for_each_and_retain() {
    let ix = Index::new(4096);
    for f in 0..100u64 {
        ix.insert(f, ext(0, 1, 1, 0, f as u32 % 64));
        ix.insert(f, ext(4, 2, 2, 3, 0));
    }
    let mut n = 0;
    let mut bytes = 0;
    ix.for_each_extent(|_, x| {
        n += 1;
        bytes += x.len;
    });
    assert_eq!((n, bytes), (200, 300 * BS));
    // GC: bucket 2 was invalidated; its keys are stale.
    let dropped = ix.retain(|_, x| x.ptr.bucket != 2);
    assert_eq!(dropped.len(), 100);
    assert!(dropped.iter().all(|(_, x)| x.ptr.bucket == 2));
    let s = ix.stats();
    assert_eq!((s.files, s.extents, s.cached_bytes), (100, 100, 100 * BS));
    ix.retain(|_, _| false);
    assert_eq!(ix.stats().files, 0);
}

#[test]
fn small_block_size() {
    // 512-byte blocks: one sector per block.
    let ix = Index::new(512);
    let x = Extent {
        offset: 1024,
        len: 2048,
        ptr: BucketPtr {
            bucket: 0,
            gen: 0,
            offset: 10,
        },
        crcs: vec![1, 2, 3, 4].into_boxed_slice(),
        dirty: true,
    };
    ix.insert(1, x.clone());
    let v = ix.lookup(1, 1536, 1);
    assert_eq!(v[0].ptr.offset, 11);
    assert_eq!(&*v[0].crcs, &[2]);
    assert_eq!(ix.truncate(1, 2000).len(), 1);
    assert_eq!(ix.extents(1)[0].len, 512);
}

#[test]
fn concurrent_inserts_keep_invariants() {
    let ix = std::sync::Arc::new(Index::new(4096));
    let threads: Vec<_> = (0..4u32)
        .map(|t| {
            let ix = ix.clone();
            std::thread::spawn(move || {
                for i in 0..2000u32 {
                    let file = u64::from(i % 3);
                    let fb = u64::from((i * 7 + t * 13) % 200);
                    ix.insert(file, ext(fb, 1 + i % 5, t, 0, fb as u32));
                    if i % 11 == 0 {
                        ix.remove_range(file, fb * BS, BS);
                    }
                    for x in ix.lookup(file, 0, 300 * BS) {
                        check_consistent(&x);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    for f in 0..3 {
        shape(&ix, f);
    }
}

#[test]
fn heap_estimate_is_plausible() {
    let ix = Index::new(4096);
    let base = ix.stats().heap_bytes_estimate;
    for i in 0..1000u64 {
        ix.insert(i % 10, ext(i * 64, 32, i as u32, 0, 0));
    }
    let per = (ix.stats().heap_bytes_estimate - base) / 1000;
    // 32 crcs (128 B + malloc header) plus a share of a B-tree node.
    assert!((200..400).contains(&per), "{per} bytes per extent");
}

fn dirty(mut x: Extent) -> Extent {
    x.dirty = true;
    x
}

/// Writeback: a range becomes clean only while the same pointer still covers it; a write
/// since then (another bucket) keeps it dirty. Cleaned pieces merge with clean neighbours.
#[test]
fn clean_if_unchanged_cleans_only_the_same_pointer_and_merges() {
    let ix = Index::new(BS as u32);
    ix.insert(1, ext(0, 4, 7, 1, 0)); // clean blocks 0..4 of bucket 7
    ix.insert(1, dirty(ext(4, 4, 7, 1, 4))); // dirty blocks 4..8, contiguous in bucket 7
    assert_eq!(ix.dirty_bytes(1), 4 * BS);
    assert_eq!(ix.dirty_files(), vec![(1, 4 * BS)]);
    let written = ix.dirty_extents(1);
    assert_eq!(blocks(&written), vec![(4, 4)]);
    // a new write over block 6 (another bucket) before the writeback finished
    ix.insert(1, dirty(ext(6, 1, 9, 1, 0)));
    assert!(
        !ix.clean_if_unchanged(1, &written[0]),
        "cleaned over a newer write"
    );
    assert_eq!(ix.dirty_bytes(1), 4 * BS);
    // what is left of the old pointer can be cleaned piece by piece
    for piece in ix.dirty_extents(1) {
        if piece.ptr.bucket == 7 {
            assert!(ix.clean_if_unchanged(1, &piece));
        }
    }
    assert_eq!(ix.dirty_bytes(1), BS, "only the newer write stays dirty");
    // clean blocks 0..6 of bucket 7 merged into one extent again
    assert_eq!(shape(&ix, 1)[0], (0, 6, 7, 0));
    // replay's KeyClean: everything in the range
    ix.mark_clean_range(1, 0, 8 * BS);
    assert_eq!(ix.dirty_bytes(1), 0);
    assert!(ix.dirty_files().is_empty());
}

/// Dropping a file's clean extents keeps its dirty ones (and the validator).
#[test]
fn remove_clean_keeps_dirty_extents() {
    let ix = Index::new(BS as u32);
    let v = Validator {
        size: 10 * BS,
        mtime_ns: 1,
        ctime_ns: 2,
    };
    ix.set_validator(2, v);
    ix.insert(2, ext(0, 2, 3, 0, 0));
    ix.insert(2, dirty(ext(2, 2, 4, 0, 0)));
    ix.insert(2, ext(5, 1, 3, 0, 5));
    let gone = ix.remove_clean(2);
    assert_eq!(blocks(&gone), vec![(0, 2), (5, 1)]);
    assert_eq!(blocks(&ix.extents(2)), vec![(2, 2)]);
    assert_eq!(ix.validator(2), Some(v));
    // without dirty extents it forgets the file
    ix.mark_clean_range(2, 0, u64::MAX);
    ix.remove_clean(2);
    assert!(ix.extents(2).is_empty() && ix.validator(2).is_none());
}
