//! Cache-file provisioning at mount: one user at a time (an exclusive `flock`), creating a
//! missing file, refusing (or, with `reformat`, rebuilding) one that serves another backing
//! tree or cannot be read, and applying format options that may change on an existing file.
//!
//! Runs before the cache set is shared: no locks of ours. May block: up to 30 s waiting for
//! another daemon's lock (a previous mount still writing its last checkpoint), and file I/O.

use std::io;
use std::path::Path;

use super::CacheConfig;
use crate::alloc::Allocator;
use crate::device::format::Geometry;
use crate::device::{CacheDevice, FileDevice};
use crate::error::{Error, Result};

/// Takes the cache file's exclusive lock, waiting up to 30 s for another daemon.
pub(super) fn lock_cache_file(path: &Path) -> Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .open(path)
        .map_err(|e| Error::io("open cache file", e))?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        // SAFETY: flock on a descriptor we own; no memory is passed.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(file);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) || std::time::Instant::now() > deadline {
            return Err(Error::Busy(format!(
                "cache file {} is in use by another mount ({e})",
                path.display()
            )));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Creates the cache file if missing, checks (and binds) the backing it serves, and
/// applies format options that can change on an existing file.
pub(super) fn prepare_cache_file(cfg: &CacheConfig, backing_id: &str) -> Result<()> {
    let geometry = || -> Result<Geometry> {
        let size = cfg.size.ok_or_else(|| {
            Error::Config(format!(
                "cache file {} does not exist; give cache_size=SIZE to create it",
                cfg.path.display()
            ))
        })?;
        let mut g = Geometry {
            size,
            backing: backing_id.to_string(),
            ..Geometry::default()
        };
        // Small caches get smaller buckets, so they still have ~128 of them.
        while g.bucket_size > 64 << 10 && size / u64::from(g.bucket_size) < 128 {
            g.bucket_size /= 2;
        }
        if let Some(r) = cfg.replacement {
            g.replacement = r;
        }
        if let Some(d) = cfg.discard {
            g.discard = d;
        }
        Ok(g)
    };
    let exists = std::fs::metadata(&cfg.path)
        .map(|m| m.len() > 0)
        .unwrap_or(false);
    if !exists {
        Allocator::format(&cfg.path, &geometry()?, true)?;
        return Ok(());
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&cfg.path)
        .map_err(|e| Error::io("open cache file", e))?;
    let dev = FileDevice::new(file);
    let mut sb = match crate::alloc::read_superblock(&dev) {
        Ok(sb) => sb,
        Err(e) if cfg.reformat => {
            tracing::warn!(
                "reformatting unreadable cache file {}: {e}",
                cfg.path.display()
            );
            let mut g = geometry().or_else(|_| {
                let len = dev.len().map_err(|e| Error::io("stat cache file", e))?;
                Ok::<_, Error>(Geometry {
                    size: len,
                    backing: backing_id.to_string(),
                    ..Geometry::default()
                })
            })?;
            g.backing = backing_id.to_string();
            Allocator::format(&cfg.path, &g, true)?;
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    if !sb.backing.is_empty() && sb.backing != backing_id {
        if !cfg.reformat {
            return Err(Error::Config(format!(
                "cache file {} serves {}, not {backing_id}; mount with -o reformat to reuse it for this tree (its cached data is dropped)",
                cfg.path.display(),
                sb.backing
            )));
        }
        // dirty data (writeback) of the other tree would be lost: never without drop_dirty
        if !cfg.drop_dirty && super::journal::may_hold_dirty(&cfg.path).unwrap_or(true) {
            return Err(Error::Config(format!(
                "cache file {} serves {} and may hold its dirty data (not yet written back); \
                 not reformatting: mount it on that tree to write it back, or add -o drop_dirty \
                 to lose it",
                cfg.path.display(),
                sb.backing
            )));
        }
        let mut g = geometry().unwrap_or(Geometry {
            size: sb.file_size().unwrap_or(0),
            ..Geometry::default()
        });
        g.backing = backing_id.to_string();
        drop(dev);
        Allocator::format(&cfg.path, &g, true)?;
        return Ok(());
    }
    let mut changed = false;
    if sb.backing.is_empty() {
        sb.backing = backing_id.to_string();
        changed = true;
    }
    if let Some(r) = cfg.replacement {
        changed |= sb.replacement != r;
        sb.replacement = r;
    }
    if let Some(d) = cfg.discard {
        changed |= sb.discard != d;
        sb.discard = d;
    }
    if let Some(size) = cfg.size {
        if Some(size) != sb.file_size() {
            tracing::info!(
                "cache_size={size} ignored: {} is already formatted ({} bytes); reformat to resize",
                cfg.path.display(),
                sb.file_size().unwrap_or(0)
            );
        }
    }
    if changed {
        dev.pwrite(&sb.encode(), 0)
            .map_err(|e| Error::io("pwrite superblock", e))?;
        dev.fdatasync()
            .map_err(|e| Error::io("fdatasync superblock", e))?;
    }
    Ok(())
}
