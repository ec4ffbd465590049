//! Mounted by root with `allow_other`: unprivileged users work through the mount
//! with their own identity. Files they create are theirs, other users' private
//! files stay private, and supplementary groups count.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use common::{sh, Mount};

const USER: u32 = 65534; // nobody
const OTHER: u32 = 4321;
const GROUP: u32 = 4242;

/// Runs `cmd` as uid/gid `USER` with supplementary `groups`.
fn as_user(cmd: &str, groups: &[u32]) -> (i32, String, String) {
    let groups_arg = if groups.is_empty() {
        "--clear-groups".to_string()
    } else {
        format!(
            "--groups {}",
            groups
                .iter()
                .map(|g| g.to_string())
                .collect::<Vec<_>>()
                .join(",")
        )
    };
    let quoted = cmd.replace('\'', "'\\''");
    sh(
        &format!("setpriv --reuid={USER} --regid={USER} {groups_arg} sh -c '{quoted}'"),
        std::path::Path::new("/"),
    )
}

/// With `cached`, the mount has a cache and root reads every private file through it
/// first, so the unprivileged reads below would be cache hits: a hit must not skip a
/// permission check that a miss would make.
fn check_identity_through(options: &str, cached: bool) {
    let mount = if cached {
        let (dir, backing, cache) = common::backing_and_cache("bcl-test");
        let options = format!("{options},cache={},cache_size=16M", cache.display());
        Mount::over(dir, backing, &options, &[])
    } else {
        Mount::new(options)
    };
    fs::set_permissions(mount.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(&mount.backing, fs::Permissions::from_mode(0o1777)).unwrap();
    // another user's private file, and a file only group GROUP may read
    fs::write(mount.b("secret"), b"top secret").unwrap();
    std::os::unix::fs::chown(mount.b("secret"), Some(OTHER), Some(OTHER)).unwrap();
    fs::set_permissions(mount.b("secret"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::write(mount.b("team"), b"team notes").unwrap();
    std::os::unix::fs::chown(mount.b("team"), Some(OTHER), Some(GROUP)).unwrap();
    fs::set_permissions(mount.b("team"), fs::Permissions::from_mode(0o640)).unwrap();
    fs::create_dir(mount.b("private")).unwrap();
    std::os::unix::fs::chown(mount.b("private"), Some(OTHER), Some(OTHER)).unwrap();
    fs::set_permissions(mount.b("private"), fs::Permissions::from_mode(0o700)).unwrap();

    std::process::Command::new("setfattr")
        .args(["-n", "user.note", "-v", "private"])
        .arg(mount.b("secret"))
        .status()
        .unwrap();
    let m = mount.mnt.display();
    if cached {
        // root reads the private file's xattrs through the mount: in the metadata cache now
        for _ in 0..2 {
            let (code, out, err) = sh(
                &format!("getfattr --only-values -n user.note {m}/secret"),
                std::path::Path::new("/"),
            );
            assert_eq!((code, out.as_str()), (0, "private"), "{err}");
        }
        // the kernel keeps the pages too: drop them after each read, so the second read
        // and the unprivileged ones below come to the daemon
        for _ in 0..2 {
            assert_eq!(fs::read(mount.m("secret")).unwrap(), b"top secret");
            assert_eq!(fs::read(mount.m("team")).unwrap(), b"team notes");
            std::fs::write("/proc/sys/vm/drop_caches", "3").unwrap();
        }
        assert!(
            common::stat_u64(&mount.mnt, "cache_hits") >= 2,
            "the files are cached"
        );
    }
    // creation: file, directory, symlink, fifo all owned by the caller
    let (code, _, err) = as_user(
        &format!(
            "echo mine > {m}/created && mkdir {m}/newdir && ln -s created {m}/sl && mkfifo {m}/ff"
        ),
        &[],
    );
    assert_eq!(code, 0, "{err}");
    for name in ["created", "newdir", "sl", "ff"] {
        let meta = fs::symlink_metadata(mount.b(name)).unwrap();
        assert_eq!(
            (meta.uid(), meta.gid()),
            (USER, USER),
            "{name} in the backing"
        );
        let meta = fs::symlink_metadata(mount.m(name)).unwrap();
        assert_eq!(
            (meta.uid(), meta.gid()),
            (USER, USER),
            "{name} through the mount"
        );
    }
    // refusals
    let (code, out, err) = as_user(&format!("cat {m}/secret"), &[]);
    assert_ne!(code, 0, "read another user's 0600 file: {out}");
    assert!(err.contains("Permission denied"), "{err}");
    let (code, out, err) = as_user(&format!("getfattr -n user.note {m}/secret"), &[]);
    assert_ne!(code, 0, "read another user's 0600 file's xattr: {out}");
    assert!(err.contains("Permission denied"), "{err}");
    let (code, _, err) = as_user(&format!("echo x >> {m}/secret"), &[]);
    assert_ne!(code, 0);
    assert!(err.contains("Permission denied"), "{err}");
    let (code, _, err) = as_user(&format!("ls {m}/private"), &[]);
    assert_ne!(code, 0);
    assert!(err.contains("Permission denied"), "{err}");
    let (code, _, err) = as_user(&format!("touch {m}/private/x"), &[]);
    assert_ne!(code, 0);
    assert!(err.contains("Permission denied"), "{err}");
    let (code, _, _) = as_user(&format!("chown {OTHER} {m}/created"), &[]);
    assert_ne!(code, 0, "an unprivileged chown must fail");
    let (code, _, _) = as_user(&format!("chmod 777 {m}/secret"), &[]);
    assert_ne!(code, 0, "chmod of another user's file must fail");
    // rename/unlink of another user's file in a sticky directory
    let (code, _, _) = as_user(&format!("rm -f {m}/secret"), &[]);
    assert_ne!(code, 0, "sticky bit: cannot remove another user's file");
    assert!(mount.b("secret").exists());
    // supplementary groups grant what the primary group does not
    let (code, _, _) = as_user(&format!("cat {m}/team"), &[]);
    assert_ne!(code, 0, "not in the group yet");
    let (code, out, err) = as_user(&format!("cat {m}/team"), &[GROUP]);
    assert_eq!(code, 0, "member of {GROUP}: {err}");
    assert_eq!(out, "team notes");
    // a file created while in a supplementary group can be given to that group
    let (code, _, err) = as_user(&format!("chgrp {GROUP} {m}/created"), &[GROUP]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(fs::metadata(mount.b("created")).unwrap().gid(), GROUP);
    // the caller's own file works normally
    let (code, out, _) = as_user(&format!("cat {m}/created"), &[]);
    assert_eq!((code, out.as_str()), (0, "mine\n"));
    // and root, through the same mount, still is root
    assert_eq!(fs::read(mount.m("secret")).unwrap(), b"top secret");
}

#[test]
fn unprivileged_user_with_kernel_permission_checks() {
    require_fuse!();
    check_identity_through("allow_other,default_permissions", false);
}

#[test]
fn unprivileged_user_with_backing_permission_checks() {
    require_fuse!();
    // Without default_permissions every check is the backing's, made with the
    // caller's fsuid/fsgid/groups.
    check_identity_through("allow_other", false);
}

#[test]
fn unprivileged_user_with_kernel_permission_checks_with_a_warm_cache() {
    require_fuse!();
    check_identity_through("allow_other,default_permissions", true);
}

#[test]
fn unprivileged_user_with_backing_permission_checks_with_a_warm_cache() {
    require_fuse!();
    check_identity_through("allow_other", true);
}

#[test]
fn without_allow_other_other_users_are_refused() {
    require_fuse!();
    let mount = Mount::new("");
    fs::set_permissions(mount.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(mount.b("public"), b"p").unwrap();
    fs::set_permissions(mount.b("public"), fs::Permissions::from_mode(0o644)).unwrap();
    let (code, _, err) = as_user(&format!("cat {}/public", mount.mnt.display()), &[]);
    assert_ne!(code, 0);
    assert!(err.contains("Permission denied"), "{err}");
}
