//! The metadata cache through real mounts: namespace changes through the mount are seen at
//! once (also by another process), outside changes within `metadata_ttl` in shared mode,
//! a warm tree in exclusive mode is served with no backing call, an outside change in
//! exclusive mode is noticed and recovered, the memory budget holds, permissions are kept,
//! and a crash in the middle of namespace changes leaves a mount that agrees with the
//! backing.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use common::{backing_and_cache, sh, sh_ok, stat_u64, stats, Mount};

/// The tests here run one at a time: they drop the kernel's dentry and inode caches
/// (global), count the backing calls a walk makes, or count the outside changes a sweep
/// notices, and a neighbour's drop or walk in the middle of another's count changes what
/// it counts (the kernel forgets the other mount's inodes, or keeps the ones a forked
/// child's copy of this process's descriptors pins).
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static ALONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    ALONE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The mount options of a 64 MiB cache at `cache` in exclusive mode.
fn exclusive_options(cache: &Path) -> String {
    format!(
        "cache={},cache_size=64M,coherence=exclusive",
        cache.display()
    )
}

fn mount(prefix: &str, options: &str) -> Mount {
    let (dir, backing, cache) = backing_and_cache(prefix);
    let opts = format!("cache={},cache_size=64M,{options}", cache.display());
    Mount::over(dir, backing, &opts, &[])
}

/// Every name under `root` with its type, mode, size, link count and (for symlinks)
/// target, as seen by `find` in another process.
fn tree(root: &Path) -> String {
    sh_ok("find . -printf '%p %y %m %s %n %l\\n' | sort", root)
}

/// Asks the kernel to forget the dentries and inodes it does not use (as after a
/// remount, the kernel knows nothing of the tree; the daemon's metadata cache stays).
fn drop_kernel_caches() {
    std::fs::write("/proc/sys/vm/drop_caches", "2").expect("drop_caches (needs root)");
}

/// As [`drop_kernel_caches`], then waits (10 s at most) until the daemon has handled the
/// kernel's FORGETs (they arrive asynchronously; a request racing them still finds the
/// daemon's state of the forgotten inode): its inode table holds the root alone. Drops
/// again every 200 ms: one drop leaves what was in use at that moment (an open descriptor,
/// also a forked child's copy of one until it execs, pins its directory), seen under load
/// as 40 directories still known 3 s later.
fn drop_kernel_caches_and_forgets(mnt: &Path) {
    drop_kernel_caches();
    let until = Instant::now() + Duration::from_secs(10);
    let mut dropped = Instant::now();
    while stat_u64(mnt, "inodes_known") > 1 && Instant::now() < until {
        if dropped.elapsed() >= Duration::from_millis(200) {
            drop_kernel_caches();
            dropped = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn make_tree(root: &Path, dirs: usize, files: usize) {
    for d in 0..dirs {
        let dir = root.join(format!("d{d}"));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        for f in 0..files {
            std::fs::write(dir.join(format!("f{f}")), vec![b'x'; f]).unwrap();
        }
        std::os::unix::fs::symlink(format!("f{}", files / 2), dir.join("link")).unwrap();
        std::fs::write(dir.join("sub/deep"), b"deep").unwrap();
    }
}

fn renameat2(from: &Path, to: &Path, flags: u32) -> i32 {
    let (a, b) = (common::cpath(from), common::cpath(to));
    // SAFETY: both paths are NUL-terminated CStrings that outlive the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            flags,
        )
    };
    common::err_of(ret)
}

/// Each change through the mount, then the mount as another process sees it, compared
/// with the backing.
fn namespace_changes_visible_at_once(options: &str) {
    require_fuse!();
    let _alone = one_at_a_time();
    let m = mount("bcl-meta-ns", options);
    make_tree(&m.backing, 2, 3);
    let check = |what: &str| {
        assert_eq!(tree(&m.mnt), tree(&m.backing), "after {what}");
    };
    check("warm-up");
    // warm every cache: names, attributes, listings, targets
    sh_ok(
        "ls -lR . >/dev/null; find . -type l -exec readlink {} \\; >/dev/null",
        &m.mnt,
    );
    check("warm-up 2");
    std::fs::write(m.m("d0/new"), b"hello").unwrap();
    check("create");
    std::fs::create_dir(m.m("d0/newdir")).unwrap();
    check("mkdir");
    std::os::unix::fs::symlink("new", m.m("d0/newlink")).unwrap();
    check("symlink");
    std::fs::hard_link(m.m("d0/new"), m.m("d1/hard")).unwrap();
    check("link");
    std::fs::rename(m.m("d0/new"), m.m("d1/moved")).unwrap();
    check("rename across directories");
    std::fs::rename(m.m("d1/moved"), m.m("d1/f0")).unwrap();
    check("rename over a file");
    std::fs::rename(m.m("d1/hard"), m.m("d1/f0")).unwrap();
    check("rename of a link onto its other name (does nothing)");
    assert_eq!(
        renameat2(&m.m("d0/f1"), &m.m("d1/f2"), libc::RENAME_EXCHANGE),
        0
    );
    check("RENAME_EXCHANGE");
    assert_eq!(
        renameat2(&m.m("d0/f2"), &m.m("d1/f2"), libc::RENAME_NOREPLACE),
        libc::EEXIST
    );
    check("RENAME_NOREPLACE refused");
    assert_eq!(
        renameat2(&m.m("d0/f2"), &m.m("d1/f9"), libc::RENAME_NOREPLACE),
        0
    );
    check("RENAME_NOREPLACE");
    std::fs::rename(m.m("d0/newdir"), m.m("d1/newdir")).unwrap();
    check("directory rename across parents");
    std::fs::set_permissions(m.m("d1/f0"), std::fs::Permissions::from_mode(0o600)).unwrap();
    check("chmod");
    std::fs::write(m.m("d1/f0"), vec![b'y'; 12345]).unwrap();
    check("write (size)");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(m.m("d1/f9"))
        .unwrap();
    f.set_len(777).unwrap();
    drop(f);
    check("truncate");
    std::fs::remove_file(m.m("d1/f0")).unwrap();
    check("unlink");
    std::fs::remove_dir(m.m("d1/newdir")).unwrap();
    check("rmdir");
    std::fs::remove_file(m.m("d0/newlink")).unwrap();
    std::os::unix::fs::symlink("elsewhere", m.m("d0/newlink")).unwrap();
    check("symlink replaced");
    assert_eq!(
        std::fs::read_link(m.m("d0/newlink")).unwrap(),
        Path::new("elsewhere")
    );
    let s = stats(&m.mnt);
    assert!(s["metadata_hits"].as_u64().unwrap() > 0, "{s}");
}

#[test]
fn namespace_changes_are_visible_at_once_shared() {
    namespace_changes_visible_at_once("coherence=shared,metadata_ttl=60");
}

#[test]
fn namespace_changes_are_visible_at_once_exclusive() {
    namespace_changes_visible_at_once("coherence=exclusive");
}

/// Polls until the mount (as another process sees it) agrees with the backing; returns
/// how long that took, or panics after `limit`.
fn converges(m: &Mount, what: &str, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let (a, b) = (tree(&m.mnt), tree(&m.backing));
        if a == b {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "{what}: the mount still differs after {limit:?}:\n{a}\nbacking:\n{b}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A change made directly in the backing.
type OutsideChange = Box<dyn Fn(&Path)>;

#[test]
fn shared_mode_shows_outside_changes_within_the_ttl_and_serves_from_cache_before() {
    require_fuse!();
    let _alone = one_at_a_time();
    let ttl = Duration::from_millis(1500);
    let m = mount("bcl-meta-shared", "coherence=shared,metadata_ttl=1.5");
    make_tree(&m.backing, 1, 4);
    // the margin: the poll interval and the time a find takes under load
    let limit = ttl + Duration::from_millis(1500);
    let changes: Vec<(&str, OutsideChange)> = vec![
        (
            "create",
            Box::new(|b| std::fs::write(b.join("d0/out"), b"o").unwrap()),
        ),
        (
            "unlink",
            Box::new(|b| std::fs::remove_file(b.join("d0/f0")).unwrap()),
        ),
        (
            "rename",
            Box::new(|b| std::fs::rename(b.join("d0/f1"), b.join("d0/renamed")).unwrap()),
        ),
        (
            "chmod",
            Box::new(|b| {
                std::fs::set_permissions(b.join("d0/f2"), PermissionsExt::from_mode(0o640)).unwrap()
            }),
        ),
        (
            "size change",
            Box::new(|b| std::fs::write(b.join("d0/f3"), vec![b'z'; 999]).unwrap()),
        ),
        (
            "rename-over",
            Box::new(|b| {
                std::fs::write(b.join("d0/tmp"), vec![b'r'; 55]).unwrap();
                std::fs::rename(b.join("d0/tmp"), b.join("d0/renamed")).unwrap();
            }),
        ),
    ];
    for (what, change) in changes {
        converges(&m, "warm-up", limit);
        // warm again and let the directory's times settle (see meta::SETTLE)
        std::thread::sleep(Duration::from_millis(1100));
        tree(&m.mnt);
        let hits = stat_u64(&m.mnt, "metadata_hits");
        tree(&m.mnt);
        assert!(
            stat_u64(&m.mnt, "metadata_hits") > hits,
            "{what}: a warm walk is served from the metadata cache"
        );
        change(&m.backing);
        let took = converges(&m, what, limit);
        eprintln!("{what}: visible after {took:?}");
    }
    assert!(stat_u64(&m.mnt, "metadata_revalidations") > 0);
}

#[test]
fn exclusive_mode_serves_a_warm_tree_with_no_backing_calls() {
    require_fuse!();
    let _alone = one_at_a_time();
    let m = mount("bcl-meta-excl", "coherence=exclusive");
    make_tree(&m.backing, 20, 20);
    // (not `ls -l`: it asks for each file's ACL xattr, which is not cached)
    let walk = "find . >/dev/null; find . -exec stat {} + >/dev/null; ls -R . >/dev/null; \
                find . -type l -exec readlink {} + >/dev/null";
    sh_ok(walk, &m.mnt);
    sh_ok(walk, &m.mnt); // readdirplus's lookups fill the names the first listing left open
    let before = tree(&m.mnt);
    drop_kernel_caches();
    // what reading the figure costs by itself (the stats command statfs()es the mount)
    let c0 = stat_u64(&m.mnt, "backing_metadata_calls");
    let calls = stat_u64(&m.mnt, "backing_metadata_calls");
    let own = calls - c0;
    sh_ok(walk, &m.mnt);
    let after = tree(&m.mnt);
    let calls_after = stat_u64(&m.mnt, "backing_metadata_calls") - own;
    assert_eq!(before, after);
    assert_eq!(after, tree(&m.backing));
    assert_eq!(
        calls_after - calls,
        0,
        "find/stat/ls -R of a cached tree, the kernel's caches dropped, made backing calls"
    );
}

#[test]
fn exclusive_mode_notices_an_outside_change_and_recovers() {
    require_fuse!();
    let _alone = one_at_a_time();
    // the sweep runs every 10 x metadata_ttl: 1 s here
    let m = mount("bcl-meta-excl-out", "coherence=exclusive,metadata_ttl=0.1");
    make_tree(&m.backing, 2, 3);
    assert_eq!(tree(&m.mnt), tree(&m.backing));
    // The tree was made outside after the root's attributes were cached at mount: a pass
    // notices that, drops the root's names, and what the walk then looks up again is no
    // longer cached to be noticed below. Wait for a whole pass over the five directories
    // to have started after the walk (a pass waits for quiet and can run late under load).
    let checks = stat_u64(&m.mnt, "metadata_sweep_checks");
    let until = Instant::now() + Duration::from_secs(20);
    while stat_u64(&m.mnt, "metadata_sweep_checks") < checks + 10 {
        assert!(
            Instant::now() < until,
            "the sweep made no two passes in 20 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(tree(&m.mnt), tree(&m.backing));
    let noticed = stat_u64(&m.mnt, "metadata_outside_changes");
    std::fs::write(m.b("d0/outside"), b"x").unwrap();
    std::fs::remove_file(m.b("d1/f0")).unwrap();
    converges(
        &m,
        "outside change in exclusive mode",
        Duration::from_secs(5),
    );
    let now = stat_u64(&m.mnt, "metadata_outside_changes");
    assert!(
        now >= noticed + 2,
        "two directories changed outside, {} noticed",
        now - noticed
    );
}

/// A file rewritten in place outside (same name: its directory's times do not move, so the
/// sweep cannot see it) in exclusive mode, where no open asks the daemon any more
/// (`no_open`): the open-file watcher's check of the daemon's own handles notices it within
/// 30 passes (one per attribute timeout, 0.1 s here) and drops the cached bytes and pages.
#[test]
fn exclusive_mode_notices_a_file_rewritten_in_place_outside() {
    require_fuse!();
    let _alone = one_at_a_time();
    let m = mount(
        "bcl-meta-excl-inplace",
        "coherence=exclusive,attr_timeout=0.1",
    );
    std::fs::write(m.b("f"), common::pattern(20_000, 1)).unwrap();
    assert_eq!(std::fs::read(m.m("f")).unwrap(), common::pattern(20_000, 1));
    assert!(stat_u64(&m.mnt, "implicit_handles") >= 1);
    std::thread::sleep(Duration::from_millis(50)); // a different mtime
                                                   // in place: the same inode, the same size
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(m.b("f"))
        .unwrap();
    std::io::Write::write_all(&mut f, &common::pattern(20_000, 2)).unwrap();
    drop(f);
    let start = Instant::now();
    while std::fs::read(m.m("f")).unwrap() != common::pattern(20_000, 2) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "a rewrite in place outside was not noticed in 10 s (30 passes of 0.1 s)"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn memory_stays_under_the_budget_with_a_bigger_tree() {
    require_fuse!();
    let _alone = one_at_a_time();
    let budget = 256 << 10;
    let m = mount(
        "bcl-meta-budget",
        &format!("coherence=exclusive,metadata_cache_size={budget}"),
    );
    make_tree(&m.backing, 40, 60);
    for _ in 0..2 {
        assert_eq!(tree(&m.mnt), tree(&m.backing));
        let s = stats(&m.mnt);
        let bytes = s["metadata_bytes"].as_u64().unwrap();
        assert!(
            bytes <= budget,
            "metadata_bytes {bytes} over the budget {budget}"
        );
        assert!(bytes > budget / 2, "the budget is used: {bytes}");
        assert!(s["metadata_evictions"].as_u64().unwrap() > 0, "{s}");
    }
}

#[test]
fn cached_names_keep_the_callers_permissions() {
    require_fuse!();
    let _alone = one_at_a_time();
    let m = mount("bcl-meta-perm", "coherence=exclusive,allow_other");
    std::fs::create_dir(m.b("private")).unwrap();
    std::fs::write(m.b("private/secret"), b"s").unwrap();
    std::fs::set_permissions(m.b("private"), PermissionsExt::from_mode(0o700)).unwrap();
    let mnt = m.mnt.display().to_string();
    // root warms the cache with the names and the listing
    sh_ok(
        &format!("stat {mnt}/private/secret >/dev/null; ls {mnt}/private"),
        &m.mnt,
    );
    // the kernel's own dentries skip the daemon (FUSE without default_permissions); with
    // allow_other it keeps them only for entry_timeout (1 s), even in exclusive mode
    std::thread::sleep(Duration::from_millis(1200));
    for cmd in [
        format!("stat {mnt}/private/secret"),
        format!("ls {mnt}/private"),
    ] {
        let (code, out, _) = sh(
            &format!("setpriv --reuid=65534 --regid=65534 --clear-groups {cmd}"),
            Path::new("/"),
        );
        assert_ne!(
            code, 0,
            "nobody ran `{cmd}` in a 0700 directory of root: {out}"
        );
    }
}

#[test]
fn a_crash_during_namespace_changes_leaves_a_mount_that_agrees_with_the_backing() {
    require_fuse!();
    let _alone = one_at_a_time();
    let (dir, backing, cache) = backing_and_cache("bcl-meta-crash");
    let opts = exclusive_options(&cache);
    make_tree(&backing, 3, 5);
    // a clean unmount first leaves a metadata checkpoint, which the crash makes out of date
    let m = Mount::over(dir, backing.clone(), &opts, &[]);
    tree(&m.mnt);
    tree(&m.mnt);
    let (_, dir) = m.unmount_keep();
    let m = Mount::over(dir, backing.clone(), &opts, &[]);
    tree(&m.mnt);
    // a change no directory's times show: only the crash rule (an out-of-date checkpoint
    // is not trusted) keeps the old mode from coming back
    std::fs::set_permissions(m.m("d0/sub/deep"), PermissionsExt::from_mode(0o604)).unwrap();
    let mnt = m.mnt.clone();
    let worker = std::thread::spawn(move || {
        for i in 0..400 {
            let d = mnt.join(format!("d{}", i % 3));
            let _ = std::fs::write(d.join(format!("n{i}")), b"n");
            let _ = std::fs::rename(d.join(format!("n{i}")), d.join(format!("r{i}")));
            if i % 3 == 0 {
                let _ = std::fs::remove_file(d.join(format!("r{}", i / 2)));
            }
            let _ = std::fs::create_dir(d.join(format!("dir{i}")));
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    let dir = m.crash();
    let _ = worker.join();
    let m = Mount::over(dir, backing, &opts, &[]);
    assert_eq!(tree(&m.mnt), tree(&m.backing));
    // and a walk twice (the second from the cache) still agrees
    assert_eq!(tree(&m.mnt), tree(&m.backing));
    let ino: BTreeMap<_, _> = std::fs::read_dir(m.m("d0"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.file_name(), e.metadata().unwrap().ino())
        })
        .collect();
    for (name, i) in ino {
        assert_eq!(
            std::fs::symlink_metadata(m.b("d0").join(&name))
                .unwrap()
                .ino(),
            i
        );
    }
}

#[test]
fn a_reused_inode_number_is_never_served_as_the_old_inode() {
    require_fuse!();
    let _alone = one_at_a_time();
    // git's index.lock renamed over index: the backing reuses freed inode numbers for new
    // files while the kernel and the caches still know the old inodes under them (the
    // dev-box bench's sequence, where `tar` once got ESTALE opening .git/index)
    let (dir, backing, cache) = backing_and_cache("bcl-meta-reuse");
    let src = std::env::current_dir().unwrap();
    let repo = backing.join("repo");
    sh_ok(
        &format!(
            "git clone -q --no-hardlinks {} {}",
            src.display(),
            repo.display()
        ),
        Path::new("/"),
    );
    let opts = exclusive_options(&cache);
    let m = Mount::over(dir, backing, &opts, &[]);
    let repo = m.m("repo");
    for cmd in [
        "git status --porcelain",
        "grep -r -c NEEDLE_TODO . || true",
        "find . -printf '%s %m\\n'",
        "tar cf - .",
    ] {
        for _ in 0..2 {
            drop_kernel_caches();
            sh_ok(&format!("{cmd} >/dev/null"), &repo);
            sh_ok(&format!("{cmd} >/dev/null"), &repo);
        }
    }
    assert_eq!(tree(&repo), tree(&m.b("repo")));
}

/// find + stat + ls -R + readlink of the tree (not `ls -l`: it asks for each file's ACL
/// xattr, which is not cached).
const WALK: &str = "find . >/dev/null; find . -exec stat {} + >/dev/null; ls -R . >/dev/null; \
                    find . -type l -exec readlink {} + >/dev/null";

/// Backing metadata calls `walk` makes through `m` (the stats reading's own cost taken off).
fn calls_of(m: &Mount, walk: &str) -> u64 {
    let c0 = stat_u64(&m.mnt, "backing_metadata_calls");
    let c1 = stat_u64(&m.mnt, "backing_metadata_calls");
    sh_ok(walk, &m.mnt);
    stat_u64(&m.mnt, "backing_metadata_calls") - c1 - (c1 - c0)
}

#[test]
fn exclusive_mode_after_a_remount_serves_the_tree_with_no_backing_calls() {
    require_fuse!();
    let _alone = one_at_a_time();
    let (dir, backing, cache) = backing_and_cache("bcl-meta-remount");
    let opts = exclusive_options(&cache);
    make_tree(&backing, 20, 20);
    let m = Mount::over(dir, backing.clone(), &opts, &[]);
    sh_ok(WALK, &m.mnt);
    sh_ok(WALK, &m.mnt);
    let before = tree(&m.mnt);
    let (status, dir) = m.unmount_keep();
    assert!(status.success());
    let m = Mount::over(dir, backing, &opts, &[]);
    assert_eq!(
        calls_of(&m, WALK),
        0,
        "a remounted exclusive cache asked the backing"
    );
    assert_eq!(tree(&m.mnt), before);
    assert_eq!(before, tree(&m.backing));
    assert!(stat_u64(&m.mnt, "metadata_hits") > 0);
}

/// Directories made through the mount in exclusive mode are known empty at once: the files
/// made in them are listed from the cache, now and after a remount (a `git commit` makes
/// `.git/objects/xx` directories; each was read from the backing at its first listing).
#[test]
fn exclusive_mode_lists_directories_made_through_the_mount_with_no_backing_calls() {
    require_fuse!();
    let _alone = one_at_a_time();
    let (dir, backing, cache) = backing_and_cache("bcl-meta-made");
    let opts = exclusive_options(&cache);
    let m = Mount::over(dir, backing.clone(), &opts, &[]);
    sh_ok(
        "ls >/dev/null && mkdir -p a/b/c && for i in 1 2 3; do echo $i > a/f$i; echo $i > a/b/c/g$i; done \
         && mkdir a/empty",
        &m.mnt,
    );
    // a write leaves the file's attributes to be asked again once (its new mtime): asked
    // here by name, so no directory is listed before the walk
    sh_ok(
        "stat a/f1 a/f2 a/f3 a/b/c/g1 a/b/c/g2 a/b/c/g3 >/dev/null",
        &m.mnt,
    );
    drop_kernel_caches_and_forgets(&m.mnt);
    let walk = "find . >/dev/null; ls -R . >/dev/null";
    let misses = stat_u64(&m.mnt, "metadata_misses");
    sh_ok(walk, &m.mnt);
    assert_eq!(
        stat_u64(&m.mnt, "metadata_misses") - misses,
        0,
        "a directory made through the mount was not known: its listing was read"
    );
    let before = tree(&m.mnt);
    assert_eq!(before, tree(&m.backing));
    let (status, dir) = m.unmount_keep();
    assert!(status.success());
    let m = Mount::over(dir, backing, &opts, &[]);
    assert_eq!(calls_of(&m, walk), 0, "after a remount");
    assert_eq!(tree(&m.mnt), before);
}

/// Many small files looked up by name, their directory never listed: nearly every byte of
/// the checkpoint is an inode of the smallest kind (no link), with no listing beside (a
/// decoder bound that guessed an inode's size too big refused such checkpoints, and the
/// remount started cold).
#[test]
fn a_remount_after_many_lookups_by_name_starts_warm() {
    require_fuse!();
    let _alone = one_at_a_time();
    let (dir, backing, cache) = backing_and_cache("bcl-meta-remount-flat");
    let opts = exclusive_options(&cache);
    for f in 0..400 {
        std::fs::write(backing.join(format!("f{f}")), b"x").unwrap();
    }
    let walk = "seq 0 399 | sed 's/^/f/' | xargs stat -c '%n %s %Y' >/dev/null";
    let m = Mount::over(dir, backing.clone(), &opts, &[]);
    sh_ok(walk, &m.mnt);
    let (status, dir) = m.unmount_keep();
    assert!(status.success());
    let m = Mount::over(dir, backing, &opts, &[]);
    assert_eq!(calls_of(&m, walk), 0, "the remount started cold");
}

#[test]
fn after_a_remount_outside_changes_are_found_in_both_modes() {
    require_fuse!();
    let _alone = one_at_a_time();
    for mode in ["shared", "exclusive"] {
        let (dir, backing, cache) = backing_and_cache("bcl-meta-remount-out");
        let opts = format!(
            "cache={},cache_size=64M,coherence={mode},metadata_ttl=0.1",
            cache.display()
        );
        make_tree(&backing, 3, 4);
        let m = Mount::over(dir, backing.clone(), &opts, &[]);
        tree(&m.mnt);
        tree(&m.mnt);
        let (_, dir) = m.unmount_keep();
        // changed while unmounted: the checkpoint is out of date for d0 and d1
        std::fs::write(backing.join("d0/while-unmounted"), b"x").unwrap();
        std::fs::remove_file(backing.join("d1/f0")).unwrap();
        std::fs::set_permissions(backing.join("d2"), PermissionsExt::from_mode(0o711)).unwrap();
        let m = Mount::over(dir, backing, &opts, &[]);
        converges(
            &m,
            &format!("{mode}: changes while unmounted"),
            Duration::from_secs(5),
        );
        if mode == "shared" {
            // entries start expired; the unchanged directories were kept by one stat each
            assert!(stat_u64(&m.mnt, "metadata_revalidations") > 0);
        } else {
            assert!(stat_u64(&m.mnt, "metadata_outside_changes") > 0);
        }
    }
}

/// Waits until the mount has written a metadata snapshot since `from` and then none for
/// 2.5 intervals of 1 s (snapshots are written only while the cache changes): the last one
/// then holds everything.
fn wait_for_settled_snapshot(m: &Mount, from: u64) {
    let until = std::time::Instant::now() + Duration::from_secs(30);
    let (mut last, mut since) = (from, std::time::Instant::now());
    loop {
        let n = stat_u64(&m.mnt, "metadata_checkpoints");
        if n != last {
            (last, since) = (n, std::time::Instant::now());
        }
        if n > from && since.elapsed() > Duration::from_millis(2500) {
            return;
        }
        assert!(
            std::time::Instant::now() < until,
            "no periodic metadata snapshot"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The crash rule of the metadata checkpoints: after a SIGKILL the next mount starts from
/// the last periodic snapshot (warm: fewer backing calls than a cold walk) but trusts none
/// of it, even in exclusive mode (a chmod made in the backing while the daemon was dead is
/// seen); a clean unmount's checkpoint is trusted once, never again after the mount that
/// read it crashed.
#[test]
fn after_a_crash_the_last_snapshot_is_used_but_never_trusted() {
    require_fuse!();
    let _alone = one_at_a_time();
    let (dir, backing, cache) = backing_and_cache("bcl-meta-crash-rule");
    let opts = format!(
        "cache={},cache_size=64M,coherence=exclusive,metadata_checkpoint_interval=1",
        cache.display()
    );
    make_tree(&backing, 10, 20);
    let m = Mount::over(dir, backing.clone(), &opts, &[]);
    let before = stat_u64(&m.mnt, "metadata_checkpoints");
    let cold = calls_of(&m, WALK);
    wait_for_settled_snapshot(&m, before);
    std::fs::set_permissions(
        backing.join("d3/f7"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let m = Mount::over(m.crash(), backing.clone(), &opts, &[]);
    let after_crash = calls_of(&m, WALK);
    assert_eq!(tree(&m.mnt), tree(&backing), "a snapshot was trusted");
    assert!(
        after_crash < cold,
        "the remount after a crash started cold ({after_crash} calls, cold {cold})"
    );
    // clean unmount, mount (reads the trusted checkpoint), crash at once
    let (status, dir) = m.unmount_keep();
    assert!(status.success());
    let m = Mount::over(dir, backing.clone(), &opts, &[]);
    assert_eq!(calls_of(&m, "stat d3/f7 >/dev/null"), 0, "not trusted once");
    let dir = m.crash();
    std::fs::set_permissions(
        backing.join("d5/f2"),
        std::os::unix::fs::PermissionsExt::from_mode(0o604),
    )
    .unwrap();
    let m = Mount::over(dir, backing.clone(), &opts, &[]);
    assert_eq!(
        tree(&m.mnt),
        tree(&backing),
        "a clean checkpoint was trusted again after the mount that read it crashed"
    );
}

fn getxattr(path: &Path, name: &str) -> Result<Vec<u8>, i32> {
    let (p, n) = (common::cpath(path), std::ffi::CString::new(name).unwrap());
    let mut buf = vec![0u8; 4096];
    // SAFETY: both strings are NUL-terminated; getxattr writes at most `buf.len()` bytes.
    let r = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        return Err(std::io::Error::last_os_error().raw_os_error().unwrap());
    }
    buf.truncate(r as usize);
    Ok(buf)
}

fn setxattr(path: &Path, name: &str, value: &[u8]) {
    let (p, n) = (common::cpath(path), std::ffi::CString::new(name).unwrap());
    // SAFETY: both strings are NUL-terminated; setxattr reads `value.len()` bytes.
    let r = unsafe {
        libc::setxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(r, 0, "setxattr {name}: {}", std::io::Error::last_os_error());
}

fn listxattr(path: &Path) -> Vec<u8> {
    let p = common::cpath(path);
    let mut buf = vec![0u8; 4096];
    // SAFETY: the path is NUL-terminated; listxattr writes at most `buf.len()` bytes.
    let r = unsafe { libc::listxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert!(r >= 0, "listxattr: {}", std::io::Error::last_os_error());
    buf.truncate(r as usize);
    buf
}

/// Backing metadata calls made while `f` runs (the stats reading's own cost taken off).
fn calls_during(m: &Mount, f: impl FnOnce()) -> u64 {
    let c0 = stat_u64(&m.mnt, "backing_metadata_calls");
    let c1 = stat_u64(&m.mnt, "backing_metadata_calls");
    f();
    stat_u64(&m.mnt, "backing_metadata_calls") - c1 - (c1 - c0)
}

/// Extended attributes (values, absent names, the name list) are answered from the
/// metadata cache once read, and every xattr change through the mount is seen at once.
#[test]
fn xattrs_are_served_from_the_cache_and_changes_through_the_mount_show_at_once() {
    require_fuse!();
    let _alone = one_at_a_time();
    let m = mount("bcl-meta-xattr", "coherence=exclusive");
    let f = m.backing.join("f");
    std::fs::write(&f, b"x").unwrap();
    setxattr(&f, "user.color", b"blue");
    let f = m.mnt.join("f");
    std::fs::metadata(&f).unwrap();
    assert_eq!(getxattr(&f, "user.color").unwrap(), b"blue");
    assert_eq!(getxattr(&f, "user.absent"), Err(libc::ENODATA));
    assert!(listxattr(&f).starts_with(b"user.color\0"));
    let calls = calls_during(&m, || {
        assert_eq!(getxattr(&f, "user.color").unwrap(), b"blue");
        assert_eq!(getxattr(&f, "user.absent"), Err(libc::ENODATA));
        assert!(listxattr(&f).starts_with(b"user.color\0"));
    });
    assert_eq!(calls, 0, "cached xattrs asked the backing");
    assert!(stat_u64(&m.mnt, "metadata_hits") > 0);
    // changes through the mount, at once (no TTL to wait out)
    setxattr(&f, "user.color", b"red");
    assert_eq!(getxattr(&f, "user.color").unwrap(), b"red");
    setxattr(&f, "user.absent", b"here");
    assert_eq!(getxattr(&f, "user.absent").unwrap(), b"here");
    assert_eq!(listxattr(&f), b"user.color\0user.absent\0".to_vec());
    let p = common::cpath(&f);
    let n = std::ffi::CString::new("user.color").unwrap();
    // SAFETY: both strings are NUL-terminated.
    assert_eq!(unsafe { libc::removexattr(p.as_ptr(), n.as_ptr()) }, 0);
    assert_eq!(getxattr(&f, "user.color"), Err(libc::ENODATA));
    assert_eq!(listxattr(&f), b"user.absent\0".to_vec());
}

/// Shared coherence: an xattr changed in the backing from elsewhere shows once
/// `metadata_ttl` has passed (its ctime moved, so the cached xattrs are dropped).
#[test]
fn an_xattr_changed_outside_shows_within_the_ttl() {
    require_fuse!();
    let _alone = one_at_a_time();
    let m = mount("bcl-meta-xattr-out", "metadata_ttl=1");
    let (outside, f) = (m.backing.join("f"), m.mnt.join("f"));
    std::fs::write(&outside, b"x").unwrap();
    setxattr(&outside, "user.v", b"1");
    assert_eq!(getxattr(&f, "user.v").unwrap(), b"1");
    setxattr(&outside, "user.v", b"2");
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while getxattr(&f, "user.v").unwrap() != b"2" {
        assert!(
            std::time::Instant::now() < until,
            "the outside xattr change never showed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// An exclusive mount whose daemon may open 256 descriptors: room for 16 of its own handles
/// of files the kernel opened without asking, and 16 of directories.
fn mount_exclusive_with_256_descriptors(
    dir: tempfile::TempDir,
    backing: std::path::PathBuf,
    cache: &Path,
) -> Mount {
    let daemon = common::Daemon {
        nofile: Some((256, 256)),
        ..Default::default()
    };
    let opts = exclusive_options(cache);
    Mount::spawn(dir, backing, &opts, &[], &daemon)
}

/// One getdents64 of directory `fd` into `buf`: how many bytes it returned (0 at the end)
/// and the names in them, `.` and `..` left out.
fn getdents_names(fd: libc::c_int, buf: &mut [u8]) -> (usize, Vec<String>) {
    // SAFETY: `buf` is writable for its length; `fd` is an open directory.
    let n = unsafe { libc::syscall(libc::SYS_getdents64, fd, buf.as_mut_ptr(), buf.len()) };
    assert!(n >= 0, "getdents: {}", std::io::Error::last_os_error());
    let mut names = Vec::new();
    let mut at = 0usize;
    while at < n as usize {
        let reclen = u16::from_ne_bytes([buf[at + 16], buf[at + 17]]) as usize;
        let name = &buf[at + 19..at + reclen];
        let name = &name[..name.iter().position(|&b| b == 0).unwrap()];
        let name = String::from_utf8(name.to_vec()).unwrap();
        if name != "." && name != ".." {
            names.push(name);
        }
        at += reclen;
    }
    (n as usize, names)
}

/// Exclusive mode opens files without OPEN requests (`no_open`): the first open is
/// answered ENOSYS, and the kernel opens every later file itself and sends its reads and
/// writes with handle 0. The daemon serves those through descriptors of its own, at most
/// a sixteenth of its descriptor limit (16 here), except a file with no name left, kept
/// until the kernel forgets it. What each open asked for (O_APPEND, O_TRUNC) must still
/// hold. Shared mode, and `open_requests`, ask the daemon on every open.
#[test]
fn exclusive_mode_opens_files_without_asking_and_serves_them_right() {
    require_fuse!();
    let _alone = one_at_a_time();
    use std::io::{Read, Seek, Write};
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    let (dir, backing, cache) = backing_and_cache("bcl-meta-noopen");
    for i in 0..100 {
        std::fs::write(
            backing.join(format!("f{i}")),
            common::pattern(3000 + i, i as u64),
        )
        .unwrap();
    }
    let m = mount_exclusive_with_256_descriptors(dir, backing, &cache);
    let opens = || stat_u64(&m.mnt, "open_requests");
    let held = || stat_u64(&m.mnt, "implicit_handles");

    // a file opened (not created: CREATE gets a handle of its own) and written through
    // handle 0, then unlinked through the mount
    std::fs::write(m.m("nameless"), b"").unwrap();
    let mut nameless = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.m("nameless"))
        .unwrap();
    nameless.write_all(b"before").unwrap();
    let mut kept = std::fs::File::open(m.m("f7")).unwrap();
    let mut first = [0u8; 10];
    kept.read_exact(&mut first).unwrap();
    std::fs::remove_file(m.m("nameless")).unwrap();

    for round in 0..2 {
        for i in 0..100 {
            let got = std::fs::read(m.m(&format!("f{i}"))).unwrap();
            assert_eq!(
                got,
                common::pattern(3000 + i, i as u64),
                "f{i}, round {round}"
            );
            assert!(held() <= 16 + 1, "{} implicit handles, cap 16", held());
        }
    }
    // one OPEN and one OPENDIR, each answered ENOSYS
    assert!(
        opens() <= 2,
        "{} OPEN/OPENDIR requests reached the daemon",
        opens()
    );

    // the unlinked file's handle was kept through 200 evictions: it still writes and reads
    nameless.write_all(b" after").unwrap();
    nameless.sync_all().unwrap();
    let mut back = vec![0u8; 12];
    nameless.read_exact_at(&mut back, 0).unwrap();
    assert_eq!(&back, b"before after");
    assert_eq!(nameless.metadata().unwrap().nlink(), 0);
    drop(nameless);
    // a descriptor opened before the evictions still reads on where it was
    let mut rest = Vec::new();
    kept.read_to_end(&mut rest).unwrap();
    first
        .iter()
        .chain(&rest)
        .zip(common::pattern(3007, 7))
        .for_each(|(a, b)| assert_eq!(*a, b));
    assert_eq!(first.len() + rest.len(), 3007);
    drop(kept);

    // O_APPEND from two descriptors: each write lands at the end
    let append = || {
        std::fs::OpenOptions::new()
            .append(true)
            .open(m.m("f1"))
            .unwrap()
    };
    let (mut a, mut b) = (append(), append());
    for _ in 0..10 {
        a.write_all(b"a").unwrap();
        b.write_all(b"b").unwrap();
    }
    drop((a, b));
    let f1 = std::fs::read(m.b("f1")).unwrap();
    assert_eq!(f1.len(), 3001 + 20);
    assert_eq!(&f1[3001..], b"abababababababababab".as_slice());
    // O_TRUNC of an existing file, and O_SYNC writes through handle 0
    let mut t = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .custom_flags(libc::O_SYNC)
        .open(m.m("f2"))
        .unwrap();
    t.write_all(b"short").unwrap();
    t.seek(std::io::SeekFrom::Start(0)).unwrap();
    drop(t);
    assert_eq!(std::fs::read(m.b("f2")).unwrap(), b"short");
    assert_eq!(std::fs::read(m.m("f2")).unwrap(), b"short");
    assert!(
        opens() <= 2,
        "{} OPEN/OPENDIR requests reached the daemon",
        opens()
    );
    m.unmount();

    // shared mode, and exclusive with open_requests: every open is asked
    for options in ["coherence=shared", "coherence=exclusive,open_requests"] {
        let m = mount("bcl-meta-open", options);
        for i in 0..10 {
            std::fs::write(m.b(&format!("g{i}")), b"x").unwrap();
        }
        for i in 0..10 {
            assert_eq!(std::fs::read(m.m(&format!("g{i}"))).unwrap(), b"x");
        }
        let n = stat_u64(&m.mnt, "open_requests");
        assert!(n >= 10, "{options}: {n} OPEN requests for 10 opens");
        assert_eq!(stat_u64(&m.mnt, "implicit_handles"), 0, "{options}");
    }
}

/// Exclusive mode reads directories without OPENDIR (`no_opendir`): READDIR comes with
/// handle 0 and an offset the kernel keeps for as long as it keeps the inode, so each
/// directory keeps the offset space of its first read (the backing's cookies while its
/// listing is unknown, indexes into the metadata cache's listing once known) even when its
/// handle is let go. 40 directories listed a getdents batch at a time, interleaved, with
/// room for 16 handles: every listing must come out whole, each name once, in both spaces.
#[test]
fn exclusive_mode_lists_directories_without_opendir_in_a_stable_offset_space() {
    require_fuse!();
    let _alone = one_at_a_time();
    let (dir, backing, cache) = backing_and_cache("bcl-meta-noopendir");
    let long = "n".repeat(100);
    let mut want = BTreeMap::new();
    for d in 0..40 {
        let dir = backing.join(format!("d{d}"));
        std::fs::create_dir(&dir).unwrap();
        let names: Vec<String> = (0..(400 + d * 7)).map(|i| format!("{long}{i}")).collect();
        for n in &names {
            std::fs::write(dir.join(n), b"").unwrap();
        }
        want.insert(
            d,
            names.into_iter().collect::<std::collections::BTreeSet<_>>(),
        );
    }
    let m = mount_exclusive_with_256_descriptors(dir, backing, &cache);
    // getdents of 8 KiB at a time (about 60 names: a READDIR is one page), round robin
    let list_interleaved = |m: &Mount| {
        let mut fds: Vec<(usize, libc::c_int)> = (0..40)
            .map(|d| {
                let p = common::cpath(&m.m(&format!("d{d}")));
                // SAFETY: a NUL-terminated path that outlives the call.
                let fd = unsafe { libc::open(p.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY) };
                assert!(fd >= 0, "open d{d}: {}", std::io::Error::last_os_error());
                (d, fd)
            })
            .collect();
        let mut got: BTreeMap<usize, Vec<String>> = BTreeMap::new();
        let mut buf = vec![0u8; 8192];
        while !fds.is_empty() {
            fds.retain(|&(d, fd)| {
                let (n, names) = getdents_names(fd, &mut buf);
                got.entry(d).or_default().extend(names);
                if n == 0 {
                    // SAFETY: closing the descriptor opened above, once.
                    unsafe { libc::close(fd) };
                }
                n > 0
            });
        }
        got
    };
    let check = |got: BTreeMap<usize, Vec<String>>, pass: &str| {
        for (d, names) in &want {
            let listed = &got[d];
            let set: std::collections::BTreeSet<_> = listed.iter().cloned().collect();
            assert_eq!(set.len(), listed.len(), "{pass}: d{d} listed a name twice");
            assert_eq!(&set, names, "{pass}: d{d} listed other names");
        }
    };
    // A space outlives its handle. A reader of d0 stops after one batch (cookie space:
    // its listing unknown). Its kernel readdir cache dropped, another reader lists d0 from
    // the start: the daemon reads it whole and the metadata cache learns its listing. 20
    // other listings later the first reader's handle was let go; when it goes on (its
    // kernel cache dropped again, so the daemon gets its cookie), the renewed handle must
    // read on from that cookie, not take it for an index into the now-known listing.
    let drop_pages = || std::fs::write("/proc/sys/vm/drop_caches", "1").unwrap();
    let getdents_all = |fd: libc::c_int, once: bool| {
        let mut names = Vec::new();
        let mut buf = vec![0u8; 8192];
        loop {
            let (n, got) = getdents_names(fd, &mut buf);
            names.extend(got);
            if n == 0 || once {
                return names;
            }
        }
    };
    let open_dir = |rel: &str| {
        let p = common::cpath(&m.m(rel));
        // SAFETY: a NUL-terminated path that outlives the call.
        let fd = unsafe { libc::open(p.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY) };
        assert!(fd >= 0, "open {rel}: {}", std::io::Error::last_os_error());
        fd
    };
    let first = open_dir("d0");
    let mut names = getdents_all(first, true);
    assert!(!names.is_empty() && names.len() < want[&0].len());
    drop_pages();
    let other = open_dir("d0");
    assert_eq!(getdents_all(other, false).len(), want[&0].len());
    for d in 1..=20 {
        let fd = open_dir(&format!("d{d}"));
        getdents_all(fd, false);
        // SAFETY: closing the descriptor opened above, once.
        unsafe { libc::close(fd) };
    }
    drop_pages();
    names.extend(getdents_all(first, false));
    // SAFETY: closing the descriptors opened above, once each.
    unsafe {
        libc::close(first);
        libc::close(other);
    }
    let set: std::collections::BTreeSet<_> = names.iter().cloned().collect();
    assert_eq!(
        set.len(),
        names.len(),
        "the reader that went on listed a name twice"
    );
    assert_eq!(
        set.len(),
        want[&0].len(),
        "the reader that went on listed {} of {} names",
        set.len(),
        want[&0].len()
    );
    assert_eq!(set, want[&0], "the reader that went on listed other names");
    drop_kernel_caches();

    // the first pass: d0-d20 in index space (their listings known now), the rest in the
    // backing's cookies
    check(list_interleaved(&m), "first");
    // handles let go in the middle of a listing do not store it for the metadata cache: a
    // walk that reads each whole does, once the kernel forgot the directories (and its
    // readdir caches, which would answer it)
    drop_kernel_caches_and_forgets(&m.mnt);
    sh_ok("find . >/dev/null", &m.mnt);
    // forgotten again: index space for every directory now
    drop_kernel_caches_and_forgets(&m.mnt);
    let calls = stat_u64(&m.mnt, "backing_metadata_calls");
    check(list_interleaved(&m), "index space");
    let again = stat_u64(&m.mnt, "backing_metadata_calls") - calls;
    assert!(
        again < 40,
        "the second pass read the backing's directories again: {again} backing calls"
    );
    assert!(stat_u64(&m.mnt, "open_requests") <= 1);
}
