//! Shared test harness: real FUSE mounts in temporary directories.
//!
//! A [`Mount`] starts `bcachefs-lite mount -f` as a child process, waits until the
//! kernel lists the mount, and on drop (also when an assertion failed) lazily
//! unmounts what it mounted and ends its own child by PID. Nothing else is ever
//! unmounted or killed.
#![allow(dead_code)]

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_bcachefs-lite");

pub fn is_root() -> bool {
    // SAFETY: geteuid takes no arguments and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Skips (returns early from) a test that needs root and /dev/fuse.
#[macro_export]
/// Mount tests need root and /dev/fuse. Run by a user they skip, each printing one
/// `SKIPPED (not root)` line that `make test` counts; run by root (as in CI) a missing
/// /dev/fuse is a failure, never a silent pass.
macro_rules! require_fuse {
    () => {
        if !common::is_root() {
            eprintln!("SKIPPED (not root): this test mounts and needs root and /dev/fuse");
            return;
        }
        assert!(
            std::path::Path::new("/dev/fuse").exists(),
            "running as root but /dev/fuse is missing: load the fuse module (modprobe fuse)"
        );
    };
}

/// Whether `path` is currently a mount point of type fuse.bcachefs-lite.
pub fn is_mounted(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.to_string_lossy().replace(' ', "\\040");
    info.lines().any(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        f.len() > 4 && f[4] == want && l.contains(" - fuse.bcachefs-lite ")
    })
}

pub fn umount_lazy(path: &Path) {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: `c` is a NUL-terminated CString that outlives the call.
    unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
}

/// Aborts the FUSE connection of a mount this test made (`umount2(MNT_FORCE)` calls the
/// kernel's `fuse_abort_conn`; it may also unmount, or fail with EBUSY after aborting).
pub fn abort_connection(path: &Path) {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: `c` is a NUL-terminated CString that outlives the call.
    unsafe { libc::umount2(c.as_ptr(), libc::MNT_FORCE) };
}

/// umount(2) of a mount this test made; panics if it fails.
pub fn umount(path: &Path) {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: `c` is a NUL-terminated CString that outlives the call.
    let rc = unsafe { libc::umount(c.as_ptr()) };
    assert_eq!(
        rc,
        0,
        "umount {}: {}",
        path.display(),
        io::Error::last_os_error()
    );
}

/// Drops the kernel's page, dentry and inode caches, so reads reach the daemon.
pub fn drop_caches() {
    // SAFETY: sync takes no arguments and cannot fail.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", "3").unwrap();
}

/// How to start the daemon of a [`Mount::spawn`].
#[derive(Default)]
pub struct Daemon {
    /// RLIMIT_NOFILE (soft, hard) to start it with.
    pub nofile: Option<(u64, u64)>,
    pub env: Vec<(String, String)>,
    /// A file the daemon's stderr (its log) goes to, instead of the test's stderr.
    pub log: Option<PathBuf>,
}

pub struct Mount {
    pub dir: tempfile::TempDir,
    pub backing: PathBuf,
    pub mnt: PathBuf,
    child: Option<Child>,
}

impl Mount {
    /// A fresh backing directory mounted with `options` (comma-separated, may be empty).
    pub fn new(options: &str) -> Mount {
        let dir = tempfile::Builder::new()
            .prefix("bcl-test")
            .tempdir()
            .unwrap();
        let backing = dir.path().join("backing");
        std::fs::create_dir(&backing).unwrap();
        Mount::over(dir, backing, options, &[])
    }

    /// Mounts an existing `backing` (inside `dir`) with extra CLI arguments.
    pub fn over(dir: tempfile::TempDir, backing: PathBuf, options: &str, extra: &[&str]) -> Mount {
        Mount::spawn(dir, backing, options, extra, &Daemon::default())
    }

    /// As [`Mount::over`], with the daemon's descriptor limit and environment set.
    pub fn spawn(
        dir: tempfile::TempDir,
        backing: PathBuf,
        options: &str,
        extra: &[&str],
        daemon: &Daemon,
    ) -> Mount {
        let mnt = dir.path().join("mnt");
        std::fs::create_dir_all(&mnt).unwrap();
        let mut cmd = Command::new(BIN);
        cmd.arg("mount").arg(&backing).arg(&mnt).arg("-f");
        if !options.is_empty() {
            cmd.arg("-o").arg(options);
        }
        cmd.args(extra).stdin(Stdio::null());
        if let Some(log) = &daemon.log {
            cmd.stderr(std::fs::File::create(log).expect("create the daemon log"));
        }
        for (k, v) in &daemon.env {
            cmd.env(k, v);
        }
        if let Some((soft, hard)) = daemon.nofile {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe; the closure touches nothing else.
            unsafe {
                cmd.pre_exec(move || {
                    let rl = libc::rlimit {
                        rlim_cur: soft,
                        rlim_max: hard,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &rl) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = cmd.spawn().expect("spawn bcachefs-lite");
        let mut m = Mount {
            dir,
            backing,
            mnt,
            child: Some(child),
        };
        m.wait_mounted();
        m
    }

    fn wait_mounted(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !is_mounted(&self.mnt) {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("bcachefs-lite exited before mounting: {status}");
                }
            }
            assert!(Instant::now() < deadline, "mount did not appear");
            std::thread::sleep(Duration::from_millis(20));
        }
        // The mount appears before the daemon has answered the kernel's INIT; a umount in
        // that window ends its handshake with ENODEV ("cannot mount"). A statfs waits for
        // INIT, so a test starts (and may unmount) only once the daemon serves. (Not a stat:
        // that would cache the root's attributes before a test fills the backing. Its
        // result is not looked at: a mount that starts offline refuses it.)
        let c = CString::new(self.mnt.as_os_str().as_bytes()).unwrap();
        // SAFETY: `c` is a NUL-terminated path and `st` a writable statfs, both outliving
        // the call.
        unsafe {
            let mut st: libc::statfs = std::mem::zeroed();
            libc::statfs(c.as_ptr(), &mut st);
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Path inside the mount.
    pub fn m(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    /// Path inside the backing directory.
    pub fn b(&self, rel: &str) -> PathBuf {
        self.backing.join(rel)
    }

    /// Unmounts with umount(2) and waits for the daemon to exit; returns its status. EBUSY is
    /// retried for up to 5 s: a child another test thread forks holds this process's
    /// descriptors (also those into this mount) until it execs.
    pub fn unmount(mut self) -> std::process::ExitStatus {
        let c = CString::new(self.mnt.as_os_str().as_bytes()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            // SAFETY: `c` is a NUL-terminated CString that outlives the call.
            if unsafe { libc::umount(c.as_ptr()) } == 0 {
                break;
            }
            let e = io::Error::last_os_error();
            assert!(
                e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline,
                "umount: {e}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut child = self.child.take().unwrap();
        wait_timeout(&mut child, Duration::from_secs(20)).expect("daemon did not exit after umount")
    }
}

impl Mount {
    /// Unmounts (umount(2)), waits for the daemon, and hands back the temporary
    /// directory so the same backing and cache can be mounted again.
    pub fn unmount_keep(mut self) -> (std::process::ExitStatus, tempfile::TempDir) {
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        (self.unmount(), dir)
    }

    /// SIGKILLs the daemon (a crash), lazily unmounts what it left, and hands back the
    /// temporary directory.
    pub fn crash(mut self) -> tempfile::TempDir {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            // A killed daemon whose thread sleeps in the kernel on a page lock held by a
            // read that waits for this very daemon's reply never exits, and its /dev/fuse
            // stays open: abort the connection, so the read fails and the thread goes on.
            abort_connection(&self.mnt);
            let _ = child.wait();
        }
        self.child = None;
        umount_lazy(&self.mnt);
        std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap())
    }
}

pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if is_mounted(&self.mnt) {
            umount_lazy(&self.mnt);
        }
        if let Some(mut child) = self.child.take() {
            if wait_timeout(&mut child, Duration::from_secs(5)).is_none() {
                let _ = child.kill();
                abort_connection(&self.mnt);
                let _ = child.wait();
            }
        }
    }
}

/// `bcachefs-lite stats --json` of the mount at `mnt`, parsed. The daemon opens its control
/// socket just after the mount appears, so this waits up to 10 s for it.
pub fn stats(mnt: &Path) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    let out = loop {
        let out = Command::new(BIN)
            .args(["stats", "--json"])
            .arg(mnt)
            .output()
            .unwrap();
        if out.status.success() || Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        out.status.success(),
        "stats failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("stats --json prints JSON")
}

/// `bcachefs-lite flush MNT` (writes every dirty byte back), which must succeed; its stdout.
pub fn flush(mnt: &Path) -> String {
    let out = Command::new(BIN).arg("flush").arg(mnt).output().unwrap();
    assert!(
        out.status.success(),
        "flush: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One numeric figure of [`stats`].
/// Waits until every fill handed out with a reply so far is written (`fills_pending` 0):
/// what a test reads next meets the cache as the replies left it, however slow the machine.
pub fn settle_fills(mnt: &Path) {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while stat_u64(mnt, "fills_pending") > 0 {
        assert!(
            std::time::Instant::now() < until,
            "fills still pending after 60 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

pub fn stat_u64(mnt: &Path, key: &str) -> u64 {
    let s = stats(mnt);
    s[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no numeric {key} in {s}"))
}

/// A fresh temporary directory (named `prefix...`) holding an empty `backing` directory and the
/// path of a cache file `ssd.cache` beside it (not created).
pub fn backing_and_cache(prefix: &str) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::Builder::new().prefix(prefix).tempdir().unwrap();
    let backing = dir.path().join("backing");
    std::fs::create_dir(&backing).unwrap();
    let cache = dir.path().join("ssd.cache");
    (dir, backing, cache)
}

/// Runs a shell command, returning (exit code, stdout, stderr).
pub fn sh(cmd: &str, cwd: &Path) -> (i32, String, String) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .current_dir(cwd)
        .output()
        .expect("run sh");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs a shell command and panics with its output if it fails.
pub fn sh_ok(cmd: &str, cwd: &Path) -> String {
    let (code, out, err) = sh(cmd, cwd);
    assert_eq!(
        code,
        0,
        "`{cmd}` failed in {}:\n{out}\n{err}",
        cwd.display()
    );
    out
}

pub fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

/// errno of the last failed libc call, or 0 when `ret` is not -1.
pub fn err_of(ret: i64) -> i32 {
    if ret == -1 {
        io::Error::last_os_error().raw_os_error().unwrap_or(0)
    } else {
        0
    }
}

/// Deterministic pseudo-random bytes.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A numeric test knob from the environment (`BCL_*`), or `default`.
pub fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A small seeded generator (splitmix64): every random test prints its seed to replay it.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// A seed from `knob` or, when it is not set, from the clock.
pub fn seed_knob(name: &str) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    knob(name, now)
}

/// Through a shared mapping of `path` (exactly `want.len()` bytes long), flips one byte every
/// 9000 from offset 100, msyncs and unmaps; `want` gets the same flips (the expected bytes).
pub fn mmap_flip_and_msync(path: &Path, want: &mut [u8]) {
    use std::os::fd::AsRawFd;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let len = want.len();
    // SAFETY: a fresh shared mapping of an open file of exactly this length; written
    // inside its bounds only, synced and unmapped before `f` closes.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        );
        assert_ne!(p, libc::MAP_FAILED);
        let s = std::slice::from_raw_parts_mut(p.cast::<u8>(), len);
        for i in (100..len).step_by(9000) {
            s[i] ^= 0x5a;
            want[i] ^= 0x5a;
        }
        assert_eq!(libc::msync(p, len, libc::MS_SYNC), 0);
        libc::munmap(p, len);
    }
}
