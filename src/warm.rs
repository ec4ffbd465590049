//! `bcachefs-lite warm PATH... [--pin] [--jobs N]`: reads trees or files into the cache before
//! they are needed (JuiceFS's `warmup`), with a progress bar (files, bytes, rate, ETA) and a
//! summary; `--pin` pins them against eviction. `unpin PATH...` releases them.
//!
//! # Model
//!
//! The client walks each PATH through the mount (not following symlinks), finds the mount it
//! is on (the longest `fuse.bcachefs-lite` mount point in /proc/self/mountinfo that contains
//! it), cuts every regular file into chunks of [`CHUNK`] bytes, and `N` worker threads send
//! one `warm` control request per chunk. The daemon reads the chunk through the cache's read
//! path with the warm write point (never bypassed by the sequential cutoff) and fills the
//! misses before it answers, so what was cached already is served as hits and never read
//! from the backing again. The kernel's page cache is not filled (the daemon reads the
//! backing itself).
//!
//! Threads: the workers and the caller (which draws the bar); they share one queue and
//! atomic counters. May block on the control socket.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Bytes per `warm` request.
pub const CHUNK: u64 = 8 << 20;

/// What a warm did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Summary {
    pub files: u64,
    pub bytes: u64,
    /// Bytes already in the cache (not read from the backing).
    pub hit_bytes: u64,
    /// Bytes read from the backing into the cache.
    pub read_bytes: u64,
    pub errors: Vec<String>,
    pub seconds: f64,
}

/// The `fuse.bcachefs-lite` mount point that holds `path` (canonical).
pub fn mount_of(path: &Path) -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines()
        .filter(|l| l.contains(" - fuse.bcachefs-lite "))
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(m.replace("\\040", " ")))
        .filter(|m| path.starts_with(m))
        .max_by_key(|m| m.as_os_str().len())
}

struct Work {
    mountpoint: PathBuf,
    rel: String,
    offset: u64,
    len: u64,
    last: bool,
}

/// Walks `paths` and returns the chunks to warm and the total bytes.
fn plan(paths: &[PathBuf]) -> Result<(VecDeque<Work>, u64, u64), String> {
    let mut q = VecDeque::new();
    let (mut files, mut bytes) = (0u64, 0u64);
    for p in paths {
        let canon = std::fs::canonicalize(p).map_err(|e| format!("{}: {e}", p.display()))?;
        let mnt = mount_of(&canon)
            .ok_or_else(|| format!("{}: not inside a bcachefs-lite mount", p.display()))?;
        let mut stack = vec![canon];
        while let Some(path) = stack.pop() {
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if meta.is_dir() {
                if let Ok(rd) = std::fs::read_dir(&path) {
                    let mut entries: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
                    entries.sort();
                    entries.reverse();
                    stack.extend(entries);
                }
            } else if meta.is_file() {
                let rel = path
                    .strip_prefix(&mnt)
                    .map(|r| r.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let size = meta.len();
                files += 1;
                bytes += size;
                let mut off = 0;
                loop {
                    let len = (size - off).min(CHUNK);
                    q.push_back(Work {
                        mountpoint: mnt.clone(),
                        rel: rel.clone(),
                        offset: off,
                        len,
                        last: off + len >= size,
                    });
                    off += len;
                    if off >= size {
                        break;
                    }
                }
            }
        }
    }
    Ok((q, files, bytes))
}

/// Warms `paths` with `jobs` workers; `bar` is told files done and bytes done.
/// With `pin`, the warmed data is pinned against eviction (bounded by the mount's
/// `pin_limit`) and the pins are made durable at the end (`pin_sync`).
pub fn warm(
    paths: &[PathBuf],
    jobs: usize,
    pin: bool,
    bar: &indicatif::ProgressBar,
) -> Result<Summary, String> {
    let started = Instant::now();
    let (queue, files, bytes) = plan(paths)?;
    bar.set_length(bytes);
    let queue = Mutex::new(queue);
    let (done_bytes, done_files, hit, read) = (
        AtomicU64::new(0),
        AtomicU64::new(0),
        AtomicU64::new(0),
        AtomicU64::new(0),
    );
    let errors = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..jobs.max(1) {
            s.spawn(|| loop {
                let Some(w) = queue.lock().pop_front() else {
                    return;
                };
                let mut args = vec![w.rel.clone(), w.offset.to_string(), w.len.to_string()];
                if pin {
                    args.push("pin".into());
                }
                match crate::control::request_args(&w.mountpoint, "warm", args) {
                    Ok(r) => {
                        hit.fetch_add(r["hit_bytes"].as_u64().unwrap_or(0), Ordering::Relaxed);
                        read.fetch_add(r["read_bytes"].as_u64().unwrap_or(0), Ordering::Relaxed);
                    }
                    Err(e) => errors.lock().push(format!("{}: {e}", w.rel)),
                }
                done_bytes.fetch_add(w.len, Ordering::Relaxed);
                if w.last {
                    done_files.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        // the caller draws the bar while the workers run
        loop {
            let f = done_files.load(Ordering::Relaxed);
            bar.set_position(done_bytes.load(Ordering::Relaxed));
            bar.set_message(format!("{f}/{files} files"));
            if f >= files && queue.lock().is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    bar.set_position(done_bytes.load(Ordering::Relaxed));
    let mut errors = errors.into_inner();
    if pin {
        let mounts: std::collections::BTreeSet<PathBuf> = paths
            .iter()
            .filter_map(|p| std::fs::canonicalize(p).ok())
            .filter_map(|p| mount_of(&p))
            .collect();
        for m in mounts {
            if let Err(e) = crate::control::request_args(&m, "pin_sync", Vec::new()) {
                errors.push(format!("{}: {e}", m.display()));
            }
        }
    }
    Ok(Summary {
        files,
        bytes,
        hit_bytes: hit.into_inner(),
        read_bytes: read.into_inner(),
        errors,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// `unpin PATH...`: releases the pins of the files under each path. Returns buckets unpinned.
pub fn unpin(paths: &[PathBuf]) -> Result<u64, String> {
    let mut total = 0;
    for p in paths {
        let canon = std::fs::canonicalize(p).map_err(|e| format!("{}: {e}", p.display()))?;
        let mnt = mount_of(&canon)
            .ok_or_else(|| format!("{}: not inside a bcachefs-lite mount", p.display()))?;
        let rel = canon
            .strip_prefix(&mnt)
            .map(|r| r.to_string_lossy().into_owned())
            .unwrap_or_default();
        let rel = if rel.is_empty() { ".".to_string() } else { rel };
        let r =
            crate::control::request_args(&mnt, "unpin", vec![rel]).map_err(|e| e.to_string())?;
        total += r["buckets"].as_u64().unwrap_or(0);
    }
    Ok(total)
}
