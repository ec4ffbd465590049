//! One harness per on-disk decoder and per text parser, shared by the cargo-fuzz targets
//! (`fuzz/fuzz_targets/*.rs`, `make fuzz`) and the stable proptest pass in `make test`
//! (`tests/decoders.rs`), so both exercise exactly the same code.
//!
//! Each harness feeds arbitrary bytes to a decoder twice, as they are and with their crc32c
//! field set right (a fuzzer cannot guess a checksum, and everything behind it is what a
//! crafted file would reach), and checks what a decoder promises
//! (docs/DESIGN.md §3): it returns an error for malformed input and never panics, and what
//! it accepts survives an encode/decode round trip unchanged (a decoder that accepts more
//! than the encoder can write is how crafted records slip through). Bounded allocation is
//! checked by the callers, which count bytes allocated per input.
//!
//! Nothing here keeps state; every function may be called from any thread.

use crate::alloc::format::{decode_part, GensCheckpoint, PartExpect};
use crate::device::format::Superblock;
use crate::index::Index;
use crate::journal::format::Entry;
use crate::options::MountOptions;

/// A harness: arbitrary bytes in, a panic if a promise is broken.
pub type Harness = fn(&[u8]);

/// Every harness, by the name of its fuzz target.
pub const TARGETS: &[(&str, Harness)] = &[
    ("superblock", superblock),
    ("journal_entry", journal_entry),
    ("gens_part", gens_part),
    ("index_checkpoint", index_checkpoint),
    ("mount_options", mount_options),
];

/// `data` with the crc32c at `crc_at` computed over `covered` bytes with that field zero (as
/// every format here does); `None` when the input is too short to hold one.
fn with_crc(data: &[u8], crc_at: usize, covered: Option<usize>) -> Option<Vec<u8>> {
    let covered = covered?.min(data.len());
    if covered < crc_at + 4 {
        return None;
    }
    let mut fixed = data.to_vec();
    fixed[crc_at..crc_at + 4].fill(0);
    let crc = crc32c::crc32c(&fixed[..covered]);
    fixed[crc_at..crc_at + 4].copy_from_slice(&crc.to_le_bytes());
    Some(fixed)
}

/// Runs `check` on `data` and on `data` with its crc made right.
fn raw_and_fixed(data: &[u8], crc_at: usize, covered: Option<usize>, check: impl Fn(&[u8])) {
    check(data);
    if let Some(fixed) = with_crc(data, crc_at, covered) {
        check(&fixed);
    }
}

fn le_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn le_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// The superblock: accepted ones re-encode to a block that decodes to the same value.
pub fn superblock(data: &[u8]) {
    raw_and_fixed(data, 12, Some(4096), |data| {
        if let Ok(sb) = Superblock::decode(data) {
            assert!(
                sb.validate().is_ok(),
                "decode accepted an invalid superblock"
            );
            let again = Superblock::decode(&sb.encode()).expect("re-encoded superblock decodes");
            assert_eq!(again, sb);
        }
    });
}

/// A journal entry and every record kind in it (the journal size bounds the entry, as on
/// mount).
pub fn journal_entry(data: &[u8]) {
    let covered = le_u32(data, 24).map(|payload| 32 + payload as usize);
    raw_and_fixed(data, 12, covered, |data| {
        for max_len in [data.len(), 1 << 20] {
            if let Ok(entry) = Entry::decode(data, max_len) {
                let encoded = entry.encode(512);
                let again =
                    Entry::decode(&encoded, encoded.len()).expect("re-encoded entry decodes");
                assert_eq!(again, entry);
            }
        }
    });
}

/// One gens checkpoint part. What the journal record would say about the part (seq, uuid,
/// bucket count, part index) is taken from the input's own header where it has one, so the
/// fuzzer gets past those checks to the entries; the bucket count is bounded as the
/// superblock bounds it.
pub fn gens_part(data: &[u8]) {
    let covered = le_u32(data, 36).map(|count| 64 + 3 * count as usize);
    raw_and_fixed(data, 12, covered, gens_part_once);
}

fn gens_part_once(data: &[u8]) {
    let mut uuid = [0u8; 16];
    if let Some(u) = data.get(48..64) {
        uuid.copy_from_slice(u);
    }
    let nbuckets = le_u64(data, 40).unwrap_or(64).clamp(64, 1 << 16);
    let want = PartExpect {
        seq: le_u64(data, 16).unwrap_or(0),
        uuid: &uuid,
        nbuckets,
        bucket_size: 1 << 20,
        index: le_u32(data, 24).unwrap_or(0),
        count: le_u32(data, 28).unwrap_or(1),
    };
    let mut ck = GensCheckpoint {
        seq: want.seq,
        gens: vec![0; nbuckets as usize],
        prios: vec![0; nbuckets as usize],
    };
    let _ = decode_part(data, want, &mut ck);
    assert_eq!(
        ck.gens.len(),
        nbuckets as usize,
        "decode_part resized the checkpoint"
    );
}

/// An index checkpoint blob, at the two block sizes the tests use most.
pub fn index_checkpoint(data: &[u8]) {
    let covered = le_u64(data, 16).map(|total| total.min(usize::MAX as u64) as usize);
    raw_and_fixed(data, 12, covered, |data| {
        for block_size in [512, 4096] {
            if let Ok(index) = Index::decode_checkpoint(block_size, data) {
                let encoded = index.encode_checkpoint();
                let again = Index::decode_checkpoint(block_size, &encoded)
                    .expect("re-encoded index decodes");
                assert_eq!(again.encode_checkpoint(), encoded);
            }
        }
    });
}

/// A `-o` list (any UTF-8; other bytes are not a string a user can type).
pub fn mount_options(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let mut opts = MountOptions::default();
        if opts.apply(text).is_ok() {
            // what parsed once parses again to the same options
            let mut again = MountOptions::default();
            again.apply(text).expect("the same list parses twice");
            assert_eq!(again, opts);
        }
    }
}

/// Valid inputs for `target`, as the cache writes them: the committed fuzz corpus
/// (`fuzz/corpus/`) and the mutation pass of tests/decoders.rs start from these.
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    use crate::device::format::Geometry;
    use crate::index::{Extent, Validator};
    use crate::journal::format::Record;
    use crate::BucketPtr;
    match target {
        "superblock" => {
            let g = Geometry {
                size: 256 << 20,
                backing: "/srv/home".into(),
                ..Geometry::default()
            };
            vec![Superblock::new_for(&g, [7; 16], 1_700_000_000)
                .expect("a valid geometry")
                .encode()]
        }
        "journal_entry" => {
            let records = vec![
                Record::GensCheckpoint {
                    seq: 3,
                    buckets: vec![1, 2],
                },
                Record::IndexCheckpoint {
                    seq: 2,
                    buckets: vec![5],
                    len: 4096,
                },
                Record::FsSlot {
                    slot: 1,
                    fs_type: 0xef53,
                    fsid: 0x1234_5678_9abc,
                    dev: 2049,
                    dev_keyed: false,
                },
                Record::KeyInsert {
                    file: 1 << 56 | 42,
                    offset: 8192,
                    len: 16,
                    bucket: 9,
                    gen: 4,
                    bucket_offset: 8,
                    dirty: false,
                    crcs: vec![0xdead_beef, 0x0bad_f00d],
                },
                Record::KeyDelete {
                    file: 1 << 56 | 42,
                    offset: 0,
                    len: u64::MAX,
                },
                Record::SetValidator {
                    file: 1 << 56 | 42,
                    size: 12345,
                    mtime_ns: 1_700_000_000_000_000_000,
                    ctime_ns: 1_700_000_000_000_000_001,
                },
            ];
            vec![Entry { seq: 17, records }.encode(512)]
        }
        "gens_part" => {
            let ck = GensCheckpoint {
                seq: 5,
                gens: (0..200).map(|i| i as u8).collect(),
                prios: (0..200).map(|i| i as u16 * 3).collect(),
            };
            crate::alloc::format::encode(&ck, &[7; 16], 1 << 20, 512)
        }
        "index_checkpoint" => {
            let index = Index::new(512);
            for file in [1u64, 1 << 56 | 7] {
                index.set_validator(
                    file,
                    Validator {
                        size: 4096,
                        mtime_ns: 1,
                        ctime_ns: 2,
                    },
                );
                index.insert(
                    file,
                    Extent {
                        offset: 1024,
                        len: 1024,
                        ptr: BucketPtr {
                            bucket: 3,
                            gen: 1,
                            offset: 16,
                        },
                        crcs: vec![1, 2].into_boxed_slice(),
                        dirty: false,
                    },
                );
            }
            vec![index.encode_checkpoint()]
        }
        "mount_options" => vec![
            b"cache=/var/cache/a.cache,cache_size=10G,replacement=fifo,sequential_cutoff=4M"
                .to_vec(),
            b"allow_other,default_permissions,attr_timeout=2.5,entry_timeout=0,nodiscard,ro"
                .to_vec(),
        ],
        _ => Vec::new(),
    }
}
