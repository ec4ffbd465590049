//! The read cache, mounted for real: hits after the kernel's pages are dropped, hits
//! after a remount, coherence with changes made in the backing, corruption of the
//! cache file, crashes, a cache much smaller than the data, sequential cutoff, and
//! bad cache files.

mod common;

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{knob, pattern, Mount, Rng, BIN};

fn drop_caches() {
    // SAFETY: sync takes no arguments and cannot fail.
    unsafe { libc::sync() };
    fs::write("/proc/sys/vm/drop_caches", "3").unwrap();
}

/// One figure from `stats --json`.
fn stat(mnt: &Path, key: &str) -> u64 {
    common::stat_u64(mnt, key)
}

fn stat_text(mnt: &Path) -> String {
    serde_json::to_string_pretty(&common::stats(mnt)).unwrap()
}

/// A backing dir and cache path in a fresh temp dir.
fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
    common::backing_and_cache("bcl-cache")
}

fn mount_cached(dir: tempfile::TempDir, backing: &Path, cache: &Path, extra: &str) -> Mount {
    let mut opts = format!("cache={},cache_size=256M", cache.display());
    if !extra.is_empty() {
        opts.push(',');
        opts.push_str(extra);
    }
    Mount::over(dir, backing.to_path_buf(), &opts, &[])
}

/// Reads a whole file (files here stay below the 4 MiB sequential cutoff).
fn read_all(p: &Path) -> Vec<u8> {
    fs::read(p).unwrap()
}

#[test]
fn warm_read_after_dropping_the_page_cache_is_all_hits() {
    require_fuse!();
    let (dir, backing, cache) = setup();
    let data = pattern(3 << 20, 11);
    fs::write(backing.join("f"), &data).unwrap();
    let m = mount_cached(dir, &backing, &cache, "");
    assert!(read_all(&m.m("f")) == data, "cold read");
    let misses_cold = stat(&m.mnt, "cache_misses");
    assert!(misses_cold > 0);
    let hits_before = stat(&m.mnt, "cache_hits");
    drop_caches();
    assert!(read_all(&m.m("f")) == data, "warm read");
    assert_eq!(
        stat(&m.mnt, "cache_misses"),
        misses_cold,
        "warm read missed: {}",
        stat_text(&m.mnt)
    );
    assert!(stat(&m.mnt, "cache_hits") > hits_before);
    assert_eq!(stat(&m.mnt, "bytes_filled"), 3 << 20);
    assert_eq!(
        stat(&m.mnt, "cache_hit_ratio"),
        stat(&m.mnt, "cache_hits") * 100 / (stat(&m.mnt, "cache_hits") + misses_cold)
    );
}

#[test]
fn remount_serves_hits_with_identical_bytes() {
    require_fuse!();
    let (dir, backing, cache) = setup();
    let files: Vec<(String, Vec<u8>)> = (0..20)
        .map(|i| (format!("f{i}"), pattern(100_000 + i * 5000, i as u64)))
        .collect();
    for (n, d) in &files {
        fs::write(backing.join(n), d).unwrap();
    }
    let m = mount_cached(dir, &backing, &cache, "");
    for (n, d) in &files {
        assert!(read_all(&m.m(n)) == *d);
    }
    let (status, dir) = m.unmount_keep();
    assert!(status.success());
    drop_caches();
    let m = Mount::over(
        dir,
        backing.clone(),
        &format!("cache={}", cache.display()),
        &[],
    );
    for (n, d) in &files {
        assert!(read_all(&m.m(n)) == *d, "{n} after remount");
    }
    assert_eq!(stat(&m.mnt, "cache_misses"), 0, "{}", stat_text(&m.mnt));
    assert!(stat(&m.mnt, "cache_hits") >= 20);
}

#[test]
fn changes_in_the_backing_are_seen_at_the_next_open_and_never_mixed() {
    require_fuse!();
    let (dir, backing, cache) = setup();
    let f = backing.join("f");
    let v1 = pattern(1 << 20, 1);
    fs::write(&f, &v1).unwrap();
    let m = mount_cached(dir, &backing, &cache, "");
    assert!(read_all(&m.m("f")) == v1);
    drop_caches();
    assert!(read_all(&m.m("f")) == v1);
    let hits = stat(&m.mnt, "cache_hits");
    assert!(hits > 0);
    // 1. new content, same size, with a new mtime: a rewrite in place
    let mut v2 = v1.clone();
    v2[300_000..300_010].copy_from_slice(b"0123456789");
    fs::OpenOptions::new()
        .write(true)
        .open(&f)
        .unwrap()
        .write_all_at(b"0123456789", 300_000)
        .unwrap();
    let t = [
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        libc::timespec {
            tv_sec: 2_000_000_000,
            tv_nsec: 0,
        },
    ];
    // SAFETY: the path CString lives to the end of the statement; `t` holds the two timespecs
    // utimensat reads.
    unsafe { libc::utimensat(libc::AT_FDCWD, common::cpath(&f).as_ptr(), t.as_ptr(), 0) };
    std::thread::sleep(Duration::from_millis(1100)); // past the attribute TTL
    assert!(read_all(&m.m("f")) == v2, "same-size rewrite not seen");
    assert!(stat(&m.mnt, "invalidations") >= 1);
    // 2. different size (shorter), then longer
    let v3 = pattern(200_000, 3);
    fs::write(&f, &v3).unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    assert!(read_all(&m.m("f")) == v3, "shorter file");
    let v4 = pattern(2 << 20, 4);
    fs::write(&f, &v4).unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    assert!(read_all(&m.m("f")) == v4, "longer file");
    // 3. a descriptor opened before the change sees the new bytes once attributes expire
    let mut held = fs::File::open(m.m("f")).unwrap();
    let mut first = vec![0u8; 4096];
    held.read_exact(&mut first).unwrap();
    let v5 = pattern(2 << 20, 5);
    fs::write(&f, &v5).unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    let _ = fs::metadata(m.m("f")).unwrap(); // getattr after the TTL: revalidates
    std::thread::sleep(Duration::from_millis(100));
    let mut again = vec![0u8; 1 << 20];
    held.seek(SeekFrom::Start(0)).unwrap();
    held.read_exact(&mut again).unwrap();
    assert!(again == v5[..1 << 20], "old descriptor served old bytes");
    // and through the mount, after dropping pages: still never the old bytes
    drop_caches();
    assert!(read_all(&m.m("f")) == v5);
}

#[test]
fn writes_through_the_mount_update_what_is_served() {
    require_fuse!();
    let (dir, backing, cache) = setup();
    let v1 = pattern(1 << 20, 21);
    fs::write(backing.join("f"), &v1).unwrap();
    let m = mount_cached(dir, &backing, &cache, "");
    assert!(read_all(&m.m("f")) == v1);
    let mut expect = v1.clone();
    let f = fs::OpenOptions::new().write(true).open(m.m("f")).unwrap();
    f.write_all_at(b"written through the mount", 5000).unwrap();
    expect[5000..5025].copy_from_slice(b"written through the mount");
    f.set_len(700_000).unwrap();
    expect.truncate(700_000);
    drop(f);
    drop_caches();
    assert!(read_all(&m.m("f")) == expect);
    assert!(fs::read(backing.join("f")).unwrap() == expect);
    // our own writes do not count as changes underneath: the rest stays cached
    drop_caches();
    let misses = stat(&m.mnt, "cache_misses");
    assert!(read_all(&m.m("f")) == expect);
    assert_eq!(
        stat(&m.mnt, "cache_misses"),
        misses,
        "{}",
        stat_text(&m.mnt)
    );
    assert_eq!(stat(&m.mnt, "invalidations"), 0);
}

/// Finds `needle` in the cache file; returns its offset.
fn find_in_file(path: &Path, needle: &[u8]) -> Option<u64> {
    let mut f = fs::File::open(path).unwrap();
    let mut buf = vec![0u8; 8 << 20];
    let mut base = 0u64;
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            return None;
        }
        if let Some(i) = buf[..n].windows(needle.len()).position(|w| w == needle) {
            return Some(base + i as u64);
        }
        base += n as u64;
        if n > needle.len() {
            base -= needle.len() as u64;
            f.seek(SeekFrom::Start(base)).unwrap();
        }
    }
}

#[test]
fn flipped_bytes_in_the_cache_file_are_caught_and_served_from_the_backing() {
    require_fuse!();
    let (dir, backing, cache) = setup();
    let data = pattern(512 << 10, 31);
    fs::write(backing.join("f"), &data).unwrap();
    let m = mount_cached(dir, &backing, &cache, "");
    assert!(read_all(&m.m("f")) == data);
    // wait until the fill is in the cache file, then corrupt it there
    let needle = &data[200_000..200_064];
    let mut at = None;
    for _ in 0..100 {
        at = find_in_file(&cache, needle);
        if at.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let at = at.expect("cached data not found in the cache file");
    let cf = fs::OpenOptions::new().write(true).open(&cache).unwrap();
    cf.write_all_at(&[!needle[0], !needle[1]], at).unwrap();
    drop(cf);
    drop_caches();
    assert!(
        read_all(&m.m("f")) == data,
        "corrupt cache bytes were served"
    );
    assert!(
        stat(&m.mnt, "checksum_errors") >= 1,
        "{}",
        stat_text(&m.mnt)
    );
}

#[test]
fn sequential_cutoff_bypasses_a_big_stream_and_caches_small_random_reads() {
    require_fuse!();
    let (dir, backing, cache) = setup();
    fs::write(backing.join("big"), pattern(24 << 20, 41)).unwrap();
    fs::write(backing.join("small"), pattern(8 << 20, 42)).unwrap();
    // the explicit bcache-style bypass (the default is 0: streams go on probation instead)
    let m = mount_cached(dir, &backing, &cache, "sequential_cutoff=4M");
    // a big sequential cat: everything past the 4 MiB cutoff bypasses
    let out = Command::new("cat").arg(m.m("big")).output().unwrap();
    assert_eq!(out.stdout.len(), 24 << 20);
    let bypassed = stat(&m.mnt, "bypassed");
    assert!(
        bypassed >= 16 << 20,
        "bypassed only {bypassed}: {}",
        stat_text(&m.mnt)
    );
    let filled_big = stat(&m.mnt, "bytes_filled");
    assert!(
        filled_big <= 6 << 20,
        "the stream filled {filled_big} bytes"
    );
    assert_eq!(
        stat(&m.mnt, "probation_bytes_filled"),
        0,
        "bypass, not probation"
    );
    // small random reads: cached
    let f = fs::File::open(m.m("small")).unwrap();
    let mut buf = vec![0u8; 4096];
    let offsets: Vec<u64> = (0..200u64).map(|i| (i * 7919 % 2000) * 4096).collect();
    for &o in &offsets {
        f.read_exact_at(&mut buf, o).unwrap();
    }
    drop(f);
    drop_caches();
    let misses = stat(&m.mnt, "cache_misses");
    let f = fs::File::open(m.m("small")).unwrap();
    let expect = pattern(8 << 20, 42);
    for &o in &offsets {
        f.read_exact_at(&mut buf, o).unwrap();
        assert!(buf == expect[o as usize..o as usize + 4096]);
    }
    assert_eq!(
        stat(&m.mnt, "cache_misses"),
        misses,
        "random re-reads missed: {}",
        stat_text(&m.mnt)
    );
}

#[test]
fn a_cache_for_another_tree_or_a_broken_cache_file_is_refused_clearly() {
    require_fuse!();
    let (dir, backing, cache) = setup();
    fs::write(backing.join("f"), b"data").unwrap();
    let m = mount_cached(dir, &backing, &cache, "");
    let (status, dir) = m.unmount_keep();
    assert!(status.success());
    let other = dir.path().join("other");
    fs::create_dir(&other).unwrap();
    let mnt = dir.path().join("mnt");
    let run = |args: &[&str]| {
        let out = Command::new(BIN).args(args).output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let o = format!("cache={}", cache.display());
    let (code, err) = run(&[
        "mount",
        other.to_str().unwrap(),
        mnt.to_str().unwrap(),
        "-o",
        &o,
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("serves") && err.contains("reformat"), "{err}");
    assert!(!common::is_mounted(&mnt));
    // a missing cache file needs a size
    let missing = dir.path().join("new.cache");
    let (code, err) = run(&[
        "mount",
        other.to_str().unwrap(),
        mnt.to_str().unwrap(),
        "-o",
        &format!("cache={}", missing.display()),
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("cache_size"), "{err}");
    // a file that is not a cache file is not touched
    let foreign = dir.path().join("notes.txt");
    fs::write(&foreign, b"my precious notes, not a cache").unwrap();
    let (code, err) = run(&[
        "mount",
        other.to_str().unwrap(),
        mnt.to_str().unwrap(),
        "-o",
        &format!("cache={}", foreign.display()),
    ]);
    assert_ne!(code, 0);
    assert!(
        err.to_lowercase().contains("not a") || err.contains("magic"),
        "{err}"
    );
    assert_eq!(
        fs::read(&foreign).unwrap(),
        b"my precious notes, not a cache"
    );
    // cache options without a cache
    let (code, err) = run(&[
        "mount",
        other.to_str().unwrap(),
        mnt.to_str().unwrap(),
        "-o",
        "cache_size=1G",
    ]);
    assert_ne!(code, 0);
    assert!(
        err.contains("cache_size") && err.contains("cache=FILE"),
        "{err}"
    );
    // -o reformat reuses the cache for the other tree
    let m = Mount::over(
        dir,
        other.clone(),
        &format!("cache={},reformat", cache.display()),
        &[],
    );
    fs::write(other.join("g"), b"other tree").unwrap();
    assert_eq!(fs::read(m.m("g")).unwrap(), b"other tree");
}

#[test]
fn a_cache_much_smaller_than_the_data_keeps_working_under_every_policy() {
    require_fuse!();
    let cache_mb = knob("BCL_SMALL_CACHE_MB", 32);
    let data_mb = cache_mb * 8;
    for policy in ["lru", "fifo", "random"] {
        let (dir, backing, cache) = setup();
        let file_mb = 8u64;
        let nfiles = data_mb / file_mb;
        for i in 0..nfiles {
            fs::write(
                backing.join(format!("d{i}")),
                pattern((file_mb << 20) as usize, 100 + i),
            )
            .unwrap();
        }
        let opts = format!(
            "cache={},cache_size={cache_mb}M,replacement={policy}",
            cache.display()
        );
        let m = Mount::over(dir, backing.clone(), &opts, &[]);
        let chunk = 128u64 << 10;
        let mut order: Vec<(u64, u64)> = (0..nfiles)
            .flat_map(|f| (0..(file_mb << 20) / chunk).map(move |c| (f, c * chunk)))
            .collect();
        let mut rng = Rng(0x5eed ^ cache_mb);
        let mut buf = vec![0u8; chunk as usize];
        // crc of every chunk, so checking a read does not regenerate its file
        let sums: Vec<Vec<u32>> = (0..nfiles)
            .map(|i| {
                pattern((file_mb << 20) as usize, 100 + i)
                    .chunks(chunk as usize)
                    .map(crc32c::crc32c)
                    .collect()
            })
            .collect();
        let mut hits = Vec::new();
        for pass in 0..2 {
            for i in (1..order.len()).rev() {
                order.swap(i, rng.below(i as u64 + 1) as usize);
            }
            drop_caches();
            let before = stat(&m.mnt, "cache_hits");
            let handles: Vec<fs::File> = (0..nfiles)
                .map(|i| fs::File::open(m.m(&format!("d{i}"))).unwrap())
                .collect();
            for &(f, off) in &order {
                handles[f as usize].read_exact_at(&mut buf, off).unwrap();
                let want = sums[f as usize][(off / chunk) as usize];
                assert_eq!(
                    crc32c::crc32c(&buf),
                    want,
                    "{policy} pass {pass}: d{f} at {off}"
                );
            }
            hits.push(stat(&m.mnt, "cache_hits") - before);
        }
        let nbuckets = stat(&m.mnt, "buckets_total");
        let invalidated = stat(&m.mnt, "buckets_invalidated");
        let text = stat_text(&m.mnt);
        assert!(
            invalidated > nbuckets,
            "{policy}: buckets were not reused: {text}"
        );
        assert!(stat(&m.mnt, "gens_checkpoints") > 2, "{policy}: {text}");
        assert_eq!(stat(&m.mnt, "checksum_errors"), 0);
        // stale keys into reused buckets hold nothing: the figure never exceeds the cache
        assert!(
            stat(&m.mnt, "cached_bytes") <= cache_mb << 20,
            "{policy}: more cached than the cache holds: {text}"
        );
        // invariants 1 and 8: reads met keys into reused buckets, refused them (the pin at
        // the key's gen failed) and read the backing instead; every chunk was still right
        assert!(
            stat(&m.mnt, "stale_pointers") > 0,
            "{policy}: no stale pointer met: {text}"
        );
        // Each pass reads every chunk once in a new random order, so the second pass can
        // only hit what the first left cached, before its own misses evict it: a few
        // hits, and never more than the cache holds (1/8 of the reads).
        let reads = order.len() as u64;
        assert!(
            hits[1] > 0,
            "{policy}: no hits at all in the second pass: {text}"
        );
        assert!(
            hits[1] <= reads / 8,
            "{policy}: {} hits of {reads} reads with a cache 1/8 of the data",
            hits[1]
        );
        eprintln!(
            "{policy}: second pass hit {} of {reads} reads ({}%)",
            hits[1],
            hits[1] * 100 / reads
        );
    }
}

#[test]
fn a_full_or_failing_ssd_turns_caching_off_and_loses_nothing() {
    require_fuse!();
    let (dir, backing, _) = setup();
    let small = dir.path().join("ssd");
    fs::create_dir(&small).unwrap();
    let st = common::sh(
        &format!("mount -t tmpfs -o size=6m tmpfs '{}'", small.display()),
        Path::new("/"),
    );
    assert_eq!(st.0, 0, "{}", st.2);
    struct Umount(PathBuf);
    impl Drop for Umount {
        fn drop(&mut self) {
            common::umount_lazy(&self.0);
        }
    }
    let _g = Umount(small.clone());
    let cache = small.join("c.cache");
    for i in 0..8 {
        fs::write(backing.join(format!("f{i}")), pattern(2 << 20, 200 + i)).unwrap();
    }
    // a sparse 64 MiB cache file on a 6 MiB filesystem: writes fail with ENOSPC
    let m = Mount::over(
        dir,
        backing.clone(),
        &format!("cache={},cache_size=64M", cache.display()),
        &[],
    );
    for round in 0..2 {
        for i in 0..8 {
            let got = fs::read(m.m(&format!("f{i}"))).unwrap();
            assert!(got == pattern(2 << 20, 200 + i), "f{i} round {round}");
        }
        drop_caches();
    }
    let text = stat_text(&m.mnt);
    let stats = common::stats(&m.mnt);
    assert_eq!(stats["state"], "failed", "{text}");
    assert!(
        stats["failure"].is_string(),
        "stats say why caching stopped: {text}"
    );
    assert!(stat(&m.mnt, "io_errors") > 0);
    // writes through the mount still work
    fs::write(m.m("new"), b"still writable").unwrap();
    assert_eq!(fs::read(backing.join("new")).unwrap(), b"still writable");
}

#[test]
fn data_written_through_the_mount_is_cached_on_the_way() {
    require_fuse!();
    let (dir, backing, cache) = setup();
    let m = mount_cached(dir, &backing, &cache, "");
    let data = pattern(1 << 20, 51);
    fs::write(m.m("new"), &data).unwrap();
    assert!(
        fs::read(backing.join("new")).unwrap() == data,
        "writethrough: the backing first"
    );
    common::settle_fills(&m.mnt);
    drop_caches();
    let misses = stat(&m.mnt, "cache_misses");
    assert!(read_all(&m.m("new")) == data);
    assert_eq!(
        stat(&m.mnt, "cache_misses"),
        misses,
        "written data was not cached: {}",
        stat_text(&m.mnt)
    );
    // an unaligned overwrite: its partial blocks are dropped, the rest still hits
    let f = fs::OpenOptions::new().write(true).open(m.m("new")).unwrap();
    f.write_all_at(b"xyz", 10_000).unwrap();
    drop(f);
    let mut expect = data.clone();
    expect[10_000..10_003].copy_from_slice(b"xyz");
    drop_caches();
    assert!(read_all(&m.m("new")) == expect);
}

#[test]
fn readahead_caches_past_the_request() {
    require_fuse!();
    let (dir, backing, cache) = setup();
    let data = pattern(2 << 20, 61);
    fs::write(backing.join("f"), &data).unwrap();
    let m = mount_cached(dir, &backing, &cache, "readahead=1M");
    let f = fs::File::open(m.m("f")).unwrap();
    let mut buf = vec![0u8; 4096];
    f.read_exact_at(&mut buf, 0).unwrap();
    assert!(buf == data[..4096]);
    drop(f);
    assert!(
        stat(&m.mnt, "cache_readaheads") >= 1 << 20,
        "{}",
        stat_text(&m.mnt)
    );
    // a block well past what was asked for is now a hit
    drop_caches();
    let misses = stat(&m.mnt, "cache_misses");
    let f = fs::File::open(m.m("f")).unwrap();
    f.read_exact_at(&mut buf, 768 << 10).unwrap();
    assert!(buf == data[768 << 10..(768 << 10) + 4096]);
    assert_eq!(
        stat(&m.mnt, "cache_misses"),
        misses,
        "{}",
        stat_text(&m.mnt)
    );
}
