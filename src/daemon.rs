//! Mounting and running the daemon: `bcachefs-lite mount`.
//!
//! Order of a background mount (the default):
//! 1. The caller's process checks the arguments, then forks before any thread
//!    exists. The parent waits on a pipe.
//! 2. The child starts a new session, mounts (fuser's `Session::new` mounts and
//!    completes the FUSE INIT handshake, so the mount is live when it returns), sets the
//!    mount's kernel readahead window (`kernel_readahead=`, sysfs; before any request is
//!    served) and writes "ok" or the error to the pipe. The parent exits 0 on "ok", else prints
//!    the error and exits non-zero: `mount` returns only once the mount is live.
//! 3. The child serves requests until the mount goes away (`umount`, or SIGINT /
//!    SIGTERM / SIGHUP, which unmount cleanly), then exits 0.
//!
//! With `--foreground` steps 1 and 2 are skipped and the process itself serves.
//! Signals are blocked in every thread and taken by one thread with `sigwait`, so
//! a signal never interrupts a request half-way.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fuser::{Config, MountOption, SessionACL};

use crate::cache::{CacheConfig, CacheSet};
use crate::device::format::CacheMode;
use crate::fs::PassthroughFs;
use crate::options::MountOptions;

/// What `bcachefs-lite mount` was asked to do, already validated.
#[derive(Debug, Clone)]
pub struct MountRequest {
    pub backing: PathBuf,
    pub mountpoint: PathBuf,
    pub options: MountOptions,
    pub foreground: bool,
    pub threads: usize,
    pub log_file: Option<PathBuf>,
}

/// Exit codes, as mount(8) uses them.
pub const EXIT_USAGE: i32 = 1;
pub const EXIT_MOUNT_FAILED: i32 = 32;

/// A mount that could not be done, with what to tell the user.
#[derive(Debug)]
pub struct MountError {
    pub message: String,
    pub exit_code: i32,
}

impl MountError {
    fn usage(message: String) -> MountError {
        MountError {
            message,
            exit_code: EXIT_USAGE,
        }
    }
    fn failed(message: String) -> MountError {
        MountError {
            message,
            exit_code: EXIT_MOUNT_FAILED,
        }
    }
}

/// Default worker threads: one per core, at least two.
pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .max(2)
}

fn check_dir(what: &str, path: &Path) -> Result<PathBuf, MountError> {
    let meta = std::fs::metadata(path)
        .map_err(|e| MountError::usage(format!("{what} {}: {e}", path.display())))?;
    if !meta.is_dir() {
        return Err(MountError::usage(format!(
            "{what} {}: not a directory",
            path.display()
        )));
    }
    std::fs::canonicalize(path)
        .map_err(|e| MountError::usage(format!("{what} {}: {e}", path.display())))
}

/// Checks what can be checked before forking: both directories exist, and the
/// backing is not the mount point or inside it (that would recurse into ourselves).
pub fn validate(req: &mut MountRequest) -> Result<(), MountError> {
    req.backing = check_dir("backing directory", &req.backing)?;
    req.mountpoint = check_dir("mount point", &req.mountpoint)?;
    if req.backing.starts_with(&req.mountpoint) {
        return Err(MountError::usage(format!(
            "backing directory {} is inside the mount point {}",
            req.backing.display(),
            req.mountpoint.display()
        )));
    }
    let o = &req.options;
    if o.cache.is_none() {
        let cache_only = [
            ("cache_size", o.cache_size.is_some()),
            ("replacement", o.replacement.is_some()),
            ("discard", o.discard.is_some()),
            ("reformat", o.reformat),
            ("metrics", o.metrics.is_some()),
            ("pin_limit", o.pin_limit.is_some()),
            ("cache_mode", o.cache_mode.is_some()),
            ("noflush_on_unmount", o.noflush_on_unmount),
            ("drop_dirty", o.drop_dirty),
        ];
        if let Some((name, _)) = cache_only.iter().find(|(_, set)| *set) {
            return Err(MountError::usage(format!(
                "mount option '{name}' needs a cache: add cache=FILE"
            )));
        }
    }
    if let Some(cache) = &o.cache {
        if cache.starts_with(&req.mountpoint) {
            return Err(MountError::usage(format!(
                "cache file {} is inside the mount point",
                cache.display()
            )));
        }
    }
    if req.threads == 0 || req.threads > 256 {
        return Err(MountError::usage(format!(
            "--threads {}: must be between 1 and 256",
            req.threads
        )));
    }
    Ok(())
}

fn fuse_config(req: &MountRequest) -> Config {
    let o = &req.options;
    let mut mount_options = vec![
        MountOption::FSName(
            o.fsname
                .clone()
                .unwrap_or_else(|| req.backing.to_string_lossy().into_owned()),
        ),
        MountOption::Subtype("bcachefs-lite".to_string()),
    ];
    if o.default_permissions {
        mount_options.push(MountOption::DefaultPermissions);
    }
    mount_options.push(if o.read_only {
        MountOption::RO
    } else {
        MountOption::RW
    });
    if o.dev {
        mount_options.push(MountOption::Dev);
    }
    if o.suid {
        mount_options.push(MountOption::Suid);
    }
    if o.noexec {
        mount_options.push(MountOption::NoExec);
    }
    if o.noatime {
        mount_options.push(MountOption::NoAtime);
    }
    let mut config = Config::default();
    config.mount_options = mount_options;
    config.acl = if o.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(req.threads);
    config.clone_fd = true;
    config
}

/// Every `interval` (none when zero), a snapshot of the metadata cache if it changed, so a
/// crash costs at most what was learnt since (`CacheSet::snapshot_meta`). Ends when the
/// cache set closes; the clean unmount writes the last, trusted checkpoint itself.
fn spawn_meta_snapshots(cache: Arc<crate::cache::CacheSet>, interval: std::time::Duration) {
    if interval.is_zero() {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("bcl-meta-ckpt".into())
        .spawn(move || {
            let step = interval.min(std::time::Duration::from_millis(200));
            let mut waited = std::time::Duration::ZERO;
            while !cache.is_closing() {
                std::thread::sleep(step);
                waited += step;
                if waited >= interval {
                    waited = std::time::Duration::ZERO;
                    if cache.snapshot_meta() {
                        tracing::debug!("metadata snapshot written");
                    }
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("no periodic metadata snapshots: {e}");
    }
}

fn block_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain old data, initialised by sigemptyset before any other use;
    // every pointer passed is to the local `set` (or null for the unwanted old mask).
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, sig);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn init_logging(log_file: Option<&Path>) -> io::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BCACHEFS_LITE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let result = match log_file {
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?;
            builder
                .with_ansi(false)
                .with_writer(std::sync::Mutex::new(file))
                .try_init()
        }
        None => builder.with_writer(io::stderr).try_init(),
    };
    result.map_err(|e| io::Error::other(e.to_string()))
}

fn stderr_is_socket() -> bool {
    // SAFETY: stat is plain old data (integers only); all-zero is a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid, exclusively borrowed out pointer; a closed fd 2 is EBADF.
    unsafe { libc::fstat(2, &mut st) == 0 && st.st_mode & libc::S_IFMT == libc::S_IFSOCK }
}

/// Points stdin/stdout (and stderr unless `keep_stderr`) at /dev/null, so the
/// daemon holds no terminal open.
fn detach_stdio(keep_stderr: bool) {
    let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    else {
        return;
    };
    let fd = null.as_raw_fd();
    // SAFETY: dup2 takes no pointers; `fd` is open (owned by `null`, alive until the end of
    // this function) and 0-2 are the standard descriptors, which we mean to replace.
    unsafe {
        libc::dup2(fd, 0);
        libc::dup2(fd, 1);
        if !keep_stderr {
            libc::dup2(fd, 2);
        }
    }
}

/// Mounts and serves until unmounted (foreground), or until the mount is live
/// (background: the serving child lives on).
pub fn run(req: MountRequest) -> Result<(), MountError> {
    if req.foreground {
        init_logging(req.log_file.as_deref())
            .map_err(|e| MountError::usage(format!("log: {e}")))?;
        return serve(&req, None);
    }
    let mut fds = [0; 2];
    // SAFETY: `fds` is room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(MountError::failed(format!(
            "pipe: {}",
            io::Error::last_os_error()
        )));
    }
    // SAFETY: pipe2 just returned these two new descriptors; nothing else owns them.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: the process has one thread here (nothing spawns one before `run`; logging
    // and the workers start after the fork), so the child may run ordinary Rust code.
    match unsafe { libc::fork() } {
        -1 => Err(MountError::failed(format!(
            "fork: {}",
            io::Error::last_os_error()
        ))),
        0 => {
            drop(read_end);
            // SAFETY: setsid takes no arguments; in a fresh child it cannot fail (EPERM
            // is for a process group leader, which a forked child is not).
            unsafe { libc::setsid() };
            let mut status = std::fs::File::from(write_end);
            if let Err(e) = init_logging(req.log_file.as_deref()) {
                let _ = write!(status, "log: {e}");
                std::process::exit(EXIT_USAGE);
            }
            match serve(&req, Some(status)) {
                Ok(()) => std::process::exit(0),
                Err(e) => std::process::exit(e.exit_code),
            }
        }
        _child => {
            drop(write_end);
            let mut answer = String::new();
            let _ = std::fs::File::from(read_end).read_to_string(&mut answer);
            if answer == "ok" {
                Ok(())
            } else if answer.is_empty() {
                Err(MountError::failed(
                    "the daemon exited before the mount was live".into(),
                ))
            } else {
                Err(MountError::failed(answer))
            }
        }
    }
}

/// Mounts, reports to `status` (the parent's pipe), and serves requests.
fn serve(req: &MountRequest, mut status: Option<std::fs::File>) -> Result<(), MountError> {
    fn report(status: &mut Option<std::fs::File>, msg: &str) {
        if let Some(s) = status.as_mut() {
            let _ = s.write_all(msg.as_bytes());
        }
    }
    let cache = match open_cache(req) {
        Ok(cache) => cache,
        Err(msg) => {
            report(&mut status, &msg);
            return Err(MountError::usage(msg));
        }
    };
    // A panic ends only the worker thread it happens on; say so loudly, once per panic.
    std::panic::set_hook(Box::new(|info| {
        tracing::error!("bug: {info}; the request it was serving gets no reply");
    }));
    // Modes come from the caller, already masked by the kernel.
    // SAFETY: umask takes a plain mode and cannot fail.
    unsafe { libc::umask(0) };
    // Descriptors: the soft limit up to the hard one (passthrough_hp does the same); the
    // inode table sizes its descriptor cache from the result.
    match crate::fs::sys::raise_nofile_limit() {
        Ok((old, new)) if new > old => {
            tracing::info!("RLIMIT_NOFILE soft limit raised from {old} to {new}")
        }
        Ok(_) => {}
        Err(e) => tracing::warn!("cannot raise RLIMIT_NOFILE to the hard limit: {e}"),
    }
    let mut fs = match PassthroughFs::new(&req.backing, &req.options) {
        Ok(fs) => fs,
        Err(e) => {
            let msg = format!("backing directory {}: {e}", req.backing.display());
            report(&mut status, &msg);
            return Err(MountError::usage(msg));
        }
    };
    if let Some(cache) = &cache {
        fs = fs.with_cache(cache.clone());
        let o = &req.options;
        if o.metadata_cache_size > 0 {
            let meta =
                crate::meta::MetaCache::new(o.coherence, o.metadata_ttl, o.metadata_cache_size);
            fs = fs.with_meta(Arc::new(meta));
        }
    }
    let invalidations = fs.invalidation_channel();
    // offline mode (issue 16): with a cache there is something to serve when the backing
    // goes away; installed before the session starts, so every backing call is bounded
    if cache.is_some() {
        match start_offline(req) {
            Ok(offline) => {
                offline.on_return(fs.offline_return_hook());
                crate::offline::install(offline.clone());
                offline.spawn_probe();
            }
            Err(e) => tracing::warn!("offline mode not available: {e}"),
        }
    }
    let watcher = fs.open_file_watcher();
    let sweeper = fs.meta_sweeper();
    let meta = fs.meta().cloned();
    let fd_cache = fs.fd_cache();
    let ttls = fs.ttls();
    let sigset = block_signals();
    let config = fuse_config(req);
    let (mut session, mounted_by_us) = match mount_session(fs, req, &config) {
        Ok(s) => s,
        Err(e) => {
            let msg = format!("cannot mount on {}: {e}", req.mountpoint.display());
            report(&mut status, &msg);
            return Err(MountError::failed(msg));
        }
    };
    tracing::info!(
        backing = %req.backing.display(),
        mountpoint = %req.mountpoint.display(),
        threads = req.threads,
        "mounted"
    );
    // after the INIT handshake, which could only lower the window (the kernel keeps the
    // smaller of its default and what INIT answers)
    let _kernel_readahead = apply_kernel_readahead(&req.mountpoint, req.options.kernel_readahead);
    let mountpoint = req.mountpoint.clone();
    crate::fs::spawn_invalidator(invalidations, session.notifier());
    if let Some(w) = watcher {
        w.spawn();
    }
    if let Some(s) = sweeper {
        s.spawn();
    }
    if let (Some(cache), Some(_)) = (&cache, &meta) {
        spawn_meta_snapshots(cache.clone(), req.options.metadata_checkpoint_interval);
    }
    let socket = match &cache {
        Some(cache) => {
            if let Some(addr) = req.options.metrics {
                let source = crate::metrics::Source {
                    cache: cache.clone(),
                    inodes: Some(fd_cache.clone()),
                    meta: meta.clone(),
                };
                match crate::metrics::serve_http(addr, source) {
                    Ok(bound) => tracing::info!("metrics on http://{bound}/metrics"),
                    Err(e) => tracing::warn!("no metrics endpoint on {addr}: {e}"),
                }
            }
            let server = crate::control::Server {
                cache: cache.clone(),
                inodes: Some(fd_cache),
                knobs: crate::knobs::Knobs::new(
                    crate::knobs::Targets {
                        cache: cache.clone(),
                        ttls,
                        meta: meta.clone(),
                    },
                    &req.options.given,
                ),
                backing: req.backing.clone(),
                meta,
            };
            match crate::control::serve(&req.mountpoint, server) {
                Ok(guard) => Some(guard),
                Err(e) => {
                    tracing::warn!("no control socket (stats unavailable): {e}");
                    None
                }
            }
        }
        None => None,
    };
    let mut unmounter = (!mounted_by_us).then(|| session.unmount_callable());
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || loop {
            let mut sig = 0;
            // SAFETY: `sigset` is an initialised set (from `block_signals`) and `sig` a
            // valid out pointer, both owned by this closure.
            if unsafe { libc::sigwait(&sigset, &mut sig) } == 0 {
                tracing::info!(signal = sig, "unmounting on signal");
                let result = match unmounter.as_mut() {
                    Some(u) => u.unmount(),
                    None => unmount_detach(&mountpoint),
                };
                if let Err(e) = result {
                    tracing::error!("unmount failed: {e}");
                }
                return;
            }
        })
        .map_err(|e| MountError::failed(format!("signal thread: {e}")))?;
    if status.is_some() {
        report(&mut status, "ok");
        drop(status.take());
        // Keep stderr only when it is the journal's stream socket (a mount unit): a
        // terminal would be written over, and a pipe would never see end-of-file
        // (`bcachefs-lite mount ... | cat` must return).
        detach_stdio(req.log_file.is_none() && stderr_is_socket());
    }
    // run() ends by destroying the filesystem, which closes the cache (journal flush
    // and index checkpoint) before the process exits.
    let served = session.run();
    if let Some(cache) = &cache {
        cache.close();
    }
    // removes the socket only if it is still ours (a newer daemon may have replaced it)
    drop(socket);
    match served {
        Ok(()) => {
            tracing::info!("unmounted");
            Ok(())
        }
        Err(e) => {
            tracing::error!("session ended with an error: {e}");
            Err(MountError::failed(format!("session: {e}")))
        }
    }
}

/// The offline state of this mount (`-o offline=`, `backing_timeout=`,
/// `offline_probe_interval=`), on an `O_PATH` descriptor of the backing root.
fn start_offline(req: &MountRequest) -> io::Result<Arc<crate::offline::Offline>> {
    let c = crate::fs::sys::cstr(req.backing.as_os_str())?;
    let root = crate::fs::sys::open_path_at(libc::AT_FDCWD, &c)?;
    let o = &req.options;
    let offline =
        crate::offline::Offline::new(o.offline, root, o.backing_timeout, o.offline_probe_interval);
    tracing::info!(
        policy = o.offline.name(),
        backing_timeout = ?offline.backing_timeout(),
        probe_interval = ?o.offline_probe_interval,
        network_fs = offline.network(),
        "offline mode"
    );
    Ok(Arc::new(offline))
}

/// The backing tree's identity recorded in the cache's superblock: its canonical
/// path (at most 256 bytes; longer paths keep their end and a hash of the whole).
pub fn backing_identity(backing: &Path) -> String {
    let s = backing.to_string_lossy().into_owned();
    if s.len() <= 256 {
        return s;
    }
    let h = crc32c::crc32c(s.as_bytes());
    let mut cut = s.len() - 200;
    while !s.is_char_boundary(cut) {
        cut += 1;
    }
    format!("{h:08x}...{}", &s[cut..])
}

/// Opens the cache named by the mount options, or None without `cache=`.
fn open_cache(req: &MountRequest) -> Result<Option<std::sync::Arc<CacheSet>>, String> {
    let o = &req.options;
    let Some(path) = &o.cache else {
        return Ok(None);
    };
    let mode = start_mode(o.cache_mode, path)?;
    if mode == CacheMode::None {
        // serving the backing alone would serve older bytes than the cache's dirty data
        if path.exists() && crate::cache::journal::may_hold_dirty(path).unwrap_or(false) {
            if !o.drop_dirty {
                return Err(format!(
                    "cache {}: holds dirty data not yet written back; cache_mode=none would \
                     serve the backing's older bytes. Mount in writeback (or writethrough) to \
                     write it back first, or add -o drop_dirty to ignore it",
                    path.display()
                ));
            }
            tracing::error!(
                "cache {}: holds dirty data; drop_dirty: serving the backing without it",
                path.display()
            );
        }
        // plain passthrough: the cache file is neither created, locked nor written
        tracing::info!(
            "cache_mode=none: cache file {} left untouched",
            path.display()
        );
        return Ok(None);
    }
    let mut cfg = CacheConfig::new(path.clone());
    cfg.size = o.cache_size;
    cfg.replacement = o.replacement;
    cfg.discard = o.discard;
    cfg.sequential_cutoff = o.sequential_cutoff;
    cfg.probation_after = o.probation_after;
    cfg.readahead = o.readahead;
    cfg.reformat = o.reformat;
    cfg.pin_limit = o.pin_limit;
    cfg.revalidate = o.attr_timeout;
    cfg.mode = mode;
    cfg.flush_on_unmount = !o.noflush_on_unmount;
    cfg.drop_dirty = o.drop_dirty;
    cfg.writeback_delay = o.writeback_delay;
    cfg.writeback_percent = o.writeback_percent;
    CacheSet::open(&cfg, &backing_identity(&req.backing))
        .map(|c| Some(std::sync::Arc::new(c)))
        .map_err(|e| format!("cache {}: {e}", path.display()))
}

/// The mode a mount starts in: `-o cache_mode=` when given, else the default recorded in
/// the cache file's superblock (read without opening the file for writing), else
/// writethrough (a new or unreadable file; opening it then creates, refuses or reformats it).
fn start_mode(option: Option<CacheMode>, path: &Path) -> Result<CacheMode, String> {
    if let Some(mode) = option {
        return Ok(mode);
    }
    let recorded = std::fs::File::open(path)
        .ok()
        .and_then(|f| crate::alloc::read_superblock(&crate::device::FileDevice::new(f)).ok())
        .map(|sb| sb.cache_mode);
    Ok(recorded.unwrap_or(CacheMode::Writethrough))
}

/// Mounts `fs` at the mount point. As root, mounts with type `fuse.bcachefs-lite`
/// ourselves (fuser always says plain `fuse`, which `mount -t`, `findmnt -t` and
/// `umount -t` could not tell apart) and hands the device to fuser; otherwise
/// lets fuser mount through fusermount3. Returns the session and whether we mounted.
fn mount_session(
    fs: PassthroughFs,
    req: &MountRequest,
    config: &Config,
) -> io::Result<(fuser::Session<PassthroughFs>, bool)> {
    // SAFETY: geteuid takes no arguments and cannot fail.
    Ok(if unsafe { libc::geteuid() } == 0 {
        let dev = mount_fuse_device(req)?;
        match fuser::Session::from_fd(fs, dev, config.acl, config.clone()) {
            Ok(s) => (s, true),
            Err(e) => {
                let _ = unmount_detach(&req.mountpoint);
                return Err(e);
            }
        }
    } else {
        (fuser::Session::new(fs, &req.mountpoint, config)?, false)
    })
}

/// Opens /dev/fuse and mounts it at the mount point with our options.
fn mount_fuse_device(req: &MountRequest) -> io::Result<OwnedFd> {
    let dev = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("/dev/fuse: {e} (is the fuse module loaded?)"),
            )
        })?;
    let root_mode = std::fs::metadata(&req.mountpoint)?.permissions();
    let o = &req.options;
    let mut data = format!(
        "fd={},rootmode={:o},user_id={},group_id={}",
        dev.as_raw_fd(),
        std::os::unix::fs::PermissionsExt::mode(&root_mode) & libc::S_IFMT,
        // SAFETY: getuid takes no arguments and cannot fail.
        unsafe { libc::getuid() },
        // SAFETY: getgid takes no arguments and cannot fail.
        unsafe { libc::getgid() }
    );
    if o.allow_other {
        data.push_str(",allow_other");
    }
    if o.default_permissions {
        data.push_str(",default_permissions");
    }
    data.push_str(&format!(",max_read={}", crate::fs::MAX_IO));
    let mut flags: libc::c_ulong = 0;
    if !o.dev {
        flags |= libc::MS_NODEV;
    }
    if !o.suid {
        flags |= libc::MS_NOSUID;
    }
    if o.read_only {
        flags |= libc::MS_RDONLY;
    }
    if o.noexec {
        flags |= libc::MS_NOEXEC;
    }
    if o.noatime {
        flags |= libc::MS_NOATIME;
    }
    let source = o
        .fsname
        .clone()
        .unwrap_or_else(|| req.backing.to_string_lossy().into_owned());
    let c =
        |s: &str| std::ffi::CString::new(s).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL));
    let source = c(&source)?;
    let target = c(&req.mountpoint.to_string_lossy())?;
    let fstype = c("fuse.bcachefs-lite")?;
    let data = c(&data)?;
    // SAFETY: all four strings are NUL-terminated CStrings that live until after the call.
    let ret = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags,
            data.as_ptr().cast(),
        )
    };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(OwnedFd::from(dev))
}

// ---- kernel readahead (`kernel_readahead=`; issue 12) --------------------------------------

/// The kernel's readahead window of one FUSE mount: its bdi's `read_ahead_kb` in sysfs.
/// The kernel gives a FUSE mount 128 KiB and lets INIT only lower it, so a sequential read
/// arrives as 128 KiB requests, one or two in flight, whatever `max_pages` allows; writing
/// the sysfs file (root only) after the mount is the one way up. The runtime entry point
/// for `bcachefs-lite set kernel_readahead=`: [`KernelReadahead::set`].
#[derive(Debug, Clone)]
pub struct KernelReadahead {
    /// `/sys/class/bdi/MAJ:MIN/read_ahead_kb`
    pub path: PathBuf,
}

impl KernelReadahead {
    /// The window of the FUSE mount at `mountpoint` (the last one listed there).
    pub fn of_mount(mountpoint: &Path) -> io::Result<KernelReadahead> {
        let info = std::fs::read_to_string("/proc/self/mountinfo")?;
        let bdi = fuse_bdi(&info, mountpoint).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("no FUSE mount at {} in mountinfo", mountpoint.display()),
            )
        })?;
        Ok(KernelReadahead {
            path: PathBuf::from(format!("/sys/class/bdi/{bdi}/read_ahead_kb")),
        })
    }

    /// The window in force, in bytes.
    pub fn get(&self) -> io::Result<u64> {
        let text = std::fs::read_to_string(&self.path)?;
        let kb: u64 = text
            .trim()
            .parse()
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, format!("{text:?}")))?;
        Ok(kb * 1024)
    }

    /// Sets the window (rounded down to KiB; at least 4 KiB).
    pub fn set(&self, bytes: u64) -> io::Result<()> {
        std::fs::write(&self.path, format!("{}\n", (bytes / 1024).max(4)))
    }
}

/// "MAJ:MIN" of the last FUSE mount at `mountpoint` in a `/proc/self/mountinfo` text (a later
/// mount over the same directory is listed after the one it hides).
pub fn fuse_bdi(mountinfo: &str, mountpoint: &Path) -> Option<String> {
    let want = mountpoint.as_os_str().as_encoded_bytes();
    mountinfo.lines().rev().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let fields: Vec<&str> = left.split(' ').collect();
        let fstype = right.split(' ').next()?;
        let (majmin, point) = (fields.get(2)?, fields.get(4)?);
        (fstype == "fuse" || fstype.starts_with("fuse."))
            .then_some(())
            .filter(|_| unescape_mountinfo(point) == want)
            .map(|_| majmin.to_string())
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo` (octal).
fn unescape_mountinfo(field: &str) -> Vec<u8> {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                out.push(d.iter().fold(0u8, |n, c| n.wrapping_mul(8) + (c - b'0')));
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    out
}

/// Sets the mount's kernel readahead window (0: leave the kernel's default). Failing is
/// not fatal: the mount works with the default window (128 KiB requests), and the log
/// says why once (writing sysfs needs root).
fn apply_kernel_readahead(mountpoint: &Path, bytes: u64) -> Option<KernelReadahead> {
    if bytes == 0 {
        return None;
    }
    let result = KernelReadahead::of_mount(mountpoint).and_then(|k| k.set(bytes).map(|_| k));
    match result {
        Ok(k) => {
            tracing::info!(path = %k.path.display(), bytes, "kernel readahead window set");
            Some(k)
        }
        Err(e) => {
            tracing::warn!(
                "kernel readahead window left at the kernel's default (sequential reads \
                 arrive in 128 KiB requests): {e}"
            );
            None
        }
    }
}

/// Lazily unmounts `mountpoint` (the session then sees ENODEV and ends).
fn unmount_detach(mountpoint: &Path) -> io::Result<()> {
    let target = std::ffi::CString::new(mountpoint.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `target` is a NUL-terminated CString that outlives the call.
    if unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fuse_bdi_finds_the_last_fuse_mount_at_the_point_and_unescapes_it() {
        let info = "\
22 1 253:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
40 22 0:40 / /var/tmp/a\\040b rw,nosuid,nodev shared:9 - fuse.bcachefs-lite /srv rw,user_id=0
41 22 0:41 / /var/tmp/c rw shared:10 - tmpfs tmpfs rw
42 22 0:42 / /var/tmp/c rw shared:11 - fuse /srv rw,user_id=0
43 22 0:43 / /var/tmp/a\\040b rw shared:12 - fuse.bcachefs-lite /srv rw,user_id=0
";
        assert_eq!(
            fuse_bdi(info, Path::new("/var/tmp/a b")).as_deref(),
            Some("0:43")
        );
        assert_eq!(
            fuse_bdi(info, Path::new("/var/tmp/c")).as_deref(),
            Some("0:42")
        );
        // not a FUSE mount, or not mounted
        assert_eq!(fuse_bdi(info, Path::new("/")), None);
        assert_eq!(fuse_bdi(info, Path::new("/var/tmp/a")), None);
        assert_eq!(unescape_mountinfo("x\\134y\\011"), b"x\\y\t");
    }
}
