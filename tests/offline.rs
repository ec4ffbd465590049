//! Offline mode (issue 16): a backing that fails or hangs on demand (the backing fault seam,
//! src/backing_faults.rs: the daemon of these tests reads `OP ERRNO SUBSTRING` lines from
//! the file `BCL_BACKING_FAULTS` names, `HANG` blocking the call while the line is there).
//! Cached files read byte-identical while offline, uncached ones fail fast with EHOSTDOWN,
//! nothing waits much longer than `backing_timeout`, changes get EROFS, the mount comes
//! back by itself when the backing returns and then serves what the backing holds, and
//! `bcachefs-lite set MOUNTPOINT offline=true|false` forces either state.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{drop_caches, pattern, stats, Daemon, Mount, BIN};

/// The tests run one at a time: each arms faults for its own daemon only, but they all
/// drop the kernel's caches, and timings are asserted.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

const LEN: usize = 200 << 10;
/// A bit more than `meta::SETTLE`.
const SETTLE: Duration = Duration::from_millis(1100);
/// `backing_timeout` of these mounts.
const TIMEOUT: Duration = Duration::from_secs(1);

struct Offline {
    m: Mount,
    ctl: PathBuf,
}

impl Offline {
    fn new(prefix: &str, extra_opts: &str, env: &[(&str, &str)]) -> Offline {
        let (dir, backing, cache) = common::backing_and_cache(prefix);
        fs::create_dir_all(backing.join("dir/sub")).unwrap();
        fs::write(backing.join("dir/cached.bin"), pattern(LEN, 1)).unwrap();
        fs::write(backing.join("dir/uncached.bin"), pattern(LEN, 2)).unwrap();
        fs::write(backing.join("dir/sub/note"), b"hello\n").unwrap();
        fs::create_dir_all(backing.join("unlisted")).unwrap();
        fs::write(backing.join("unlisted/x"), b"x").unwrap();
        // directory times within a second of the clock cannot vouch for cached names
        // (meta::SETTLE): let them settle, so what the mount learns stays cached
        std::thread::sleep(SETTLE);
        let ctl = dir.path().join("faults");
        let mut env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        env.push(("BCL_BACKING_FAULTS".into(), ctl.display().to_string()));
        let daemon = Daemon {
            env,
            ..Daemon::default()
        };
        let opts = format!(
            "cache={},cache_size=64M,metadata_ttl=0.2,attr_timeout=0.2,entry_timeout=0.2,\
             backing_timeout={},offline_probe_interval=0.2{extra_opts}",
            cache.display(),
            TIMEOUT.as_secs_f64()
        );
        let m = Mount::spawn(dir, backing, &opts, &[], &daemon);
        Offline { m, ctl }
    }

    /// Reads `dir/cached.bin` whole, lists `dir` and stats its entries: all of it cached.
    fn warm(&self) {
        assert_eq!(
            fs::read(self.m.m("dir/cached.bin")).unwrap(),
            pattern(LEN, 1)
        );
        let mut names = list(&self.m.m("dir")).unwrap();
        names.sort();
        assert_eq!(names, ["cached.bin", "sub", "uncached.bin"]);
        for n in &names {
            fs::symlink_metadata(self.m.m(&format!("dir/{n}"))).unwrap();
        }
        assert_eq!(list(&self.m.m("dir/sub")).unwrap(), ["note"]);
        fs::symlink_metadata(self.m.m("dir/sub/note")).unwrap();
        // a directory looked up, never listed
        fs::symlink_metadata(self.m.m("unlisted")).unwrap();
        // the fill lands after the reply
        let deadline = Instant::now() + Duration::from_secs(5);
        while stats(&self.m.mnt)["cached_bytes"].as_u64().unwrap() < LEN as u64 {
            assert!(Instant::now() < deadline, "the file was never cached");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Makes every backing call under the backing directory fail with `errno` (or hang).
    fn arm(&self, errno: &str) {
        let tmp = self.ctl.with_extension("tmp");
        fs::write(&tmp, format!("* {errno} {}\n", self.m.backing.display())).unwrap();
        fs::rename(&tmp, &self.ctl).unwrap();
    }

    fn arm_line(&self, line: &str) {
        let tmp = self.ctl.with_extension("tmp");
        fs::write(&tmp, format!("{line}\n")).unwrap();
        fs::rename(&tmp, &self.ctl).unwrap();
    }

    fn disarm(&self) {
        let _ = fs::remove_file(&self.ctl);
    }

    fn m(&self, rel: &str) -> PathBuf {
        self.m.m(rel)
    }

    fn backing(&self) -> String {
        stats(&self.m.mnt)["backing"].as_str().unwrap().to_string()
    }

    /// Waits until `stats` says `backing` starts with `want`.
    fn wait_backing(&self, want: &str, within: Duration) -> Duration {
        let t = Instant::now();
        loop {
            let b = self.backing();
            if b.starts_with(want) {
                return t.elapsed();
            }
            assert!(
                t.elapsed() < within,
                "backing is still '{b}', not '{want}...'"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The kernel's own attribute and entry caches have expired, its pages are gone: the
    /// next requests reach the daemon.
    fn forget_kernel_caches(&self) {
        std::thread::sleep(Duration::from_millis(300));
        drop_caches();
    }
}

impl Drop for Offline {
    fn drop(&mut self) {
        // hung helpers must finish before the daemon is asked to unmount
        self.disarm();
    }
}

fn list(p: &Path) -> std::io::Result<Vec<String>> {
    fs::read_dir(p)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect()
}

fn read_file(p: &Path) -> std::io::Result<Vec<u8>> {
    let mut v = Vec::new();
    fs::File::open(p)?.read_to_end(&mut v)?;
    Ok(v)
}

fn errno_of<T: std::fmt::Debug>(r: std::io::Result<T>, what: &str) -> i32 {
    match r {
        Ok(v) => panic!("{what}: succeeded ({v:?}), an error was expected"),
        Err(e) => e.raw_os_error().unwrap_or_else(|| panic!("{what}: {e}")),
    }
}

/// Runs `f`, asserting it took less than `bound`.
fn timed<T>(what: &str, bound: Duration, f: impl FnOnce() -> T) -> T {
    let t = Instant::now();
    let out = f();
    let took = t.elapsed();
    assert!(took < bound, "{what} took {took:?}, more than {bound:?}");
    out
}

fn set(mnt: &Path, pair: &str) -> (bool, String) {
    let out = Command::new(BIN)
        .args(["set", mnt.to_str().unwrap(), pair])
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn figure(mnt: &Path, name: &str) -> u64 {
    stats(mnt)[name]
        .as_u64()
        .unwrap_or_else(|| panic!("no figure {name}"))
}

/// Every change of the backing is refused with EROFS while offline.
fn assert_changes_refused(o: &Offline) {
    let ro =
        |r: std::io::Result<()>, what: &str| assert_eq!(errno_of(r, what), libc::EROFS, "{what}");
    ro(
        fs::OpenOptions::new()
            .write(true)
            .open(o.m("dir/cached.bin"))
            .map(drop),
        "open for writing",
    );
    ro(fs::write(o.m("dir/new.txt"), b"x"), "create");
    ro(fs::create_dir(o.m("dir/newdir")), "mkdir");
    ro(fs::remove_file(o.m("dir/sub/note")), "unlink");
    ro(
        fs::rename(o.m("dir/cached.bin"), o.m("dir/moved.bin")),
        "rename",
    );
    ro(
        fs::set_permissions(
            o.m("dir/cached.bin"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        ),
        "chmod",
    );
}

#[test]
fn cached_files_are_served_offline_uncached_fail_fast_and_changes_get_erofs() {
    require_fuse!();
    let _s = serial();
    let o = Offline::new("offline-errno", "", &[]);
    o.warm();
    assert_eq!(o.backing(), "online");
    o.arm("ENOTCONN");
    o.forget_kernel_caches();

    // the first request that reaches the backing takes the mount offline, and is served
    let bound = TIMEOUT + Duration::from_secs(1);
    let data = timed("read of a cached file", bound, || {
        read_file(&o.m("dir/cached.bin"))
    })
    .expect("a cached file reads while offline");
    assert!(data == pattern(LEN, 1), "the cached bytes, byte-identical");
    let b = o.backing();
    assert!(b.starts_with("offline since "), "{b}");
    assert!(b.contains("ENOTCONN"), "the reason is shown: {b}");
    assert_eq!(figure(&o.m.mnt, "offline"), 1);
    assert_eq!(figure(&o.m.mnt, "offline_transitions"), 1);

    // listings, attributes and a small file in a subdirectory
    let mut names = timed("listing", bound, || list(&o.m("dir"))).unwrap();
    names.sort();
    assert_eq!(names, ["cached.bin", "sub", "uncached.bin"]);
    let md = fs::metadata(o.m("dir/cached.bin")).unwrap();
    assert_eq!(md.len(), LEN as u64);
    assert_eq!(
        fs::metadata(o.m("dir/uncached.bin")).unwrap().len(),
        LEN as u64
    );

    // what is not cached fails at once with EHOSTDOWN
    let fast = Duration::from_millis(500);
    let e = timed("uncached open", fast, || {
        read_file(&o.m("dir/uncached.bin"))
    });
    assert_eq!(errno_of(e, "uncached read"), libc::EHOSTDOWN);
    // a name the complete cached listing does not have is absent
    let e = timed("absent name", fast, || fs::metadata(o.m("dir/never-seen")));
    assert_eq!(errno_of(e, "absent name"), libc::ENOENT);
    // a name in a directory never listed is not known
    let e = timed("unknown name", fast, || fs::metadata(o.m("unlisted/x")));
    assert_eq!(errno_of(e, "unknown name"), libc::EHOSTDOWN);
    let e = timed("unlisted listing", fast, || list(&o.m("unlisted")));
    assert_eq!(errno_of(e, "unlisted listing"), libc::EHOSTDOWN);
    // `sub/note` was only stat'ed, its bytes never read
    let e = timed("uncached small file", fast, || {
        read_file(&o.m("dir/sub/note"))
    });
    assert_eq!(errno_of(e, "dir/sub/note"), libc::EHOSTDOWN);
    assert!(figure(&o.m.mnt, "offline_refused") >= 3);
    assert!(figure(&o.m.mnt, "offline_served") >= 1);

    assert_changes_refused(&o);
    // the backing was not touched
    assert!(!o.m.b("dir/new.txt").exists());
    assert!(o.m.b("dir/sub/note").exists());

    // the backing returns: the probe brings the mount back by itself
    o.disarm();
    let took = o.wait_backing("online", Duration::from_secs(5));
    eprintln!("online again {took:?} after the backing returned");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        read_file(&o.m("dir/uncached.bin")).unwrap(),
        pattern(LEN, 2)
    );
    fs::write(o.m("dir/new.txt"), b"written after the return").unwrap();
    assert_eq!(
        fs::read(o.m.b("dir/new.txt")).unwrap(),
        b"written after the return"
    );
}

#[test]
fn a_hung_backing_goes_offline_within_the_timeout_and_returns_with_fresh_data() {
    require_fuse!();
    let _s = serial();
    let o = Offline::new("offline-hang", "", &[]);
    o.warm();
    o.arm("HANG");
    o.forget_kernel_caches();

    // nothing waits more than backing_timeout (+1 s for hand-offs and a loaded machine)
    let bound = TIMEOUT + Duration::from_secs(1);
    let data = timed("read of a cached file, backing hung", bound, || {
        read_file(&o.m("dir/cached.bin"))
    })
    .expect("a cached file reads while the backing hangs");
    assert!(data == pattern(LEN, 1));
    let b = o.backing();
    assert!(b.starts_with("offline since ") && b.contains("hung"), "{b}");
    assert!(figure(&o.m.mnt, "backing_calls_timed_out") >= 1);
    assert!(figure(&o.m.mnt, "backing_calls_hung") >= 1);
    let e = timed("uncached read, backing hung", bound, || {
        read_file(&o.m("dir/uncached.bin"))
    });
    assert_eq!(errno_of(e, "uncached"), libc::EHOSTDOWN);
    let mut names = timed("listing, backing hung", bound, || list(&o.m("dir"))).unwrap();
    names.sort();
    assert_eq!(names, ["cached.bin", "sub", "uncached.bin"]);
    let e = timed("write, backing hung", bound, || {
        fs::OpenOptions::new()
            .append(true)
            .open(o.m("dir/cached.bin"))
            .and_then(|mut f| f.write_all(b"x"))
    });
    assert_eq!(errno_of(e, "write"), libc::EROFS);

    // someone changes the file on the server meanwhile (same size, other bytes)
    fs::write(o.m.b("dir/cached.bin"), pattern(LEN, 3)).unwrap();
    // still offline: the last known bytes
    assert!(read_file(&o.m("dir/cached.bin")).unwrap() == pattern(LEN, 1));

    // the server comes back: the hung calls finish, the probe returns the mount online
    o.disarm();
    o.wait_backing("online", Duration::from_secs(5));
    let deadline = Instant::now() + Duration::from_secs(5);
    while figure(&o.m.mnt, "backing_calls_hung") > 0 {
        assert!(Instant::now() < deadline, "hung calls never returned");
        std::thread::sleep(Duration::from_millis(20));
    }
    // after the kernel's TTLs: the backing's new bytes, not the cached old ones
    std::thread::sleep(Duration::from_millis(300));
    let fresh = read_file(&o.m("dir/cached.bin")).unwrap();
    assert!(fresh == pattern(LEN, 3), "the new bytes after the return");
}

#[test]
fn set_offline_forces_either_state_and_the_probe_leaves_a_forced_state_alone() {
    require_fuse!();
    let _s = serial();
    let o = Offline::new("offline-forced", "", &[]);
    o.warm();
    let (ok, err) = set(&o.m.mnt, "offline=true");
    assert!(ok, "{err}");
    let b = o.backing();
    assert!(
        b.starts_with("offline since ") && b.contains("forced"),
        "{b}"
    );
    o.forget_kernel_caches();
    assert!(read_file(&o.m("dir/cached.bin")).unwrap() == pattern(LEN, 1));
    let e = read_file(&o.m("dir/uncached.bin"));
    assert_eq!(errno_of(e, "uncached"), libc::EHOSTDOWN);
    assert_changes_refused(&o);
    // the backing is fine, but a forced offline stays until set back
    std::thread::sleep(Duration::from_millis(800));
    assert!(o.backing().starts_with("offline since "));
    let (ok, err) = set(&o.m.mnt, "offline=false");
    assert!(ok, "{err}");
    assert_eq!(o.backing(), "online");
    // straight offline again, before anything was looked at since the return: what the
    // return marked for a recheck is still the last known, and served
    let (ok, err) = set(&o.m.mnt, "offline=true");
    assert!(ok, "{err}");
    o.forget_kernel_caches();
    let again = read_file(&o.m("dir/cached.bin"));
    assert!(
        again.as_ref().is_ok_and(|d| *d == pattern(LEN, 1)),
        "a second outage right after a return serves the cache: {:?}",
        again.map(|d| d.len())
    );
    let (ok, err) = set(&o.m.mnt, "offline=false");
    assert!(ok, "{err}");
    assert_eq!(
        read_file(&o.m("dir/uncached.bin")).unwrap(),
        pattern(LEN, 2)
    );
    assert_eq!(figure(&o.m.mnt, "offline_transitions"), 2);
    let (ok, _) = set(&o.m.mnt, "offline=maybe");
    assert!(!ok, "a bad value is refused");
}

#[test]
fn errors_of_one_file_and_offline_never_leave_the_mount_online() {
    require_fuse!();
    let _s = serial();
    // auto: one file's ESTALE (or a local EIO) is that file's, the backing root answers
    let o = Offline::new("offline-onefile", "", &[]);
    o.warm();
    o.arm_line("* ESTALE uncached.bin");
    o.forget_kernel_caches();
    let e = read_file(&o.m("dir/uncached.bin"));
    assert_eq!(errno_of(e, "one file's ESTALE"), libc::ESTALE);
    o.arm("EIO");
    o.forget_kernel_caches();
    let e = read_file(&o.m("dir/uncached.bin"));
    assert_eq!(errno_of(e, "EIO of a local backing"), libc::EIO);
    assert_eq!(o.backing(), "online");
    assert_eq!(figure(&o.m.mnt, "offline_transitions"), 0);
    o.disarm();
    drop(o);

    // the same EIO from a network filesystem (the seam says so) takes the mount offline
    let o = Offline::new("offline-eio-net", "", &[("BCL_BACKING_NETWORK", "1")]);
    o.warm();
    assert_eq!(figure(&o.m.mnt, "backing_network_fs"), 1);
    o.arm("EIO");
    o.forget_kernel_caches();
    assert!(read_file(&o.m("dir/cached.bin")).unwrap() == pattern(LEN, 1));
    let b = o.backing();
    assert!(b.starts_with("offline since ") && b.contains("EIO"), "{b}");
    o.disarm();
    drop(o);

    // offline=never: errors pass through as before, the mount never goes offline
    let o = Offline::new("offline-never", ",offline=never", &[]);
    o.warm();
    o.arm("ENOTCONN");
    o.forget_kernel_caches();
    let e = read_file(&o.m("dir/uncached.bin"));
    assert_eq!(errno_of(e, "offline=never"), libc::ENOTCONN);
    assert_eq!(o.backing(), "online");
    assert_eq!(figure(&o.m.mnt, "offline_transitions"), 0);
    let (ok, _) = set(&o.m.mnt, "offline=true");
    assert!(!ok, "offline=never cannot be forced offline");
}

/// Stops the lower daemon until dropped (then lets it go on, whatever happened).
struct Stopped(u32);

impl Stopped {
    fn new(pid: u32) -> Stopped {
        // SAFETY: kill takes plain integers; the pid is our own child daemon.
        assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGSTOP) }, 0);
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        // SAFETY: as in `new`.
        unsafe { libc::kill(self.0 as i32, libc::SIGCONT) };
    }
}

/// The real thing, without the test seam: the backing is another FUSE mount (a plain
/// bcachefs-lite passthrough, as a network filesystem would be), whose daemon is stopped
/// (SIGSTOP: every call on it hangs in the kernel, as on a dead NFS server with a hard
/// mount) and then continued.
#[test]
fn a_stopped_fuse_backing_goes_offline_and_its_return_is_noticed() {
    require_fuse!();
    let _s = serial();
    // long kernel TTLs on the lower mount, as an NFS client's attribute cache: a stat of
    // the backing root is answered by the kernel while the server is gone, so the probe
    // must use calls the server itself answers
    let lower = Mount::new("attr_timeout=60,entry_timeout=60");
    fs::create_dir_all(lower.b("alice")).unwrap();
    fs::write(lower.b("alice/cached.bin"), pattern(LEN, 1)).unwrap();
    fs::write(lower.b("alice/uncached.bin"), pattern(LEN, 2)).unwrap();
    std::thread::sleep(SETTLE);
    let (dir, _unused, cache) = common::backing_and_cache("offline-fuse");
    let opts = format!(
        "cache={},cache_size=64M,metadata_ttl=0.2,attr_timeout=0.2,entry_timeout=0.2,\
         backing_timeout={},offline_probe_interval=0.2",
        cache.display(),
        TIMEOUT.as_secs_f64()
    );
    let upper = Mount::spawn(dir, lower.mnt.join("alice"), &opts, &[], &Daemon::default());
    assert_eq!(fs::read(upper.m("cached.bin")).unwrap(), pattern(LEN, 1));
    fs::symlink_metadata(upper.m("uncached.bin")).unwrap();
    // listed whole: a name it does not have is known to be absent (a create reaches us)
    assert_eq!(list(&upper.mnt).unwrap().len(), 2);
    assert_eq!(
        figure(&upper.mnt, "backing_network_fs"),
        1,
        "FUSE counts as a network fs"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while figure(&upper.mnt, "cached_bytes") < LEN as u64 {
        assert!(Instant::now() < deadline, "never cached");
        std::thread::sleep(Duration::from_millis(20));
    }
    // the kernel's pages of the upper mount go before the lower one can hang a sync; its
    // dentries and inodes stay: a FUSE backing gives no file handles, so an inode the
    // kernel forgot cannot be reached again without the backing (documented limitation)
    // SAFETY: sync takes no arguments and cannot fail.
    unsafe { libc::sync() };
    fs::write("/proc/sys/vm/drop_caches", "1").unwrap();
    // the kernel's attributes of the backing root are fresh when the server stops (a
    // readdir invalidates a directory's atime, and with it the cached attributes)
    fs::metadata(lower.mnt.join("alice")).unwrap();
    let stopped = Stopped::new(lower.pid());
    std::thread::sleep(Duration::from_millis(300));

    let bound = TIMEOUT + Duration::from_secs(1);
    let data = timed("cached read, backing stopped", bound, || {
        read_file(&upper.m("cached.bin"))
    })
    .expect("served from the cache");
    assert!(data == pattern(LEN, 1));
    let b = stats(&upper.mnt)["backing"].as_str().unwrap().to_string();
    assert!(b.starts_with("offline since ") && b.contains("hung"), "{b}");
    let e = timed("uncached read, backing stopped", bound, || {
        read_file(&upper.m("uncached.bin"))
    });
    assert_eq!(errno_of(e, "uncached"), libc::EHOSTDOWN);
    let e = timed("create, backing stopped", bound, || {
        fs::write(upper.m("new.txt"), b"x")
    });
    assert_eq!(errno_of(e, "create"), libc::EROFS);
    // stopped, the backing cannot be reached: the probe keeps the mount offline
    std::thread::sleep(Duration::from_millis(800));
    assert!(stats(&upper.mnt)["backing"]
        .as_str()
        .unwrap()
        .starts_with("offline since "));

    drop(stopped);
    let t = Instant::now();
    while stats(&upper.mnt)["backing"].as_str() != Some("online") {
        assert!(t.elapsed() < Duration::from_secs(5), "never came back");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        read_file(&upper.m("uncached.bin")).unwrap(),
        pattern(LEN, 2)
    );
    drop(upper);
    drop(lower);
}
