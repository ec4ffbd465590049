//! The control socket: live stats and a few commands (bcache's sysfs), over a
//! Unix socket, and the client side used by `bcachefs-lite stats`, `set`, `get`, `gc`, `drop`.
//!
//! The socket lives at `/run/bcachefs-lite/<mount point, escaped>.sock`, so a client
//! finds it from the mount point alone. The directory is 0700, owned by the daemon's user
//! and never a symlink; the socket 0600. Every connection's peer credentials
//! (`SO_PEERCRED`) are checked: only root and the daemon's own user are answered.
//! Protocol (version 2, docs/ADMIN.md "Control protocol"): newline-delimited JSON. The
//! client sends one request line, `{"v":2,"cmd":"stats"}`, `{"v":2,"cmd":"gc"}`,
//! `{"v":2,"cmd":"get","args":["readahead"]}`, `{"v":2,"cmd":"set","args":["readahead=1M"]}`
//! `{"v":2,"cmd":"drop","args":["src"]}`, `{"v":2,"cmd":"warm","args":["src/a",
//! "0","8388608"]}` or `{"v":2,"cmd":"set_cache_mode","mode":"writearound"}` (reply
//! `previous`: the mode it replaced; `set cache_mode=` does the same); the server answers
//! one line,
//! `{"v":2,"ok":true,"daemon_version":"...",...}` with the command's fields, or
//! `{"v":2,"ok":false,"error":"..."}`, then closes the connection. A request of another
//! version is refused with an error reply naming the version served, and the client refuses
//! a reply of another version: a client and daemon of different versions fail clearly.
//!
//! A daemon removes only its own socket ([`SocketGuard`]): a daemon still exiting after an
//! unmount must not remove the socket of the daemon mounted after it.
//!
//! Threads: one accept thread, and one short-lived thread per connection (requests run
//! concurrently: `warm --jobs N`, a `stats` during a long `gc`). Nothing here holds a lock
//! of the cache across socket I/O.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::cache::stats::{get, HitSnapshot};
use crate::cache::CacheSet;
use crate::fs::inode::FdCache;
use crate::knobs::Knobs;
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

/// What the control socket serves: one mount's cache, inode table, knobs and backing root.
pub struct Server {
    pub cache: Arc<CacheSet>,
    pub inodes: Option<Arc<FdCache>>,
    pub knobs: Knobs,
    /// The backing directory (canonical), for `drop PATH`.
    pub backing: PathBuf,
    /// The metadata cache, for its figures in `stats`.
    pub meta: Option<Arc<MetaCache>>,
}

/// The control socket a daemon bound, removed on drop only while it is still this daemon's
/// (a daemon removes only its own socket: a newer daemon on the same mount point may have
/// replaced it). Binding and removal both run under an exclusive `flock` of
/// `<socket>.lock`, so "is it still mine?" and the unlink cannot race a new daemon's bind.
pub struct SocketGuard {
    path: PathBuf,
    dev_ino: (u64, u64),
}

fn lock_path(sock: &Path) -> PathBuf {
    let mut s = sock.as_os_str().to_owned();
    s.push(".lock");
    PathBuf::from(s)
}

/// Takes the exclusive lock that serialises bind and removal of `sock`. The holder may
/// unlink the lock file (a daemon's last act removes it, so nothing is left behind): a lock
/// taken on a file that is no longer the one at the path is let go and taken again.
fn lock_socket(sock: &Path) -> io::Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let path = lock_path(sock);
    loop {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)?;
        // SAFETY: flock on a descriptor we own; no memory is passed.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let held = f.metadata()?;
        if dev_ino(&path) == Some((held.dev(), held.ino())) {
            return Ok(f);
        }
    }
}

fn dev_ino(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

impl SocketGuard {
    /// Binds a listening socket at `path`, replacing whatever is there (an older daemon's
    /// socket, or one left by a crash), mode 0600.
    pub fn bind(path: &Path) -> io::Result<(UnixListener, SocketGuard)> {
        let _lock = lock_socket(path)?;
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        let dev_ino = dev_ino(path).ok_or_else(|| io::Error::other("socket vanished"))?;
        Ok((
            listener,
            SocketGuard {
                path: path.to_path_buf(),
                dev_ino,
            },
        ))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SocketGuard {
    fn drop(&mut self) {
        let Ok(_lock) = lock_socket(&self.path) else {
            return;
        };
        if dev_ino(&self.path) == Some(self.dev_ino) {
            let _ = std::fs::remove_file(&self.path);
        } else {
            tracing::info!(
                "control socket {} belongs to a newer daemon; left in place",
                self.path.display()
            );
        }
        // still holding it: a daemon waiting on this file retries on the new one
        let _ = std::fs::remove_file(lock_path(&self.path));
    }
}

/// Serves the control socket of the mount at `mountpoint` until the process exits.
/// Dropping the guard removes the socket if it is still ours.
pub fn serve(mountpoint: &Path, server: Server) -> io::Result<SocketGuard> {
    prepare_run_dir(Path::new(RUN_DIR))?;
    let (listener, guard) = SocketGuard::bind(&socket_path(mountpoint))?;
    let server = Arc::new(server);
    std::thread::Builder::new()
        .name("bcl-control".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                // one thread per connection: `warm --jobs N` sends N at once, and a long
                // `gc` or `drop` does not hold up `stats`
                let server = server.clone();
                let spawned = std::thread::Builder::new()
                    .name("bcl-control-req".into())
                    .spawn(move || {
                        if let Err(e) = answer(stream, &server) {
                            tracing::debug!("control request: {e}");
                        }
                    });
                if let Err(e) = spawned {
                    tracing::warn!("control request dropped: {e}");
                }
            }
        })?;
    Ok(guard)
}

/// Version of the control protocol. 2: `get`, `set`, `drop` and `warm` with `args`; replies carry
/// `daemon_version`.
pub const PROTOCOL_VERSION: u32 = 2;

/// A request on the control socket.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Request {
    pub v: u32,
    pub cmd: String,
    /// The command's arguments: `KEY=VALUE` pairs for `set`, names for `get`, paths
    /// relative to the mount point for `drop`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// The mode of `set_cache_mode` (`writethrough`, `writearound`, `none`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
}

impl Request {
    pub fn new(cmd: &str) -> Request {
        Request::with_args(cmd, Vec::new())
    }

    pub fn with_args(cmd: &str, args: Vec<String>) -> Request {
        Request {
            v: PROTOCOL_VERSION,
            cmd: cmd.to_string(),
            args,
            mode: None,
        }
    }
}

fn reply_ok(mut fields: serde_json::Map<String, serde_json::Value>) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    m.insert("v".into(), PROTOCOL_VERSION.into());
    m.insert("ok".into(), true.into());
    m.insert("daemon_version".into(), env!("CARGO_PKG_VERSION").into());
    m.append(&mut fields);
    serde_json::Value::Object(m)
}

fn reply_err(msg: String) -> serde_json::Value {
    serde_json::json!({
        "v": PROTOCOL_VERSION,
        "ok": false,
        "daemon_version": env!("CARGO_PKG_VERSION"),
        "error": msg,
    })
}

fn shown(list: Vec<crate::knobs::Shown>) -> serde_json::Value {
    list.iter().map(|s| s.json()).collect()
}

/// Answers one request line (the server side of the protocol, apart from the socket).
pub fn handle(line: &str, server: &Server) -> serde_json::Value {
    let req: Request = match serde_json::from_str(line.trim()) {
        Ok(r) => r,
        Err(e) => {
            // an older or newer client: say which version we speak, whatever it sent
            return reply_err(format!("bad request: {e}"));
        }
    };
    if req.v != PROTOCOL_VERSION {
        return reply_err(format!(
            "control protocol version {} is not served (this daemon, bcachefs-lite {}, speaks \
             version {PROTOCOL_VERSION}; use the bcachefs-lite that mounted it, or remount)",
            req.v,
            env!("CARGO_PKG_VERSION")
        ));
    }
    let cache = &server.cache;
    let mut m = serde_json::Map::new();
    match req.cmd.as_str() {
        "stats" => {
            m.insert(
                "stats".into(),
                stats_value(cache, server.inodes.as_deref(), server.meta.as_deref()),
            );
        }
        "gc" => {
            let dropped_before = get(&cache.counters.gc_stale_keys_dropped);
            let moved = cache.gc_now();
            m.insert("moved_bytes".into(), moved.into());
            m.insert(
                "stale_keys_dropped".into(),
                (get(&cache.counters.gc_stale_keys_dropped) - dropped_before).into(),
            );
            m.insert(
                "buckets_unused".into(),
                cache.alloc().mark_counts()[0].into(),
            );
        }
        "get" => match server.knobs.get(&req.args) {
            Ok(list) => {
                m.insert("knobs".into(), shown(list));
            }
            Err(e) => return reply_err(e),
        },
        "set" => match server.knobs.set(&req.args) {
            Ok(list) => {
                m.insert("knobs".into(), shown(list));
            }
            Err(e) => return reply_err(e),
        },
        "warm" => match warm_chunk(server, &req.args) {
            Ok((hit, read)) => {
                m.insert("hit_bytes".into(), hit.into());
                m.insert("read_bytes".into(), read.into());
            }
            Err(e) => return reply_err(e),
        },
        "pin_sync" => {
            if let Err(e) = cache.sync_pins() {
                return reply_err(format!("gens checkpoint: {e}"));
            }
            m.insert("pinned_bytes".into(), cache.pinned_bytes().into());
        }
        "unpin" => match for_each_file(server, &req.args, |state| cache.unpin_file(state) as u64) {
            Ok((_, buckets)) => {
                if let Err(e) = cache.sync_pins() {
                    return reply_err(format!("gens checkpoint: {e}"));
                }
                tracing::info!(buckets, paths = ?req.args, "unpinned");
                m.insert("buckets".into(), buckets.into());
                m.insert("pinned_bytes".into(), cache.pinned_bytes().into());
            }
            Err(e) => return reply_err(e),
        },
        "drop" => match drop_tree(server, &req.args) {
            Ok((files, bytes)) => {
                m.insert("files".into(), files.into());
                m.insert("bytes".into(), bytes.into());
            }
            Err(e) => return reply_err(e),
        },
        "set_cache_mode" => {
            let Some(name) = req.mode.as_deref() else {
                return reply_err("set_cache_mode needs \"mode\"".into());
            };
            let mode = match name.parse() {
                Ok(m) => m,
                Err(e) => return reply_err(e),
            };
            match cache.set_cache_mode(mode) {
                Ok(old) => {
                    m.insert("previous".into(), old.name().into());
                }
                Err(e) => return reply_err(e.to_string()),
            }
        }
        // writeback: write everything back now; the client follows `dirty_data` in the stats
        "flush" => {
            cache.request_flush();
            let (files, bytes) = cache.dirty_figures();
            m.insert("dirty_files".into(), files.into());
            m.insert("dirty_data".into(), bytes.into());
        }
        other => return reply_err(format!("unknown command '{other}'")),
    };
    reply_ok(m)
}

/// `drop`: every cached extent of the files under `rels` (paths relative to the mount
/// point; none: every file). Returns (files, bytes) dropped. The metadata cache (issue 11)
/// drops its entries for the same paths here.
fn drop_tree(server: &Server, rels: &[String]) -> Result<(u64, u64), String> {
    let cache = &server.cache;
    // The metadata cache is keyed by inode, not by path, so it is dropped whole, whatever
    // the paths (it refills from the backing; the kernel keeps what its TTLs let it).
    if let Some(meta) = &server.meta {
        let entries = meta.clear();
        tracing::info!(entries, "dropped the metadata cache");
    }
    if rels.is_empty() {
        let (files, bytes) = cache.drop_everything();
        tracing::info!(files, bytes, "dropped every file's cached data");
        return Ok((files, bytes));
    }
    let (files, bytes) = for_each_file(server, rels, |state| cache.drop_file(state))?;
    tracing::info!(files, bytes, paths = ?rels, "dropped cached data");
    Ok((files, bytes))
}

/// Runs `f` on the cache state of every regular file under `rels` (paths relative to the
/// mount point; none: the whole tree) in the backing, not following symlinks, on the
/// calling thread. Returns (files where `f` returned more than 0, sum of what it returned).
fn for_each_file(
    server: &Server,
    rels: &[String],
    mut f: impl FnMut(&crate::cache::FileState) -> u64,
) -> Result<(u64, u64), String> {
    let cache = &server.cache;
    let mut roots = Vec::new();
    for rel in rels {
        let full = backing_path(server, rel)?;
        std::fs::symlink_metadata(&full).map_err(|e| format!("'{rel}': {e}"))?;
        roots.push(full);
    }
    if roots.is_empty() {
        roots.push(server.backing.clone());
    }
    let (mut files, mut total) = (0u64, 0u64);
    let mut stack = roots;
    while let Some(path) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            if let Ok(rd) = std::fs::read_dir(&path) {
                stack.extend(rd.flatten().map(|e| e.path()));
            }
        } else if meta.is_file() {
            use std::os::fd::AsRawFd;
            use std::os::unix::fs::OpenOptionsExt;
            let Ok(file) = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_PATH | libc::O_NOFOLLOW)
                .open(&path)
            else {
                continue;
            };
            let Ok(st) = crate::sys::fstat_fd(file.as_raw_fd()) else {
                continue;
            };
            if let Some(state) = cache.file_state(file.as_raw_fd(), &st) {
                let n = f(&state);
                if n > 0 {
                    files += 1;
                    total += n;
                }
            }
        }
    }
    Ok((files, total))
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

/// Checks a path relative to the mount point and joins it to the backing.
fn backing_path(server: &Server, rel: &str) -> Result<PathBuf, String> {
    let p = Path::new(rel);
    if p.is_absolute()
        || p.components().any(|c| {
            !matches!(
                c,
                std::path::Component::Normal(_) | std::path::Component::CurDir
            )
        })
    {
        return Err(format!("'{rel}': not a plain path inside the mount"));
    }
    Ok(server.backing.join(p))
}

/// `warm`: args `[path, offset, len]` or `[path, offset, len, "pin"]`, the path relative to
/// the mount point. Reads that range of the file into the cache ([`CacheSet::warm`]), and
/// pins it. Returns (bytes hit, bytes read).
fn warm_chunk(server: &Server, args: &[String]) -> Result<(u64, u64), String> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let (rel, offset, len, pin) = match args {
        [rel, offset, len] => (rel, offset, len, false),
        [rel, offset, len, p] if p == "pin" => (rel, offset, len, true),
        _ => {
            return Err("warm: expected [path, offset, len] or [path, offset, len, \"pin\"]".into())
        }
    };
    let num = |s: &str| {
        s.parse::<u64>()
            .map_err(|_| format!("warm: bad number {s:?}"))
    };
    let (offset, len) = (num(offset)?, num(len)?);
    let path = backing_path(server, rel)?;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&path)
        .map_err(|e| format!("'{rel}': {e}"))?;
    let st = crate::sys::fstat_fd(f.as_raw_fd()).map_err(|e| format!("'{rel}': {e}"))?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(format!("'{rel}': not a regular file"));
    }
    let Some(state) = server.cache.file_state(f.as_raw_fd(), &st) else {
        return Ok((0, 0)); // uncacheable (counted in stats)
    };
    server
        .cache
        .warm(&state, f.as_raw_fd(), &st, offset, len, pin)
        .map_err(|e| format!("'{rel}': {e}"))
}

fn answer(stream: UnixStream, server: &Server) -> io::Result<()> {
    if !peer_allowed(&stream)? {
        let mut reply = reply_err(
            "permission denied: only root and the user who mounted may use the control socket"
                .into(),
        )
        .to_string();
        reply.push('\n');
        return (&stream).write_all(reply.as_bytes());
    }
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut line = String::new();
    BufReader::new(&stream)
        .take(64 << 10)
        .read_line(&mut line)?;
    let mut reply = handle(&line, server).to_string();
    reply.push('\n');
    (&stream).write_all(reply.as_bytes())
}

/// Why a connection to the control socket failed, in the words a user needs.
fn connect_error(mountpoint: &Path, sock: &Path, e: io::Error) -> io::Error {
    let kind = e.kind();
    let msg = match e.raw_os_error() {
        Some(libc::EACCES) | Some(libc::EPERM) => format!(
            "permission denied: the control socket of {} ({}) is open only to root and the \
             user who mounted it; run this as one of them (e.g. with sudo)",
            mountpoint.display(),
            sock.display()
        ),
        _ => format!(
            "no bcachefs-lite cache is mounted at {} ({}: {e})",
            mountpoint.display(),
            sock.display()
        ),
    };
    io::Error::new(kind, msg)
}

/// Checks a reply: the same protocol version, `ok`. An error reply becomes an error.
pub fn check_reply(cmd: &str, v: serde_json::Value) -> io::Result<serde_json::Value> {
    let daemon_v = v.get("v").and_then(|v| v.as_u64());
    if daemon_v != Some(u64::from(PROTOCOL_VERSION)) {
        let daemon = v
            .get("daemon_version")
            .and_then(|d| d.as_str())
            .map(|d| format!("bcachefs-lite {d}"))
            .unwrap_or_else(|| "an older bcachefs-lite".into());
        return Err(io::Error::other(format!(
            "the daemon ({daemon}) speaks control protocol version {}, this client \
             (bcachefs-lite {}) version {PROTOCOL_VERSION}: use the bcachefs-lite that \
             mounted it, or remount with this one",
            daemon_v.map_or("?".into(), |v| v.to_string()),
            env!("CARGO_PKG_VERSION")
        )));
    }
    if v.get("ok") == Some(&serde_json::Value::Bool(true)) {
        Ok(v)
    } else {
        let why = v
            .get("error")
            .and_then(|e| e.as_str())
            .unwrap_or("no reason given");
        Err(io::Error::other(format!("{cmd}: {why}")))
    }
}

/// Sends `cmd` to the daemon serving `mountpoint` and returns its reply (an error reply
/// becomes an error).
pub fn request(mountpoint: &Path, cmd: &str) -> io::Result<serde_json::Value> {
    request_args(mountpoint, cmd, Vec::new())
}

/// [`request`] with arguments. `gc` and `drop` may take a while: no read timeout for them.
pub fn request_args(
    mountpoint: &Path,
    cmd: &str,
    args: Vec<String>,
) -> io::Result<serde_json::Value> {
    send(mountpoint, &Request::with_args(cmd, args))
}

/// Sends `req` to the daemon serving `mountpoint` and returns its reply (an error reply, or
/// one of another protocol version, becomes an error).
pub fn send(mountpoint: &Path, req: &Request) -> io::Result<serde_json::Value> {
    let path = socket_path(mountpoint);
    let mut stream = UnixStream::connect(&path).map_err(|e| connect_error(mountpoint, &path, e))?;
    let timeout = match req.cmd.as_str() {
        // set: leaving writeback (cache_mode=) flushes first, which may take a while
        "gc" | "drop" | "warm" | "unpin" | "pin_sync" | "set" | "set_cache_mode" => None,
        _ => Some(Duration::from_secs(30)),
    };
    stream.set_read_timeout(timeout)?;
    let mut line = serde_json::to_string(req).map_err(io::Error::other)?;
    line.push('\n');
    stream.write_all(line.as_bytes())?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply)?;
    let v: serde_json::Value = serde_json::from_str(reply.trim())
        .map_err(|e| io::Error::other(format!("bad reply from the daemon: {e}")))?;
    check_reply(&req.cmd, v)
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
    put("metadata_checkpoints", get(&c.metadata_checkpoints).into());
    put("fills_pending", get(&c.fills_pending).into());
    put("gc_runs", get(&c.gc_runs).into());
    put(
        "gc_stale_keys_dropped",
        get(&c.gc_stale_keys_dropped).into(),
    );
    let gens = cache.alloc().gens();
    // stale keys (their bucket was reused) hold no cached data: not counted
    let ix = cache
        .index()
        .stats_live(|p| gens.get(p.bucket as usize) == Some(&p.gen));
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
    // writeback (issue 13)
    let wb = cache.writeback();
    let (dirty_files, dirty_bytes) = cache.dirty_figures();
    put("dirty_data", dirty_bytes.into());
    put("dirty_files", dirty_files.into());
    put("writeback_rate", get(&wb.rate).into());
    put("writeback_rate_target", get(&wb.rate_target).into());
    put(
        "writeback_running",
        u64::from(wb.running.load(std::sync::atomic::Ordering::Relaxed)).into(),
    );
    put("writeback_errors", get(&wb.errors).into());
    put("writeback_bytes", get(&wb.written).into());
    put("writeback_conflicts", get(&wb.conflicts).into());
    put("sequential_cutoff", cache.sequential_cutoff().into());
    put("pinned_bytes", cache.pinned_bytes().into());
    put("pin_limit", cache.pin_limit().into());
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
    // offline mode (issue 16): the daemon's one offline state
    if let Some(offline) = crate::offline::get() {
        f.extend(offline.figures());
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
        assert_eq!(line, r#"{"v":2,"cmd":"stats"}"#);
        let back: Request = serde_json::from_str(&line).unwrap();
        assert_eq!(back, Request::new("stats"));
        let set = Request::with_args("set", vec!["readahead=1M".into()]);
        let line = serde_json::to_string(&set).unwrap();
        assert_eq!(line, r#"{"v":2,"cmd":"set","args":["readahead=1M"]}"#);
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
    fn a_reply_of_another_protocol_version_is_refused_clearly() {
        let old = serde_json::json!({"v": 1, "ok": true, "stats": {}});
        let e = check_reply("stats", old).unwrap_err().to_string();
        assert!(e.contains("version 1") && e.contains("version 2"), "{e}");
        let ok = serde_json::json!({"v": 2, "ok": true, "daemon_version": "0.1.0"});
        assert!(check_reply("stats", ok).is_ok());
        let refused = serde_json::json!({"v": 2, "ok": false, "error": "unknown setting 'x'"});
        let e = check_reply("set", refused).unwrap_err().to_string();
        assert_eq!(e, "set: unknown setting 'x'");
    }

    #[test]
    fn a_daemon_removes_only_its_own_socket() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("m.sock");
        let (_old_listener, old) = SocketGuard::bind(&sock).unwrap();
        // a new daemon on the same mount point replaces the socket while the old one exits
        let (_new_listener, new) = SocketGuard::bind(&sock).unwrap();
        drop(old);
        assert!(
            sock.exists(),
            "the old daemon removed the new daemon's socket"
        );
        UnixStream::connect(&sock).expect("the new daemon's socket still answers");
        drop(new);
        assert!(!sock.exists(), "a daemon removes its own socket");
        assert!(!lock_path(&sock).exists(), "the lock file was left behind");
    }

    /// A lock taken on a lock file that its holder then unlinked is not a lock: the waiter
    /// takes the new file's, so two daemons never both hold "the" lock.
    #[test]
    fn a_lock_on_an_unlinked_lock_file_is_taken_again() {
        use std::os::fd::AsRawFd;
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("m.sock");
        let first = lock_socket(&sock).unwrap();
        let path = sock.clone();
        let waiter = std::thread::spawn(move || lock_socket(&path).unwrap());
        std::thread::sleep(std::time::Duration::from_millis(100));
        std::fs::remove_file(lock_path(&sock)).unwrap();
        // a third daemon comes along and creates and holds the new lock file
        let third = lock_socket(&sock).unwrap();
        drop(first);
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(
            !waiter.is_finished(),
            "the waiter holds a stale lock beside the third"
        );
        drop(third);
        let second = waiter.join().unwrap();
        // SAFETY: stat is plain old data (integers only); all-zero is a valid value.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstat of a descriptor we own into a stat we own.
        assert_eq!(unsafe { libc::fstat(second.as_raw_fd(), &mut st) }, 0);
        assert_eq!(dev_ino(&lock_path(&sock)), Some((st.st_dev, st.st_ino)));
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
