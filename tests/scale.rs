//! Scale: inodes cost no descriptor each (issue 17).
//!
//! The daemon runs with `RLIMIT_NOFILE` 1024 soft *and* hard, so raising the soft
//! limit to the hard one (which the daemon does at start) cannot be what makes a
//! tree of 5,000 files work: only the file-handle scheme with its bounded descriptor
//! cache can.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{pattern, sh, sh_ok, Daemon, Mount};

/// One figure from `stats --json`, as text (a string's quotes stripped).
/// `forgotten_inodes_...` drops unused dentries and inodes machine-wide (drop_caches=2),
/// which makes the kernel forget the inodes another test is counting: the tests that count
/// or drop them run one at a time.
static KERNEL_INODES: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn kernel_inodes() -> std::sync::MutexGuard<'static, ()> {
    KERNEL_INODES.lock().unwrap_or_else(|e| e.into_inner())
}

fn figure(mnt: &Path, key: &str) -> String {
    match &common::stats(mnt)[key] {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => panic!("no {key} in stats"),
        v => v.to_string(),
    }
}

fn number(mnt: &Path, key: &str) -> u64 {
    figure(mnt, key).parse().unwrap()
}

fn limited(soft: u64, hard: u64) -> Daemon {
    Daemon {
        nofile: Some((soft, hard)),
        ..Daemon::default()
    }
}

/// A fresh temp dir with an empty backing directory in it.
fn backing_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix("bcl-scale")
        .tempdir()
        .unwrap();
    let backing = dir.path().join("backing");
    fs::create_dir(&backing).unwrap();
    (dir, backing)
}

/// `n` files of distinct sizes and contents in `dirs` directories under `root/sub`.
fn make_tree(root: &Path, sub: &str, n: usize, dirs: usize) {
    for i in 0..n {
        let d = root.join(sub).join(format!("d{:03}", i % dirs));
        if i < dirs {
            fs::create_dir_all(&d).unwrap();
        }
        fs::write(d.join(format!("f{i:05}")), pattern(i % 3000, i as u64)).unwrap();
    }
}

/// "Max open files" soft and hard limits of process `pid`.
fn nofile_of(pid: u32) -> (String, String) {
    let limits = fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .to_string();
    let f: Vec<&str> = line.split_whitespace().collect();
    (f[3].to_string(), f[4].to_string())
}

fn open_fds(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

#[test]
fn tree_of_5000_files_walks_stats_reads_and_tars_with_1024_descriptors() {
    require_fuse!();
    let _k = kernel_inodes();
    let (dir, backing) = backing_dir();
    make_tree(&backing, "tree", 5000, 50);
    let cache = dir.path().join("cache");
    let opts = format!("cache={},cache_size=64M", cache.display());
    let m = Mount::spawn(dir, backing, &opts, &[], &limited(1024, 1024));
    assert_eq!(
        nofile_of(m.pid()),
        ("1024".into(), "1024".into()),
        "the daemon really runs with 1024 descriptors"
    );
    let b = m.backing.clone();
    let mnt = m.mnt.clone();

    // walk + stat: names, sizes, inode numbers, link counts, modes as in the backing
    let listing = "find tree -printf '%p %s %i %n %m %y\\n' | sort";
    let through = sh_ok(listing, &mnt);
    assert_eq!(through.lines().count(), 5000 + 50 + 1);
    assert_eq!(through, sh_ok(listing, &b));
    // read every byte (twice: misses, then cache hits)
    for _ in 0..2 {
        let (code, out, err) = sh(&format!("diff -r {} tree", b.join("tree").display()), &mnt);
        assert_eq!(code, 0, "diff: {out}{err}");
    }
    // tar: the same archive, byte for byte
    let tar = "tar --sort=name -cf - tree | sha256sum";
    assert_eq!(sh_ok(tar, &mnt), sh_ok(tar, &b));

    let known = number(&mnt, "inodes_known");
    assert!(known > 5000, "the kernel knows every inode ({known})");
    assert_eq!(figure(&mnt, "file_handles"), "yes");
    let fds = open_fds(m.pid());
    assert!(fds < 1024, "{fds} descriptors for {known} inodes");
    assert!(number(&mnt, "inode_fds_cached") <= number(&mnt, "inode_fd_cache_capacity"));
    assert!(number(&mnt, "inode_fd_reopens") > 0);
}

#[test]
fn open_file_survives_backing_rename_and_unlink_after_its_descriptor_was_evicted() {
    require_fuse!();
    let (dir, backing) = backing_dir();
    make_tree(&backing, "other", 300, 3);
    fs::write(backing.join("a"), b"hello").unwrap();
    let daemon = Daemon {
        nofile: Some((1024, 1024)),
        env: vec![("BCACHEFS_LITE_FD_CACHE".into(), "16".into())],
        ..Daemon::default()
    };
    let cache = dir.path().join("cache");
    // metadata_ttl=1: the metadata cache trusts the name no longer than the kernel's 1 s
    // entry TTL this test waits out after the outside rename and unlink
    let opts = format!("cache={},cache_size=16M,metadata_ttl=1", cache.display());
    let m = Mount::spawn(dir, backing, &opts, &[], &daemon);
    let walk = || sh_ok("find other -printf '%s\\n' | wc -l", &m.mnt);

    // a's descriptor is cached by the lookup, then evicted by 300 others
    fs::metadata(m.m("a")).unwrap();
    walk();
    let evicted = number(&m.mnt, "inode_fd_evictions");
    assert!(
        evicted >= 280,
        "the others pushed everything out ({evicted})"
    );
    let reopens = number(&m.mnt, "inode_fd_reopens");
    // opening it reopens the inode by handle; the open handle pins it
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.m("a"))
        .unwrap();
    assert!(
        number(&m.mnt, "inode_fd_reopens") > reopens,
        "reopened by handle"
    );
    walk();
    walk();

    fs::rename(m.b("a"), m.b("a2")).unwrap();
    fs::remove_file(m.b("a2")).unwrap();
    walk(); // more pressure after the unlink

    use std::io::{Read, Seek, SeekFrom, Write};
    let mut got = String::new();
    f.read_to_string(&mut got).unwrap();
    assert_eq!(got, "hello");
    f.write_all(b", world").unwrap();
    f.seek(SeekFrom::Start(0)).unwrap();
    got.clear();
    f.read_to_string(&mut got).unwrap();
    assert_eq!(got, "hello, world");
    let st = f.metadata().unwrap();
    assert_eq!(st.len(), 12);
    assert_eq!(std::os::unix::fs::MetadataExt::nlink(&st), 0);
    // fchmod is a setattr without a file handle: it needs the pinned O_PATH descriptor
    f.set_permissions(fs::Permissions::from_mode(0o600))
        .unwrap();
    assert_eq!(f.metadata().unwrap().permissions().mode() & 0o777, 0o600);
    f.set_len(3).unwrap();
    assert_eq!(f.metadata().unwrap().len(), 3);
    std::thread::sleep(Duration::from_millis(1100)); // past the 1 s entry TTL
    assert!(!m.m("a").exists());
    assert!(number(&m.mnt, "inode_fds_cached") <= 16);
    drop(f);
}

#[test]
fn backing_without_handles_works_within_its_limit_and_fails_clearly_beyond() {
    require_fuse!();
    // The backing is itself a FUSE mount (of bcachefs-lite): FUSE decodes handles only
    // for inodes the kernel still caches, so the outer mount must keep descriptors.
    let (inner_dir, inner_backing) = backing_dir();
    make_tree(&inner_backing, "small", 300, 3);
    let inner = Mount::over(inner_dir, inner_backing, "", &[]);
    let dir = tempfile::Builder::new()
        .prefix("bcl-scale")
        .tempdir()
        .unwrap();
    let log = dir.path().join("log");
    let cache = dir.path().join("cache");
    let opts = format!("cache={},cache_size=16M", cache.display());
    let outer = Mount::spawn(
        dir,
        inner.mnt.clone(),
        &opts,
        &["--log-file", log.to_str().unwrap()],
        &limited(1024, 1024),
    );
    let logged = fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("no usable file handles (a FUSE filesystem)"),
        "said at mount: {logged}"
    );
    assert_eq!(figure(&outer.mnt, "file_handles"), "no");

    // within the limit: all of it, identical
    let listing = "find small -printf '%p %s\\n' | sort";
    assert_eq!(sh_ok(listing, &outer.mnt), sh_ok(listing, &inner.backing));
    let (code, out, err) = sh(
        &format!("diff -r {} small", inner.backing.join("small").display()),
        &outer.mnt,
    );
    assert_eq!(code, 0, "{out}{err}");

    // beyond it: an error the caller sees, and one log line saying why
    make_tree(&inner.backing, "big", 2000, 4);
    let (code, _, err) = sh("find big -printf '%s\\n' >/dev/null", &outer.mnt);
    assert_ne!(code, 0, "2000 more inodes cannot all hold a descriptor");
    assert!(err.contains("Too many open files"), "{err}");
    let logged = fs::read_to_string(&log).unwrap();
    assert_eq!(
        logged.matches("out of file descriptors").count(),
        1,
        "logged once: {logged}"
    );
    assert!(logged.contains("gives no file handles") && logged.contains("LimitNOFILE"));
    // the daemon is still fine: what it already knows works
    assert_eq!(
        sh_ok("cat small/d000/f00000 | wc -c", &outer.mnt).trim(),
        "0"
    );
    drop(outer);
    drop(inner);
}

#[test]
fn daemon_raises_its_soft_descriptor_limit_to_the_hard_one() {
    require_fuse!();
    let (dir, backing) = backing_dir();
    let m = Mount::spawn(dir, backing, "", &[], &limited(1024, 4096));
    assert_eq!(nofile_of(m.pid()), ("4096".into(), "4096".into()));
}

#[test]
fn forgotten_inodes_keep_nothing_and_memory_per_inode_is_small() {
    require_fuse!();
    let _k = kernel_inodes();
    let (dir, backing) = backing_dir();
    make_tree(&backing, "t", 4000, 20);
    let cache = dir.path().join("cache");
    // the inode table's own memory: the metadata cache (bounded by its budget, measured in
    // tests/metadata.rs) is off here
    let opts = format!(
        "cache={},cache_size=16M,metadata_cache_size=0",
        cache.display()
    );
    let m = Mount::spawn(dir, backing, &opts, &[], &limited(1024, 1024));
    let rss = |pid: u32| -> u64 {
        let s = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let l = s.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        l.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    let before = rss(m.pid());
    sh_ok("find t -printf '%s\\n' >/dev/null", &m.mnt);
    let known = number(&m.mnt, "inodes_known");
    assert!(known > 4000);
    let after = rss(m.pid());
    let per_1000 = (after.saturating_sub(before)) * 1000 / known;
    eprintln!("RSS {before} -> {after} KiB for {known} inodes: {per_1000} KiB per 1,000");
    assert!(per_1000 < 1024, "{per_1000} KiB per 1,000 inodes");

    // The kernel forgets what it drops from its caches: nothing is left for those.
    // (drop_caches=2 drops unused dentries and inodes machine-wide, as tests/cache.rs does.)
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // SAFETY: sync takes no arguments and cannot fail.
        unsafe { libc::sync() };
        fs::write("/proc/sys/vm/drop_caches", "2").unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let known = number(&m.mnt, "inodes_known");
        if known < 50 {
            break;
        }
        assert!(Instant::now() < deadline, "still {known} inodes known");
    }
    assert!(open_fds(m.pid()) < 100, "{} descriptors", open_fds(m.pid()));
}

#[test]
fn systemd_unit_sets_a_high_descriptor_limit() {
    let unit = fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/packaging/systemd/bcachefs-lite@.service"
    ))
    .unwrap();
    assert!(unit.lines().any(|l| l == "LimitNOFILE=1048576"), "{unit}");
}
