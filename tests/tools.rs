//! Real tools through a real mount: git, tar (symlinks, hard links) and cp -a
//! (modes, times, xattrs) must behave exactly as on a plain directory.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use common::{cpath, sh_ok, Mount};

#[test]
fn git_init_add_commit_status() {
    require_fuse!();
    let mount = Mount::new("");
    let repo = mount.m("repo");
    fs::create_dir(&repo).unwrap();
    sh_ok(
        "git init -q -b main . && git config user.email t@example.com && git config user.name T",
        &repo,
    );
    for i in 0..200 {
        let dir = repo.join(format!("src/mod{}", i % 10));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(format!("f{i}.rs")), format!("fn f{i}() {{}}\n")).unwrap();
    }
    std::os::unix::fs::symlink("src/mod1", repo.join("link")).unwrap();
    sh_ok("git add -A && git commit -q -m initial", &repo);
    assert_eq!(sh_ok("git status --porcelain", &repo), "");
    fs::write(repo.join("src/mod3/f3.rs"), "changed\n").unwrap();
    fs::write(repo.join("new.txt"), "new\n").unwrap();
    let status = sh_ok("git status --porcelain", &repo);
    assert_eq!(status, " M src/mod3/f3.rs\n?? new.txt\n");
    sh_ok(
        "git add -A && git commit -q -m second && git gc -q && git fsck --strict",
        &repo,
    );
    assert_eq!(sh_ok("git rev-list --count HEAD", &repo), "2\n");
    assert_eq!(sh_ok("git status --porcelain", &repo), "");
    // the repository is intact seen from the backing too
    sh_ok(
        "git fsck --strict && git status --porcelain",
        &mount.b("repo"),
    );
}

/// A tree with modes, times, symlinks, hard links and an empty directory.
fn make_tree(root: &Path) {
    sh_ok(
        "mkdir -p a/b/c empty && echo one > a/one && echo two > a/b/two && \
         head -c 300000 /dev/urandom > a/b/c/big && chmod 751 a/b && chmod 600 a/one && \
         chmod 4755 a/b/two && ln -s ../one a/b/rel && ln -s /etc/hostname abs && \
         ln a/one a/b/c/hard && mkfifo a/pipe && \
         touch -d '2001-02-03 04:05:06.123456789' a/one a/b/c/big && \
         touch -h -d '2002-01-01' a/b/rel && touch -d '2003-01-01' a/b/c a empty",
        root,
    );
}

/// Everything `find` can say about a tree except atimes and inode numbers, plus
/// file checksums, in a stable order.
fn describe(root: &Path) -> String {
    sh_ok(
        "find . -printf '%p %y %m %s %n %U %G %T@ %l\\n' | grep -v '^\\. ' | sort && \
         find . -type f -exec md5sum {} + | sort",
        root,
    )
}

#[test]
fn tar_extract_and_recreate_with_links() {
    require_fuse!();
    let mount = Mount::new("");
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    fs::create_dir(&src).unwrap();
    make_tree(&src);
    let a_tar = work.path().join("a.tar");
    // POSIX (pax) format keeps nanosecond times.
    sh_ok(
        &format!(
            "tar --format=posix -C {} -cf {} .",
            src.display(),
            a_tar.display()
        ),
        work.path(),
    );
    let dest = mount.m("x");
    fs::create_dir(&dest).unwrap();
    sh_ok(
        &format!("tar -C {} -xpf {}", dest.display(), a_tar.display()),
        work.path(),
    );
    assert_eq!(describe(&dest), describe(&src));
    // hard links are one inode through the mount
    let one = fs::metadata(dest.join("a/one")).unwrap();
    let hard = fs::metadata(dest.join("a/b/c/hard")).unwrap();
    assert_eq!((one.ino(), one.nlink()), (hard.ino(), 2));
    // re-create from the mount: same archive listing, and it extracts identically
    let b_tar = work.path().join("b.tar");
    sh_ok(
        &format!(
            "tar --format=posix -C {} -cf {} .",
            dest.display(),
            b_tar.display()
        ),
        work.path(),
    );
    let list = |t: &Path| sh_ok(&format!("tar -tvf {} | sort", t.display()), work.path());
    assert_eq!(list(&b_tar), list(&a_tar));
    assert!(
        list(&b_tar).contains("link to ./a/one") || list(&b_tar).contains("link to ./a/b/c/hard")
    );
    let back = work.path().join("back");
    fs::create_dir(&back).unwrap();
    sh_ok(
        &format!("tar -C {} -xpf {}", back.display(), b_tar.display()),
        work.path(),
    );
    assert_eq!(describe(&back), describe(&src));
}

fn set_xattr(p: &Path, name: &str, value: &[u8]) {
    let n = std::ffi::CString::new(name).unwrap();
    let c = cpath(p);
    // SAFETY: `c` and `n` are NUL-terminated CStrings; lsetxattr reads `value.len()` bytes of
    // `value`.
    let r = unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(
        r,
        0,
        "setxattr {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
}

fn get_xattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    let n = std::ffi::CString::new(name).unwrap();
    let c = cpath(p);
    let mut buf = vec![0u8; 1024];
    // SAFETY: `c` and `n` are NUL-terminated CStrings; getxattr writes at most `buf.len()` bytes
    // into `buf`.
    let r = unsafe { libc::getxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (r >= 0).then(|| {
        buf.truncate(r as usize);
        buf
    })
}

#[test]
fn cp_a_preserves_modes_times_links_and_xattrs() {
    require_fuse!();
    let mount = Mount::new("");
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    fs::create_dir(&src).unwrap();
    make_tree(&src);
    set_xattr(&src.join("a/one"), "user.origin", b"plain dir");
    set_xattr(&src.join("a/b"), "user.dir", b"on a directory");
    sh_ok(
        &format!("cp -a {} {}", src.display(), mount.m("copy").display()),
        work.path(),
    );
    assert_eq!(describe(&mount.m("copy")), describe(&src));
    assert_eq!(
        get_xattr(&mount.m("copy/a/one"), "user.origin").as_deref(),
        Some(&b"plain dir"[..])
    );
    assert_eq!(
        get_xattr(&mount.b("copy/a/b"), "user.dir").as_deref(),
        Some(&b"on a directory"[..])
    );
    // and back out of the mount
    let back = work.path().join("back");
    sh_ok(
        &format!("cp -a {} {}", mount.m("copy").display(), back.display()),
        work.path(),
    );
    assert_eq!(describe(&back), describe(&src));
    assert_eq!(
        get_xattr(&back.join("a/one"), "user.origin").as_deref(),
        Some(&b"plain dir"[..])
    );
}
