//! On-disk encoding of a gens checkpoint (bcache's `prio_write` buckets).
//!
//! Model: a gens checkpoint records every bucket's gen (u8) and prio (u16). It is written into
//! one or more buckets taken from the prio reserve; each of those buckets ("parts") starts with
//! a 64-byte header followed by 3-byte entries. The journal entry written after the checkpoint is
//! durable names the parts (see `journal::format`). Layout of one part:
//!
//! ```text
//!  0  8  magic "bcfsgens"        28  4  part count
//!  8  4  version (1)             32  4  first bucket index covered by this part
//! 12  4  crc32c (header with     36  4  entries in this part
//!        crc = 0, then entries)  40  8  nbuckets of the cache
//! 16  8  checkpoint seq          48 16  superblock uuid
//! 24  4  part index              64  .. entries: gen u8, prio u16 LE, 3 bytes each
//! ```
//!
//! Invariants: a part is accepted only if magic, version, crc, seq, uuid, part index/count and
//! bucket range all match what the journal entry and superblock say, so a torn write, a stale
//! checkpoint left in a reused bucket, or one from another cache file is never trusted.
//! Decoding never panics and allocates only `nbuckets` entries, a number the validated
//! superblock bounds.

use crate::device::format::{le_u16, le_u32, le_u64, GENS_ENTRY, GENS_HDR};
use crate::error::{Error, Result};

/// Magic of a gens checkpoint part.
pub const GENS_MAGIC: [u8; 8] = *b"bcfsgens";
/// Version of the gens checkpoint encoding.
pub const GENS_VERSION: u32 = 1;

/// A whole checkpoint in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GensCheckpoint {
    pub seq: u64,
    pub gens: Vec<u8>,
    pub prios: Vec<u16>,
}

/// Entries that fit in one part of a bucket of `bucket_size` bytes.
pub fn entries_per_part(bucket_size: u32) -> usize {
    ((u64::from(bucket_size) - GENS_HDR) / GENS_ENTRY) as usize
}

/// Encode `ck` into parts, each a whole number of `block_size` blocks no larger than a bucket.
pub fn encode(
    ck: &GensCheckpoint,
    uuid: &[u8; 16],
    bucket_size: u32,
    block_size: u32,
) -> Vec<Vec<u8>> {
    let per = entries_per_part(bucket_size);
    let n = ck.gens.len();
    let count = n.div_ceil(per).max(1);
    let mut parts = Vec::with_capacity(count);
    for i in 0..count {
        let first = i * per;
        let len = per.min(n - first);
        let bytes = GENS_HDR as usize + len * GENS_ENTRY as usize;
        let padded = bytes.div_ceil(block_size as usize) * block_size as usize;
        let mut b = vec![0u8; padded];
        b[0..8].copy_from_slice(&GENS_MAGIC);
        b[8..12].copy_from_slice(&GENS_VERSION.to_le_bytes());
        b[16..24].copy_from_slice(&ck.seq.to_le_bytes());
        b[24..28].copy_from_slice(&(i as u32).to_le_bytes());
        b[28..32].copy_from_slice(&(count as u32).to_le_bytes());
        b[32..36].copy_from_slice(&(first as u32).to_le_bytes());
        b[36..40].copy_from_slice(&(len as u32).to_le_bytes());
        b[40..48].copy_from_slice(&(n as u64).to_le_bytes());
        b[48..64].copy_from_slice(uuid);
        for (j, k) in (first..first + len).enumerate() {
            let o = GENS_HDR as usize + j * 3;
            b[o] = ck.gens[k];
            b[o + 1..o + 3].copy_from_slice(&ck.prios[k].to_le_bytes());
        }
        let crc = crc32c::crc32c(&b[..bytes]);
        b[12..16].copy_from_slice(&crc.to_le_bytes());
        parts.push(b);
    }
    parts
}

/// What a part must say about itself to be accepted.
#[derive(Debug, Clone, Copy)]
pub struct PartExpect<'a> {
    pub seq: u64,
    pub uuid: &'a [u8; 16],
    pub nbuckets: u64,
    pub bucket_size: u32,
    pub index: u32,
    pub count: u32,
}

/// Decode one part into `ck` (whose vectors are `nbuckets` long). `buf` is what was read from
/// the part's bucket (at most a bucket).
pub fn decode_part(buf: &[u8], want: PartExpect<'_>, ck: &mut GensCheckpoint) -> Result<()> {
    let bad = |d: String| Err(Error::corrupt("gens checkpoint", d));
    if buf.len() < GENS_HDR as usize {
        return bad(format!("part truncated to {} bytes", buf.len()));
    }
    if buf[0..8] != GENS_MAGIC {
        return bad("bad magic".into());
    }
    let version = le_u32(buf, 8);
    if version != GENS_VERSION {
        return Err(Error::UnsupportedVersion {
            found: version,
            supported: GENS_VERSION,
        });
    }
    let per = entries_per_part(want.bucket_size);
    let len = le_u32(buf, 36) as usize;
    if len > per {
        return bad(format!("{len} entries in one part"));
    }
    let bytes = GENS_HDR as usize + len * GENS_ENTRY as usize;
    if bytes > buf.len() {
        return bad(format!("part truncated: {} of {bytes} bytes", buf.len()));
    }
    let stored = le_u32(buf, 12);
    let mut h = crc32c::crc32c(&buf[..12]);
    h = crc32c::crc32c_append(h, &[0; 4]);
    h = crc32c::crc32c_append(h, &buf[16..bytes]);
    if h != stored {
        return Err(Error::BadChecksum {
            what: "gens checkpoint",
        });
    }
    let seq = le_u64(buf, 16);
    let (index, count, first) = (le_u32(buf, 24), le_u32(buf, 28), le_u32(buf, 32) as usize);
    let n = le_u64(buf, 40);
    if seq != want.seq || index != want.index || count != want.count {
        return bad(format!(
            "part says seq {seq} part {index}/{count}, journal says seq {} part {}/{}",
            want.seq, want.index, want.count
        ));
    }
    if buf[48..64] != want.uuid[..] {
        return bad("part belongs to another cache file (uuid)".into());
    }
    if n != want.nbuckets || n != ck.gens.len() as u64 {
        return bad(format!(
            "part covers {n} buckets, cache has {}",
            want.nbuckets
        ));
    }
    if first != index as usize * per || first + len > ck.gens.len() {
        return bad(format!("part range {first}+{len} invalid"));
    }
    let expected_len = per.min(ck.gens.len() - first);
    if len != expected_len {
        return bad(format!("part has {len} entries, expected {expected_len}"));
    }
    for j in 0..len {
        let o = GENS_HDR as usize + j * 3;
        ck.gens[first + j] = buf[o];
        ck.prios[first + j] = le_u16(buf, o + 1);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ck(n: usize) -> GensCheckpoint {
        GensCheckpoint {
            seq: 42,
            gens: (0..n).map(|i| (i * 7) as u8).collect(),
            prios: (0..n).map(|i| (i * 31) as u16).collect(),
        }
    }

    fn decode_all(parts: &[Vec<u8>], n: usize, bucket: u32) -> Result<GensCheckpoint> {
        let mut out = GensCheckpoint {
            seq: 42,
            gens: vec![0; n],
            prios: vec![0; n],
        };
        for (i, p) in parts.iter().enumerate() {
            let want = PartExpect {
                seq: 42,
                uuid: &[3; 16],
                nbuckets: n as u64,
                bucket_size: bucket,
                index: i as u32,
                count: parts.len() as u32,
            };
            decode_part(p, want, &mut out)?;
        }
        Ok(out)
    }

    #[test]
    fn roundtrip_single_and_multi_part() {
        for (n, bucket) in [(64usize, 4096u32), (5000, 4096), (102_400, 1 << 20)] {
            let c = ck(n);
            let parts = encode(&c, &[3; 16], bucket, 512);
            assert!(parts
                .iter()
                .all(|p| p.len() <= bucket as usize && p.len() % 512 == 0));
            assert_eq!(parts.len(), n.div_ceil(entries_per_part(bucket)));
            assert_eq!(decode_all(&parts, n, bucket).unwrap(), c);
        }
    }

    #[test]
    fn every_bit_flip_and_truncation_is_rejected() {
        let c = ck(300);
        let parts = encode(&c, &[3; 16], 4096, 512);
        let used = 64 + 300 * 3;
        for bit in 0..used * 8 {
            let mut p = parts.clone();
            p[0][bit / 8] ^= 1 << (bit % 8);
            assert!(
                decode_all(&p, 300, 4096).is_err(),
                "flip of bit {bit} accepted"
            );
        }
        for len in 0..used {
            let mut p = parts.clone();
            p[0].truncate(len);
            assert!(
                decode_all(&p, 300, 4096).is_err(),
                "truncation to {len} accepted"
            );
        }
    }

    #[test]
    fn wrong_seq_or_uuid_is_rejected() {
        let c = ck(100);
        let parts = encode(&c, &[3; 16], 4096, 512);
        let mut out = GensCheckpoint {
            seq: 0,
            gens: vec![0; 100],
            prios: vec![0; 100],
        };
        let mut want = PartExpect {
            seq: 43,
            uuid: &[3; 16],
            nbuckets: 100,
            bucket_size: 4096,
            index: 0,
            count: 1,
        };
        assert!(decode_part(&parts[0], want, &mut out).is_err());
        want.seq = 42;
        want.uuid = &[4; 16];
        assert!(decode_part(&parts[0], want, &mut out).is_err());
    }
}
