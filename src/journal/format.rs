//! On-disk encoding of a journal entry.
//!
//! Model: the journal is a ring of block-aligned entries in the region named by the superblock.
//! Each entry has a 32-byte header and a payload of typed records; the entry is padded with
//! zeroes to a whole number of blocks. Layout:
//!
//! ```text
//!  0  8  magic "bcfsjrnl"      16  8  seq (strictly increasing)
//!  8  4  version (1)           24  4  payload_len (bytes after the header)
//! 12  4  crc32c (header with   28  4  record count
//!        crc = 0, then payload)
//! 32 ..  records, each: type u8, then a fixed body:
//!   1 GensCheckpoint   ckpt_seq u64, nparts u32 (1..=64), bucket u32 x nparts
//!   2 IndexCheckpoint  ckpt_seq u64, len_bytes u64, nparts u32 (1..=MAX_INDEX_BUCKETS),
//!                      bucket u32 x nparts (the blob is split over them in order)
//!   3 KeyInsert        file u64, offset u64 (bytes), len u32 (sectors), bucket u32, gen u8,
//!                      bucket_offset u32 (sectors), dirty u8, nblocks u32,
//!                      crc32c u32 x nblocks (one per block of the extent)
//!   4 KeyDelete        file u64, offset u64 (bytes), len u64 (bytes; u64::MAX = to the end)
//!   5 SetValidator     file u64, size u64, mtime_ns i64, ctime_ns i64
//!   6 FsSlot           slot u8, fs_type u64, fsid u64, dev u64, dev_keyed u8 (0 or 1):
//!                      file ids `slot << 56 | ino` belong to this filesystem
//!  13 MetaCheckpoint   ckpt_seq u64, len_bytes u64, nparts u32 (1..=MAX_INDEX_BUCKETS),
//!                      bucket u32 x nparts: a metadata cache checkpoint (`meta::format`)
//!  14 FileHandle       file u64, handle_type i32, handle_len u16 (1..=128), handle bytes:
//!                      how writeback reopens a file with dirty keys (`name_to_handle_at`)
//!  15 KeyClean         file u64, offset u64 (bytes), len u64 (bytes): written back and the
//!                      backing fsync'd; the dirty keys in the range become clean
//!  16 DirtyAttr        file u64, size u64 (bytes), mtime_ns i64: the size and mtime the mount
//!                      reports for a file with dirty keys (writeback sets them on the backing)
//!   7..=12             reserved for the metadata cache (bodies fixed in docs/DESIGN.md §3);
//!                      refused as unknown until implemented
//! ```
//!
//! Invariants: an entry is accepted only with the right magic, version, a payload length within
//! the caller's bound, a matching crc, and records that parse exactly to the end of the payload.
//! Decoding never panics; it allocates at most one record per 9 payload bytes, and the payload is
//! bounded by the journal size. Replay (reading the ring in seq order, stopping at a torn tail)
//! belongs to the journal subsystem; the allocator only writes entries naming gens checkpoints
//! and, on open, looks for the newest such entry (`journal::scan`).

use crate::device::format::{le_u32, le_u64, MAX_GENS_BUCKETS};
use crate::error::{Error, Result};

/// Magic of a journal entry.
pub const JOURNAL_MAGIC: [u8; 8] = *b"bcfsjrnl";
/// Version of the journal entry encoding.
pub const JOURNAL_VERSION: u32 = 1;
/// Size of the entry header.
pub const JOURNAL_HDR: usize = 32;

/// One record of a journal entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A gens checkpoint became durable in these buckets (in part order).
    GensCheckpoint { seq: u64, buckets: Vec<u32> },
    /// An index checkpoint of `len` bytes became durable in `buckets` (in order).
    IndexCheckpoint {
        seq: u64,
        buckets: Vec<u32>,
        len: u64,
    },
    /// A metadata cache checkpoint of `len` bytes became durable in `buckets` (in order).
    MetaCheckpoint {
        seq: u64,
        buckets: Vec<u32>,
        len: u64,
    },
    /// A key was inserted: `len` sectors of file data at byte `offset`, one crc per block.
    KeyInsert {
        file: u64,
        offset: u64,
        len: u32,
        bucket: u32,
        gen: u8,
        bucket_offset: u32,
        dirty: bool,
        crcs: Vec<u32>,
    },
    /// Bytes `[offset, offset + len)` of a file were dropped (`len == u64::MAX`: to the end).
    KeyDelete { file: u64, offset: u64, len: u64 },
    /// A file's validator (what says its backing copy is unchanged) was set.
    SetValidator {
        file: u64,
        size: u64,
        mtime_ns: i64,
        ctime_ns: i64,
    },
    /// How writeback reopens `file` (a `name_to_handle_at` handle on the backing root's
    /// filesystem); queued before the file's first dirty key, repeated by index checkpoints.
    FileHandle {
        file: u64,
        handle_type: i32,
        handle: Vec<u8>,
    },
    /// Bytes `[offset, offset + len)` of `file` were written back and the backing synced:
    /// the dirty keys there are clean now.
    KeyClean { file: u64, offset: u64, len: u64 },
    /// The size and mtime of `file` as the mount sees it, dirty data included (writeback
    /// mode keeps them in the cache until the data is written back); queued after the keys
    /// of every dirty write, repeated by index checkpoints.
    DirtyAttr { file: u64, size: u64, mtime_ns: i64 },
    /// A backing filesystem's slot in the file id space (see `cache::identity`).
    FsSlot {
        slot: u8,
        fs_type: u64,
        fsid: u64,
        dev: u64,
        dev_keyed: bool,
    },
}

/// Largest file handle a `FileHandle` record carries (`MAX_HANDLE_SZ`).
pub const MAX_FILE_HANDLE: usize = 128;

/// Most buckets one index checkpoint may span.
pub const MAX_INDEX_BUCKETS: u32 = 1 << 16;

/// A decoded journal entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub seq: u64,
    pub records: Vec<Record>,
}

impl Entry {
    /// Encode, padded with zeroes to a multiple of `block_size`.
    pub fn encode(&self, block_size: u32) -> Vec<u8> {
        let mut b = vec![0u8; JOURNAL_HDR];
        for r in &self.records {
            match r {
                Record::GensCheckpoint { seq, buckets } => {
                    b.push(1);
                    b.extend_from_slice(&seq.to_le_bytes());
                    b.extend_from_slice(&(buckets.len() as u32).to_le_bytes());
                    for x in buckets {
                        b.extend_from_slice(&x.to_le_bytes());
                    }
                }
                Record::MetaCheckpoint { seq, buckets, len } => {
                    b.push(13);
                    b.extend_from_slice(&seq.to_le_bytes());
                    b.extend_from_slice(&len.to_le_bytes());
                    b.extend_from_slice(&(buckets.len() as u32).to_le_bytes());
                    for x in buckets {
                        b.extend_from_slice(&x.to_le_bytes());
                    }
                }
                Record::IndexCheckpoint { seq, buckets, len } => {
                    b.push(2);
                    b.extend_from_slice(&seq.to_le_bytes());
                    b.extend_from_slice(&len.to_le_bytes());
                    b.extend_from_slice(&(buckets.len() as u32).to_le_bytes());
                    for x in buckets {
                        b.extend_from_slice(&x.to_le_bytes());
                    }
                }
                Record::KeyInsert {
                    file,
                    offset,
                    len,
                    bucket,
                    gen,
                    bucket_offset,
                    dirty,
                    crcs,
                } => {
                    b.push(3);
                    b.extend_from_slice(&file.to_le_bytes());
                    b.extend_from_slice(&offset.to_le_bytes());
                    b.extend_from_slice(&len.to_le_bytes());
                    b.extend_from_slice(&bucket.to_le_bytes());
                    b.push(*gen);
                    b.extend_from_slice(&bucket_offset.to_le_bytes());
                    b.push(u8::from(*dirty));
                    b.extend_from_slice(&(crcs.len() as u32).to_le_bytes());
                    for c in crcs {
                        b.extend_from_slice(&c.to_le_bytes());
                    }
                }
                Record::KeyDelete { file, offset, len } => {
                    b.push(4);
                    b.extend_from_slice(&file.to_le_bytes());
                    b.extend_from_slice(&offset.to_le_bytes());
                    b.extend_from_slice(&len.to_le_bytes());
                }
                Record::SetValidator {
                    file,
                    size,
                    mtime_ns,
                    ctime_ns,
                } => {
                    b.push(5);
                    b.extend_from_slice(&file.to_le_bytes());
                    b.extend_from_slice(&size.to_le_bytes());
                    b.extend_from_slice(&mtime_ns.to_le_bytes());
                    b.extend_from_slice(&ctime_ns.to_le_bytes());
                }
                Record::FileHandle {
                    file,
                    handle_type,
                    handle,
                } => {
                    b.push(14);
                    b.extend_from_slice(&file.to_le_bytes());
                    b.extend_from_slice(&handle_type.to_le_bytes());
                    b.extend_from_slice(&(handle.len() as u16).to_le_bytes());
                    b.extend_from_slice(handle);
                }
                Record::KeyClean { file, offset, len } => {
                    b.push(15);
                    b.extend_from_slice(&file.to_le_bytes());
                    b.extend_from_slice(&offset.to_le_bytes());
                    b.extend_from_slice(&len.to_le_bytes());
                }
                Record::DirtyAttr {
                    file,
                    size,
                    mtime_ns,
                } => {
                    b.push(16);
                    b.extend_from_slice(&file.to_le_bytes());
                    b.extend_from_slice(&size.to_le_bytes());
                    b.extend_from_slice(&mtime_ns.to_le_bytes());
                }
                Record::FsSlot {
                    slot,
                    fs_type,
                    fsid,
                    dev,
                    dev_keyed,
                } => {
                    b.push(6);
                    b.push(*slot);
                    b.extend_from_slice(&fs_type.to_le_bytes());
                    b.extend_from_slice(&fsid.to_le_bytes());
                    b.extend_from_slice(&dev.to_le_bytes());
                    b.push(u8::from(*dev_keyed));
                }
            }
        }
        let payload = (b.len() - JOURNAL_HDR) as u32;
        b[0..8].copy_from_slice(&JOURNAL_MAGIC);
        b[8..12].copy_from_slice(&JOURNAL_VERSION.to_le_bytes());
        b[16..24].copy_from_slice(&self.seq.to_le_bytes());
        b[24..28].copy_from_slice(&payload.to_le_bytes());
        b[28..32].copy_from_slice(&(self.records.len() as u32).to_le_bytes());
        let crc = crc32c::crc32c(&b);
        b[12..16].copy_from_slice(&crc.to_le_bytes());
        let bs = block_size as usize;
        b.resize(b.len().div_ceil(bs) * bs, 0);
        b
    }

    /// Total encoded length (header + payload, before padding) claimed by the header at the
    /// start of `buf`, if the header is plausible: used by the ring scan to skip entries.
    pub fn claimed_len(buf: &[u8], max_len: usize) -> Option<usize> {
        if buf.len() < JOURNAL_HDR || buf[0..8] != JOURNAL_MAGIC {
            return None;
        }
        let total = JOURNAL_HDR.checked_add(le_u32(buf, 24) as usize)?;
        (total <= max_len).then_some(total)
    }

    /// Decode the entry at the start of `buf`. `max_len` bounds header + payload (the journal
    /// size); trailing bytes after the entry are ignored.
    pub fn decode(buf: &[u8], max_len: usize) -> Result<Entry> {
        let bad = |d: String| Err(Error::corrupt("journal entry", d));
        if buf.len() < JOURNAL_HDR {
            return bad(format!("truncated header ({} bytes)", buf.len()));
        }
        if buf[0..8] != JOURNAL_MAGIC {
            return bad("bad magic".into());
        }
        let version = le_u32(buf, 8);
        if version != JOURNAL_VERSION {
            return Err(Error::UnsupportedVersion {
                found: version,
                supported: JOURNAL_VERSION,
            });
        }
        let payload = le_u32(buf, 24) as usize;
        let total = JOURNAL_HDR + payload;
        if total > max_len {
            return bad(format!("payload length {payload} exceeds the journal"));
        }
        if total > buf.len() {
            return bad(format!("truncated: {} of {total} bytes", buf.len()));
        }
        let stored = le_u32(buf, 12);
        let mut h = crc32c::crc32c(&buf[..12]);
        h = crc32c::crc32c_append(h, &[0; 4]);
        h = crc32c::crc32c_append(h, &buf[16..total]);
        if h != stored {
            return Err(Error::BadChecksum {
                what: "journal entry",
            });
        }
        let seq = le_u64(buf, 16);
        let nrec = le_u32(buf, 28) as usize;
        // Every record is at least 9 bytes, so this bounds the allocation by the payload.
        if nrec > payload / 9 + 1 {
            return bad(format!("{nrec} records in {payload} bytes"));
        }
        let mut records = Vec::with_capacity(nrec);
        let p = &buf[JOURNAL_HDR..total];
        let mut o = 0usize;
        let need = |o: usize, n: usize| -> Result<()> {
            if o + n > p.len() {
                Err(Error::corrupt(
                    "journal entry",
                    "record runs past the payload",
                ))
            } else {
                Ok(())
            }
        };
        for _ in 0..nrec {
            need(o, 1)?;
            let t = p[o];
            o += 1;
            let r = match t {
                1 => {
                    need(o, 12)?;
                    let seq = le_u64(p, o);
                    let n = le_u32(p, o + 8);
                    o += 12;
                    if n == 0 || n > MAX_GENS_BUCKETS {
                        return bad(format!("gens checkpoint with {n} parts"));
                    }
                    need(o, 4 * n as usize)?;
                    let buckets = (0..n as usize).map(|i| le_u32(p, o + 4 * i)).collect();
                    o += 4 * n as usize;
                    Record::GensCheckpoint { seq, buckets }
                }
                2 => {
                    need(o, 20)?;
                    let seq = le_u64(p, o);
                    let len = le_u64(p, o + 8);
                    let n = le_u32(p, o + 16);
                    o += 20;
                    if n == 0 || n > MAX_INDEX_BUCKETS {
                        return bad(format!("index checkpoint with {n} parts"));
                    }
                    need(o, 4 * n as usize)?;
                    let buckets = (0..n as usize).map(|i| le_u32(p, o + 4 * i)).collect();
                    o += 4 * n as usize;
                    Record::IndexCheckpoint { seq, buckets, len }
                }
                13 => {
                    need(o, 20)?;
                    let seq = le_u64(p, o);
                    let len = le_u64(p, o + 8);
                    let n = le_u32(p, o + 16);
                    o += 20;
                    if n == 0 || n > MAX_INDEX_BUCKETS {
                        return bad(format!("metadata checkpoint with {n} parts"));
                    }
                    need(o, 4 * n as usize)?;
                    let buckets = (0..n as usize).map(|i| le_u32(p, o + 4 * i)).collect();
                    o += 4 * n as usize;
                    Record::MetaCheckpoint { seq, buckets, len }
                }
                3 => {
                    need(o, 34)?;
                    if p[o + 29] > 1 {
                        return bad(format!("dirty flag {}", p[o + 29]));
                    }
                    let (file, offset, len) = (le_u64(p, o), le_u64(p, o + 8), le_u32(p, o + 16));
                    let (bucket, gen, bucket_offset) =
                        (le_u32(p, o + 20), p[o + 24], le_u32(p, o + 25));
                    let dirty = p[o + 29] == 1;
                    let n = le_u32(p, o + 30) as usize;
                    o += 34;
                    need(o, n.saturating_mul(4))?;
                    let crcs = (0..n).map(|i| le_u32(p, o + 4 * i)).collect();
                    o += 4 * n;
                    Record::KeyInsert {
                        file,
                        offset,
                        len,
                        bucket,
                        gen,
                        bucket_offset,
                        dirty,
                        crcs,
                    }
                }
                4 => {
                    need(o, 24)?;
                    let r = Record::KeyDelete {
                        file: le_u64(p, o),
                        offset: le_u64(p, o + 8),
                        len: le_u64(p, o + 16),
                    };
                    o += 24;
                    r
                }
                5 => {
                    need(o, 32)?;
                    let r = Record::SetValidator {
                        file: le_u64(p, o),
                        size: le_u64(p, o + 8),
                        mtime_ns: le_u64(p, o + 16) as i64,
                        ctime_ns: le_u64(p, o + 24) as i64,
                    };
                    o += 32;
                    r
                }
                6 => {
                    need(o, 26)?;
                    if p[o + 25] > 1 {
                        return bad(format!("dev_keyed flag {}", p[o + 25]));
                    }
                    let r = Record::FsSlot {
                        slot: p[o],
                        fs_type: le_u64(p, o + 1),
                        fsid: le_u64(p, o + 9),
                        dev: le_u64(p, o + 17),
                        dev_keyed: p[o + 25] == 1,
                    };
                    o += 26;
                    r
                }
                14 => {
                    need(o, 14)?;
                    let file = le_u64(p, o);
                    let handle_type = le_u32(p, o + 8) as i32;
                    let n = u16::from_le_bytes([p[o + 12], p[o + 13]]) as usize;
                    o += 14;
                    if n == 0 || n > MAX_FILE_HANDLE {
                        return bad(format!("file handle of {n} bytes"));
                    }
                    need(o, n)?;
                    let handle = p[o..o + n].to_vec();
                    o += n;
                    Record::FileHandle {
                        file,
                        handle_type,
                        handle,
                    }
                }
                15 => {
                    need(o, 24)?;
                    let r = Record::KeyClean {
                        file: le_u64(p, o),
                        offset: le_u64(p, o + 8),
                        len: le_u64(p, o + 16),
                    };
                    o += 24;
                    r
                }
                16 => {
                    need(o, 24)?;
                    let r = Record::DirtyAttr {
                        file: le_u64(p, o),
                        size: le_u64(p, o + 8),
                        mtime_ns: le_u64(p, o + 16) as i64,
                    };
                    o += 24;
                    r
                }
                t => return bad(format!("unknown record type {t}")),
            };
            records.push(r);
        }
        if o != p.len() {
            return bad(format!("{} bytes after the last record", p.len() - o));
        }
        Ok(Entry { seq, records })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Entry {
        Entry {
            seq: 9,
            records: vec![
                Record::GensCheckpoint {
                    seq: 3,
                    buckets: vec![5, 6],
                },
                Record::IndexCheckpoint {
                    seq: 2,
                    buckets: vec![7, 8],
                    len: 4096,
                },
                Record::MetaCheckpoint {
                    seq: 4,
                    buckets: vec![9],
                    len: 100,
                },
                Record::KeyInsert {
                    file: 11,
                    offset: 8192,
                    len: 16,
                    bucket: 12,
                    gen: 200,
                    bucket_offset: 16,
                    dirty: true,
                    crcs: vec![0xdead_beef, 7],
                },
                Record::FileHandle {
                    file: 11,
                    handle_type: 1,
                    handle: vec![1, 2, 3, 4, 5, 6, 7, 8],
                },
                Record::KeyClean {
                    file: 11,
                    offset: 4096,
                    len: 8192,
                },
                Record::KeyDelete {
                    file: 11,
                    offset: 0,
                    len: u64::MAX,
                },
                Record::DirtyAttr {
                    file: 11,
                    size: 12_345,
                    mtime_ns: -7,
                },
                Record::SetValidator {
                    file: 11,
                    size: 5000,
                    mtime_ns: -3,
                    ctime_ns: 1_700_000_000_000_000_000,
                },
                Record::FsSlot {
                    slot: 3,
                    fs_type: 0xEF53,
                    fsid: 0x1234_5678_9abc,
                    dev: 2049,
                    dev_keyed: true,
                },
            ],
        }
    }

    #[test]
    fn roundtrip() {
        let e = sample();
        let b = e.encode(512);
        assert_eq!(b.len() % 512, 0);
        assert_eq!(Entry::decode(&b, 1 << 20).unwrap(), e);
        assert!(Entry::claimed_len(&b, 1 << 20).is_some());
    }

    #[test]
    fn every_bit_flip_and_truncation_is_rejected() {
        let b = sample().encode(512);
        let used = Entry::claimed_len(&b, 1 << 20).unwrap();
        for bit in 0..used * 8 {
            let mut c = b.clone();
            c[bit / 8] ^= 1 << (bit % 8);
            assert!(
                Entry::decode(&c, 1 << 20).is_err(),
                "flip of bit {bit} accepted"
            );
        }
        for len in 0..used {
            assert!(Entry::decode(&b[..len], 1 << 20).is_err());
        }
    }

    #[test]
    fn huge_lengths_do_not_allocate() {
        let mut b = sample().encode(512);
        b[24..28].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(Entry::decode(&b, 1 << 20).is_err());
        let mut b = sample().encode(512);
        b[28..32].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(Entry::decode(&b, 1 << 20).is_err());
    }
}
