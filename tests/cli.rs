//! The command line: help and version, option errors, the background daemon
//! (returns once the mount is live, ends on umount), foreground signals, and the
//! options' effects.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{is_mounted, Mount, BIN};

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_and_version() {
    let (code, out, _) = run(&["--version"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("bcachefs-lite "), "{out}");
    let (code, out, _) = run(&["--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("mount"), "{out}");
    let (code, out, _) = run(&["mount", "--help"]);
    assert_eq!(code, 0);
    for word in [
        "BACKING",
        "MOUNTPOINT",
        "--foreground",
        "--threads",
        "attr_timeout",
        "allow_other",
    ] {
        assert!(out.contains(word), "mount --help lacks {word}: {out}");
    }
}

#[test]
fn bad_arguments_are_refused_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let (b, m) = (dir.path().join("b"), dir.path().join("m"));
    fs::create_dir(&b).unwrap();
    fs::create_dir(&m).unwrap();
    let (bs, ms) = (b.to_str().unwrap(), m.to_str().unwrap());
    let cases: &[(&[&str], &str)] = &[
        (
            &["mount", bs, ms, "-o", "ro,frobnicate"],
            "unknown mount option 'frobnicate'",
        ),
        (
            &["mount", bs, ms, "-o", "attr_timeout=soon"],
            "attr_timeout=soon",
        ),
        (
            &["mount", bs, ms, "-o", "entry_timeout"],
            "'entry_timeout' needs a value",
        ),
        (
            &["mount", "/nonexistent/backing", ms],
            "/nonexistent/backing",
        ),
        (&["mount", bs, "/nonexistent/mnt"], "/nonexistent/mnt"),
        (&["mount", bs, ms, "--threads", "0"], "--threads 0"),
        (&["mount", ms, ms], "inside the mount point"),
    ];
    for (args, want) in cases {
        let (code, _, err) = run(args);
        assert_ne!(code, 0, "{args:?} should fail");
        assert!(err.contains(want), "{args:?}: expected '{want}' in: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        assert!(!is_mounted(&m));
    }
    fs::write(dir.path().join("file"), b"").unwrap();
    let (code, _, err) = run(&["mount", dir.path().join("file").to_str().unwrap(), ms]);
    assert_ne!(code, 0);
    assert!(err.contains("not a directory"), "{err}");
}

/// PIDs of processes whose command line mentions `needle` (our unique temp path).
fn pids_mentioning(needle: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cmd) = fs::read(format!("/proc/{pid}/cmdline")) {
            if String::from_utf8_lossy(&cmd).contains(needle) && pid != std::process::id() {
                pids.push(pid);
            }
        }
    }
    pids
}

#[test]
fn background_mount_is_live_on_return_and_umount_ends_the_daemon() {
    require_fuse!();
    let dir = tempfile::tempdir().unwrap();
    let (b, m) = (dir.path().join("b"), dir.path().join("m"));
    fs::create_dir(&b).unwrap();
    fs::create_dir(&m).unwrap();
    fs::write(b.join("hello"), b"world").unwrap();
    struct Guard(std::path::PathBuf);
    impl Drop for Guard {
        fn drop(&mut self) {
            if is_mounted(&self.0) {
                common::umount_lazy(&self.0);
            }
        }
    }
    let _guard = Guard(m.clone());
    let (code, _, err) = run(&["mount", b.to_str().unwrap(), m.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    // no waiting: the mount is live when the command returns
    assert!(is_mounted(&m));
    assert_eq!(fs::read(m.join("hello")).unwrap(), b"world");
    let daemons = pids_mentioning(m.to_str().unwrap());
    assert_eq!(daemons.len(), 1, "one daemon serves the mount: {daemons:?}");
    let status = Command::new("umount").arg(&m).status().unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while Path::new(&format!("/proc/{}", daemons[0])).exists() {
        let stat = fs::read_to_string(format!("/proc/{}/stat", daemons[0])).unwrap_or_default();
        if stat.contains(") Z ") {
            break; // exited, waiting to be reaped by init
        }
        assert!(
            Instant::now() < deadline,
            "daemon still running after umount"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!is_mounted(&m));
}

#[test]
fn foreground_unmounts_cleanly_on_sigterm_and_sigint() {
    require_fuse!();
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let mount = Mount::new("");
        let pid = mount.pid() as i32;
        // SAFETY: kill takes plain integers; `pid` is the daemon this test spawned.
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
        let deadline = Instant::now() + Duration::from_secs(10);
        while is_mounted(&mount.mnt) {
            assert!(
                Instant::now() < deadline,
                "still mounted after signal {sig}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut status = 0;
        // SAFETY: `status` is a valid out pointer; `pid` is our own (unreaped) child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "exit status {status:#x}"
        );
    }
}

#[test]
fn read_only_option_refuses_writes() {
    require_fuse!();
    let mount = Mount::new("ro");
    fs::write(mount.b("f"), b"data").unwrap();
    assert_eq!(fs::read(mount.m("f")).unwrap(), b"data");
    let err = fs::write(mount.m("f"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    let err = fs::create_dir(mount.m("d")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
}

#[test]
fn zero_ttls_see_backing_changes_at_once_and_fsname_is_shown() {
    require_fuse!();
    let mount = Mount::new("attr_timeout=0,entry_timeout=0,fsname=demo-home");
    fs::write(mount.b("f"), b"short").unwrap();
    assert_eq!(fs::metadata(mount.m("f")).unwrap().len(), 5);
    fs::write(mount.b("f"), b"much longer now").unwrap();
    assert_eq!(fs::metadata(mount.m("f")).unwrap().len(), 15);
    fs::remove_file(mount.b("f")).unwrap();
    assert!(!mount.m("f").exists());
    let mounts = fs::read_to_string("/proc/mounts").unwrap();
    let line = mounts
        .lines()
        .find(|l| l.contains(mount.mnt.to_str().unwrap()))
        .unwrap();
    assert!(line.starts_with("demo-home "), "{line}");
    assert!(line.contains(" fuse.bcachefs-lite "), "{line}");
}

#[test]
fn umount_ends_a_foreground_daemon_with_exit_zero() {
    require_fuse!();
    let mount = Mount::new("");
    fs::write(mount.m("x"), b"1").unwrap();
    let status = mount.unmount();
    assert!(status.success(), "{status}");
}
