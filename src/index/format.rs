//! On-disk encoding of an index checkpoint: the whole index as one blob.
//!
//! Model: the journal subsystem writes the blob into metadata-reserve buckets and names it in a
//! journal `IndexCheckpoint` record; on mount the blob is decoded and the journal replayed on
//! top. Little-endian, explicit, no padding. Layout:
//!
//! ```text
//! header (40 bytes)
//!  0  8  magic "bcfsindx"
//!  8  4  version (1)
//! 12  4  crc32c of bytes [0, total_len) computed with this field zero
//! 16  8  total_len: bytes of the whole blob, header included
//! 24  4  block_size (must equal the cache's)
//! 28  4  reserved, zero
//! 32  8  file count
//! 40 ..  files, each:
//!         8  file id (unique within the blob)
//!         1  flags: bit 0 = has validator; other bits zero
//!        24  validator, only when bit 0: size u64, mtime_ns i64, ctime_ns i64
//!         4  extent count u32
//!        ..  extents, in increasing, non-overlapping file order, each 22 + 4 * nblocks bytes:
//!              8  offset (file bytes, block aligned)
//!              4  nblocks (> 0; len = nblocks * block_size)
//!              4  bucket
//!              1  gen
//!              4  bucket offset (sectors; + nblocks * block_size / 512 fits a u32)
//!              1  dirty (0 or 1)
//!              4 * nblocks  crc32c of each block
//! ```
//!
//! Invariants: a blob is accepted only with the right magic and version, a `total_len` within
//! the bytes given, a matching crc, the caller's block size, and a body that parses exactly to
//! `total_len` into extents that keep every index invariant. Bytes after `total_len` are ignored
//! (the blob may be read back in whole sectors). Decoding never panics and never allocates from a
//! count read off disk: counts are bounded by the bytes that remain, and crc arrays are built
//! from bytes already known to be present.

use std::collections::hash_map::Entry;
use std::collections::BTreeMap;

use super::{valid_block_size, Extent, FileExtents, Index, Validator};
use crate::device::format::SECTOR;
use crate::error::{Error, Result};
use crate::key::BucketPtr;

/// Magic of an index checkpoint.
pub const INDEX_MAGIC: [u8; 8] = *b"bcfsindx";
/// Version of the index checkpoint encoding.
pub const INDEX_VERSION: u32 = 1;
/// Size of the checkpoint header.
pub const INDEX_HDR: usize = 40;
/// Smallest encoded file record (no validator, no extents).
const FILE_MIN: usize = 8 + 1 + 4;
/// Encoded extent record without its crcs.
const EXTENT_FIXED: usize = 8 + 4 + 4 + 1 + 4 + 1;

const WHAT: &str = "index checkpoint";

fn corrupt(detail: impl Into<String>) -> Error {
    Error::corrupt(WHAT, detail)
}

impl Index {
    /// Encode the whole index (see the layout in `index/format.rs`). Takes one shard lock at a
    /// time, so the result is not an atomic snapshot (see the module header of `index`). Files
    /// are written in increasing id order, so equal indexes encode to equal bytes.
    pub fn encode_checkpoint(&self) -> Vec<u8> {
        let mut files: Vec<(u64, Vec<u8>)> = Vec::new();
        for shard in self.shards.iter() {
            let shard = shard.lock();
            for (&file, fe) in shard.iter() {
                files.push((file, encode_file(file, fe)));
            }
        }
        files.sort_unstable_by_key(|(f, _)| *f);
        let body: usize = files.iter().map(|(_, b)| b.len()).sum();
        let mut b = Vec::with_capacity(INDEX_HDR + body);
        b.extend_from_slice(&INDEX_MAGIC);
        b.extend_from_slice(&INDEX_VERSION.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes()); // crc, filled below
        b.extend_from_slice(&((INDEX_HDR + body) as u64).to_le_bytes());
        b.extend_from_slice(&self.block_size.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&(files.len() as u64).to_le_bytes());
        for (_, f) in &files {
            b.extend_from_slice(f);
        }
        let crc = crc32c::crc32c(&b);
        b[12..16].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decode a checkpoint written by [`Index::encode_checkpoint`] for a cache with
    /// `block_size`-byte blocks. Every malformed input is an error; nothing panics.
    pub fn decode_checkpoint(block_size: u32, bytes: &[u8]) -> Result<Index> {
        if !valid_block_size(block_size) {
            return Err(Error::InvalidArgument(format!(
                "index block size {block_size} is not a power of two >= 512"
            )));
        }
        if bytes.len() < INDEX_HDR {
            return Err(corrupt(format!("truncated header ({} bytes)", bytes.len())));
        }
        let mut h = Reader::new(&bytes[..INDEX_HDR]);
        if h.take(8)? != INDEX_MAGIC {
            return Err(corrupt("bad magic"));
        }
        let version = h.u32()?;
        if version != INDEX_VERSION {
            return Err(Error::UnsupportedVersion {
                found: version,
                supported: INDEX_VERSION,
            });
        }
        let crc = h.u32()?;
        let total = h.u64()?;
        if total < INDEX_HDR as u64 || total > bytes.len() as u64 {
            return Err(corrupt(format!(
                "total length {total} outside [{INDEX_HDR}, {}]",
                bytes.len()
            )));
        }
        let blob = &bytes[..total as usize];
        let mut hasher = crc32c::crc32c(&blob[..12]);
        hasher = crc32c::crc32c_append(hasher, &[0; 4]);
        hasher = crc32c::crc32c_append(hasher, &blob[16..]);
        if hasher != crc {
            return Err(Error::BadChecksum { what: WHAT });
        }
        let bs = h.u32()?;
        if bs != block_size {
            return Err(corrupt(format!(
                "block size {bs}, but the cache uses {block_size}"
            )));
        }
        if h.u32()? != 0 {
            return Err(corrupt("reserved header field is not zero"));
        }
        let nfiles = h.u64()?;

        let index = Index::new(block_size);
        let mut r = Reader::new(&blob[INDEX_HDR..]);
        if nfiles > (r.remaining() / FILE_MIN) as u64 {
            return Err(corrupt(format!(
                "{nfiles} files cannot fit in {} bytes",
                r.remaining()
            )));
        }
        for _ in 0..nfiles {
            let (file, fe) = decode_file(&mut r, u64::from(block_size))?;
            let mut shard = index.shard(file).lock();
            match shard.entry(file) {
                Entry::Occupied(_) => return Err(corrupt(format!("file {file} appears twice"))),
                Entry::Vacant(_) if fe.is_empty() => {
                    return Err(corrupt(format!(
                        "file {file}: neither validator nor extents"
                    )))
                }
                Entry::Vacant(v) => {
                    v.insert(fe);
                }
            }
        }
        if r.remaining() != 0 {
            return Err(corrupt(format!(
                "{} bytes left after the last file",
                r.remaining()
            )));
        }
        Ok(index)
    }
}

fn encode_file(file: u64, fe: &FileExtents) -> Vec<u8> {
    let crcs: usize = fe.extents.values().map(|x| x.crcs.len()).sum();
    let mut b = Vec::with_capacity(FILE_MIN + 24 + fe.extents.len() * EXTENT_FIXED + crcs * 4);
    b.extend_from_slice(&file.to_le_bytes());
    match fe.validator {
        Some(v) => {
            b.push(1);
            b.extend_from_slice(&v.size.to_le_bytes());
            b.extend_from_slice(&v.mtime_ns.to_le_bytes());
            b.extend_from_slice(&v.ctime_ns.to_le_bytes());
        }
        None => b.push(0),
    }
    b.extend_from_slice(&(fe.extents.len() as u32).to_le_bytes());
    for x in fe.extents.values() {
        b.extend_from_slice(&x.offset.to_le_bytes());
        b.extend_from_slice(&(x.crcs.len() as u32).to_le_bytes());
        b.extend_from_slice(&x.ptr.bucket.to_le_bytes());
        b.push(x.ptr.gen);
        b.extend_from_slice(&x.ptr.offset.to_le_bytes());
        b.push(u8::from(x.dirty));
        for c in x.crcs.iter() {
            b.extend_from_slice(&c.to_le_bytes());
        }
    }
    b
}

fn decode_file(r: &mut Reader<'_>, bs: u64) -> Result<(u64, FileExtents)> {
    let file = r.u64()?;
    let validator = match r.u8()? {
        0 => None,
        1 => Some(Validator {
            size: r.u64()?,
            mtime_ns: r.u64()? as i64,
            ctime_ns: r.u64()? as i64,
        }),
        f => return Err(corrupt(format!("file {file}: unknown flags {f:#x}"))),
    };
    let n = r.u32()?;
    if n as usize > r.remaining() / (EXTENT_FIXED + 4) {
        return Err(corrupt(format!(
            "file {file}: {n} extents cannot fit in {} bytes",
            r.remaining()
        )));
    }
    let mut extents = BTreeMap::new();
    let mut prev_end = 0u64;
    for _ in 0..n {
        let offset = r.u64()?;
        let nblocks = r.u32()?;
        let bucket = r.u32()?;
        let gen = r.u8()?;
        let bucket_offset = r.u32()?;
        let dirty = match r.u8()? {
            0 => false,
            1 => true,
            d => return Err(corrupt(format!("file {file}: dirty flag {d}"))),
        };
        let bad = |why: &str| corrupt(format!("file {file}: extent at {offset}: {why}"));
        if nblocks == 0 {
            return Err(bad("no blocks"));
        }
        // Check the crcs are present before building anything from nblocks.
        let raw = r.take(nblocks as usize * 4)?;
        let len = u64::from(nblocks) * bs;
        if offset % bs != 0 {
            return Err(bad("offset not block aligned"));
        }
        let Some(end) = offset.checked_add(len) else {
            return Err(bad("end overflows"));
        };
        if offset < prev_end {
            return Err(bad("overlaps or precedes the previous extent"));
        }
        if u64::from(bucket_offset) + len / SECTOR > u64::from(u32::MAX) {
            return Err(bad("bucket offset out of range"));
        }
        let crcs: Box<[u32]> = raw
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        prev_end = end;
        extents.insert(
            offset,
            Extent {
                offset,
                len,
                ptr: BucketPtr {
                    bucket,
                    gen,
                    offset: bucket_offset,
                },
                crcs,
                dirty,
            },
        );
    }
    Ok((file, FileExtents { validator, extents }))
}

/// A bounds-checked little-endian cursor.
struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(b: &'a [u8]) -> Self {
        Reader { b, pos: 0 }
    }

    fn remaining(&self) -> usize {
        self.b.len() - self.pos
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(corrupt(format!(
                "truncated: {n} bytes needed at body offset {}, {} left",
                self.pos,
                self.remaining()
            )));
        }
        let s = &self.b[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(a))
    }

    fn u64(&mut self) -> Result<u64> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(offset: u64, blocks: u32, bucket: u32, gen: u8, sector: u32, dirty: bool) -> Extent {
        Extent {
            offset,
            len: u64::from(blocks) * 4096,
            ptr: BucketPtr {
                bucket,
                gen,
                offset: sector,
            },
            crcs: (0..blocks).map(|i| 0xC0DE_0000 ^ i ^ bucket << 8).collect(),
            dirty,
        }
    }

    /// A small index: three files, one with a validator and no extents, a dirty extent.
    fn small() -> Index {
        let ix = Index::new(4096);
        ix.insert(1, ext(0, 2, 3, 7, 0, false));
        ix.insert(1, ext(65536, 1, 4, 255, 16, true));
        ix.set_validator(
            1,
            Validator {
                size: 70000,
                mtime_ns: -5,
                ctime_ns: 1_700_000_000_000_000_000,
            },
        );
        ix.insert(9, ext(8192, 3, 5, 0, 64, false));
        ix.set_validator(
            2,
            Validator {
                size: 0,
                mtime_ns: 1,
                ctime_ns: 2,
            },
        );
        ix
    }

    fn dump(ix: &Index) -> Vec<(u64, Option<Validator>, Vec<Extent>)> {
        let mut v: Vec<_> = [1, 2, 9, 10]
            .into_iter()
            .map(|f| (f, ix.validator(f), ix.extents(f)))
            .filter(|(_, v, e)| v.is_some() || !e.is_empty())
            .collect();
        v.sort_by_key(|x| x.0);
        v
    }

    #[test]
    fn round_trip() {
        let ix = small();
        let blob = ix.encode_checkpoint();
        let back = Index::decode_checkpoint(4096, &blob).unwrap();
        assert_eq!(dump(&ix), dump(&back));
        assert_eq!(ix.stats().files, back.stats().files);
        assert_eq!(ix.stats().extents, back.stats().extents);
        // Deterministic bytes, and trailing sector padding is ignored.
        assert_eq!(back.encode_checkpoint(), blob);
        let mut padded = blob.clone();
        padded.resize(blob.len().next_multiple_of(512), 0xAA);
        let back = Index::decode_checkpoint(4096, &padded).unwrap();
        assert_eq!(dump(&ix), dump(&back));
        // An empty index round-trips too.
        let empty = Index::new(512).encode_checkpoint();
        assert_eq!(empty.len(), INDEX_HDR);
        assert_eq!(
            Index::decode_checkpoint(512, &empty).unwrap().stats().files,
            0
        );
    }

    #[test]
    fn every_truncation_is_an_error() {
        let blob = small().encode_checkpoint();
        for n in 0..blob.len() {
            assert!(
                Index::decode_checkpoint(4096, &blob[..n]).is_err(),
                "truncated to {n} bytes was accepted"
            );
        }
    }

    #[test]
    fn every_bit_flip_is_an_error() {
        let blob = small().encode_checkpoint();
        for bit in 0..blob.len() * 8 {
            let mut b = blob.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            assert!(
                Index::decode_checkpoint(4096, &b).is_err(),
                "bit {bit} flipped was accepted"
            );
        }
    }

    /// Re-seal a modified blob with a correct crc, to reach the checks behind the crc.
    fn reseal(b: &mut [u8]) {
        b[12..16].copy_from_slice(&[0; 4]);
        let crc = crc32c::crc32c(b);
        b[12..16].copy_from_slice(&crc.to_le_bytes());
    }

    #[test]
    fn header_errors() {
        let blob = small().encode_checkpoint();
        let mut b = blob.clone();
        b[0] = b'X';
        assert!(matches!(
            Index::decode_checkpoint(4096, &b),
            Err(Error::Corrupt { .. })
        ));
        let mut b = blob.clone();
        b[8..12].copy_from_slice(&2u32.to_le_bytes());
        reseal(&mut b);
        assert!(matches!(
            Index::decode_checkpoint(4096, &b),
            Err(Error::UnsupportedVersion {
                found: 2,
                supported: 1
            })
        ));
        let mut b = blob.clone();
        b[12] ^= 1;
        assert!(matches!(
            Index::decode_checkpoint(4096, &b),
            Err(Error::BadChecksum { .. })
        ));
        // Wrong block size for this cache.
        let e = Index::decode_checkpoint(8192, &blob).unwrap_err();
        assert!(e.to_string().contains("block size"), "{e}");
        assert!(matches!(
            Index::decode_checkpoint(1000, &blob),
            Err(Error::InvalidArgument(_))
        ));
    }

    type Mutation<'a> = Box<dyn Fn(&mut Vec<u8>) + 'a>;

    /// Semantically bad bodies with a valid crc: each must be refused by its own check.
    #[test]
    fn body_errors_behind_a_good_crc() {
        let blob = small().encode_checkpoint();
        // Body of file 1 starts at 40: id 8, flags 1, validator 24, count 4, then extent 0.
        let ext0 = INDEX_HDR + 8 + 1 + 24 + 4;
        let cases: Vec<(&str, Mutation<'_>)> = vec![
            ("flags", Box::new(|b| b[INDEX_HDR + 8] = 3)),
            (
                "neither validator nor extents",
                Box::new(|b| {
                    // File 2 has a validator and no extents: clear its flag, drop the validator.
                    let f2 = INDEX_HDR + 93;
                    b[f2 + 8] = 0;
                    b.drain(f2 + 9..f2 + 33);
                    let n = b.len() as u64;
                    b[16..24].copy_from_slice(&n.to_le_bytes())
                }),
            ),
            ("extents cannot fit", Box::new(|b| b[ext0 - 1] = 0x7f)),
            (
                "files cannot fit",
                Box::new(|b| b[32..40].copy_from_slice(&u64::MAX.to_le_bytes())),
            ),
            ("reserved", Box::new(|b| b[28] = 1)),
            ("no blocks", Box::new(|b| b[ext0 + 8..ext0 + 12].fill(0))),
            ("aligned", Box::new(|b| b[ext0] = 1)),
            ("dirty flag", Box::new(|b| b[ext0 + 21] = 2)),
            (
                "bucket offset",
                Box::new(|b| b[ext0 + 17..ext0 + 21].fill(0xff)),
            ),
            (
                "end overflows",
                Box::new(|b| b[ext0..ext0 + 8].copy_from_slice(&(u64::MAX - 4095).to_le_bytes())),
            ),
            // Second extent of file 1 moved before the end of the first.
            (
                "overlaps",
                Box::new(|b| {
                    let e1 = ext0 + 22 + 8;
                    b[e1..e1 + 8].copy_from_slice(&4096u64.to_le_bytes())
                }),
            ),
            (
                "appears twice",
                Box::new(|b| {
                    // File 2 (second record) renamed to file 1.
                    let f2 = ext0 + 22 + 8 + 22 + 4;
                    b[f2..f2 + 8].copy_from_slice(&1u64.to_le_bytes())
                }),
            ),
            (
                "left after",
                Box::new(|b| {
                    b.extend_from_slice(&[0; 3]);
                    let n = b.len() as u64;
                    b[16..24].copy_from_slice(&n.to_le_bytes())
                }),
            ),
        ];
        for (want, f) in cases {
            let mut b = blob.clone();
            f(&mut b);
            reseal(&mut b);
            match Index::decode_checkpoint(4096, &b) {
                Ok(_) => panic!("{want}: accepted"),
                Err(e) => assert!(e.to_string().contains(want), "{want}: got {e}"),
            }
        }
    }
}
