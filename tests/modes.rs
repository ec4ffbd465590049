//! Cache modes (`-o cache_mode=`), mounted for real: the same battery of file operations in
//! writethrough, writearound, none and after live switches (read-after-write in this
//! process, in a second process and after a remount; truncate, unlink, rename and hard links
//! of cached files; O_APPEND; mmap writes + msync; sizes and mtimes), then what each mode
//! promises about the cache file: writethrough fills from writes, writearound fills only
//! from reads and drops what a write overlaps, none never opens the cache file. Also the
//! superblock's default mode (writeback too), the per-mount override, and the refusals (a
//! mode without a cache, an unknown mode). Writeback's own battery: tests/writeback.rs.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{pattern, Mount, BIN};

fn drop_caches() {
    // SAFETY: sync takes no arguments and cannot fail.
    unsafe { libc::sync() };
    fs::write("/proc/sys/vm/drop_caches", "3").unwrap();
}

fn stat(mnt: &Path, key: &str) -> u64 {
    common::stat_u64(mnt, key)
}

fn options(cache: &Path, mode: Option<&str>) -> String {
    let mut o = format!("cache={},cache_size=64M", cache.display());
    if let Some(m) = mode {
        o.push_str(&format!(",cache_mode={m}"));
    }
    o
}

/// Switches the live mount's mode through the control socket; returns the reply. The
/// daemon opens its socket just after the mount appears: waits up to 10 s for it.
fn set_mode(mnt: &Path, mode: &str) -> std::io::Result<serde_json::Value> {
    let mut req = bcachefs_lite::control::Request::new("set_cache_mode");
    req.mode = Some(mode.to_string());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match bcachefs_lite::control::send(&fs::canonicalize(mnt).unwrap(), &req) {
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(50))
            }
            r => return r,
        }
    }
}

fn sha(p: &Path) -> Vec<u8> {
    let out = Command::new("sha256sum").arg(p).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout[..64].to_vec()
}

/// Reads through a second process (`cat`), not this one's descriptors.
fn read_other_process(p: &Path) -> Vec<u8> {
    let out = Command::new("cat").arg(p).output().unwrap();
    assert!(out.status.success(), "cat {}", p.display());
    out.stdout
}

/// Everything the mount shows equals the backing, by content, size and mtime.
fn same_as_backing(m: &Mount, rel: &str) {
    let (a, b) = (m.m(rel), m.b(rel));
    assert!(
        fs::read(&a).unwrap() == fs::read(&b).unwrap(),
        "{rel}: bytes"
    );
    let (ma, mb) = (fs::metadata(&a).unwrap(), fs::metadata(&b).unwrap());
    assert_eq!(ma.len(), mb.len(), "{rel}: size");
    assert_eq!(
        (ma.mtime(), ma.mtime_nsec()),
        (mb.mtime(), mb.mtime_nsec()),
        "{rel}: mtime"
    );
}

/// The battery every mode must pass; `m` is mounted, `remount` mounts the same backing and
/// cache again in the same mode.
fn battery(m: Mount, remount: impl Fn(tempfile::TempDir, PathBuf) -> Mount) {
    // read-after-write: this process, a second process, after dropping the pages
    let data = pattern((1 << 20) + 5000, 1);
    fs::write(m.m("a"), &data).unwrap();
    assert!(fs::read(m.m("a")).unwrap() == data, "read after write");
    assert!(read_other_process(&m.m("a")) == data, "second process");
    drop_caches();
    assert!(fs::read(m.m("a")).unwrap() == data, "after dropping pages");
    assert!(fs::read(m.b("a")).unwrap() == data, "backing has it");
    // overwrite a cached range in the middle, unaligned
    let patch = pattern(10000, 2);
    fs::OpenOptions::new()
        .write(true)
        .open(m.m("a"))
        .unwrap()
        .write_all_at(&patch, 70000)
        .unwrap();
    let mut want = data.clone();
    want[70000..80000].copy_from_slice(&patch);
    drop_caches();
    assert!(fs::read(m.m("a")).unwrap() == want, "overwrite");
    same_as_backing(&m, "a");

    // truncate down and up: no resurrected bytes
    let f = fs::OpenOptions::new().write(true).open(m.m("a")).unwrap();
    f.set_len(5000).unwrap();
    f.set_len(200_000).unwrap();
    drop(f);
    drop_caches();
    let got = fs::read(m.m("a")).unwrap();
    assert_eq!(got.len(), 200_000);
    assert!(got[..5000] == want[..5000], "truncate keeps the prefix");
    assert!(
        got[5000..].iter().all(|&b| b == 0),
        "truncate: old bytes came back"
    );
    same_as_backing(&m, "a");

    // O_TRUNC of a cached file
    fs::write(m.m("t"), pattern(300_000, 3)).unwrap();
    let _ = fs::read(m.m("t")).unwrap();
    fs::write(m.m("t"), b"short").unwrap();
    drop_caches();
    assert_eq!(fs::read(m.m("t")).unwrap(), b"short");
    same_as_backing(&m, "t");

    // unlink, then a new file of the same name
    let old = pattern(400_000, 4);
    fs::write(m.m("u"), &old).unwrap();
    let _ = fs::read(m.m("u")).unwrap();
    fs::remove_file(m.m("u")).unwrap();
    assert!(!m.b("u").exists());
    let new = pattern(400_000, 5);
    fs::write(m.m("u"), &new).unwrap();
    drop_caches();
    assert!(fs::read(m.m("u")).unwrap() == new, "unlink + recreate");

    // rename, and a new file at the old name
    let r = pattern(300_000, 6);
    fs::write(m.m("r1"), &r).unwrap();
    let _ = fs::read(m.m("r1")).unwrap();
    fs::rename(m.m("r1"), m.m("r2")).unwrap();
    fs::write(m.m("r1"), b"other").unwrap();
    drop_caches();
    assert!(fs::read(m.m("r2")).unwrap() == r, "renamed file");
    assert_eq!(fs::read(m.m("r1")).unwrap(), b"other");
    same_as_backing(&m, "r2");

    // hard links: a write through one name is seen through the other
    let h = pattern(300_000, 7);
    fs::write(m.m("h1"), &h).unwrap();
    fs::hard_link(m.m("h1"), m.m("h2")).unwrap();
    let _ = fs::read(m.m("h1")).unwrap();
    let p2 = pattern(4096, 8);
    fs::OpenOptions::new()
        .write(true)
        .open(m.m("h2"))
        .unwrap()
        .write_all_at(&p2, 8192)
        .unwrap();
    let mut hw = h.clone();
    hw[8192..12288].copy_from_slice(&p2);
    drop_caches();
    assert!(fs::read(m.m("h1")).unwrap() == hw, "through the other link");
    assert_eq!(fs::metadata(m.m("h1")).unwrap().nlink(), 2);
    same_as_backing(&m, "h1");

    // O_APPEND
    fs::write(m.m("ap"), pattern(5000, 9)).unwrap();
    let _ = fs::read(m.m("ap")).unwrap();
    {
        let mut f = fs::OpenOptions::new().append(true).open(m.m("ap")).unwrap();
        f.write_all(b"one").unwrap();
        f.write_all(b"two").unwrap();
    }
    let mut want_ap = pattern(5000, 9);
    want_ap.extend_from_slice(b"onetwo");
    drop_caches();
    assert!(fs::read(m.m("ap")).unwrap() == want_ap, "O_APPEND");
    same_as_backing(&m, "ap");

    // mmap write + msync
    let mm = pattern(256 << 10, 10);
    fs::write(m.m("mm"), &mm).unwrap();
    let _ = fs::read(m.m("mm")).unwrap();
    let mut mw = mm.clone();
    common::mmap_flip_and_msync(&m.m("mm"), &mut mw);
    assert!(
        fs::read(m.b("mm")).unwrap() == mw,
        "msync reached the backing"
    );
    drop_caches();
    assert!(fs::read(m.m("mm")).unwrap() == mw, "mmap write read back");

    // sizes and mtimes as the backing says, also after an O_DIRECT read
    let mut buf = vec![0u8; 8192];
    let mut fd = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(m.m("h2"));
    if let Ok(f) = fd.as_mut() {
        // O_DIRECT needs an aligned buffer; an unaligned one may fail with EINVAL, which
        // says nothing about the mode, so only a success is checked
        if f.read(&mut buf).is_ok() {
            same_as_backing(&m, "h2");
        }
    }
    drop(fd);
    for rel in ["a", "t", "u", "r1", "r2", "h1", "ap", "mm"] {
        same_as_backing(&m, rel);
    }

    // after a remount
    let (status, dir) = m.unmount_keep();
    assert!(status.success());
    let backing = dir.path().join("backing");
    let m = remount(dir, backing);
    for (rel, want) in [
        ("a", &got),
        ("r2", &r),
        ("h2", &hw),
        ("ap", &want_ap),
        ("mm", &mw),
    ] {
        assert!(fs::read(m.m(rel)).unwrap() == *want, "{rel} after remount");
    }
    drop(m);
}

fn run_battery(mode: &str) {
    let (dir, backing, cache) = common::backing_and_cache("bcl-modes");
    let opts = options(&cache, Some(mode));
    let m = Mount::over(dir, backing, &opts, &[]);
    battery(m, |dir, backing| Mount::over(dir, backing, &opts, &[]));
}

#[test]
fn writethrough_battery() {
    require_fuse!();
    run_battery("writethrough");
}

#[test]
fn writearound_battery() {
    require_fuse!();
    run_battery("writearound");
}

#[test]
fn none_battery() {
    require_fuse!();
    run_battery("none");
}

/// Mounted writethrough, switched live to writearound for the battery's first half and the
/// remount in none: coherent across every switch.
#[test]
fn battery_across_live_switches() {
    require_fuse!();
    let (dir, backing, cache) = common::backing_and_cache("bcl-modes");
    let m = Mount::over(dir, backing, &options(&cache, None), &[]);
    let reply = set_mode(&m.mnt, "writearound").unwrap();
    assert_eq!(reply["previous"], "writethrough");
    assert_eq!(common::stats(&m.mnt)["cache_mode"], "writearound");
    let cache2 = cache.clone();
    battery(m, move |dir, backing| {
        let m = Mount::over(dir, backing, &options(&cache2, None), &[]);
        assert_eq!(
            set_mode(&m.mnt, "none").unwrap()["previous"],
            "writethrough"
        );
        m
    });
}

/// Writes 1 MiB of whole blocks, then reads it back with the kernel's pages dropped;
/// returns (bytes_filled after the write, hits gained by the read).
fn write_then_read(m: &Mount, rel: &str, seed: u64) -> (u64, u64) {
    let filled0 = stat(&m.mnt, "bytes_filled");
    let data = pattern(1 << 20, seed);
    fs::write(m.m(rel), &data).unwrap();
    // a write's fill happens after its reply: give it a moment
    common::settle_fills(&m.mnt);
    let filled = stat(&m.mnt, "bytes_filled") - filled0;
    drop_caches();
    let hits0 = stat(&m.mnt, "cache_hits");
    assert!(fs::read(m.m(rel)).unwrap() == data);
    (filled, stat(&m.mnt, "cache_hits") - hits0)
}

#[test]
fn writethrough_fills_from_writes() {
    require_fuse!();
    let (dir, backing, cache) = common::backing_and_cache("bcl-modes");
    let m = Mount::over(dir, backing, &options(&cache, None), &[]);
    assert_eq!(common::stats(&m.mnt)["cache_mode"], "writethrough");
    let (filled, hits) = write_then_read(&m, "f", 20);
    assert_eq!(filled, 1 << 20, "the written blocks are cached");
    assert!(hits > 0, "the read after the write hits");
}

#[test]
fn writearound_fills_only_from_reads_and_drops_what_a_write_overlaps() {
    require_fuse!();
    let (dir, backing, cache) = common::backing_and_cache("bcl-modes");
    let m = Mount::over(dir, backing, &options(&cache, Some("writearound")), &[]);
    assert_eq!(common::stats(&m.mnt)["cache_mode"], "writearound");
    let data = pattern(1 << 20, 21);
    fs::write(m.m("f"), &data).unwrap();
    common::settle_fills(&m.mnt);
    assert_eq!(
        stat(&m.mnt, "bytes_filled"),
        0,
        "writearound filled from a write"
    );
    assert_eq!(
        stat(&m.mnt, "cached_bytes"),
        0,
        "writearound cached a write"
    );
    drop_caches();
    let misses0 = stat(&m.mnt, "cache_misses");
    assert!(fs::read(m.m("f")).unwrap() == data);
    assert!(
        stat(&m.mnt, "cache_misses") > misses0,
        "the first read misses"
    );
    // the read filled it: the next read hits
    common::settle_fills(&m.mnt);
    let cached = stat(&m.mnt, "cached_bytes");
    assert_eq!(cached, 1 << 20, "the read filled the cache");
    drop_caches();
    let hits0 = stat(&m.mnt, "cache_hits");
    let _ = fs::read(m.m("f")).unwrap();
    assert!(stat(&m.mnt, "cache_hits") > hits0, "second read hits");
    // a write drops the cached blocks it overlaps, and fills nothing
    let patch = pattern(8192, 22);
    fs::OpenOptions::new()
        .write(true)
        .open(m.m("f"))
        .unwrap()
        .write_all_at(&patch, 4096)
        .unwrap();
    common::settle_fills(&m.mnt);
    assert_eq!(
        stat(&m.mnt, "cached_bytes"),
        (1 << 20) - 8192,
        "the overlapped blocks are dropped, nothing is added"
    );
    drop_caches();
    let got = fs::read(m.m("f")).unwrap();
    assert!(got[4096..12288] == patch[..], "new bytes served");
    assert!(got == fs::read(m.b("f")).unwrap());
}

#[test]
fn none_at_mount_never_opens_the_cache_file() {
    require_fuse!();
    let (dir, backing, cache) = common::backing_and_cache("bcl-modes");
    // a missing cache file is not created
    let m = Mount::over(dir, backing, &options(&cache, Some("none")), &[]);
    fs::write(m.m("x"), b"hello").unwrap();
    assert_eq!(fs::read(m.m("x")).unwrap(), b"hello");
    assert!(!cache.exists(), "mode none created the cache file");
    let (_, dir) = m.unmount_keep();
    // an existing one is neither written nor held open by the daemon
    let backing = dir.path().join("backing");
    let m = Mount::over(dir, backing, &options(&cache, None), &[]);
    let _ = fs::read(m.m("x")).unwrap();
    let (_, dir) = m.unmount_keep();
    let before = (sha(&cache), fs::metadata(&cache).unwrap().mtime_nsec());
    let backing = dir.path().join("backing");
    let m = Mount::over(dir, backing, &options(&cache, Some("none")), &[]);
    for i in 0..20 {
        fs::write(m.m(&format!("n{i}")), pattern(200_000, i)).unwrap();
        let _ = fs::read(m.m(&format!("n{i}"))).unwrap();
        let _ = fs::read(m.m("x")).unwrap();
    }
    let fds = fs::read_dir(format!("/proc/{}/fd", m.pid())).unwrap();
    for fd in fds.flatten() {
        if let Ok(target) = fs::read_link(fd.path()) {
            assert_ne!(target, cache, "the daemon holds the cache file open");
        }
    }
    // no cache set, so no control socket either
    let out = Command::new(BIN)
        .args(["stats", "--json"])
        .arg(&m.mnt)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let (_, _dir) = m.unmount_keep();
    let after = (sha(&cache), fs::metadata(&cache).unwrap().mtime_nsec());
    assert_eq!(before, after, "mode none changed the cache file");
}

/// Switched to none on a live mount: reads neither hit nor fill; writes still drop the keys
/// they overlap, so switching back serves no old bytes.
#[test]
fn live_switch_to_none_and_back_stays_coherent() {
    require_fuse!();
    let (dir, backing, cache) = common::backing_and_cache("bcl-modes");
    let m = Mount::over(dir, backing, &options(&cache, None), &[]);
    let (filled, hits) = write_then_read(&m, "f", 30);
    assert!(filled > 0 && hits > 0);
    assert_eq!(
        set_mode(&m.mnt, "none").unwrap()["previous"],
        "writethrough"
    );
    assert_eq!(common::stats(&m.mnt)["cache_mode"], "none");
    drop_caches();
    let (h0, f0) = (stat(&m.mnt, "cache_hits"), stat(&m.mnt, "bytes_filled"));
    let _ = fs::read(m.m("f")).unwrap();
    fs::write(m.m("g"), pattern(1 << 20, 31)).unwrap();
    drop_caches();
    let _ = fs::read(m.m("g")).unwrap();
    common::settle_fills(&m.mnt);
    assert_eq!(stat(&m.mnt, "cache_hits"), h0, "mode none served a hit");
    assert_eq!(stat(&m.mnt, "bytes_filled"), f0, "mode none filled");
    // a write in none to the cached file, then back to writethrough: the new bytes
    let patch = pattern(65536, 32);
    fs::OpenOptions::new()
        .write(true)
        .open(m.m("f"))
        .unwrap()
        .write_all_at(&patch, 65536)
        .unwrap();
    assert_eq!(
        set_mode(&m.mnt, "writethrough").unwrap()["previous"],
        "none"
    );
    drop_caches();
    let got = fs::read(m.m("f")).unwrap();
    assert!(
        got[65536..131072] == patch[..],
        "old cached bytes after the switch back"
    );
    assert!(got == fs::read(m.b("f")).unwrap());
    // nonsense is refused, and the mode stays
    assert!(set_mode(&m.mnt, "fast").is_err());
    assert_eq!(common::stats(&m.mnt)["cache_mode"], "writethrough");
}

#[test]
fn the_superblock_default_applies_and_a_mount_overrides_it() {
    require_fuse!();
    let (dir, backing, cache) = common::backing_and_cache("bcl-modes");
    let out = Command::new(BIN)
        .arg("format")
        .arg(&cache)
        .args([
            "--size",
            "64M",
            "--bucket-size",
            "256K",
            "--cache-mode",
            "writearound",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m = Mount::over(dir, backing, &options(&cache, None), &[]);
    assert_eq!(common::stats(&m.mnt)["cache_mode"], "writearound");
    let (filled, _) = write_then_read(&m, "f", 40);
    assert_eq!(filled, 0, "the superblock's writearound is in force");
    let (_, dir) = m.unmount_keep();
    let backing = dir.path().join("backing");
    let m = Mount::over(dir, backing, &options(&cache, Some("writethrough")), &[]);
    assert_eq!(common::stats(&m.mnt)["cache_mode"], "writethrough");
    let (filled, _) = write_then_read(&m, "g", 41);
    assert_eq!(filled, 1 << 20, "the mount's override is in force");
    let (_, _dir) = m.unmount_keep();
    // the override is per mount: the file's default is unchanged
    let out = Command::new(BIN)
        .args(["show-super", "--json"])
        .arg(&cache)
        .output()
        .unwrap();
    let sb: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(sb["cache_mode"], "writearound");
}

#[test]
fn refused_modes_and_combinations() {
    require_fuse!();
    let (dir, backing, cache) = common::backing_and_cache("bcl-modes");
    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let mount = |opts: &str| {
        Command::new(BIN)
            .arg("mount")
            .arg(&backing)
            .arg(&mnt)
            .args(["-f", "-o", opts])
            .output()
            .unwrap()
    };
    let out = mount("cache_mode=writearound");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("needs a cache"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = mount(&format!("cache={},cache_mode=fast", cache.display()));
    assert!(!out.status.success());
    assert!(!common::is_mounted(&mnt));
}

/// Random pwrites, truncates and reads of `files` files until `stop`; errors after the
/// mount went away (a crash) end the loop quietly.
fn churn(
    mnt: PathBuf,
    files: usize,
    mut seed: u64,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use std::sync::atomic::Ordering;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    while !stop.load(Ordering::Relaxed) {
        let p = mnt.join(format!("c{}", next() % files as u64));
        let Ok(f) = fs::OpenOptions::new().read(true).write(true).open(&p) else {
            return;
        };
        let off = next() % (1 << 20);
        let r = match next() % 10 {
            0 => f.set_len(next() % (1 << 20)).map(|_| ()),
            1..=4 => {
                let len = 1 + (next() % (96 << 10)) as usize;
                f.write_all_at(&pattern(len, next()), off)
            }
            _ => {
                let mut buf = vec![0u8; 1 + (next() % (128 << 10)) as usize];
                f.read_at(&mut buf, off).map(|_| ())
            }
        };
        if r.is_err() {
            return;
        }
    }
}

fn assert_files_equal_backing(m: &Mount, files: usize, when: &str) {
    for i in 0..files {
        let rel = format!("c{i}");
        let (a, b) = (fs::read(m.m(&rel)).unwrap(), fs::read(m.b(&rel)).unwrap());
        assert!(
            a == b,
            "{rel} differs from the backing {when} ({} vs {} bytes)",
            a.len(),
            b.len()
        );
    }
}

/// Writers and readers run while the mode flips between writethrough, writearound and none
/// every few milliseconds; afterwards, from the cache (pages dropped), every file is the
/// backing's. Then the same under SIGKILL at a random moment, remounted writethrough.
#[test]
fn live_switches_under_concurrent_writers_and_crashes_keep_the_cache_coherent() {
    require_fuse!();
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let rounds = std::env::var("BCL_MODE_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3u64);
    let (mut dir, backing, cache) = common::backing_and_cache("bcl-modes");
    let files = 4;
    for i in 0..files {
        fs::write(
            backing.join(format!("c{i}")),
            pattern(1 << 20, 50 + i as u64),
        )
        .unwrap();
    }
    let opts = format!("{},sequential_cutoff=0", options(&cache, None));
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    for round in 0..=rounds {
        let crash = round > 0;
        let m = Mount::over(dir, backing.clone(), &opts, &[]);
        let stop = Arc::new(AtomicBool::new(false));
        let workers: Vec<_> = (0..4)
            .map(|w| {
                let (mnt, stop) = (m.mnt.clone(), stop.clone());
                let s = seed.wrapping_add(w * 7919 + 1);
                std::thread::spawn(move || churn(mnt, files, s, stop))
            })
            .collect();
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let until = std::time::Instant::now()
            + std::time::Duration::from_millis(if crash {
                200 + (seed >> 33) % 1500
            } else {
                2500
            });
        let mut switches = 0u64;
        // at least a dozen switches, however slowly a loaded machine runs them
        while std::time::Instant::now() < until || switches < 12 {
            let mode = ["writethrough", "writearound", "none"][(switches % 3) as usize];
            set_mode(&m.mnt, mode).unwrap();
            switches += 1;
            std::thread::sleep(std::time::Duration::from_millis(15));
        }
        let m = if crash {
            let d = m.crash();
            stop.store(true, Ordering::Relaxed);
            for w in workers {
                w.join().unwrap();
            }
            Mount::over(d, backing.clone(), &opts, &[])
        } else {
            stop.store(true, Ordering::Relaxed);
            for w in workers {
                w.join().unwrap();
            }
            set_mode(&m.mnt, "writethrough").unwrap();
            m
        };
        assert_files_equal_backing(&m, files, &format!("round {round}"));
        drop_caches();
        assert_files_equal_backing(&m, files, &format!("round {round}, from the cache"));
        let (status, d) = m.unmount_keep();
        assert!(status.success());
        dir = d;
    }
}

#[test]
fn a_cache_file_defaulting_to_writeback_mounts_writeback() {
    require_fuse!();
    let (dir, backing, cache) = common::backing_and_cache("bcl-modes");
    let out = Command::new(BIN)
        .arg("format")
        .arg(&cache)
        .args([
            "--size",
            "64M",
            "--bucket-size",
            "256K",
            "--cache-mode",
            "writeback",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let m = Mount::over(
        dir,
        backing,
        &format!("{},writeback_delay=3600", options(&cache, None)),
        &[],
    );
    assert_eq!(common::stats(&m.mnt)["cache_mode"], "writeback");
    let data = pattern(1 << 20, 60);
    fs::write(m.m("f"), &data).unwrap();
    assert!(fs::read(m.m("f")).unwrap() == data);
    assert!(
        stat(&m.mnt, "dirty_data") >= 1 << 20,
        "writeback is in force"
    );
    assert!(fs::read(m.b("f")).unwrap() != data, "written through");
}
