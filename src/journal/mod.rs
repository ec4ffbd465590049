//! The journal ring (minimal: what the allocator needs).
//!
//! Model: the journal region named by the superblock holds block-aligned entries
//! ([`format::Entry`]) with strictly increasing seq. This issue writes only entries that name a
//! new gens checkpoint, and on open finds the newest valid entries; key inserts/deletes and replay
//! (in seq order, stopping at a torn tail) are the journal subsystem's, built on the same format.
//!
//! Crash ordering: an entry is appended with one `pwrite` and then `fdatasync`; it is never
//! written over the newest valid entry, so a torn append leaves the previous entries readable.
//! Invariants: [`scan`] returns only entries whose crc matched, sorted by seq; the ring cursor
//! continues after the newest one. Lock order: the caller serialises appends (the allocator's
//! step lock). What may block: `scan` and `append` do synchronous I/O.

pub mod format;

use crate::device::format::Superblock;
use crate::device::CacheDevice;
use crate::error::{Error, Result};
use format::{Entry, Record};

/// A valid entry found by [`scan`], with where it lies in the ring.
#[derive(Debug, Clone)]
pub struct Scanned {
    /// Offset of the entry from the start of the journal region.
    pub offset: u64,
    /// Length of the entry, padded to blocks.
    pub len: u64,
    pub entry: Entry,
}

/// Read the whole journal region (at most `MAX_JOURNAL` bytes, bounded by the validated
/// superblock) and return every valid entry, sorted by seq.
pub fn scan(dev: &dyn CacheDevice, sb: &Superblock) -> Result<Vec<Scanned>> {
    let bs = u64::from(sb.block_size);
    let size = sb.journal_size;
    let mut buf = vec![0u8; size as usize];
    dev.pread(&mut buf, sb.journal_offset)
        .map_err(|e| Error::io("pread journal", e))?;
    let mut out = Vec::new();
    let mut off = 0u64;
    while off + bs <= size {
        let here = &buf[off as usize..];
        let mut step = bs;
        if Entry::claimed_len(here, here.len()).is_some() {
            if let Ok(entry) = Entry::decode(here, here.len()) {
                let total = Entry::claimed_len(here, here.len()).unwrap_or(0) as u64;
                step = total.div_ceil(bs).max(1) * bs;
                out.push(Scanned {
                    offset: off,
                    len: step,
                    entry,
                });
            }
        }
        off += step;
    }
    out.sort_by_key(|s| s.entry.seq);
    Ok(out)
}

/// Where the next entry goes.
#[derive(Debug, Clone)]
pub struct JournalRing {
    next_offset: u64,
    next_seq: u64,
    /// Bytes appended since open: tells the index when the ring is about to wrap over
    /// entries replay still needs.
    appended: u64,
}

impl JournalRing {
    /// The ring position after the newest of `scanned` (sorted by seq), or the start.
    pub fn after(scanned: &[Scanned]) -> JournalRing {
        match scanned.last() {
            Some(s) => JournalRing {
                next_offset: s.offset + s.len,
                next_seq: s.entry.seq + 1,
                appended: 0,
            },
            None => JournalRing {
                next_offset: 0,
                next_seq: 1,
                appended: 0,
            },
        }
    }

    /// Seq the next entry will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Bytes appended since the ring was opened.
    pub fn appended_bytes(&self) -> u64 {
        self.appended
    }

    /// Append one entry with `records`, then fdatasync. Returns its seq.
    pub fn append(
        &mut self,
        dev: &dyn CacheDevice,
        sb: &Superblock,
        records: Vec<Record>,
    ) -> Result<u64> {
        let seq = self.next_seq;
        let buf = Entry { seq, records }.encode(sb.block_size);
        let len = buf.len() as u64;
        if len > sb.journal_size {
            return Err(Error::InvalidArgument(
                "journal entry larger than the journal".into(),
            ));
        }
        if self.next_offset + len > sb.journal_size {
            self.next_offset = 0;
        }
        dev.pwrite(&buf, sb.journal_offset + self.next_offset)
            .map_err(|e| Error::io("pwrite journal", e))?;
        dev.fdatasync()
            .map_err(|e| Error::io("fdatasync journal", e))?;
        self.next_offset += len;
        self.next_seq += 1;
        self.appended += len;
        Ok(seq)
    }
}
