//! Errors from the backing (issue 14, item 3): EIO, ENOSPC, EDQUOT, ESTALE and ENOTCONN
//! returned by the backing for a read, write, fsync, open, getattr, lookup or readdir reach
//! the caller through the mount unchanged, never poison the cache (state stays "active",
//! no cache I/O error counted), and never leave a key for data that was not read (the
//! index does not grow across a failed read; once the fault is gone the same read returns
//! the right bytes and is cached then).
//!
//! The seam is not a real filesystem: the daemon of these tests is built with the
//! `fault-injection` feature, and `BCL_BACKING_FAULTS` names a control file whose lines
//! (`OP ERRNO SUBSTRING`) make the daemon's backing syscall wrappers fail
//! (src/backing_faults.rs).

mod common;

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{drop_caches, pattern, stats, Daemon, Mount};

const ERRNOS: [(&str, i32); 5] = [
    ("EIO", libc::EIO),
    ("ENOSPC", libc::ENOSPC),
    ("EDQUOT", libc::EDQUOT),
    ("ESTALE", libc::ESTALE),
    ("ENOTCONN", libc::ENOTCONN),
];

/// The four tests run one at a time. Run concurrently, the fault hook sometimes misses an
/// armed write (seen 3 times in 4 runs): the write then reaches the backing and the caller
/// correctly sees success (checked: the backing held the new bytes), so it is the seam that
/// misses, not an error that is lost; the cause is not found yet.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

struct Faulty {
    m: Mount,
    ctl: PathBuf,
}

impl Faulty {
    /// A cached mount whose daemon reads its backing faults from `ctl`.
    fn new(prefix: &str, files: &[(&str, Vec<u8>)]) -> Faulty {
        Faulty::with_options(prefix, files, "")
    }

    /// [`Faulty::new`] with more mount options (`,opt=...`).
    fn with_options(prefix: &str, files: &[(&str, Vec<u8>)], extra: &str) -> Faulty {
        let (dir, backing, cache) = common::backing_and_cache(prefix);
        for (name, data) in files {
            let p = backing.join(name);
            if let Some(parent) = p.parent() {
                fs::create_dir_all(parent).unwrap();
            }
            fs::write(p, data).unwrap();
        }
        let ctl = dir.path().join("faults");
        let daemon = Daemon {
            env: vec![("BCL_BACKING_FAULTS".into(), ctl.display().to_string())],
            ..Daemon::default()
        };
        let opts = format!("cache={},cache_size=64M{extra}", cache.display());
        let m = Mount::spawn(dir, backing, &opts, &[], &daemon);
        Faulty { m, ctl }
    }

    /// Arms one fault (replacing any other), atomically.
    fn arm(&self, op: &str, errno: &str, target: &str) {
        let tmp = self.ctl.with_extension("tmp");
        fs::write(&tmp, format!("{op} {errno} {target}\n")).unwrap();
        fs::rename(&tmp, &self.ctl).unwrap();
    }

    fn disarm(&self) {
        let _ = fs::remove_file(&self.ctl);
    }

    fn m(&self, rel: &str) -> PathBuf {
        self.m.m(rel)
    }

    fn mnt(&self) -> &Path {
        &self.m.mnt
    }
}

/// (cached_bytes, index_extents) after the fills in flight have landed.
fn index_size(mnt: &Path) -> (u64, u64) {
    std::thread::sleep(Duration::from_millis(150));
    let s = stats(mnt);
    (
        s["cached_bytes"].as_u64().unwrap(),
        s["index_extents"].as_u64().unwrap(),
    )
}

/// The cache is not poisoned: still active, no cache I/O error.
fn assert_not_poisoned(mnt: &Path, what: &str) {
    let s = stats(mnt);
    assert_eq!(s["state"], "active", "{what}: {s}");
    assert_eq!(s["io_errors"].as_u64(), Some(0), "{what}: {s}");
}

fn errno_of<T>(r: std::io::Result<T>, what: &str) -> i32 {
    match r {
        Ok(_) => panic!("{what}: succeeded, an error was injected"),
        Err(e) => e.raw_os_error().unwrap_or_else(|| panic!("{what}: {e}")),
    }
}

fn read_file(p: &Path) -> std::io::Result<Vec<u8>> {
    let mut v = Vec::new();
    fs::File::open(p)?.read_to_end(&mut v)?;
    Ok(v)
}

const LEN: usize = 256 << 10;

#[test]
fn backing_read_errors_reach_the_caller_and_cache_nothing() {
    require_fuse!();
    let _serial = serial();
    let files: Vec<(String, Vec<u8>)> = (0..ERRNOS.len())
        .map(|i| (format!("r{i}"), pattern(LEN, 300 + i as u64)))
        .collect();
    let refs: Vec<(&str, Vec<u8>)> = files.iter().map(|(n, d)| (n.as_str(), d.clone())).collect();
    let f = Faulty::new("bcl-berr-read", &refs);
    for (i, (name, code)) in ERRNOS.iter().enumerate() {
        let file = format!("r{i}");
        drop_caches();
        let before = index_size(f.mnt());
        f.arm("read", name, &format!("/{file}"));
        let got = errno_of(read_file(&f.m(&file)), &format!("read {file} with {name}"));
        assert_eq!(
            got, *code,
            "read with {name} injected came back as errno {got}"
        );
        assert_eq!(
            index_size(f.mnt()),
            before,
            "a failed read left a key ({name})"
        );
        assert_not_poisoned(f.mnt(), &format!("read {name}"));
        f.disarm();
        drop_caches();
        assert!(
            read_file(&f.m(&file)).unwrap() == files[i].1,
            "{file} after {name}"
        );
        let after = index_size(f.mnt());
        assert!(
            after.0 > before.0,
            "the good read is cached ({before:?} -> {after:?}): the check above can fail"
        );
        // now cached: a hit does not reach the backing, so the same fault is not seen
        f.arm("read", name, &format!("/{file}"));
        drop_caches();
        assert!(read_file(&f.m(&file)).unwrap() == files[i].1, "{file} hit");
        f.disarm();
    }
}

#[test]
fn backing_write_errors_reach_the_caller_and_cache_nothing() {
    require_fuse!();
    let _serial = serial();
    let old = pattern(LEN, 400);
    let files: Vec<(String, Vec<u8>)> = (0..ERRNOS.len())
        .map(|i| (format!("w{i}"), old.clone()))
        .collect();
    let refs: Vec<(&str, Vec<u8>)> = files.iter().map(|(n, d)| (n.as_str(), d.clone())).collect();
    let f = Faulty::new("bcl-berr-write", &refs);
    for (i, (name, code)) in ERRNOS.iter().enumerate() {
        let file = format!("w{i}");
        // cached first: a failed write must not leave the old keys' bytes nor its own
        assert!(read_file(&f.m(&file)).unwrap() == old);
        let before = index_size(f.mnt());
        f.arm("write", name, &format!("/{file}"));
        let new = pattern(LEN, 500 + i as u64);
        let r = fs::OpenOptions::new()
            .write(true)
            .open(f.m(&file))
            .and_then(|mut h| h.write_all(&new).and_then(|_| h.flush()));
        let got = errno_of(r, &format!("write {file} with {name}"));
        assert_eq!(
            got, *code,
            "write with {name} injected came back as errno {got}"
        );
        let after = index_size(f.mnt());
        assert!(
            after.0 <= before.0,
            "a failed write added keys ({name}: {before:?} -> {after:?})"
        );
        assert_not_poisoned(f.mnt(), &format!("write {name}"));
        f.disarm();
        drop_caches();
        assert!(
            read_file(&f.m(&file)).unwrap() == old,
            "{file}: a failed write changed nothing ({name})"
        );
        // and a good write afterwards lands and reads back
        fs::write(f.m(&file), &new).unwrap();
        drop_caches();
        assert!(read_file(&f.m(&file)).unwrap() == new, "{file} rewritten");
    }
}

#[test]
fn backing_fsync_open_and_create_errors_reach_the_caller() {
    require_fuse!();
    let _serial = serial();
    let files: Vec<(String, Vec<u8>)> = (0..ERRNOS.len())
        .flat_map(|i| {
            [
                (format!("s{i}"), pattern(8192, 600 + i as u64)),
                (format!("o{i}"), pattern(8192, 700 + i as u64)),
            ]
        })
        .collect();
    let refs: Vec<(&str, Vec<u8>)> = files.iter().map(|(n, d)| (n.as_str(), d.clone())).collect();
    let f = Faulty::new("bcl-berr-fsync", &refs);
    for (i, (name, code)) in ERRNOS.iter().enumerate() {
        // fsync
        let file = format!("s{i}");
        let mut h = fs::OpenOptions::new().write(true).open(f.m(&file)).unwrap();
        h.write_all(b"fsynced").unwrap();
        f.arm("fsync", name, &format!("/{file}"));
        let got = errno_of(h.sync_all(), &format!("fsync {file} with {name}"));
        assert_eq!(got, *code, "fsync with {name} came back as errno {got}");
        f.disarm();
        h.sync_all().unwrap();
        drop(h);
        assert_not_poisoned(f.mnt(), &format!("fsync {name}"));
        // open of an existing file
        let file = format!("o{i}");
        f.arm("open", name, &format!("/{file}"));
        let got = errno_of(
            fs::File::open(f.m(&file)),
            &format!("open {file} with {name}"),
        );
        assert_eq!(got, *code, "open with {name} came back as errno {got}");
        // create of a new name
        let new = format!("c{i}");
        f.arm("open", name, &new);
        let got = errno_of(
            fs::File::create(f.m(&new)),
            &format!("create {new} with {name}"),
        );
        assert_eq!(got, *code, "create with {name} came back as errno {got}");
        f.disarm();
        assert!(!f.m.b(&new).exists(), "a failed create left {new}");
        assert!(read_file(&f.m(&file)).unwrap() == files[2 * i + 1].1);
        fs::write(f.m(&new), b"created").unwrap();
        assert_eq!(fs::read(f.m.b(&new)).unwrap(), b"created");
        assert_not_poisoned(f.mnt(), &format!("open {name}"));
    }
}

#[test]
fn backing_getattr_lookup_and_readdir_errors_reach_the_caller() {
    require_fuse!();
    let _serial = serial();
    let mut files = Vec::new();
    for i in 0..ERRNOS.len() {
        files.push((format!("g{i}"), pattern(4096, 800 + i as u64)));
        files.push((format!("l{i}"), pattern(4096, 900 + i as u64)));
        files.push((format!("d{i}/x"), b"x".to_vec()));
        files.push((format!("d{i}/y"), b"y".to_vec()));
    }
    let refs: Vec<(&str, Vec<u8>)> = files.iter().map(|(n, d)| (n.as_str(), d.clone())).collect();
    let f = Faulty::new("bcl-berr-meta", &refs);
    for (i, (name, code)) in ERRNOS.iter().enumerate() {
        // getattr: a fresh lookup (the kernel forgot the dentry) fstats the backing
        let file = format!("g{i}");
        drop_caches();
        f.arm("getattr", name, &format!("/{file}"));
        let got = errno_of(
            fs::metadata(f.m(&file)),
            &format!("stat {file} with {name}"),
        );
        assert_eq!(got, *code, "getattr with {name} came back as errno {got}");
        f.disarm();
        assert_eq!(fs::metadata(f.m(&file)).unwrap().len(), 4096);
        // lookup by name
        let file = format!("l{i}");
        f.arm("lookup", name, &file);
        let got = errno_of(
            fs::metadata(f.m(&file)),
            &format!("lookup {file} with {name}"),
        );
        assert_eq!(got, *code, "lookup with {name} came back as errno {got}");
        f.disarm();
        assert!(read_file(&f.m(&file)).unwrap() == files[4 * i + 1].1);
        // readdir
        let dir = format!("d{i}");
        f.arm("readdir", name, &format!("/{dir}"));
        let r: std::io::Result<Vec<_>> = fs::read_dir(f.m(&dir)).and_then(|d| d.collect());
        let got = errno_of(r, &format!("readdir {dir} with {name}"));
        assert_eq!(got, *code, "readdir with {name} came back as errno {got}");
        f.disarm();
        let mut names: Vec<String> = fs::read_dir(f.m(&dir))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["x", "y"]);
        assert_not_poisoned(f.mnt(), &format!("metadata {name}"));
    }
}

/// Writeback (issue 13): a backing write or fsync error while writing dirty data back is
/// retried with backoff and counted (`writeback_errors`); the data stays dirty and served
/// right, nothing is dropped or poisoned, and once the fault is gone it reaches the backing.
#[test]
fn writeback_errors_are_retried_and_never_drop_dirty_data() {
    require_fuse!();
    let _serial = serial();
    let f = Faulty::with_options(
        "bcl-berr-wb",
        &[],
        ",cache_mode=writeback,writeback_delay=0",
    );
    for (i, op) in ["write", "fsync"].iter().enumerate() {
        let name = format!("wb{i}");
        let data = pattern(LEN * 3 + 1000, 500 + i as u64);
        f.arm(op, "EIO", &name);
        // the dirty write itself does not touch the backing's data: it succeeds
        if *op == "fsync" {
            fs::write(f.m(&name), &data).unwrap();
        } else {
            // the write grows the file with ftruncate, which the seam counts as a write:
            // create it at its size first, then arm
            f.disarm();
            fs::write(f.m(&name), vec![0u8; data.len()]).unwrap();
            let _ = Command::new(common::BIN).arg("flush").arg(f.mnt()).output();
            f.arm(op, "EIO", &name);
            use std::os::unix::fs::FileExt;
            fs::OpenOptions::new()
                .write(true)
                .open(f.m(&name))
                .unwrap()
                .write_all_at(&data, 0)
                .unwrap();
        }
        let errors0 = stats(f.mnt())["writeback_errors"].as_u64().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let s = stats(f.mnt());
            if s["writeback_errors"].as_u64().unwrap() >= errors0 + 2 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{op}: no retried error: {s}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let s = stats(f.mnt());
        assert!(
            s["dirty_data"].as_u64().unwrap() > 0,
            "{op}: dirty data dropped: {s}"
        );
        assert_not_poisoned(f.mnt(), op);
        drop_caches();
        assert!(
            read_file(&f.m(&name)).unwrap() == data,
            "{op}: served wrong while failing"
        );
        f.disarm();
        common::flush(f.mnt());
        assert!(
            fs::read(f.m.b(&name)).unwrap() == data,
            "{op}: the backing lacks the data after the fault went"
        );
    }
}
