//! Format and recovery: laying out a new cache file, and finding the newest valid gens
//! checkpoint when opening one.
//!
//! Recovery path: read and validate the superblock; check the file is as long as it says; scan
//! the journal for valid entries; take every gens checkpoint the entries name, from the highest
//! checkpoint seq down (never by position in the ring: an entry may repeat an older location),
//! and load the first whose every part decodes (magic, crc, seq, uuid, range). A torn or
//! corrupt newer checkpoint is counted in `skipped` and never trusted.
//!
//! Format order: size the file (sparse), write the first gens checkpoint (all gens 0) into the
//! first bucket(s), append journal entry 1 naming it, fsync, and write the superblock last, then
//! fsync: a file with a valid superblock always has a valid checkpoint.
//!
//! No locks; everything here runs before the cache is shared. What may block: file I/O.

use std::io::Read;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use super::format::{decode_part, encode, entries_per_part, GensCheckpoint, PartExpect};
use super::state::INITIAL_PRIO;
use crate::device::format::{
    gens_buckets, Geometry, Superblock, GENS_ENTRY, GENS_HDR, SB_MAGIC, SB_SIZE,
};
use crate::device::{CacheDevice, FileDevice};
use crate::error::{Error, Result};
use crate::journal::format::Record;
use crate::journal::{scan, JournalRing};

/// The newest valid gens checkpoint and where it is.
#[derive(Debug, Clone)]
pub struct NewestCheckpoint {
    pub checkpoint: GensCheckpoint,
    /// Its buckets, in part order.
    pub buckets: Vec<u32>,
    /// Seq of the journal entry that named it.
    pub journal_seq: u64,
    /// How many newer checkpoints were invalid and skipped.
    pub skipped: usize,
}

pub(crate) struct Recovered {
    pub sb: Superblock,
    pub newest: NewestCheckpoint,
    pub ring: JournalRing,
}

/// Read and validate the superblock of `dev`.
pub fn read_superblock(dev: &dyn CacheDevice) -> Result<Superblock> {
    let len = dev.len().map_err(|e| Error::io("stat cache file", e))?;
    let mut buf = vec![0u8; (len.min(SB_SIZE as u64)) as usize];
    dev.pread(&mut buf, 0)
        .map_err(|e| Error::io("pread superblock", e))?;
    let sb = Superblock::decode(&buf)?;
    let want = sb.file_size().unwrap_or(u64::MAX);
    if len < want {
        return Err(Error::corrupt(
            "cache file",
            format!("truncated: {len} bytes, the superblock says {want}"),
        ));
    }
    Ok(sb)
}

fn load_checkpoint(
    dev: &dyn CacheDevice,
    sb: &Superblock,
    seq: u64,
    buckets: &[u32],
) -> Result<GensCheckpoint> {
    let n = sb.nbuckets as usize;
    if buckets.len() as u64 != gens_buckets(sb.nbuckets, sb.bucket_size) {
        return Err(Error::corrupt("gens checkpoint", "wrong number of parts"));
    }
    let per = entries_per_part(sb.bucket_size);
    let mut ck = GensCheckpoint {
        seq,
        gens: vec![0; n],
        prios: vec![0; n],
    };
    let bs = u64::from(sb.block_size);
    for (i, &b) in buckets.iter().enumerate() {
        if u64::from(b) >= sb.nbuckets {
            return Err(Error::corrupt(
                "gens checkpoint",
                format!("part in bucket {b}"),
            ));
        }
        let entries = per.min(n - i * per) as u64;
        let len = (GENS_HDR + entries * GENS_ENTRY).div_ceil(bs) * bs;
        let mut buf = vec![0u8; len as usize];
        dev.pread(&mut buf, sb.bucket_offset(b))
            .map_err(|e| Error::io("pread gens", e))?;
        let want = PartExpect {
            seq,
            uuid: &sb.uuid,
            nbuckets: sb.nbuckets,
            bucket_size: sb.bucket_size,
            index: i as u32,
            count: buckets.len() as u32,
        };
        decode_part(&buf, want, &mut ck)?;
    }
    Ok(ck)
}

/// Find the newest valid gens checkpoint of an already validated cache file.
pub fn read_newest_checkpoint(dev: &dyn CacheDevice) -> Result<(Superblock, NewestCheckpoint)> {
    let sb = read_superblock(dev)?;
    let entries = scan(dev, &sb)?;
    let newest = newest_from(dev, &sb, &entries)?;
    Ok((sb, newest))
}

fn newest_from(
    dev: &dyn CacheDevice,
    sb: &Superblock,
    entries: &[crate::journal::Scanned],
) -> Result<NewestCheckpoint> {
    // Newest by the checkpoint's own seq, not by where it is named in the ring: an entry may
    // repeat an older location, and following it would revert bumped gens (invariant 2).
    let mut named: Vec<(u64, u64, &Vec<u32>)> = Vec::new();
    for s in entries {
        for r in &s.entry.records {
            if let Record::GensCheckpoint { seq, buckets } = r {
                if !named.iter().any(|(q, _, b)| q == seq && *b == buckets) {
                    named.push((*seq, s.entry.seq, buckets));
                }
            }
        }
    }
    named.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(&a.1)));
    let mut skipped = 0;
    for (seq, journal_seq, buckets) in named {
        match load_checkpoint(dev, sb, seq, buckets) {
            Ok(checkpoint) => {
                return Ok(NewestCheckpoint {
                    checkpoint,
                    buckets: buckets.clone(),
                    journal_seq,
                    skipped,
                })
            }
            Err(e) => {
                tracing::warn!(seq, error = %e, "skipping invalid gens checkpoint");
                skipped += 1;
            }
        }
    }
    Err(Error::NoValidCheckpoint)
}

pub(crate) fn recover(dev: &dyn CacheDevice) -> Result<Recovered> {
    let sb = read_superblock(dev)?;
    let entries = scan(dev, &sb)?;
    let newest = newest_from(dev, &sb, &entries)?;
    let ring = JournalRing::after(&entries);
    Ok(Recovered { sb, newest, ring })
}

/// Write the initial layout onto `dev` (already `sb.file_size()` long and zeroed).
pub(crate) fn format_device(dev: &dyn CacheDevice, sb: &Superblock) -> Result<()> {
    let n = sb.nbuckets as usize;
    let ck = GensCheckpoint {
        seq: 1,
        gens: vec![0; n],
        prios: vec![INITIAL_PRIO; n],
    };
    let parts = encode(&ck, &sb.uuid, sb.bucket_size, sb.block_size);
    let buckets: Vec<u32> = (0..parts.len() as u32).collect();
    for (b, p) in buckets.iter().zip(&parts) {
        dev.pwrite(p, sb.bucket_offset(*b))
            .map_err(|e| Error::io("pwrite gens", e))?;
    }
    dev.fdatasync().map_err(|e| Error::io("fdatasync", e))?;
    let mut ring = JournalRing::after(&[]);
    ring.append(dev, sb, vec![Record::GensCheckpoint { seq: 1, buckets }])?;
    dev.pwrite(&sb.encode(), 0)
        .map_err(|e| Error::io("pwrite superblock", e))?;
    dev.fdatasync().map_err(|e| Error::io("fdatasync", e))?;
    Ok(())
}

fn random_uuid() -> [u8; 16] {
    let mut u = [0u8; 16];
    let ok = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut u));
    if ok.is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        u = (t ^ (u128::from(std::process::id()) << 64)).to_le_bytes();
    }
    u[6] = (u[6] & 0x0f) | 0x40;
    u[8] = (u[8] & 0x3f) | 0x80;
    u
}

pub(crate) fn format_path(path: &Path, g: &Geometry, force: bool) -> Result<Superblock> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let sb = Superblock::new_for(g, random_uuid(), now)?;
    let shown = path.display();
    match std::fs::metadata(path) {
        Ok(m) if !m.is_file() => {
            return Err(Error::AlreadyExists(format!(
                "{shown} exists and is not a regular file"
            )))
        }
        Ok(m) if m.len() > 0 && !force => {
            let mut magic = [0u8; 8];
            let is_cache = std::fs::File::open(path)
                .and_then(|mut f| f.read_exact(&mut magic))
                .is_ok()
                && magic == SB_MAGIC;
            return Err(Error::AlreadyExists(if is_cache {
                format!(
                    "{shown} is already a bcachefs-lite cache file; use --force to overwrite it"
                )
            } else {
                format!("{shown} exists and is not empty; use --force to overwrite it")
            }));
        }
        _ => {}
    }
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io("create cache file", e))?;
    // `mode` applies only when the file is created; a file overwritten with --force gets
    // the same 0600 (see `check_cache_file_access`).
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(|e| Error::io("chmod cache file", e))?;
    let size = sb.file_size().unwrap_or(0);
    f.set_len(size)
        .map_err(|e| Error::io("set cache file size", e))?;
    let dev = FileDevice::new(f);
    format_device(&dev, &sb)?;
    Ok(sb)
}
