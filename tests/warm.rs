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

fn cat_all(m: &Mount, names: &[String]) {
    for n in names {
        let out = Command::new("cat").arg(m.m(n)).output().unwrap();
        assert!(out.status.success());
    }
}

fn missed_reading(m: &Mount, names: &[&str]) -> u64 {
    drop_caches();
    let before = stat(&m.mnt, "bytes_missed");
    for n in names {
        fs::read(m.m(n)).unwrap();
    }
    stat(&m.mnt, "bytes_missed") - before
}

#[test]
fn a_pinned_tree_survives_cache_filling_scans_and_remounts_until_unpinned() {
    require_fuse!();
    let (dir, backing, cache) = common::backing_and_cache("bcl-pin");
    for d in ["pinned", "plain", "scan"] {
        fs::create_dir(backing.join(d)).unwrap();
    }
    for i in 0..2 {
        fs::write(backing.join(format!("pinned/{i}")), pattern(1 << 20, i)).unwrap();
        fs::write(backing.join(format!("plain/{i}")), pattern(1 << 20, 10 + i)).unwrap();
    }
    let scan: Vec<String> = (0..24).map(|i| format!("scan/{i}")).collect();
    for (i, n) in scan.iter().enumerate() {
        fs::write(backing.join(n), pattern(2 << 20, 100 + i as u64)).unwrap();
    }
    // 16 MiB cache, 48 MiB scanned: everything unpinned is evicted. FIFO, because LRU's
    // prio order alone would spare the pinned buckets (their prio is the highest) and the
    // test would not see the pin's own protection.
    let opts = format!(
        "cache={},cache_size=16M,sequential_cutoff=0,pin_limit=4M,replacement=fifo",
        cache.display()
    );
    let m = Mount::over(dir, backing.clone(), &opts, &[]);
    common::stats(&m.mnt);
    let s = {
        let out = Command::new(BIN)
            .args(["warm", "--pin", "--json"])
            .arg(m.m("pinned"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    assert_eq!(s["read_bytes"], 2 << 20);
    warm_json(&[&m.m("plain")]);
    let pinned = stat(&m.mnt, "pinned_bytes");
    assert!(pinned >= 2 << 20, "pinned_bytes {pinned}");
    // the pins are durable at once (warm --pin ends with a gens checkpoint)
    let (status, dir) = m.unmount_keep();
    assert!(status.success());
    let m = Mount::over(dir, backing.clone(), &opts, &[]);
    assert_eq!(stat(&m.mnt, "pinned_bytes"), pinned, "pins lost at remount");
    cat_all(&m, &scan);
    assert!(
        stat(&m.mnt, "buckets_invalidated") > 128,
        "the scan did not cycle the cache"
    );
    let pinned_names = ["pinned/0", "pinned/1"];
    assert_eq!(
        missed_reading(&m, &["plain/0", "plain/1"]),
        2 << 20,
        "scan evicted nothing"
    );
    assert_eq!(
        missed_reading(&m, &pinned_names),
        0,
        "the pinned tree was evicted"
    );
    // across a remount (the gens checkpoint keeps the pins), and another scan
    let (status, dir) = m.unmount_keep();
    assert!(status.success());
    let m = Mount::over(dir, backing.clone(), &opts, &[]);
    assert_eq!(stat(&m.mnt, "pinned_bytes"), pinned, "pins lost at remount");
    cat_all(&m, &scan);
    assert_eq!(
        missed_reading(&m, &pinned_names),
        0,
        "evicted after the remount"
    );
    for (i, n) in pinned_names.iter().enumerate() {
        assert!(fs::read(m.m(n)).unwrap() == pattern(1 << 20, i as u64));
    }
    // unpinned, it goes like any other data
    let out = Command::new(BIN)
        .arg("unpin")
        .arg(m.m("pinned"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stat(&m.mnt, "pinned_bytes"), 0);
    cat_all(&m, &scan);
    assert_eq!(
        missed_reading(&m, &pinned_names),
        2 << 20,
        "unpin kept it pinned"
    );
}

#[test]
fn pinning_past_pin_limit_is_refused_clearly() {
    require_fuse!();
    let (dir, backing, cache) = common::backing_and_cache("bcl-pin");
    fs::write(backing.join("big"), pattern(4 << 20, 1)).unwrap();
    let opts = format!("cache={},cache_size=64M,pin_limit=1M", cache.display());
    let m = Mount::over(dir, backing, &opts, &[]);
    common::stats(&m.mnt);
    let out = Command::new(BIN)
        .args(["warm", "--pin"])
        .arg(m.m("big"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("pin_limit reached"), "{err}");
    assert!(stat(&m.mnt, "pinned_bytes") <= 1 << 20);
    // raised live, the same warm pins it all
    let out = Command::new(BIN)
        .arg("set")
        .arg(&m.mnt)
        .arg("pin_limit=8M")
        .output()
        .unwrap();
    assert!(out.status.success());
    let out = Command::new(BIN)
        .args(["warm", "--pin"])
        .arg(m.m("big"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stat(&m.mnt, "pinned_bytes") >= 4 << 20);
}
