//! `bcachefs-lite fsck`: each kind of corruption planted in a real cache file (a flipped data
//! byte, a key whose gen is ahead of its bucket's, two keys sharing a bucket's sectors, a key
//! into a checkpoint bucket, a torn index checkpoint) is found; `--repair` leaves a cache that
//! checks clean, mounts, and serves only the right bytes. A mounted cache is refused.

mod common;

use std::fs;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use bcachefs_lite::alloc::{Allocator, OpenOptions};
use bcachefs_lite::cache::journal::replay;
use bcachefs_lite::cache::stats::Counters;
use bcachefs_lite::index::Extent;
use bcachefs_lite::journal::format::Record;
use common::{pattern, Mount, BIN};

const FILES: [(&str, u64); 2] = [("a", 1), ("b", 2)];
const SIZE: usize = 1 << 20;

fn opts(cache: &Path) -> String {
    format!("cache={},cache_size=64M", cache.display())
}

/// A cache file holding both files, unmounted. Returns (dir, backing, cache).
fn warm_cache() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let (dir, backing, cache) = common::backing_and_cache("bcl-fsck");
    for (name, seed) in FILES {
        fs::write(backing.join(name), pattern(SIZE, seed)).unwrap();
    }
    let m = Mount::over(dir, backing.clone(), &opts(&cache), &[]);
    for (name, _) in FILES {
        fs::read(m.m(name)).unwrap();
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while common::stat_u64(&m.mnt, "cached_bytes") < 2 * SIZE as u64 {
        assert!(std::time::Instant::now() < deadline, "not cached");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let (status, dir) = m.unmount_keep();
    assert!(status.success());
    (dir, backing, cache)
}

fn fsck(cache: &Path, extra: &[&str]) -> (i32, serde_json::Value) {
    let out = Command::new(BIN)
        .arg("fsck")
        .arg(cache)
        .arg("--json")
        .args(extra)
        .output()
        .unwrap();
    let v = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (out.status.code().unwrap_or(-1), v)
}

fn kinds(report: &serde_json::Value) -> Vec<String> {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["error"] == true)
        .map(|f| f["kind"].as_str().unwrap().to_string())
        .collect()
}

/// The file id of backing file `name` among the extents, and its extents.
struct Opened {
    alloc: Allocator,
    extents: Vec<(u64, Extent)>,
    ckpt_buckets: Vec<u32>,
    meta_buckets: Vec<u32>,
}

fn open(cache: &Path) -> Opened {
    let alloc = Allocator::open_with(
        cache,
        OpenOptions {
            start_allocator: false,
            ..Default::default()
        },
    )
    .unwrap();
    let r = replay(&alloc, &Counters::default()).unwrap();
    let mut extents = Vec::new();
    r.index.for_each_extent(|f, e| extents.push((f, e.clone())));
    Opened {
        alloc,
        extents,
        ckpt_buckets: r.checkpoint.buckets.clone(),
        meta_buckets: r.meta_location.map(|m| m.buckets).unwrap_or_default(),
    }
}

fn extents_of(o: &Opened, backing: &Path, name: &str) -> Vec<(u64, Extent)> {
    let ino = fs::metadata(backing.join(name)).unwrap().ino();
    let mut v: Vec<_> = o
        .extents
        .iter()
        .filter(|(f, _)| f & ((1 << 56) - 1) == ino)
        .cloned()
        .collect();
    v.sort_by_key(|(_, e)| e.offset);
    assert!(!v.is_empty(), "{name} has no extents");
    v
}

fn insert(file: u64, e: &Extent, bucket: u32, gen: u8, bucket_offset: u32) -> Record {
    Record::KeyInsert {
        file,
        offset: e.offset,
        len: (e.len / 512) as u32,
        bucket,
        gen,
        bucket_offset,
        dirty: false,
        crcs: e.crcs.to_vec(),
    }
}

/// Mounts the repaired cache: every file reads back as the backing holds it.
fn mounts_and_serves_the_right_bytes(dir: tempfile::TempDir, backing: &Path, cache: &Path) {
    let m = Mount::over(dir, backing.to_path_buf(), &opts(cache), &[]);
    for (name, seed) in FILES {
        assert!(
            fs::read(m.m(name)).unwrap() == pattern(SIZE, seed),
            "{name}: wrong bytes after repair"
        );
    }
    let s = common::stats(&m.mnt);
    assert_eq!(s["checksum_errors"], 0, "repair left a bad block: {s}");
    assert_eq!(s["state"], "active");
}

/// Finds the planted kinds, repairs (exit 1), checks clean (exit 0), then mounts.
fn find_then_repair(dir: tempfile::TempDir, backing: &Path, cache: &Path, want: &[&str]) {
    let (code, v) = fsck(cache, &[]);
    assert_eq!(code, 4, "planted errors not found: {v}");
    let found = kinds(&v["report"]);
    for w in want {
        assert!(found.iter().any(|k| k == w), "no {w} in {found:?}: {v}");
    }
    let (code, v) = fsck(cache, &["--repair"]);
    assert_eq!(code, 1, "repair: {v}");
    assert_eq!(kinds(&v["repair"]["after"]), Vec::<String>::new(), "{v}");
    let (code, v) = fsck(cache, &[]);
    assert_eq!(code, 0, "not clean after repair: {v}");
    mounts_and_serves_the_right_bytes(dir, backing, cache);
}

#[test]
fn a_clean_cache_checks_clean_and_a_mounted_one_is_refused() {
    require_fuse!();
    let (dir, backing, cache) = warm_cache();
    let (code, v) = fsck(&cache, &[]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["report"]["bytes_checked"], 2 * SIZE as u64);
    let m = Mount::over(dir, backing, &opts(&cache), &[]);
    let out = Command::new(BIN).arg("fsck").arg(&cache).output().unwrap();
    assert_eq!(out.status.code(), Some(8));
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use"));
    drop(m);
    let out = Command::new(BIN).arg("fsck").output().unwrap();
    assert_eq!(out.status.code(), Some(16), "usage error");
    let junk = tempfile::NamedTempFile::new().unwrap();
    fs::write(junk.path(), vec![7u8; 1 << 20]).unwrap();
    let out = Command::new(BIN)
        .arg("fsck")
        .arg(junk.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(8), "not a cache file");
}

#[test]
fn a_flipped_data_byte_is_found_and_repaired() {
    require_fuse!();
    let (dir, backing, cache) = warm_cache();
    let o = open(&cache);
    let (_, e) = extents_of(&o, &backing, "a")[0].clone();
    let at = o.alloc.superblock().bucket_offset(e.ptr.bucket) + u64::from(e.ptr.offset) * 512 + 100;
    drop(o);
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&cache)
        .unwrap();
    let mut byte = [0u8];
    f.read_exact_at(&mut byte, at).unwrap();
    f.write_all_at(&[byte[0] ^ 0xff], at).unwrap();
    drop(f);
    find_then_repair(dir, &backing, &cache, &["checksum"]);
}

#[test]
fn a_key_with_a_gen_ahead_of_its_bucket_is_found_and_repaired() {
    require_fuse!();
    let (dir, backing, cache) = warm_cache();
    let o = open(&cache);
    let (file, e) = extents_of(&o, &backing, "a")[0].clone();
    let gen = o.alloc.bucket_gen(e.ptr.bucket).unwrap();
    o.alloc
        .journal_append(vec![insert(
            file,
            &e,
            e.ptr.bucket,
            gen.wrapping_add(1),
            e.ptr.offset,
        )])
        .unwrap();
    o.alloc.close();
    drop(o);
    find_then_repair(dir, &backing, &cache, &["gen_ahead"]);
}

#[test]
fn keys_sharing_sectors_or_pointing_into_a_checkpoint_are_found_and_repaired() {
    require_fuse!();
    let (dir, backing, cache) = warm_cache();
    let o = open(&cache);
    let (_, ea) = extents_of(&o, &backing, "a")[0].clone();
    let b = extents_of(&o, &backing, "b");
    let (fb, eb) = b[0].clone();
    let (fb1, eb1) = b[b.len() - 1].clone();
    let ckpt = o.ckpt_buckets[0];
    let ckpt_gen = o.alloc.bucket_gen(ckpt).unwrap();
    // b's first extent now names a's sectors (with a's crcs: only fsck can tell), and b's
    // last one a checkpoint bucket
    let mut shared = insert(fb, &ea, ea.ptr.bucket, ea.ptr.gen, ea.ptr.offset);
    if let Record::KeyInsert { offset, .. } = &mut shared {
        *offset = eb.offset;
    }
    o.alloc
        .journal_append(vec![shared, insert(fb1, &eb1, ckpt, ckpt_gen, 0)])
        .unwrap();
    o.alloc.close();
    drop(o);
    // what a mount would serve without fsck: a's bytes as b's
    {
        let tmp = tempfile::tempdir().unwrap();
        let copy = tmp.path().join("copy.cache");
        fs::copy(&cache, &copy).unwrap();
        let (cdir, cbacking, _) = common::backing_and_cache("bcl-fsck-copy");
        drop(cbacking);
        let m = Mount::over(cdir, backing.clone(), &opts(&copy), &[]);
        let got = fs::read(m.m("b")).unwrap();
        let len = ea.len.min(eb.len) as usize;
        let a = pattern(SIZE, 1);
        assert!(
            got[eb.offset as usize..eb.offset as usize + len]
                == a[ea.offset as usize..ea.offset as usize + len],
            "the planted key is not served (test is void)"
        );
    }
    find_then_repair(
        dir,
        &backing,
        &cache,
        &["shared_sectors", "metadata_bucket"],
    );
}

#[test]
fn a_torn_index_checkpoint_is_found_and_repaired() {
    require_fuse!();
    let (dir, backing, cache) = warm_cache();
    let o = open(&cache);
    let at = o.alloc.superblock().bucket_offset(o.ckpt_buckets[0]) + 64;
    drop(o);
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&cache)
        .unwrap();
    f.write_all_at(&[0x5a; 512], at).unwrap();
    drop(f);
    find_then_repair(dir, &backing, &cache, &["unreadable_index_checkpoint"]);
}

/// The metadata cache's checkpoint buckets are metadata too: a key into one is found.
#[test]
fn a_key_into_the_metadata_checkpoint_is_found_and_repaired() {
    require_fuse!();
    let (dir, backing, cache) = warm_cache();
    let o = open(&cache);
    assert!(
        !o.meta_buckets.is_empty(),
        "the clean unmount wrote no metadata checkpoint"
    );
    let (fb, eb) = extents_of(&o, &backing, "b")[0].clone();
    let bucket = o.meta_buckets[0];
    let gen = o.alloc.bucket_gen(bucket).unwrap();
    o.alloc
        .journal_append(vec![insert(fb, &eb, bucket, gen, 0)])
        .unwrap();
    o.alloc.close();
    drop(o);
    find_then_repair(dir, &backing, &cache, &["metadata_bucket"]);
}

/// A journal entry lost in the middle (its crc broken) is a torn tail: a warning that says
/// what replay ignored, exit 0; the cache still mounts and serves the right bytes.
#[test]
fn a_gap_in_the_journal_is_reported_as_a_torn_tail() {
    require_fuse!();
    let (dir, backing, cache) = warm_cache();
    let o = open(&cache);
    let sb = o.alloc.superblock().clone();
    let entries = bcachefs_lite::journal::scan(&**o.alloc.device(), &sb).unwrap();
    assert!(entries.len() >= 3);
    let victim = &entries[entries.len() - 2];
    let at = sb.journal_offset + victim.offset + 40;
    drop(o);
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&cache)
        .unwrap();
    f.write_all_at(&[0xa5; 8], at).unwrap();
    drop(f);
    let (code, v) = fsck(&cache, &[]);
    assert_eq!(code, 0, "a torn tail is no error: {v}");
    let torn = v["report"]["findings"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["kind"] == "torn_journal_tail" && f["error"] == false);
    assert!(torn, "no torn_journal_tail warning: {v}");
    mounts_and_serves_the_right_bytes(dir, &backing, &cache);
}
