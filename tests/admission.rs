//! Scan-resistant admission (issue 12), mounted for real: with default options a big file
//! read twice comes from the cache the second time; a scan of 4 x the cache by another
//! process does not flush a hot set that fits, because the stream is cached on probation;
//! with probation off (`probation_after=0`, plain LRU without bypass) the same scan does
//! flush it, so the protection is what the test measures.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{pattern, Mount};

fn drop_caches() {
    // SAFETY: sync takes no arguments and cannot fail.
    unsafe { libc::sync() };
    fs::write("/proc/sys/vm/drop_caches", "3").unwrap();
}

fn stat(mnt: &Path, key: &str) -> u64 {
    common::stat_u64(mnt, key)
}

fn mount(dir: tempfile::TempDir, backing: &Path, cache: &Path, size: &str, extra: &str) -> Mount {
    let mut opts = format!("cache={},cache_size={size}", cache.display());
    if !extra.is_empty() {
        opts.push(',');
        opts.push_str(extra);
    }
    Mount::over(dir, backing.to_path_buf(), &opts, &[])
}

/// `cat FILE > /dev/null` in its own process (its own write point and stream).
fn cat(p: &Path) {
    let st = Command::new("sh")
        .arg("-c")
        .arg(format!("cat '{}' > /dev/null", p.display()))
        .status()
        .unwrap();
    assert!(st.success());
}

#[test]
fn second_sequential_read_of_a_big_file_is_all_hits_with_default_options() {
    require_fuse!();
    let (dir, backing, cache) = common::backing_and_cache("bcl-adm");
    let data = pattern(32 << 20, 5);
    fs::write(backing.join("big"), &data).unwrap();
    let m = mount(dir, &backing, &cache, "256M", "");
    cat(&m.m("big"));
    assert_eq!(
        stat(&m.mnt, "sequential_cutoff"),
        0,
        "bypass is off by default"
    );
    assert_eq!(stat(&m.mnt, "bypassed"), 0);
    assert!(
        stat(&m.mnt, "probation_bytes_filled") >= 24 << 20,
        "the stream past 4 MiB went on probation: {}",
        common::stats(&m.mnt)
    );
    assert!(stat(&m.mnt, "probation_buckets") >= 24);
    drop_caches();
    let (missed, misses) = (stat(&m.mnt, "bytes_missed"), stat(&m.mnt, "cache_misses"));
    assert!(fs::read(m.m("big")).unwrap() == data, "second read's bytes");
    assert_eq!(
        (stat(&m.mnt, "bytes_missed"), stat(&m.mnt, "cache_misses")),
        (missed, misses),
        "second read missed: {}",
        common::stats(&m.mnt)
    );
    assert!(stat(&m.mnt, "bytes_hit") >= 32 << 20);
    assert!(
        stat(&m.mnt, "probation_promotions") >= 24,
        "hits promoted the probation buckets"
    );
}

const CACHE: &str = "96M";
const CACHE_BYTES: usize = 96 << 20;
const HOT_FILES: usize = 12;
const HOT_FILE: usize = 2 << 20;

fn read_hot(m: &Mount) -> f64 {
    drop_caches();
    let (h0, m0) = (stat(&m.mnt, "bytes_hit"), stat(&m.mnt, "bytes_missed"));
    for i in 0..HOT_FILES {
        let got = fs::read(m.m(&format!("hot{i}"))).unwrap();
        assert!(got == pattern(HOT_FILE, i as u64), "hot{i} bytes");
    }
    let (h, ms) = (
        stat(&m.mnt, "bytes_hit") - h0,
        stat(&m.mnt, "bytes_missed") - m0,
    );
    h as f64 / (h + ms) as f64
}

/// Hot set read (cold, then warm), a scan of 4 x the cache by another process, the hot set
/// again. Returns (hit ratio before the scan, after it).
fn hot_set_around_a_scan(extra: &str) -> (f64, f64, serde_json::Value) {
    let (dir, backing, cache) = common::backing_and_cache("bcl-adm");
    for i in 0..HOT_FILES {
        fs::write(backing.join(format!("hot{i}")), pattern(HOT_FILE, i as u64)).unwrap();
    }
    let scan: PathBuf = backing.join("scan");
    let f = fs::File::create(&scan).unwrap();
    // sparse: the backing reads it as zeroes, the cache caches it like any data
    f.set_len(4 * CACHE_BYTES as u64).unwrap();
    drop(f);
    let m = mount(dir, &backing, &cache, CACHE, extra);
    // cold: fills. Twice: a fill that finds no free bucket at that moment (the allocator
    // refills its free list in the background) is skipped, counted in `fills_skipped`,
    // and the second read fills what the first could not
    for _ in 0..2 {
        read_hot(&m);
        common::settle_fills(&m.mnt);
    }
    let before = read_hot(&m);
    cat(&m.m("scan"));
    common::settle_fills(&m.mnt);
    let after = read_hot(&m);
    let stats = common::stats(&m.mnt);
    eprintln!("[{extra}] hot set hit ratio before the scan {before:.3}, after {after:.3}");
    (before, after, stats)
}

#[test]
fn a_scan_of_four_times_the_cache_does_not_flush_the_hot_set() {
    require_fuse!();
    let (before, after, stats) = hot_set_around_a_scan("");
    assert!(before > 0.99, "hot set fits: {before} {stats}");
    assert!(
        after >= 0.9 * before,
        "hot set after the scan {after:.3} < 90 % of {before:.3}: {stats}"
    );
    let n = |k: &str| stats[k].as_u64().unwrap();
    assert!(n("evicted_probation") > 0, "the scan was evicted: {stats}");
    assert!(
        n("probation_bytes_filled") > 2 * CACHE_BYTES as u64,
        "{stats}"
    );
}

#[test]
fn plain_lru_without_probation_lets_the_same_scan_flush_the_hot_set() {
    require_fuse!();
    let (before, after, stats) = hot_set_around_a_scan("probation_after=0");
    assert!(before > 0.99, "hot set fits: {before} {stats}");
    assert!(
        after < 0.5 * before,
        "plain LRU kept the hot set ({after:.3} of {before:.3})? then the other test proves \
         nothing: {stats}"
    );
    assert_eq!(stats["probation_bytes_filled"].as_u64(), Some(0));
}
