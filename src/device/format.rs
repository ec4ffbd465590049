//! On-disk encoding of the superblock (block 0 of the cache file).
//!
//! Model: the superblock is written once by `format` and only read afterwards. It is 4096 bytes,
//! little-endian, with magic, version and a crc32c over the whole 4096 bytes (crc field read as
//! zero). Layout (offsets in bytes; also drawn in docs/DESIGN.md section 3):
//!
//! ```text
//!   0  8  magic "bcfslite"          56  8  journal_size (bytes)
//!   8  4  version (1)               64  8  first_bucket_offset (bytes)
//!  12  4  crc32c                    72  1  replacement (0 lru, 1 fifo, 2 random)
//!  16 16  uuid                      73  1  cache_mode (0 wt, 1 wb, 2 wa, 3 none)
//!  32  4  block_size (bytes)        74  1  flags (bit 0: discard)
//!  36  4  bucket_size (bytes)       75  1  reserved, 0
//!  40  8  nbuckets                  76  4  backing_len (<= 256)
//!  48  8  journal_offset (bytes)    80 256 backing identity, UTF-8, zero padded
//! 336  8  created (unix seconds)   344..4096 zero
//! ```
//!
//! Invariants: decoding never panics and never allocates from a length read off disk beyond the
//! fixed 256-byte backing field; every field is range-checked against the others
//! ([`Superblock::validate`]) so the rest of the code can trust the geometry.

use crate::error::{Error, Result};

/// Magic at offset 0 of every cache file.
pub const SB_MAGIC: [u8; 8] = *b"bcfslite";
/// The format version this build writes and reads.
pub const SB_VERSION: u32 = 1;
/// Size of the superblock in bytes.
pub const SB_SIZE: usize = 4096;
/// A sector: the unit of `alloc_sectors` and of bucket offsets.
pub const SECTOR: u64 = 512;
/// Fewest buckets a cache file may have (room for every reserve plus data).
pub const MIN_BUCKETS: u64 = 64;
/// Most buckets a cache file may have (bucket indexes are u32).
pub const MAX_BUCKETS: u64 = 1 << 31;
/// Most buckets one gens checkpoint may span (the journal entry lists them).
pub const MAX_GENS_BUCKETS: u32 = 64;
/// Longest backing identity string.
pub const MAX_BACKING_LEN: usize = 256;
/// Largest journal (it is read whole on open).
pub const MAX_JOURNAL: u64 = 256 << 20;
/// Smallest journal, in blocks.
pub const MIN_JOURNAL_BLOCKS: u64 = 16;
/// Size of the header at the start of each gens checkpoint bucket.
pub const GENS_HDR: u64 = 64;
/// Bytes per bucket in a gens checkpoint (gen u8 + prio u16).
pub const GENS_ENTRY: u64 = 3;

/// Replacement policy used by the allocator to choose buckets to invalidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replacement {
    /// Smallest `prio x sectors_used` first (bcache's `invalidate_buckets_lru`).
    Lru = 0,
    /// Round robin over bucket indexes.
    Fifo = 1,
    /// Uniformly random.
    Random = 2,
}

impl Replacement {
    /// Name as used on the command line and in `show-super`.
    pub fn name(self) -> &'static str {
        match self {
            Replacement::Lru => "lru",
            Replacement::Fifo => "fifo",
            Replacement::Random => "random",
        }
    }
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0 => Replacement::Lru,
            1 => Replacement::Fifo,
            2 => Replacement::Random,
            _ => return None,
        })
    }
}

impl std::str::FromStr for Replacement {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "lru" => Ok(Replacement::Lru),
            "fifo" => Ok(Replacement::Fifo),
            "random" => Ok(Replacement::Random),
            _ => Err(format!(
                "unknown replacement policy {s:?} (use lru, fifo or random)"
            )),
        }
    }
}

/// Default cache mode recorded in the superblock (a mount option may override it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheMode {
    Writethrough = 0,
    Writeback = 1,
    Writearound = 2,
    None = 3,
}

impl CacheMode {
    /// Name as used on the command line and in `show-super`.
    pub fn name(self) -> &'static str {
        match self {
            CacheMode::Writethrough => "writethrough",
            CacheMode::Writeback => "writeback",
            CacheMode::Writearound => "writearound",
            CacheMode::None => "none",
        }
    }
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0 => CacheMode::Writethrough,
            1 => CacheMode::Writeback,
            2 => CacheMode::Writearound,
            3 => CacheMode::None,
            _ => return None,
        })
    }
}

impl std::str::FromStr for CacheMode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "writethrough" => Ok(CacheMode::Writethrough),
            "writeback" => Ok(CacheMode::Writeback),
            "writearound" => Ok(CacheMode::Writearound),
            "none" => Ok(CacheMode::None),
            _ => Err(format!("unknown cache mode {s:?}")),
        }
    }
}

/// The decoded superblock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    pub version: u32,
    pub uuid: [u8; 16],
    pub block_size: u32,
    pub bucket_size: u32,
    pub nbuckets: u64,
    pub journal_offset: u64,
    pub journal_size: u64,
    pub first_bucket_offset: u64,
    pub replacement: Replacement,
    pub cache_mode: CacheMode,
    pub discard: bool,
    /// Which backing tree this cache serves; empty = not yet bound.
    pub backing: String,
    pub created_unix: u64,
}

/// Options for laying out a new cache file.
#[derive(Debug, Clone)]
pub struct Geometry {
    /// Total size of the cache file in bytes.
    pub size: u64,
    pub bucket_size: u32,
    pub block_size: u32,
    /// Journal size in bytes; `None` picks a default from the size.
    pub journal_size: Option<u64>,
    pub replacement: Replacement,
    pub cache_mode: CacheMode,
    pub discard: bool,
    pub backing: String,
}

impl Default for Geometry {
    fn default() -> Self {
        Geometry {
            size: 0,
            bucket_size: 1 << 20,
            block_size: 4096,
            journal_size: None,
            replacement: Replacement::Lru,
            cache_mode: CacheMode::Writethrough,
            discard: true,
            backing: String::new(),
        }
    }
}

fn align_up(v: u64, a: u64) -> Option<u64> {
    v.checked_add(a - 1).map(|x| x / a * a)
}

/// Number of buckets one gens checkpoint of `nbuckets` entries needs (bcache's `prio_buckets`).
pub fn gens_buckets(nbuckets: u64, bucket_size: u32) -> u64 {
    let per = (u64::from(bucket_size).saturating_sub(GENS_HDR) / GENS_ENTRY).max(1);
    nbuckets.div_ceil(per)
}

impl Superblock {
    /// Lay out a new cache file. Errors say which option to change.
    pub fn new_for(g: &Geometry, uuid: [u8; 16], created_unix: u64) -> Result<Superblock> {
        let bad = |m: String| Err(Error::InvalidGeometry(m));
        let bs = u64::from(g.block_size);
        let bucket = u64::from(g.bucket_size);
        if !(512..=65536).contains(&bs) || !bs.is_power_of_two() {
            return bad(format!(
                "block size {bs} must be a power of two between 512 and 64K (change --block-size)"
            ));
        }
        if bucket < 4096 || bucket % bs != 0 || !bucket.is_power_of_two() || bucket > 1 << 30 {
            return bad(format!(
                "bucket size {bucket} must be a power of two, at least 4K and at most 1G, and a \
                 multiple of the block size {bs} (change --bucket-size or --block-size)"
            ));
        }
        if g.backing.len() > MAX_BACKING_LEN {
            return bad(format!(
                "backing identity longer than {MAX_BACKING_LEN} bytes"
            ));
        }
        let journal_offset = (SB_SIZE as u64).max(bs);
        let journal_size = match g.journal_size {
            Some(j) => j,
            None => (g.size / 128).clamp(MIN_JOURNAL_BLOCKS * bs, 8 << 20) / bs * bs,
        };
        if journal_size % bs != 0
            || journal_size < MIN_JOURNAL_BLOCKS * bs
            || journal_size > MAX_JOURNAL
        {
            return bad(format!(
                "journal size {journal_size} must be a multiple of the block size, at least \
                 {} bytes and at most {MAX_JOURNAL} (change --journal-size)",
                MIN_JOURNAL_BLOCKS * bs
            ));
        }
        let Some(first) = journal_offset
            .checked_add(journal_size)
            .and_then(|e| align_up(e, bucket))
        else {
            return bad("journal size too large".into());
        };
        let nbuckets = g.size.saturating_sub(first) / bucket;
        if nbuckets < MIN_BUCKETS {
            let need = first + MIN_BUCKETS * bucket;
            return bad(format!(
                "size {} leaves {nbuckets} buckets after the superblock and the {journal_size}-byte \
                 journal; at least {MIN_BUCKETS} are needed: use --size {need} or more, or a \
                 smaller --bucket-size / --journal-size",
                g.size
            ));
        }
        if nbuckets > MAX_BUCKETS {
            return bad(format!(
                "{nbuckets} buckets is more than {MAX_BUCKETS}: use a larger --bucket-size"
            ));
        }
        let sb = Superblock {
            version: SB_VERSION,
            uuid,
            block_size: g.block_size,
            bucket_size: g.bucket_size,
            nbuckets,
            journal_offset,
            journal_size,
            first_bucket_offset: first,
            replacement: g.replacement,
            cache_mode: g.cache_mode,
            discard: g.discard,
            backing: g.backing.clone(),
            created_unix,
        };
        if gens_buckets(nbuckets, g.bucket_size) > u64::from(MAX_GENS_BUCKETS) {
            return bad(format!(
                "{nbuckets} buckets need more than {MAX_GENS_BUCKETS} buckets of gens checkpoint: \
                 use a larger --bucket-size"
            ));
        }
        sb.validate()?;
        Ok(sb)
    }

    /// Check every field against the others. Used by decode and by `new_for`.
    pub fn validate(&self) -> Result<()> {
        let c = |d: String| Err(Error::corrupt("superblock", d));
        let bs = u64::from(self.block_size);
        let bucket = u64::from(self.bucket_size);
        if !(512..=65536).contains(&bs) || !bs.is_power_of_two() {
            return c(format!("block size {bs} invalid"));
        }
        if bucket < 4096 || bucket % bs != 0 || !bucket.is_power_of_two() || bucket > 1 << 30 {
            return c(format!("bucket size {bucket} invalid for block size {bs}"));
        }
        if !(MIN_BUCKETS..=MAX_BUCKETS).contains(&self.nbuckets) {
            return c(format!("bucket count {} out of range", self.nbuckets));
        }
        if self.journal_offset != (SB_SIZE as u64).max(bs) {
            return c(format!("journal offset {} invalid", self.journal_offset));
        }
        if self.journal_size % bs != 0
            || self.journal_size < MIN_JOURNAL_BLOCKS * bs
            || self.journal_size > MAX_JOURNAL
        {
            return c(format!("journal size {} invalid", self.journal_size));
        }
        let end_j = self.journal_offset.checked_add(self.journal_size);
        if end_j.is_none_or(|e| e > self.first_bucket_offset)
            || self.first_bucket_offset % bucket != 0
        {
            return c(format!(
                "first bucket offset {} invalid",
                self.first_bucket_offset
            ));
        }
        if self.file_size().is_none() {
            return c("file size overflows".into());
        }
        if gens_buckets(self.nbuckets, self.bucket_size) > u64::from(MAX_GENS_BUCKETS) {
            return c("gens checkpoint would need too many buckets".into());
        }
        if self.backing.len() > MAX_BACKING_LEN {
            return c("backing identity too long".into());
        }
        Ok(())
    }

    /// Size the cache file must have.
    pub fn file_size(&self) -> Option<u64> {
        self.nbuckets
            .checked_mul(u64::from(self.bucket_size))
            .and_then(|b| b.checked_add(self.first_bucket_offset))
    }

    /// Byte offset of bucket `b`.
    pub fn bucket_offset(&self, b: u32) -> u64 {
        self.first_bucket_offset + u64::from(b) * u64::from(self.bucket_size)
    }

    /// Sectors per bucket.
    pub fn bucket_sectors(&self) -> u32 {
        (u64::from(self.bucket_size) / SECTOR) as u32
    }

    /// The uuid as the usual 8-4-4-4-12 hex string.
    pub fn uuid_string(&self) -> String {
        let h: String = self.uuid.iter().map(|b| format!("{b:02x}")).collect();
        format!(
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        )
    }

    /// Encode into exactly [`SB_SIZE`] bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; SB_SIZE];
        b[0..8].copy_from_slice(&SB_MAGIC);
        b[8..12].copy_from_slice(&self.version.to_le_bytes());
        b[16..32].copy_from_slice(&self.uuid);
        b[32..36].copy_from_slice(&self.block_size.to_le_bytes());
        b[36..40].copy_from_slice(&self.bucket_size.to_le_bytes());
        b[40..48].copy_from_slice(&self.nbuckets.to_le_bytes());
        b[48..56].copy_from_slice(&self.journal_offset.to_le_bytes());
        b[56..64].copy_from_slice(&self.journal_size.to_le_bytes());
        b[64..72].copy_from_slice(&self.first_bucket_offset.to_le_bytes());
        b[72] = self.replacement as u8;
        b[73] = self.cache_mode as u8;
        b[74] = u8::from(self.discard);
        let bl = self.backing.len().min(MAX_BACKING_LEN);
        b[76..80].copy_from_slice(&(bl as u32).to_le_bytes());
        b[80..80 + bl].copy_from_slice(&self.backing.as_bytes()[..bl]);
        b[336..344].copy_from_slice(&self.created_unix.to_le_bytes());
        let crc = crc32c::crc32c(&b);
        b[12..16].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decode and validate. `buf` may be any length; fewer than [`SB_SIZE`] bytes is an error.
    pub fn decode(buf: &[u8]) -> Result<Superblock> {
        if buf.len() < 8 || buf[0..8] != SB_MAGIC {
            return Err(Error::NotACacheFile);
        }
        if buf.len() < SB_SIZE {
            return Err(Error::corrupt(
                "superblock",
                format!("truncated: {} of {SB_SIZE} bytes", buf.len()),
            ));
        }
        let b = &buf[..SB_SIZE];
        let version = le_u32(b, 8);
        if version != SB_VERSION {
            return Err(Error::UnsupportedVersion {
                found: version,
                supported: SB_VERSION,
            });
        }
        let stored = le_u32(b, 12);
        let mut copy = [0u8; SB_SIZE];
        copy.copy_from_slice(b);
        copy[12..16].fill(0);
        if crc32c::crc32c(&copy) != stored {
            return Err(Error::BadChecksum { what: "superblock" });
        }
        let replacement = Replacement::from_u8(b[72])
            .ok_or_else(|| Error::corrupt("superblock", format!("replacement {}", b[72])))?;
        let cache_mode = CacheMode::from_u8(b[73])
            .ok_or_else(|| Error::corrupt("superblock", format!("cache mode {}", b[73])))?;
        if b[74] & !1 != 0 || b[75] != 0 {
            return Err(Error::corrupt(
                "superblock",
                format!("unknown flags {:#x}", b[74]),
            ));
        }
        let bl = le_u32(b, 76) as usize;
        if bl > MAX_BACKING_LEN {
            return Err(Error::corrupt("superblock", format!("backing length {bl}")));
        }
        let backing = std::str::from_utf8(&b[80..80 + bl])
            .map_err(|_| Error::corrupt("superblock", "backing identity is not UTF-8"))?
            .to_owned();
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&b[16..32]);
        let sb = Superblock {
            version,
            uuid,
            block_size: le_u32(b, 32),
            bucket_size: le_u32(b, 36),
            nbuckets: le_u64(b, 40),
            journal_offset: le_u64(b, 48),
            journal_size: le_u64(b, 56),
            first_bucket_offset: le_u64(b, 64),
            replacement,
            cache_mode,
            discard: b[74] & 1 != 0,
            backing,
            created_unix: le_u64(b, 336),
        };
        sb.validate()?;
        Ok(sb)
    }
}

/// Little-endian u16 at `off`; the caller guarantees the bounds.
pub(crate) fn le_u16(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}

/// Little-endian u32 at `off`; the caller guarantees the bounds.
pub(crate) fn le_u32(b: &[u8], off: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[off..off + 4]);
    u32::from_le_bytes(a)
}

/// Little-endian u64 at `off`; the caller guarantees the bounds.
pub(crate) fn le_u64(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Superblock {
        let g = Geometry {
            size: 256 << 20,
            backing: "/srv/home/alice".into(),
            ..Geometry::default()
        };
        Superblock::new_for(&g, [7; 16], 1_700_000_000).unwrap()
    }

    #[test]
    fn roundtrip() {
        let sb = sample();
        let enc = sb.encode();
        assert_eq!(enc.len(), SB_SIZE);
        assert_eq!(Superblock::decode(&enc).unwrap(), sb);
        assert_eq!(sb.first_bucket_offset % u64::from(sb.bucket_size), 0);
        assert!(sb.file_size().unwrap() <= 256 << 20);
    }

    #[test]
    fn every_single_bit_flip_is_rejected() {
        let enc = sample().encode();
        for bit in 0..SB_SIZE * 8 {
            let mut b = enc.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            assert!(Superblock::decode(&b).is_err(), "bit {bit} flip accepted");
        }
    }

    #[test]
    fn truncations_are_rejected() {
        let enc = sample().encode();
        for len in 0..SB_SIZE {
            assert!(Superblock::decode(&enc[..len]).is_err());
        }
    }

    #[test]
    fn wrong_version_is_reported() {
        let mut enc = sample().encode();
        enc[8..12].copy_from_slice(&2u32.to_le_bytes());
        assert!(matches!(
            Superblock::decode(&enc),
            Err(Error::UnsupportedVersion { found: 2, .. })
        ));
    }

    #[test]
    fn impossible_geometry_is_refused() {
        let base = Geometry {
            size: 1 << 30,
            ..Geometry::default()
        };
        let too_small = Geometry {
            size: 8 << 20,
            ..base.clone()
        };
        assert!(matches!(
            Superblock::new_for(&too_small, [0; 16], 0),
            Err(Error::InvalidGeometry(_))
        ));
        let odd = Geometry {
            bucket_size: 3 * 4096,
            ..base.clone()
        };
        assert!(Superblock::new_for(&odd, [0; 16], 0).is_err());
        let smaller_than_block = Geometry {
            bucket_size: 4096,
            block_size: 8192,
            ..base.clone()
        };
        assert!(Superblock::new_for(&smaller_than_block, [0; 16], 0).is_err());
        let big_journal = Geometry {
            journal_size: Some(1 << 30),
            ..base.clone()
        };
        assert!(Superblock::new_for(&big_journal, [0; 16], 0).is_err());
        let long = Geometry {
            backing: "x".repeat(300),
            ..base
        };
        assert!(Superblock::new_for(&long, [0; 16], 0).is_err());
    }
}
