//! The control commands on a live mount: `gc`, `drop`, a non-root caller, and the protocol
//! version check (a client and daemon of different versions fail clearly).

mod common;

use std::fs;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use common::{pattern, Mount, BIN};

fn drop_caches() {
    // SAFETY: sync takes no arguments and cannot fail.
    unsafe { libc::sync() };
    fs::write("/proc/sys/vm/drop_caches", "3").unwrap();
}

fn mount_cached(dir: tempfile::TempDir, backing: &Path, cache: &Path) -> Mount {
    let opts = format!("cache={},cache_size=64M", cache.display());
    let m = Mount::over(dir, backing.to_path_buf(), &opts, &[]);
    common::stats(&m.mnt);
    m
}

fn stat(mnt: &Path, key: &str) -> u64 {
    common::stat_u64(mnt, key)
}

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn gc_runs_now_and_waits() {
    require_fuse!();
    let (dir, backing, cache) = common::backing_and_cache("bcl-ctl");
    fs::write(backing.join("f"), pattern(1 << 20, 1)).unwrap();
    let m = mount_cached(dir, &backing, &cache);
    fs::read(m.m("f")).unwrap();
    let runs = stat(&m.mnt, "gc_runs");
    let (code, out, err) = run(&["gc", m.mnt.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("gc done: "), "{out}");
    // it waited: the run is counted when the command returns
    assert!(stat(&m.mnt, "gc_runs") > runs);
}

#[test]
fn drop_forgets_a_trees_cached_data_and_only_that_tree() {
    require_fuse!();
    let (dir, backing, cache) = common::backing_and_cache("bcl-ctl");
    for d in ["a/sub", "b"] {
        fs::create_dir_all(backing.join(d)).unwrap();
    }
    let files = [("a/1", 1), ("a/sub/2", 2), ("b/3", 3)];
    for (f, seed) in files {
        fs::write(backing.join(f), pattern(1 << 20, seed)).unwrap();
    }
    let m = mount_cached(dir, &backing, &cache);
    for (f, _) in files {
        fs::read(m.m(f)).unwrap();
    }
    // fills happen after the reply: wait until all three are in
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while stat(&m.mnt, "cached_bytes") < 3 << 20 {
        assert!(std::time::Instant::now() < deadline, "not cached");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let (code, out, err) = run(&["drop", m.mnt.to_str().unwrap(), m.m("a").to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("2097152 bytes") && out.contains("2 files"),
        "{out}"
    );
    assert_eq!(stat(&m.mnt, "cached_bytes"), 1 << 20);
    assert_eq!(
        stat(&m.mnt, "metadata_entries"),
        0,
        "the metadata cache is dropped too"
    );
    drop_caches();
    let (hits, misses) = (stat(&m.mnt, "bytes_hit"), stat(&m.mnt, "bytes_missed"));
    assert_eq!(fs::read(m.m("b/3")).unwrap(), pattern(1 << 20, 3));
    assert_eq!(stat(&m.mnt, "bytes_missed"), misses, "b was dropped too");
    assert_eq!(stat(&m.mnt, "bytes_hit"), hits + (1 << 20));
    assert_eq!(fs::read(m.m("a/sub/2")).unwrap(), pattern(1 << 20, 2));
    assert_eq!(
        stat(&m.mnt, "bytes_missed"),
        misses + (1 << 20),
        "a was not dropped"
    );
    // a path outside the mount is refused, nothing dropped
    let (code, _, err) = run(&["drop", m.mnt.to_str().unwrap(), "/etc"]);
    assert_eq!(code, 1);
    assert!(err.contains("not inside the mount"), "{err}");
    // everything; and it stays dropped across a remount (journaled)
    let (code, _, err) = run(&["drop", m.mnt.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(stat(&m.mnt, "cached_bytes"), 0);
    let (status, dir) = m.unmount_keep();
    assert!(status.success());
    let m = mount_cached(dir, &backing, &cache);
    assert_eq!(
        stat(&m.mnt, "cached_bytes"),
        0,
        "the drop was not journaled"
    );
}

#[test]
fn a_non_root_caller_is_told_it_is_a_permission_matter() {
    require_fuse!();
    let (dir, backing, cache) = common::backing_and_cache("bcl-ctl");
    let m = mount_cached(dir, &backing, &cache);
    let out = Command::new(BIN)
        .args(["stats", m.mnt.to_str().unwrap()])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        err.contains("permission denied") && err.contains("root"),
        "{err}"
    );
    assert!(!err.contains("no bcachefs-lite cache is mounted"), "{err}");
    // and for a mount point with no cache at all, root is told so
    let (code, _, err) = run(&["stats", "/nonexistent-mount"]);
    assert_eq!(code, 1);
    assert!(err.contains("no bcachefs-lite cache is mounted"), "{err}");
}

#[test]
fn a_client_of_another_protocol_version_is_refused_clearly() {
    require_fuse!();
    let (dir, backing, cache) = common::backing_and_cache("bcl-ctl");
    let m = mount_cached(dir, &backing, &cache);
    let sock = bcachefs_lite::control::socket_path(&m.mnt.canonicalize().unwrap());
    let mut s = UnixStream::connect(&sock).unwrap();
    s.write_all(b"{\"v\":1,\"cmd\":\"stats\"}\n").unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    let v: serde_json::Value = serde_json::from_str(&reply).unwrap();
    assert_eq!(v["ok"], false);
    let e = v["error"].as_str().unwrap();
    assert!(e.contains("version 1") && e.contains("version 2"), "{e}");
}
