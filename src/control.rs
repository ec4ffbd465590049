//! The control socket: live stats and a few commands (bcache's sysfs), over a
//! root-only Unix socket, and the client side used by `bcachefs-lite stats`.
//!
//! The socket lives at `/run/bcachefs-lite/<mount point, escaped>.sock`, so a client
//! finds it from the mount point alone. The directory is 0700 and the socket 0600.
//! Protocol: one request line (`stats`, `stats json`, `gc`, `flush`), one reply,
//! then the server closes the connection.
//!
//! Threads: one accept thread; each request is answered on it (they are quick).
//! Nothing here holds a lock of the cache across socket I/O.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::cache::stats::{get, HitSnapshot};
use crate::cache::CacheSet;
use crate::fs::inode::FdCache;

pub const RUN_DIR: &str = "/run/bcachefs-lite";

/// The socket path of the mount at `mountpoint` (canonical path).
pub fn socket_path(mountpoint: &Path) -> PathBuf {
    let s = mountpoint.to_string_lossy();
    let mut name = String::new();
    for c in s.trim_start_matches('/').chars() {
        match c {
            '/' => name.push('-'),
            c if c.is_ascii_alphanumeric() || c == '.' || c == '_' => name.push(c),
            // escaped like everything else, so "/a-b" and "/a/b" differ
            c => name.push_str(&format!("\\x{:02x}", c as u32)),
        }
    }
    if name.is_empty() {
        name.push('-');
    }
    // long paths: keep the end, which tells mounts apart, and a hash of the whole
    if name.len() > 80 {
        let h = crc32c::crc32c(s.as_bytes());
        name = format!("{h:08x}-{}", &name[name.len() - 70..]);
    }
    Path::new(RUN_DIR).join(format!("{name}.sock"))
}

/// Serves the control socket for `cache` (and the inode table's descriptor figures,
/// `inodes`) until the process exits. Returns the path.
pub fn serve(
    mountpoint: &Path,
    cache: Arc<CacheSet>,
    inodes: Option<Arc<FdCache>>,
) -> io::Result<PathBuf> {
    std::fs::create_dir_all(RUN_DIR)?;
    std::fs::set_permissions(RUN_DIR, std::fs::Permissions::from_mode(0o700))?;
    let path = socket_path(mountpoint);
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    std::thread::Builder::new()
        .name("bcl-control".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                if let Err(e) = answer(stream, &cache, inodes.as_deref()) {
                    tracing::debug!("control request: {e}");
                }
            }
        })?;
    Ok(path)
}

fn answer(stream: UnixStream, cache: &CacheSet, inodes: Option<&FdCache>) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut line = String::new();
    BufReader::new(&stream).take(256).read_line(&mut line)?;
    let reply = match line.trim() {
        "stats json" => stats_json(cache, inodes),
        "stats" => stats_text(cache, inodes),
        "gc" => format!("ok: moving gc compacted {} bytes\n", cache.gc_now()),
        other => format!("error: unknown request '{other}'\n"),
    };
    (&stream).write_all(reply.as_bytes())
}

/// Sends `request` to the daemon serving `mountpoint` and returns its reply.
pub fn request(mountpoint: &Path, request: &str) -> io::Result<String> {
    let path = socket_path(mountpoint);
    let mut stream = UnixStream::connect(&path).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "no bcachefs-lite cache is mounted at {} ({}: {e})",
                mountpoint.display(),
                path.display()
            ),
        )
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.write_all(format!("{request}\n").as_bytes())?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply)?;
    Ok(reply)
}

/// Every figure `stats` shows, in order, as (name, value).
fn figures(cache: &CacheSet, inodes: Option<&FdCache>) -> Vec<(String, String)> {
    let c = &cache.counters;
    let total = c.hit_snapshot();
    let mut f: Vec<(String, String)> = Vec::new();
    let mut put = |k: &str, v: String| f.push((k.to_string(), v));
    let window = |s: HitSnapshot| {
        format!(
            "{{\"cache_hits\": {}, \"cache_misses\": {}, \"cache_hit_ratio\": {}, \"cache_bypass_hits\": {}, \"cache_bypass_misses\": {}, \"bypassed\": {}}}",
            s.hits, s.misses, s.hit_ratio(), s.bypass_hits, s.bypass_misses, s.bypassed
        )
    };
    put("cache_hits", total.hits.to_string());
    put("cache_misses", total.misses.to_string());
    put("cache_hit_ratio", total.hit_ratio().to_string());
    put("bypassed", total.bypassed.to_string());
    put("cache_bypass_hits", total.bypass_hits.to_string());
    put("cache_bypass_misses", total.bypass_misses.to_string());
    put(
        "cache_miss_collisions",
        get(&c.cache_miss_collisions).to_string(),
    );
    put("cache_readaheads", get(&c.cache_readaheads).to_string());
    put("cache_read_races", get(&c.cache_read_races).to_string());
    put("checksum_errors", get(&c.checksum_errors).to_string());
    put("stale_pointers", get(&c.stale_pointers).to_string());
    put("bytes_hit", get(&c.bytes_hit).to_string());
    put("bytes_missed", get(&c.bytes_missed).to_string());
    put("bytes_filled", get(&c.bytes_filled).to_string());
    put("fills_skipped", get(&c.fills_skipped).to_string());
    put("invalidations", get(&c.invalidations).to_string());
    let a = cache.alloc().stats();
    let marks = cache.alloc().mark_counts();
    put("buckets_total", cache.alloc().nbuckets().to_string());
    put("buckets_free", (a.free.iter().sum::<usize>()).to_string());
    put("buckets_free_inc", a.free_inc.to_string());
    put("buckets_open", a.open_buckets.to_string());
    put("buckets_unused", marks[0].to_string());
    put("buckets_data", marks[1].to_string());
    put("buckets_dirty", marks[2].to_string());
    put("buckets_metadata", marks[3].to_string());
    put("buckets_invalidated", a.invalidated.to_string());
    put("gens_checkpoints", a.checkpoints.to_string());
    put("discards", a.discards.to_string());
    put("journal_entries", get(&c.journal_entries).to_string());
    put("index_checkpoints", get(&c.index_checkpoints).to_string());
    put("gc_runs", get(&c.gc_runs).to_string());
    put(
        "gc_stale_keys_dropped",
        get(&c.gc_stale_keys_dropped).to_string(),
    );
    let ix = cache.index().stats();
    put("index_files", ix.files.to_string());
    put("index_extents", ix.extents.to_string());
    put("cached_bytes", ix.cached_bytes.to_string());
    put("index_memory_bytes", ix.heap_bytes_estimate.to_string());
    put("io_errors", get(&c.io_errors).to_string());
    put(
        "state",
        format!(
            "\"{}\"",
            if cache.is_active() {
                "active"
            } else {
                "failed"
            }
        ),
    );
    put("sequential_cutoff", cache.sequential_cutoff().to_string());
    put(
        "cache_file",
        format!("\"{}\"", json_escape(&cache.path().to_string_lossy())),
    );
    let w = &cache.windows;
    put(
        "five_minute",
        window(w.over(total, Duration::from_secs(300))),
    );
    put("hour", window(w.over(total, Duration::from_secs(3600))));
    put("day", window(w.over(total, Duration::from_secs(86400))));
    put("total", window(total));
    if let Some(inodes) = inodes {
        f.extend(inodes.figures());
    }
    f
}

fn json_escape(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

pub fn stats_json(cache: &CacheSet, inodes: Option<&FdCache>) -> String {
    let body: Vec<String> = figures(cache, inodes)
        .into_iter()
        .map(|(k, v)| format!("  \"{k}\": {v}"))
        .collect();
    format!("{{\n{}\n}}\n", body.join(",\n"))
}

pub fn stats_text(cache: &CacheSet, inodes: Option<&FdCache>) -> String {
    let mut out = String::new();
    for (k, v) in figures(cache, inodes) {
        let v = v.trim_matches('"');
        if v.starts_with('{') {
            // a window: its figures on one line
            let inner = v
                .trim_matches(|c| c == '{' || c == '}')
                .replace('"', "")
                .replace(": ", "=");
            out.push_str(&format!("{k:<24} {inner}\n"));
        } else {
            out.push_str(&format!("{k:<24} {v}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_names_are_unique_per_mount_point_and_short() {
        let a = socket_path(Path::new("/home/alice"));
        assert_eq!(a, Path::new("/run/bcachefs-lite/home-alice.sock"));
        assert_ne!(
            socket_path(Path::new("/a/b")),
            socket_path(Path::new("/a-b"))
        );
        assert_ne!(
            socket_path(Path::new("/a b")),
            socket_path(Path::new("/a-b"))
        );
        let long = "/x".repeat(200);
        let p = socket_path(Path::new(&long));
        assert!(p.to_string_lossy().len() < 108, "sun_path limit");
    }
}
