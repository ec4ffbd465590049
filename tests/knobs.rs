//! Runtime knobs on a live mount: `bcachefs-lite set` and `get`. Every knob changes what
//! the mount does (not only what `get` prints), bad keys and values change nothing, `get`
//! says where each value came from, and the cache-file knobs survive a remount.

mod common;

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{pattern, Mount, BIN};

fn mount_cached(dir: tempfile::TempDir, backing: &Path, cache: &Path, extra: &str) -> Mount {
    let mut opts = format!("cache={},cache_size=64M", cache.display());
    if !extra.is_empty() {
        opts.push(',');
        opts.push_str(extra);
    }
    let m = Mount::over(dir, backing.to_path_buf(), &opts, &[]);
    common::stats(&m.mnt); // waits for the control socket
    m
}

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn set(mnt: &Path, pairs: &[&str]) -> (i32, String, String) {
    let mut args = vec!["set", mnt.to_str().unwrap()];
    args.extend_from_slice(pairs);
    run(&args)
}

fn set_ok(mnt: &Path, pairs: &[&str]) {
    let (code, out, err) = set(mnt, pairs);
    assert_eq!(code, 0, "set {pairs:?}: {out}{err}");
}

/// `get --json`: name -> (value, origin).
fn get(mnt: &Path) -> std::collections::HashMap<String, (serde_json::Value, String)> {
    let (code, out, err) = run(&["get", mnt.to_str().unwrap(), "--json"]);
    assert_eq!(code, 0, "get: {err}");
    let list: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    list.into_iter()
        .map(|k| {
            (
                k["name"].as_str().unwrap().to_string(),
                (
                    k["value"].clone(),
                    k["origin"].as_str().unwrap().to_string(),
                ),
            )
        })
        .collect()
}

fn stat(mnt: &Path, key: &str) -> u64 {
    common::stat_u64(mnt, key)
}

#[test]
fn get_shows_every_knob_and_where_it_came_from() {
    require_fuse!();
    let (dir, backing, cache) = common::backing_and_cache("bcl-knobs");
    let m = mount_cached(dir, &backing, &cache, "readahead=128K,nodiscard");
    let g = get(&m.mnt);
    for k in bcachefs_lite::knobs::KNOBS {
        assert!(g.contains_key(k.name), "get lacks {}", k.name);
    }
    assert_eq!(
        g["readahead"],
        (serde_json::json!(131072), "mount option".into())
    );
    assert_eq!(
        g["discard"],
        (serde_json::json!(false), "mount option".into())
    );
    assert_eq!(
        g["sequential_cutoff"],
        (serde_json::json!(0), "default".into())
    );
    assert_eq!(
        g["cache_mode"],
        (serde_json::json!("writethrough"), "cache file".into())
    );
    assert_eq!(
        g["replacement"],
        (serde_json::json!("lru"), "cache file".into())
    );
    assert_eq!(g["attr_timeout"].0, serde_json::json!(1.0));
    set_ok(&m.mnt, &["sequential_cutoff=1M", "entry_timeout=2.5"]);
    let g = get(&m.mnt);
    assert_eq!(
        g["sequential_cutoff"],
        (serde_json::json!(1 << 20), "set".into())
    );
    assert_eq!(g["entry_timeout"], (serde_json::json!(2.5), "set".into()));
    // text form: one line per knob, named ones only
    let (code, out, _) = run(&["get", m.mnt.to_str().unwrap(), "readahead", "replacement"]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines[0].starts_with("readahead") && lines[0].contains("128K"),
        "{out}"
    );
    assert!(lines[0].contains("(mount option)"), "{out}");
    assert!(
        lines[1].contains("lru") && lines[1].contains("(cache file)"),
        "{out}"
    );
}

#[test]
fn bad_keys_and_values_change_nothing() {
    require_fuse!();
    let (dir, backing, cache) = common::backing_and_cache("bcl-knobs");
    let m = mount_cached(dir, &backing, &cache, "");
    let before = get(&m.mnt);
    for bad in [
        &["readahead=1M", "bogus=1"][..],
        &["sequential_cutoff=0", "readahead=lots"],
        &["replacement=fifo", "readahead=65M"],
        &["discard=maybe"],
        &["attr_timeout=-1", "entry_timeout=5"],
        &["readahead"],
    ] {
        let (code, out, err) = set(&m.mnt, bad);
        assert_eq!(code, 1, "set {bad:?} was accepted: {out}");
        assert_eq!(err.lines().count(), 1, "not one clear line: {err}");
        assert!(out.is_empty());
        assert_eq!(get(&m.mnt), before, "set {bad:?} changed something");
    }
    let (_, _, err) = set(&m.mnt, &["readahead=1M", "bogus=1"]);
    assert!(err.contains("unknown setting 'bogus'"), "{err}");
    let (_, _, err) = set(&m.mnt, &["readahead=lots"]);
    assert!(err.contains("readahead") && err.contains("lots"), "{err}");
    let (code, _, err) = run(&["get", m.mnt.to_str().unwrap(), "nope"]);
    assert_eq!(code, 1);
    assert!(err.contains("unknown setting 'nope'"), "{err}");
}

#[test]
fn sequential_cutoff_set_live_changes_what_is_bypassed() {
    require_fuse!();
    let (dir, backing, cache) = common::backing_and_cache("bcl-knobs");
    for name in ["a", "b", "c"] {
        fs::write(backing.join(name), pattern(12 << 20, name.len() as u64)).unwrap();
    }
    let m = mount_cached(dir, &backing, &cache, "sequential_cutoff=0");
    let cat = |name: &str| {
        let out = Command::new("cat").arg(m.m(name)).output().unwrap();
        assert_eq!(out.stdout.len(), 12 << 20);
    };
    cat("a");
    assert_eq!(stat(&m.mnt, "bypassed"), 0, "cutoff 0 bypassed");
    set_ok(&m.mnt, &["sequential_cutoff=2M"]);
    cat("b");
    let bypassed = stat(&m.mnt, "bypassed");
    assert!(
        bypassed >= 8 << 20,
        "a 2M cutoff set live bypassed only {bypassed} bytes of a 12M stream"
    );
    set_ok(&m.mnt, &["sequential_cutoff=0"]);
    cat("c");
    assert_eq!(
        stat(&m.mnt, "bypassed"),
        bypassed,
        "cutoff set back to 0 still bypassed"
    );
}

#[test]
fn readahead_set_live_reads_ahead_on_the_next_miss() {
    require_fuse!();
    let (dir, backing, cache) = common::backing_and_cache("bcl-knobs");
    for name in ["a", "b"] {
        fs::write(backing.join(name), pattern(8 << 20, 7)).unwrap();
    }
    let m = mount_cached(dir, &backing, &cache, "");
    let read_4k = |name: &str| {
        let f = fs::File::open(m.m(name)).unwrap();
        let mut buf = vec![0u8; 4096];
        f.read_exact_at(&mut buf, 0).unwrap();
    };
    read_4k("a");
    assert_eq!(stat(&m.mnt, "cache_readaheads"), 0);
    set_ok(&m.mnt, &["readahead=2M"]);
    read_4k("b");
    let ra = stat(&m.mnt, "cache_readaheads");
    assert!(
        ra >= 1 << 20,
        "readahead=2M set live read ahead only {ra} bytes"
    );
}

#[test]
fn attr_and_entry_timeouts_apply_to_replies_from_then_on() {
    require_fuse!();
    let (dir, backing, cache) = common::backing_and_cache("bcl-knobs");
    fs::write(backing.join("old"), b"0123456789").unwrap();
    fs::write(backing.join("new"), b"0123456789").unwrap();
    // the metadata cache off: this is about what the kernel is told (metadata_ttl has its
    // own test below)
    let m = mount_cached(
        dir,
        &backing,
        &cache,
        "attr_timeout=600,entry_timeout=600,metadata_cache_size=0",
    );
    // looked up under the 600 s TTLs
    assert_eq!(fs::metadata(m.m("old")).unwrap().len(), 10);
    set_ok(&m.mnt, &["attr_timeout=0", "entry_timeout=0"]);
    // looked up under the new 0 s TTLs
    assert_eq!(fs::metadata(m.m("new")).unwrap().len(), 10);
    for name in ["old", "new"] {
        fs::write(backing.join(name), b"0123456789abcdefghij").unwrap();
    }
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        fs::metadata(m.m("new")).unwrap().len(),
        20,
        "attr_timeout=0 set live: the kernel still trusted its attributes"
    );
    assert_eq!(
        fs::metadata(m.m("old")).unwrap().len(),
        10,
        "the reply given under the 600 s TTL should still be trusted (test is void)"
    );
}

#[test]
fn replacement_and_discard_set_live_are_the_cache_files_from_then_on() {
    require_fuse!();
    let (dir, backing, cache) = common::backing_and_cache("bcl-knobs");
    let m = mount_cached(dir, &backing, &cache, "");
    set_ok(&m.mnt, &["replacement=fifo", "discard=off", "readahead=1M"]);
    let g = get(&m.mnt);
    assert_eq!(g["replacement"], (serde_json::json!("fifo"), "set".into()));
    let (status, dir) = m.unmount_keep();
    assert!(status.success());
    let (code, out, _) = run(&["show-super", cache.to_str().unwrap(), "--json"]);
    assert_eq!(code, 0);
    let sb: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(sb["replacement"], "fifo");
    assert_eq!(sb["discard"], false);
    // remount: the cache file's knobs stay, the others are back to their defaults
    let m = mount_cached(dir, &backing, &cache, "");
    let g = get(&m.mnt);
    assert_eq!(
        g["replacement"],
        (serde_json::json!("fifo"), "cache file".into())
    );
    assert_eq!(
        g["discard"],
        (serde_json::json!(false), "cache file".into())
    );
    assert_eq!(g["readahead"], (serde_json::json!(0), "default".into()));
}

#[test]
fn changes_are_logged() {
    require_fuse!();
    let (dir, backing, cache) = common::backing_and_cache("bcl-knobs");
    let log = dir.path().join("daemon.log");
    let opts = format!("cache={},cache_size=64M", cache.display());
    let m = Mount::spawn(
        dir,
        backing,
        &opts,
        &["--log-file", log.to_str().unwrap()],
        &common::Daemon {
            env: vec![("BCACHEFS_LITE_LOG".into(), "info".into())],
            ..Default::default()
        },
    );
    common::stats(&m.mnt);
    set_ok(&m.mnt, &["readahead=512K"]);
    let text = fs::read_to_string(&log).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("setting changed"))
        .unwrap_or_else(|| panic!("no log line for the change:\n{text}"));
    assert!(
        line.contains("readahead") && line.contains("old=0") && line.contains("new=512K"),
        "{line}"
    );
}

#[test]
fn the_man_page_and_admin_guide_document_every_knob() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let man = fs::read_to_string(root.join("docs/bcachefs-lite.8")).unwrap();
    let admin = fs::read_to_string(root.join("docs/ADMIN.md")).unwrap();
    let runtime = &man[man
        .find(".SH RUNTIME SETTINGS")
        .expect("RUNTIME SETTINGS section")..];
    for k in bcachefs_lite::knobs::KNOBS {
        assert!(
            runtime.contains(&format!(".BI {}=", k.name))
                || runtime.contains(&format!(".BR {}=", k.name)),
            "{} is not under RUNTIME SETTINGS in docs/bcachefs-lite.8",
            k.name
        );
        assert!(
            admin.contains(&format!("| `{}` |", k.name)),
            "{} not in ADMIN.md",
            k.name
        );
    }
}

#[test]
fn cache_mode_set_live_changes_what_writes_fill() {
    require_fuse!();
    let (dir, backing, cache) = common::backing_and_cache("bcl-knobs");
    let m = mount_cached(dir, &backing, &cache, "");
    let filled = |m: &Mount| stat(&m.mnt, "bytes_filled");
    let write = |name: &str| {
        fs::write(m.m(name), pattern(1 << 20, 3)).unwrap();
        common::settle_fills(&m.mnt);
    };
    let before = filled(&m);
    write("wt");
    assert!(
        filled(&m) >= before + (1 << 20),
        "writethrough did not fill"
    );
    set_ok(&m.mnt, &["cache_mode=writearound"]);
    assert_eq!(
        get(&m.mnt)["cache_mode"],
        (serde_json::json!("writearound"), "set".into())
    );
    let before = filled(&m);
    write("wa");
    assert_eq!(filled(&m), before, "writearound set live still filled");
    // an unknown mode is refused, and nothing changed (all or nothing)
    let (code, _, err) = set(&m.mnt, &["readahead=1M", "cache_mode=fast"]);
    assert_eq!(code, 1, "{err}");
    let g = get(&m.mnt);
    assert_eq!(g["cache_mode"].0, serde_json::json!("writearound"));
    assert_eq!(
        g["readahead"].0,
        serde_json::json!(0),
        "half a refused set was applied"
    );
}

#[test]
fn metadata_ttl_set_live_changes_how_long_cached_metadata_is_trusted() {
    require_fuse!();
    let (dir, backing, cache) = common::backing_and_cache("bcl-knobs");
    fs::write(backing.join("f"), b"0123456789").unwrap();
    // the kernel trusts nothing, so every stat reaches the metadata cache
    let m = mount_cached(
        dir,
        &backing,
        &cache,
        "metadata_ttl=600,attr_timeout=0,entry_timeout=0",
    );
    assert_eq!(fs::metadata(m.m("f")).unwrap().len(), 10);
    fs::write(backing.join("f"), b"0123456789abcdefghij").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        fs::metadata(m.m("f")).unwrap().len(),
        10,
        "under metadata_ttl=600 the cached size should still be served (test is void)"
    );
    set_ok(&m.mnt, &["metadata_ttl=0.05"]);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        fs::metadata(m.m("f")).unwrap().len(),
        20,
        "metadata_ttl=0.05 set live: the old entry is still trusted"
    );
}
