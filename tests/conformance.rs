//! POSIX conformance cases that pjdfstest found, each reduced to a mount-level test.
//!
//! Mounted as root with `allow_other` (with and without `default_permissions`) and a
//! cache; the callers are unprivileged users, as in pjdfstest. The full suite runs with
//! `make pjdfstest` (tests/conformance/pjdfstest.sh).

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::{sh, Mount};

const NOBODY: u32 = 65534;
const OTHER: u32 = 65533;

/// Runs `cmd` with `sh` as uid/gid `uid` without supplementary groups.
fn as_user(uid: u32, cmd: &str) -> (i32, String, String) {
    as_user_group(uid, uid, cmd)
}

fn as_user_group(uid: u32, gid: u32, cmd: &str) -> (i32, String, String) {
    let quoted = cmd.replace('\'', "'\\''");
    sh(
        &format!("setpriv --reuid={uid} --regid={gid} --clear-groups sh -c '{quoted}'"),
        Path::new("/"),
    )
}

/// A mount with a cache whose backing root every user may write to.
fn mount(extra: &str) -> Mount {
    let dir = tempfile::Builder::new()
        .prefix("bcl-conf")
        .tempdir()
        .unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let backing = dir.path().join("backing");
    fs::create_dir(&backing).unwrap();
    fs::set_permissions(&backing, fs::Permissions::from_mode(0o777)).unwrap();
    let cache = dir.path().join("c.cache");
    let opts = format!(
        "cache={},cache_size=64M,allow_other{extra}",
        cache.display()
    );
    Mount::over(dir, backing, &opts, &[])
}

/// pjdfstest open/06 (directories): opening a directory for reading needs read
/// permission only; search (x) permission is not required.
fn check_readable_directory_opens_without_search(extra: &str) {
    let m = mount(extra);
    let d = m.m("dir");
    fs::create_dir(&d).unwrap();
    std::os::unix::fs::chown(&d, Some(NOBODY), Some(NOBODY)).unwrap();
    // (mode, uid, gid): read but no search permission, as owner, group member, other
    let cases = [
        (0o600, NOBODY, NOBODY),
        (0o477, NOBODY, NOBODY),
        (0o747, OTHER, NOBODY),
        (0o774, OTHER, OTHER),
    ];
    for (mode, uid, gid) in cases {
        fs::set_permissions(&d, fs::Permissions::from_mode(mode)).unwrap();
        let (code, _, err) = as_user_group(uid, gid, &format!("ls {}", d.display()));
        assert_eq!(
            code, 0,
            "opendir of a {mode:o} directory as {uid}:{gid}: {err}"
        );
    }
    // without read permission it is still refused
    fs::set_permissions(&d, fs::Permissions::from_mode(0o300)).unwrap();
    let (code, _, _) = as_user(NOBODY, &format!("ls {}", d.display()));
    assert_ne!(code, 0, "opendir of a 0300 directory must fail");
}

#[test]
fn readable_directory_opens_without_search_permission_with_default_permissions() {
    require_fuse!();
    check_readable_directory_opens_without_search(",default_permissions");
}

#[test]
fn readable_directory_opens_without_search_permission_with_backing_permissions() {
    require_fuse!();
    check_readable_directory_opens_without_search("");
}
