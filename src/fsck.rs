//! `bcachefs-lite fsck CACHE_FILE [--repair]`: checks a cache file that is not mounted.
//!
//! # What is checked
//!
//! 1. Nobody has it open: the cache file's exclusive `flock` (every mount holds it) is taken
//!    without waiting; a mounted cache is refused.
//! 2. The superblock (magic, version, crc32c, geometry).
//! 3. The gens checkpoints: the newest valid one is loaded as a mount does; newer ones that do
//!    not verify are reported (a warning: recovery uses the older one).
//! 4. The journal and the index checkpoints: replay as at mount; an index checkpoint that a
//!    journal entry names but that does not load (torn, corrupt) and a malformed key record
//!    are errors; a torn tail (a gap in the sequence, as a crash leaves) and a metadata
//!    checkpoint that does not load are warnings.
//! 5. Every key against the design's invariants: a key whose gen is ahead of its bucket's
//!    (it would come alive when the bucket is reused) or more than `BUCKET_GC_GEN_MAX`
//!    behind it (the 8-bit gen could wrap onto it) is an error, one merely behind it is a
//!    stale key as bcache leaves them (counted, not an error); no two live keys share a
//!    sector of the cache file (a bucket's space handed out twice); no live key points into a
//!    bucket that holds metadata (a gens, index or metadata checkpoint); live sectors per bucket fit
//!    the bucket.
//! 6. Every cached block's crc32c, read back from the cache file (the long part: progress
//!    is reported through a callback).
//!
//! # Repair
//!
//! `--repair` drops every key an error names (a `KeyDelete` journal entry per batch), then
//! opens the cache set as a mount does (replay, GC, a fresh index checkpoint) and closes it
//! (journal flush, index checkpoint), which also replaces an unreadable checkpoint; then it
//! checks again. Dropping is always safe: the backing holds every clean byte.
//!
//! Exit codes follow fsck(8): 0 no errors, 1 errors corrected, 4 errors left uncorrected,
//! 8 operational error (mounted, not a cache file, I/O error), 16 usage error.
//!
//! Runs alone on the file (the lock); no threads of its own. Blocks on file I/O.

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::alloc::{Allocator, OpenOptions, BUCKET_GC_GEN_MAX};
use crate::cache::stats::Counters;
use crate::device::format::SECTOR;
use crate::index::{Extent, FileId};
use crate::journal::format::Record;

pub const EXIT_CLEAN: u8 = 0;
pub const EXIT_CORRECTED: u8 = 1;
pub const EXIT_UNCORRECTED: u8 = 4;
pub const EXIT_OPERATIONAL: u8 = 8;
pub const EXIT_USAGE: u8 = 16;

/// One problem found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Finding {
    /// `checksum`, `shared_sectors`, `metadata_bucket`, `gen_ahead`, `gen_wrap`,
    /// `unreadable_index_checkpoint`, `malformed_record`, `unreadable_gens_checkpoint`,
    /// `torn_journal_tail` and `unreadable_metadata_checkpoint` (warnings).
    pub kind: &'static str,
    /// An error (counts for the exit code) or a warning.
    pub error: bool,
    pub detail: String,
    /// The key `--repair` drops, if this is about one.
    #[serde(skip)]
    pub drop: Option<(FileId, u64, u64)>,
}

/// What a check found.
#[derive(Debug, Default, serde::Serialize)]
pub struct Report {
    pub journal_entries: usize,
    pub files: usize,
    pub live_extents: usize,
    pub stale_keys: usize,
    pub bytes_checked: u64,
    pub findings: Vec<Finding>,
}

impl Report {
    pub fn errors(&self) -> usize {
        self.findings.iter().filter(|f| f.error).count()
    }
}

/// Why fsck could not check at all (exit 8).
#[derive(Debug)]
pub struct Operational(pub String);

impl std::fmt::Display for Operational {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Takes the cache file's lock without waiting; a mount holds it.
fn lock(path: &Path) -> Result<std::fs::File, Operational> {
    let f = std::fs::File::open(path)
        .map_err(|e| Operational(format!("cannot open {}: {e}", path.display())))?;
    // SAFETY: flock on a descriptor we own; no memory is passed.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(Operational(format!(
            "{} is in use (mounted, or another fsck): unmount it first",
            path.display()
        )));
    }
    Ok(f)
}

fn manual() -> OpenOptions {
    OpenOptions {
        start_allocator: false,
        ..Default::default()
    }
}

/// Progress of the crc pass: (bytes done, bytes total).
pub type Progress<'a> = &'a dyn Fn(u64, u64);

/// Checks the cache file at `path` (module header). Holds its lock meanwhile.
pub fn check(path: &Path, progress: Progress<'_>) -> Result<Report, Operational> {
    let _lock = lock(path)?;
    let (report, _) = check_locked(path, progress)?;
    Ok(report)
}

fn check_locked(path: &Path, progress: Progress<'_>) -> Result<(Report, Allocator), Operational> {
    // 2. superblock, 3. gens checkpoints (as a mount opens them)
    let alloc = Allocator::open_with(path, manual())
        .map_err(|e| Operational(format!("{}: {e}", path.display())))?;
    let sb = alloc.superblock().clone();
    let mut r = Report::default();
    if alloc.skipped_checkpoints() > 0 {
        r.findings.push(Finding {
            kind: "unreadable_gens_checkpoint",
            error: false,
            detail: format!(
                "{} newer gens checkpoint(s) do not verify; the newest valid one is used",
                alloc.skipped_checkpoints()
            ),
            drop: None,
        });
    }
    // 4. journal and index checkpoints
    let counters = Counters::default();
    let replayed = crate::cache::journal::replay(&alloc, &counters)
        .map_err(|e| Operational(format!("journal: {e}")))?;
    let rep = &replayed.report;
    r.journal_entries = rep.entries;
    for (seq, why) in &rep.unreadable_checkpoints {
        r.findings.push(Finding {
            kind: "unreadable_index_checkpoint",
            error: true,
            detail: format!("index checkpoint {seq} does not load ({why}); an older one was used"),
            drop: None,
        });
    }
    if let Some((seq, ignored)) = rep.torn_tail {
        r.findings.push(Finding {
            kind: "torn_journal_tail",
            error: false,
            detail: format!(
                "the journal ends at a gap (entry {seq} missing; {ignored} later entr{} \
                 ignored), as a crash leaves it; their keys are re-read from the backing",
                if ignored == 1 { "y" } else { "ies" }
            ),
            drop: None,
        });
    }
    if replayed.meta.is_none() && !rep.unreadable_meta.is_empty() {
        let (seq, why) = &rep.unreadable_meta[0];
        r.findings.push(Finding {
            kind: "unreadable_metadata_checkpoint",
            error: false,
            detail: format!(
                "metadata checkpoint {seq} does not load ({why}); the next mount's metadata \
                 cache starts cold"
            ),
            drop: None,
        });
    }
    if rep.refused_records > 0 {
        r.findings.push(Finding {
            kind: "malformed_record",
            error: true,
            detail: format!(
                "{} malformed key record(s) in the journal",
                rep.refused_records
            ),
            drop: None,
        });
    }
    // 5. keys against the invariants
    for (file, e) in &rep.stale {
        let Ok(bucket_gen) = alloc.bucket_gen(e.ptr.bucket) else {
            continue;
        };
        let behind = bucket_gen.wrapping_sub(e.ptr.gen);
        let what = if behind > 128 {
            Some(("gen_ahead", "ahead of"))
        } else if behind > BUCKET_GC_GEN_MAX {
            Some(("gen_wrap", "more than 96 behind"))
        } else {
            None
        };
        match what {
            Some((kind, how)) => r.findings.push(Finding {
                kind,
                error: true,
                detail: format!(
                    "file {file:#x} offset {}: key gen {} is {how} bucket {}'s gen {bucket_gen}",
                    e.offset, e.ptr.gen, e.ptr.bucket
                ),
                drop: Some((*file, e.offset, e.len)),
            }),
            None => r.stale_keys += 1,
        }
    }
    let mut live: Vec<(FileId, Extent)> = Vec::new();
    replayed
        .index
        .for_each_extent(|file, e| live.push((file, e.clone())));
    r.live_extents = live.len();
    r.files = live.iter().map(|(f, _)| *f).collect::<BTreeSet<_>>().len();
    let mut metadata: BTreeSet<u32> = alloc.checkpoint_buckets().into_iter().collect();
    metadata.extend(replayed.checkpoint.buckets.iter().copied());
    if let Some(m) = &replayed.meta_location {
        metadata.extend(m.buckets.iter().copied());
    }
    let mut bad: BTreeSet<(FileId, u64)> = BTreeSet::new();
    let mut by_bucket: BTreeMap<u32, Vec<(u64, u64, usize)>> = BTreeMap::new();
    for (i, (file, e)) in live.iter().enumerate() {
        if metadata.contains(&e.ptr.bucket) {
            r.findings.push(Finding {
                kind: "metadata_bucket",
                error: true,
                detail: format!(
                    "file {file:#x} offset {}: key into bucket {}, which holds a checkpoint",
                    e.offset, e.ptr.bucket
                ),
                drop: Some((*file, e.offset, e.len)),
            });
            bad.insert((*file, e.offset));
        }
        let start = u64::from(e.ptr.offset);
        by_bucket
            .entry(e.ptr.bucket)
            .or_default()
            .push((start, start + e.len / SECTOR, i));
    }
    let bucket_sectors = u64::from(sb.bucket_sectors());
    for (bucket, mut spans) in by_bucket {
        spans.sort();
        let used: u64 = spans.iter().map(|(s, e, _)| e - s).sum();
        let mut shared = false;
        for w in spans.windows(2) {
            if w[1].0 < w[0].1 {
                shared = true;
                for &(_, _, i) in &[w[0], w[1]] {
                    let (file, e) = &live[i];
                    if bad.insert((*file, e.offset)) {
                        r.findings.push(Finding {
                            kind: "shared_sectors",
                            error: true,
                            detail: format!(
                                "file {file:#x} offset {}: bucket {bucket} sectors {}..{} are \
                                 also another key's",
                                e.offset,
                                e.ptr.offset,
                                u64::from(e.ptr.offset) + e.len / SECTOR
                            ),
                            drop: Some((*file, e.offset, e.len)),
                        });
                    }
                }
            }
        }
        if !shared && used > bucket_sectors {
            r.findings.push(Finding {
                kind: "sector_count",
                error: true,
                detail: format!("bucket {bucket}: {used} live sectors, more than {bucket_sectors}"),
                drop: None,
            });
        }
    }
    // 6. every cached block's crc32c
    let total: u64 = live.iter().map(|(_, e)| e.len).sum();
    let block = sb.block_size as usize;
    let mut done = 0u64;
    progress(0, total);
    for (file, e) in &live {
        let mut buf = vec![0u8; e.len as usize];
        let read = alloc.data().read(e.ptr, &mut buf);
        let good = read.is_ok()
            && buf
                .chunks(block)
                .zip(e.crcs.iter())
                .all(|(d, &c)| crc32c::crc32c(d) == c);
        if !good && bad.insert((*file, e.offset)) {
            r.findings.push(Finding {
                kind: "checksum",
                error: true,
                detail: match read {
                    Err(err) => format!("file {file:#x} offset {}: read failed: {err}", e.offset),
                    Ok(()) => format!(
                        "file {file:#x} offset {} ({} bytes in bucket {}): crc32c mismatch",
                        e.offset, e.len, e.ptr.bucket
                    ),
                },
                drop: Some((*file, e.offset, e.len)),
            });
        }
        done += e.len;
        progress(done, total);
    }
    r.bytes_checked = done;
    Ok((r, alloc))
}

/// What `--repair` did.
#[derive(Debug, serde::Serialize)]
pub struct Repaired {
    pub before: Report,
    pub keys_dropped: usize,
    pub after: Report,
}

/// Checks, drops every key an error names, rewrites the checkpoints, and checks again.
pub fn repair(path: &Path, progress: Progress<'_>) -> Result<Repaired, Operational> {
    let lock_file = lock(path)?;
    let (before, alloc) = check_locked(path, progress)?;
    let drops: Vec<(FileId, u64, u64)> = before.findings.iter().filter_map(|f| f.drop).collect();
    if before.errors() == 0 {
        drop(alloc);
        let after = check_locked(path, progress)?.0;
        return Ok(Repaired {
            before,
            keys_dropped: 0,
            after,
        });
    }
    for chunk in drops.chunks(64) {
        let records = chunk
            .iter()
            .map(|&(file, offset, len)| Record::KeyDelete { file, offset, len })
            .collect();
        alloc
            .journal_append_with_gens(records)
            .map_err(|e| Operational(format!("journal append: {e}")))?;
    }
    let backing = alloc.superblock().backing.clone();
    alloc.close();
    drop(alloc);
    // the cache set takes the lock itself (a mount starting meanwhile would make it wait)
    drop(lock_file);
    let cfg = crate::cache::CacheConfig::new(path.to_path_buf());
    let set = crate::cache::CacheSet::open(&cfg, &backing)
        .map_err(|e| Operational(format!("rewriting the checkpoints: {e}")))?;
    set.close();
    drop(set);
    let _lock = lock(path)?;
    let after = check_locked(path, progress)?.0;
    Ok(Repaired {
        before,
        keys_dropped: drops.len(),
        after,
    })
}

/// The report as text, one finding a line.
pub fn report_text(r: &Report) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    for f in &r.findings {
        let _ = writeln!(
            o,
            "{}: {}: {}",
            if f.error { "error" } else { "warning" },
            f.kind,
            f.detail
        );
    }
    let _ = writeln!(
        o,
        "{} journal entries, {} files, {} live extents ({} bytes checked), {} stale keys; {} error(s)",
        r.journal_entries,
        r.files,
        r.live_extents,
        r.bytes_checked,
        r.stale_keys,
        r.errors()
    );
    o
}
