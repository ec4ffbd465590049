//! Security of a mount and its cache file (docs/DESIGN.md, "Security"): the cache file is
//! private to the daemon's user, no operation reaches outside the backing even when the
//! backing is rearranged under a cached name, and neither the log nor `stats` carries file
//! contents or names at the default log level. Permission checks against cached data are in
//! tests/multiuser.rs (`*_with_a_warm_cache`).

#[macro_use]
mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;

use common::{backing_and_cache, Daemon, Mount, BIN};

fn mount_err(backing: &std::path::Path, mnt: &std::path::Path, opts: &str) -> (i32, String) {
    let out = Command::new(BIN)
        .args([
            "mount",
            backing.to_str().unwrap(),
            mnt.to_str().unwrap(),
            "-o",
            opts,
        ])
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_cache_file_open_to_others_or_owned_by_another_user_is_refused() {
    require_fuse!();
    let (dir, backing, cache) = backing_and_cache("bcl-sec");
    fs::write(backing.join("f"), b"data").unwrap();
    let opts = format!("cache={},cache_size=16M", cache.display());
    let m = Mount::over(dir, backing.clone(), &opts, &[]);
    assert_eq!(fs::read(m.m("f")).unwrap(), b"data");
    assert_eq!(
        fs::metadata(&cache).unwrap().mode() & 0o7777,
        0o600,
        "created 0600"
    );
    let (_, dir) = m.unmount_keep();
    let mnt = dir.path().join("mnt");

    fs::set_permissions(&cache, fs::Permissions::from_mode(0o644)).unwrap();
    let (code, err) = mount_err(&backing, &mnt, &opts);
    assert_ne!(code, 0, "a world-readable cache file must be refused");
    assert!(err.contains("chmod 600"), "{err}");
    assert!(!common::is_mounted(&mnt));

    fs::set_permissions(&cache, fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::chown(&cache, Some(65534), None).unwrap();
    let (code, err) = mount_err(&backing, &mnt, &opts);
    assert_ne!(code, 0, "a cache file of another user must be refused");
    assert!(err.contains("owned by uid 65534"), "{err}");
    assert!(!common::is_mounted(&mnt));

    // put right, the same cache mounts again and still serves
    std::os::unix::fs::chown(&cache, Some(0), None).unwrap();
    let m = Mount::over(dir, backing, &opts, &[]);
    assert_eq!(fs::read(m.m("f")).unwrap(), b"data");
}

#[test]
fn format_over_an_existing_file_leaves_it_private() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c");
    fs::write(&p, b"old contents").unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
    let out = Command::new(BIN)
        .args(["format", p.to_str().unwrap(), "--size", "80M", "--force"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, 0o600);
}

/// A cached name whose backing directory is swapped for a symlink to a directory outside
/// the backing: a create through the kernel's cached dentry must land in the directory the
/// inode is (its descriptor), never follow the new symlink out of the backing.
#[test]
fn a_swapped_in_symlink_does_not_lead_a_cached_directory_out_of_the_backing() {
    require_fuse!();
    let (dir, backing, cache) = backing_and_cache("bcl-sec");
    let outside = dir.path().join("outside");
    fs::create_dir(&outside).unwrap();
    fs::create_dir(backing.join("d")).unwrap();
    let opts = format!(
        "cache={},cache_size=16M,entry_timeout=60,attr_timeout=60",
        cache.display()
    );
    let m = Mount::over(dir, backing.clone(), &opts, &[]);
    assert!(fs::metadata(m.m("d")).unwrap().is_dir()); // the kernel caches d's dentry
    fs::rename(backing.join("d"), backing.join("d.real")).unwrap();
    std::os::unix::fs::symlink(&outside, backing.join("d")).unwrap();
    // through the dentry the kernel still holds: create, mkdir, rename within, read back
    fs::write(m.m("d/new"), b"inside").unwrap();
    fs::create_dir(m.m("d/sub")).unwrap();
    fs::rename(m.m("d/new"), m.m("d/sub/moved")).unwrap();
    assert_eq!(
        fs::read_dir(&outside).unwrap().count(),
        0,
        "nothing may appear outside"
    );
    assert_eq!(
        fs::read(backing.join("d.real/sub/moved")).unwrap(),
        b"inside"
    );
}

#[test]
fn neither_the_log_nor_stats_show_file_contents_or_names() {
    require_fuse!();
    let (dir, backing, cache) = backing_and_cache("bcl-sec");
    let log = dir.path().join("daemon.log");
    let name = "name-Zq8xW1";
    let contents = "contents-Pv3kR7 ".repeat(1000);
    let opts = format!("cache={},cache_size=16M", cache.display());
    let daemon = Daemon {
        log: Some(log.clone()),
        ..Daemon::default()
    };
    let m = Mount::spawn(dir, backing.clone(), &opts, &[], &daemon);
    fs::write(m.m(name), &contents).unwrap();
    assert_eq!(fs::read_to_string(m.m(name)).unwrap(), contents);
    fs::write(backing.join(name), "changed outside").unwrap(); // an outside change is logged
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(fs::read_to_string(m.m(name)).unwrap(), "changed outside");
    fs::remove_file(m.m(name)).unwrap();
    let stats = common::stats(&m.mnt).to_string();
    let (_, dir) = m.unmount_keep();
    let logged = fs::read_to_string(dir.path().join("daemon.log")).unwrap();
    for (what, text) in [("log", &logged), ("stats", &stats)] {
        assert!(
            !text.contains("contents-Pv3kR7"),
            "{what} shows file contents"
        );
        assert!(
            !text.contains("changed outside"),
            "{what} shows file contents"
        );
        assert!(!text.contains(name), "{what} shows a file name: {text}");
    }
}
