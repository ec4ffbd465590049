//! The control socket: live stats and a few commands (bcache's sysfs), over a
//! Unix socket, and the client side used by `bcachefs-lite stats`.
//!
//! The socket lives at `/run/bcachefs-lite/<mount point, escaped>.sock`, so a client
//! finds it from the mount point alone. The directory is 0700, owned by the daemon's user
//! and never a symlink; the socket 0600. Every connection's peer credentials
//! (`SO_PEERCRED`) are checked: only root and the daemon's own user are answered.
//! Protocol (version 1): newline-delimited JSON. The client sends one request line,
//! `{"v":1,"cmd":"stats"}`, `{"v":1,"cmd":"gc"}` or
//! `{"v":1,"cmd":"set_cache_mode","mode":"writearound"}` (reply `previous`: the mode it
//! replaced); the server answers one line,
//! `{"v":1,"ok":true,...}` with the command's fields, or `{"v":1,"ok":false,"error":"..."}`,
//! then closes the connection. A request of another version is refused with an error
//! reply naming the version served.
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
use crate::meta::MetaCache;

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
    meta: Option<Arc<MetaCache>>,
) -> io::Result<PathBuf> {
    prepare_run_dir(Path::new(RUN_DIR))?;
    let path = socket_path(mountpoint);
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    std::thread::Builder::new()
        .name("bcl-control".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                if let Err(e) = answer(stream, &cache, inodes.as_deref(), meta.as_deref()) {
                    tracing::debug!("control request: {e}");
                }
            }
        })?;
    Ok(path)
}

/// Version of the control protocol.
pub const PROTOCOL_VERSION: u32 = 1;

/// A request on the control socket.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Request {
    pub v: u32,
    pub cmd: String,
    /// The mode of `set_cache_mode` (`writethrough`, `writearound`, `none`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
}

impl Request {
    pub fn new(cmd: &str) -> Request {
        Request {
            v: PROTOCOL_VERSION,
            cmd: cmd.to_string(),
            mode: None,
        }
    }
}

fn reply_ok(mut fields: serde_json::Map<String, serde_json::Value>) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    m.insert("v".into(), PROTOCOL_VERSION.into());
    m.insert("ok".into(), true.into());
    m.append(&mut fields);
    serde_json::Value::Object(m)
}

fn reply_err(msg: String) -> serde_json::Value {
    serde_json::json!({ "v": PROTOCOL_VERSION, "ok": false, "error": msg })
}

/// Answers one request line (the server side of the protocol, apart from the socket).
pub fn handle(
    line: &str,
    cache: &CacheSet,
    inodes: Option<&FdCache>,
    meta: Option<&MetaCache>,
) -> serde_json::Value {
    let req: Request = match serde_json::from_str(line.trim()) {
        Ok(r) => r,
        Err(e) => return reply_err(format!("bad request: {e}")),
    };
    if req.v != PROTOCOL_VERSION {
        return reply_err(format!(
            "control protocol version {} is not served (this daemon speaks {PROTOCOL_VERSION})",
            req.v
        ));
    }
    let mut m = serde_json::Map::new();
    match req.cmd.as_str() {
        "stats" => m.insert("stats".into(), stats_value(cache, inodes, meta)),
        "gc" => m.insert("moved_bytes".into(), cache.gc_now().into()),
        "set_cache_mode" => {
            let Some(name) = req.mode.as_deref() else {
                return reply_err("set_cache_mode needs \"mode\"".into());
            };
            let mode = match name.parse() {
                Ok(m) => m,
                Err(e) => return reply_err(e),
            };
            match cache.set_cache_mode(mode) {
                Ok(old) => m.insert("previous".into(), old.name().into()),
                Err(e) => return reply_err(e.to_string()),
            }
        }
        other => return reply_err(format!("unknown command '{other}'")),
    };
    reply_ok(m)
}

/// Makes the socket directory, or checks the one that is there: a real directory (not a
/// symlink someone planted), owned by this process's user and writable by nobody else, so
/// no other user can replace the socket with one of their own.
fn prepare_run_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let m = std::fs::symlink_metadata(dir)?;
    let refuse = |why: String| {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "control socket directory {}: {why}; refusing to use it",
                dir.display()
            ),
        ))
    };
    if !m.file_type().is_dir() {
        return refuse("it is not a directory (a symlink?)".into());
    }
    if m.uid() != crate::sys::euid() {
        return refuse(format!(
            "it is owned by uid {}, not by this daemon's user",
            m.uid()
        ));
    }
    if m.mode() & 0o077 != 0 {
        // ours, only too open (an older version made it so): close it
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Who may ask: root, and the user running the daemon (the one who mounted).
fn peer_allowed(stream: &UnixStream) -> io::Result<bool> {
    use std::os::fd::AsRawFd;
    let uid = crate::sys::peer_uid(stream.as_raw_fd())?;
    Ok(uid == 0 || uid == crate::sys::euid())
}

fn answer(
    stream: UnixStream,
    cache: &CacheSet,
    inodes: Option<&FdCache>,
    meta: Option<&MetaCache>,
) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    if !peer_allowed(&stream)? {
        let mut reply = reply_err(
            "permission denied: only root and the user who mounted may use the control socket"
                .into(),
        )
        .to_string();
        reply.push('\n');
        return (&stream).write_all(reply.as_bytes());
    }
    let mut line = String::new();
    BufReader::new(&stream).take(4096).read_line(&mut line)?;
    let mut reply = handle(&line, cache, inodes, meta).to_string();
    reply.push('\n');
    (&stream).write_all(reply.as_bytes())
}

/// Sends `cmd` to the daemon serving `mountpoint` and returns its reply (an error reply
/// becomes an error).
pub fn request(mountpoint: &Path, cmd: &str) -> io::Result<serde_json::Value> {
    send(mountpoint, &Request::new(cmd))
}

/// Sends `req` to the daemon serving `mountpoint` and returns its reply (an error reply
/// becomes an error).
pub fn send(mountpoint: &Path, req: &Request) -> io::Result<serde_json::Value> {
    let cmd = req.cmd.as_str();
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
    let mut line = serde_json::to_string(req).map_err(io::Error::other)?;
    line.push('\n');
    stream.write_all(line.as_bytes())?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply)?;
    let v: serde_json::Value = serde_json::from_str(reply.trim())
        .map_err(|e| io::Error::other(format!("bad reply from the daemon: {e}")))?;
    if v.get("ok") == Some(&serde_json::Value::Bool(true)) {
        Ok(v)
    } else {
        let why = v
            .get("error")
            .and_then(|e| e.as_str())
            .unwrap_or("no reason given");
        Err(io::Error::other(format!(
            "the daemon refused '{cmd}': {why}"
        )))
    }
}

/// Every figure `stats` shows, in order, as (name, value).
fn figures(
    cache: &CacheSet,
    inodes: Option<&FdCache>,
    meta: Option<&MetaCache>,
) -> Vec<(String, serde_json::Value)> {
    let c = &cache.counters;
    let total = c.hit_snapshot();
    let mut f: Vec<(String, serde_json::Value)> = Vec::new();
    let mut put = |k: &str, v: serde_json::Value| f.push((k.to_string(), v));
    let window = |s: HitSnapshot| {
        serde_json::json!({
            "cache_hits": s.hits,
            "cache_misses": s.misses,
            "cache_hit_ratio": s.hit_ratio(),
            "cache_bypass_hits": s.bypass_hits,
            "cache_bypass_misses": s.bypass_misses,
            "bypassed": s.bypassed,
        })
    };
    put("cache_hits", total.hits.into());
    put("cache_misses", total.misses.into());
    put("cache_hit_ratio", total.hit_ratio().into());
    put("bypassed", total.bypassed.into());
    put("cache_bypass_hits", total.bypass_hits.into());
    put("cache_bypass_misses", total.bypass_misses.into());
    put(
        "cache_miss_collisions",
        get(&c.cache_miss_collisions).into(),
    );
    put("cache_readaheads", get(&c.cache_readaheads).into());
    put("cache_read_races", get(&c.cache_read_races).into());
    put("checksum_errors", get(&c.checksum_errors).into());
    put("stale_pointers", get(&c.stale_pointers).into());
    put("bytes_hit", get(&c.bytes_hit).into());
    put("bytes_missed", get(&c.bytes_missed).into());
    put("bytes_filled", get(&c.bytes_filled).into());
    // admission (issue 12)
    put(
        "probation_bytes_filled",
        get(&c.probation_bytes_filled).into(),
    );
    put("fills_skipped", get(&c.fills_skipped).into());
    put("invalidations", get(&c.invalidations).into());
    let a = cache.alloc().stats();
    let marks = cache.alloc().mark_counts();
    put("buckets_total", cache.alloc().nbuckets().into());
    put("buckets_free", (a.free.iter().sum::<usize>()).into());
    put("buckets_free_inc", a.free_inc.into());
    put("buckets_open", a.open_buckets.into());
    put("buckets_unused", marks[0].into());
    put("buckets_data", marks[1].into());
    put("buckets_dirty", marks[2].into());
    put("buckets_metadata", marks[3].into());
    put("buckets_invalidated", a.invalidated.into());
    put("gens_checkpoints", a.checkpoints.into());
    put("discards", a.discards.into());
    put("probation_buckets", a.probation_buckets.into());
    put("probation_promotions", a.promotions.into());
    put("evicted_never_hit", a.evicted_never_hit.into());
    put("evicted_probation", a.evicted_probation.into());
    put("journal_entries", get(&c.journal_entries).into());
    put("index_checkpoints", get(&c.index_checkpoints).into());
    put("gc_runs", get(&c.gc_runs).into());
    put(
        "gc_stale_keys_dropped",
        get(&c.gc_stale_keys_dropped).into(),
    );
    let ix = cache.index().stats();
    put("index_files", ix.files.into());
    put("index_extents", ix.extents.into());
    put("cached_bytes", ix.cached_bytes.into());
    put("index_memory_bytes", ix.heap_bytes_estimate.into());
    put("io_errors", get(&c.io_errors).into());
    put("uncacheable_files", get(&c.uncacheable_files).into());
    put("open_file_states", cache.live_files().into());
    let state = if cache.is_active() {
        "active"
    } else {
        "failed"
    };
    put("state", state.into());
    if let Some(why) = cache.failure() {
        put("failure", why.into());
    }
    put("cache_mode", cache.cache_mode().name().into());
    put("sequential_cutoff", cache.sequential_cutoff().into());
    put("probation_after", cache.probation_after().into());
    put("cache_file", cache.path().to_string_lossy().into());
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
    if let Some(meta) = meta {
        f.extend(meta.figures());
    }
    f
}

/// Every figure as one JSON object, in display order.
pub fn stats_value(
    cache: &CacheSet,
    inodes: Option<&FdCache>,
    meta: Option<&MetaCache>,
) -> serde_json::Value {
    serde_json::Value::Object(figures(cache, inodes, meta).into_iter().collect())
}

/// `stats --json`: the figures, pretty-printed.
pub fn stats_json(stats: &serde_json::Value) -> String {
    let mut s = serde_json::to_string_pretty(stats).unwrap_or_default();
    s.push('\n');
    s
}

/// `stats`: one figure a line; a window's figures on one line.
pub fn stats_text(stats: &serde_json::Value) -> String {
    let mut out = String::new();
    let Some(map) = stats.as_object() else {
        return out;
    };
    for (k, v) in map {
        let shown = match v {
            serde_json::Value::Object(w) => w
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(", "),
            serde_json::Value::String(s) => s.clone(),
            v => v.to_string(),
        };
        out.push_str(&format!("{k:<24} {shown}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_versioned_json_lines() {
        let line = serde_json::to_string(&Request::new("stats")).unwrap();
        assert_eq!(line, r#"{"v":1,"cmd":"stats"}"#);
        let back: Request = serde_json::from_str(&line).unwrap();
        assert_eq!(back, Request::new("stats"));
        let text = stats_text(&serde_json::json!({
            "cache_hits": 3,
            "state": "active",
            "hour": {"cache_hits": 1, "cache_misses": 2},
        }));
        assert_eq!(
            text,
            "cache_hits               3\nstate                    active\n\
             hour                     cache_hits=1, cache_misses=2\n"
        );
    }

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

    #[test]
    fn the_socket_directory_must_be_a_private_directory_of_ours() {
        let t = tempfile::tempdir().unwrap();
        let fresh = t.path().join("fresh");
        prepare_run_dir(&fresh).unwrap();
        let mode = std::fs::metadata(&fresh).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        // ours but too open: closed
        std::fs::set_permissions(&fresh, std::fs::Permissions::from_mode(0o777)).unwrap();
        prepare_run_dir(&fresh).unwrap();
        let mode = std::fs::metadata(&fresh).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        // a planted symlink is not followed
        let link = t.path().join("link");
        std::os::unix::fs::symlink(&fresh, &link).unwrap();
        let e = prepare_run_dir(&link).unwrap_err();
        assert!(e.to_string().contains("not a directory"), "{e}");
        if crate::sys::euid() == 0 {
            // someone else's directory is refused
            let theirs = t.path().join("theirs");
            std::fs::create_dir(&theirs).unwrap();
            std::os::unix::fs::chown(&theirs, Some(65534), None).unwrap();
            let e = prepare_run_dir(&theirs).unwrap_err();
            assert!(e.to_string().contains("owned by uid 65534"), "{e}");
        }
    }

    /// Another user who reaches the socket (here one in an open directory) is refused by
    /// its credentials, whatever the file modes say.
    #[test]
    fn only_root_and_the_daemons_user_may_ask() {
        if crate::sys::euid() != 0 {
            eprintln!("SKIPPED (not root): needs setpriv to another uid");
            return;
        }
        let t = tempfile::tempdir().unwrap();
        std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = t.path().join("s.sock");
        let listener = UnixListener::bind(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).unwrap();
        let verdicts = std::thread::spawn(move || {
            let mut out = Vec::new();
            for stream in listener.incoming().take(2) {
                out.push(peer_allowed(&stream.unwrap()).unwrap());
            }
            out
        });
        let connect = format!(
            "import socket; s = socket.socket(socket.AF_UNIX); s.connect('{}')",
            path.display()
        );
        let run = |prefix: &[&str]| {
            let status = std::process::Command::new(prefix[0])
                .args(&prefix[1..])
                .args(["/usr/bin/python3", "-c", &connect])
                .status()
                .unwrap();
            assert!(status.success());
        };
        run(&[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
        ]);
        run(&["env"]);
        assert_eq!(verdicts.join().unwrap(), vec![false, true]);
    }
}
