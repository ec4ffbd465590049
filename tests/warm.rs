//! `bcachefs-lite warm`: after a warm, dropping the kernel's caches and reading the tree is
//! all hits with no backing reads (also for files past the sequential cutoff); a second warm
//! reads nothing from the backing; a file changed in the backing is warmed afresh.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::{pattern, Mount, BIN};

fn drop_caches() {
    // SAFETY: sync takes no arguments and cannot fail.
    unsafe { libc::sync() };
    fs::write("/proc/sys/vm/drop_caches", "3").unwrap();
}

const TREE: [(&str, usize, u64); 4] = [
    ("t/small", 5000, 1),
    ("t/sub/mid", 3 << 20, 2),
    ("t/sub/big", 20 << 20, 3), // past the 4 MiB sequential cutoff
    ("t/sub/deeper/empty", 0, 4),
];

fn mount() -> Mount {
    let (dir, backing, cache) = common::backing_and_cache("bcl-warm");
    for (name, len, seed) in TREE {
        let p = backing.join(name);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, pattern(len, seed)).unwrap();
    }
    fs::write(backing.join("outside"), b"not warmed").unwrap();
    let opts = format!("cache={},cache_size=128M", cache.display());
    let m = Mount::over(dir, backing, &opts, &[]);
    common::stats(&m.mnt);
    m
}

fn warm_json(paths: &[&Path]) -> serde_json::Value {
    warm_jobs(paths, 3)
}

fn warm_jobs(paths: &[&Path], jobs: usize) -> serde_json::Value {
    let out = Command::new(BIN)
        .arg("warm")
        .args(paths)
        .args(["--jobs", &jobs.to_string(), "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "warm: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn stat(mnt: &Path, key: &str) -> u64 {
    common::stat_u64(mnt, key)
}

#[test]
fn after_a_warm_reading_the_tree_is_all_hits_and_no_backing_reads() {
    require_fuse!();
    let m = mount();
    // one job: the big file is read by one stream, which the cutoff would bypass
    let s = warm_jobs(&[&m.m("t")], 1);
    let total: usize = TREE.iter().map(|t| t.1).sum();
    assert_eq!(s["files"], 4);
    assert_eq!(s["bytes"], total as u64);
    assert_eq!(s["read_bytes"], total as u64, "{s}");
    drop_caches();
    let (missed, misses) = (stat(&m.mnt, "bytes_missed"), stat(&m.mnt, "cache_misses"));
    let hits = stat(&m.mnt, "cache_hits");
    for (name, len, seed) in TREE {
        assert!(fs::read(m.m(name)).unwrap() == pattern(len, seed), "{name}");
    }
    assert_eq!(
        stat(&m.mnt, "bytes_missed"),
        missed,
        "read from the backing after warm"
    );
    assert_eq!(stat(&m.mnt, "cache_misses"), misses);
    assert!(stat(&m.mnt, "cache_hits") > hits);
    // the file outside the warmed tree was not read in
    assert_eq!(fs::read(m.m("outside")).unwrap(), b"not warmed");
    assert_eq!(
        stat(&m.mnt, "bytes_missed"),
        missed + 4096,
        "outside was warmed too"
    );
}

#[test]
fn a_second_warm_reads_nothing_from_the_backing() {
    require_fuse!();
    let m = mount();
    warm_json(&[&m.m("t/sub")]);
    let missed = stat(&m.mnt, "bytes_missed");
    let s = warm_json(&[&m.m("t/sub"), &m.m("t/small")]);
    assert_eq!(
        s["read_bytes"], 5000,
        "only t/small was not cached yet: {s}"
    );
    assert_eq!(
        stat(&m.mnt, "bytes_missed"),
        missed + 8192,
        "t/small, in whole blocks"
    );
}

#[test]
fn a_file_changed_in_the_backing_is_warmed_afresh() {
    require_fuse!();
    let m = mount();
    warm_json(&[&m.m("t/sub/mid")]);
    fs::write(m.b("t/sub/mid"), pattern(3 << 20, 99)).unwrap();
    let s = warm_json(&[&m.m("t/sub/mid")]);
    assert_eq!(
        s["read_bytes"],
        3 << 20,
        "the old extents were trusted: {s}"
    );
    drop_caches();
    let missed = stat(&m.mnt, "bytes_missed");
    assert!(fs::read(m.m("t/sub/mid")).unwrap() == pattern(3 << 20, 99));
    assert_eq!(stat(&m.mnt, "bytes_missed"), missed);
}

#[test]
fn paths_outside_a_mount_are_refused() {
    let out = Command::new(BIN).args(["warm", "/etc"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not inside a bcachefs-lite mount"), "{err}");
}
