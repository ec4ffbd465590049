//! Every operation of the FUSE layer, done through a real mount and on a plain
//! directory, must give the same data, attributes and errno.
//!
//! Each scenario writes what it observed into a log; the test runs it on the
//! mount and on a reference directory and compares the two logs line by line.

mod common;

use std::ffi::CString;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirEntryExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use common::{cpath, err_of, pattern, Mount};

type Log = Vec<String>;

fn errname(code: i32) -> String {
    match code {
        0 => "ok".into(),
        c => std::io::Error::from_raw_os_error(c).to_string(),
    }
}

/// What a scenario records about a path: type, permissions, size, links, owner.
fn stat_line(p: &Path) -> String {
    match fs::symlink_metadata(p) {
        Ok(m) => format!(
            "mode={:o} size={} nlink={} uid={} gid={} rdev={}",
            m.mode(),
            if m.is_dir() { 0 } else { m.size() },
            if m.is_dir() { 0 } else { m.nlink() },
            m.uid(),
            m.gid(),
            m.rdev()
        ),
        Err(e) => format!("stat error {}", errname(e.raw_os_error().unwrap_or(0))),
    }
}

fn io_err<T>(r: std::io::Result<T>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => errname(e.raw_os_error().unwrap_or(-1)),
    }
}

/// Runs `scenario` on a fresh mount (with `options`) and on a plain directory,
/// and asserts both logs are equal and non-trivial.
fn compare(options: &str, scenario: impl Fn(&Path, &mut Log)) {
    let mount = Mount::new(options);
    let reference = tempfile::tempdir().unwrap();
    let mut through_mount = Log::new();
    let mut direct = Log::new();
    scenario(&mount.mnt, &mut through_mount);
    scenario(reference.path(), &mut direct);
    assert!(!direct.is_empty());
    for (i, (a, b)) in through_mount.iter().zip(direct.iter()).enumerate() {
        assert_eq!(a, b, "step {i} differs (mount vs plain directory)");
    }
    assert_eq!(through_mount.len(), direct.len());
}

#[test]
fn lookup_getattr_and_readdir() {
    require_fuse!();
    compare("", |root, log| {
        fs::create_dir(root.join("d")).unwrap();
        for i in 0..1500 {
            fs::write(root.join(format!("d/file-{i:04}")), format!("{i}")).unwrap();
        }
        fs::create_dir(root.join("d/sub")).unwrap();
        std::os::unix::fs::symlink("file-0001", root.join("d/link")).unwrap();
        // readdir through many reply buffers (offsets must continue correctly)
        let mut names: Vec<String> = fs::read_dir(root.join("d"))
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let t = e.file_type().unwrap();
                format!(
                    "{} dir={} link={}",
                    e.file_name().to_string_lossy(),
                    t.is_dir(),
                    t.is_symlink()
                )
            })
            .collect();
        names.sort();
        log.push(format!("{} entries", names.len()));
        log.extend(names);
        // "." and ".." are listed by the raw getdents stream
        let dots = raw_dir_names(&root.join("d/sub"));
        log.push(format!("sub: {dots:?}"));
        log.push(stat_line(&root.join("d/file-0042")));
        log.push(stat_line(&root.join("d/link")));
        log.push(stat_line(&root.join("d/missing")));
        log.push(io_err(fs::read_dir(root.join("d/file-0001"))));
        log.push(io_err(fs::read(root.join("d/file-0001/x"))));
        // ino of a dirent equals st_ino of the same entry
        let entry_ino = fs::read_dir(root.join("d"))
            .unwrap()
            .map(|e| e.unwrap())
            .find(|e| e.file_name() == "file-0007")
            .unwrap()
            .ino();
        let st_ino = fs::metadata(root.join("d/file-0007")).unwrap().ino();
        log.push(format!("dirent ino matches stat: {}", entry_ino == st_ino));
    });
}

fn raw_dir_names(dir: &Path) -> Vec<String> {
    let c = cpath(dir);
    let mut names = Vec::new();
    // SAFETY: `c` outlives the stream; `d` is checked non-null and closed once after the loop; each
    // non-null dirent is read (its NUL-terminated d_name copied out) before the next readdir.
    unsafe {
        let d = libc::opendir(c.as_ptr());
        assert!(!d.is_null());
        loop {
            let e = libc::readdir(d);
            if e.is_null() {
                break;
            }
            names.push(
                std::ffi::CStr::from_ptr((*e).d_name.as_ptr())
                    .to_string_lossy()
                    .into_owned(),
            );
        }
        libc::closedir(d);
    }
    names.sort();
    names
}

#[test]
fn setattr_chmod_chown_truncate_utimens() {
    require_fuse!();
    compare("", |root, log| {
        let f = root.join("f");
        fs::write(&f, pattern(10000, 1)).unwrap();
        fs::set_permissions(&f, fs::Permissions::from_mode(0o640)).unwrap();
        log.push(stat_line(&f));
        std::os::unix::fs::chown(&f, Some(1234), Some(5678)).unwrap();
        log.push(stat_line(&f));
        std::os::unix::fs::lchown(&f, None, Some(42)).unwrap();
        log.push(stat_line(&f));
        // truncate by path, down and up
        let c = cpath(&f);
        log.push(errname(err_of(
            // SAFETY: `c` is a NUL-terminated CString that outlives the call.
            unsafe { libc::truncate(c.as_ptr(), 3000) } as i64,
        )));
        log.push(format!(
            "{:?}",
            fs::read(&f).unwrap() == pattern(10000, 1)[..3000]
        ));
        log.push(errname(err_of(
            // SAFETY: as above.
            unsafe { libc::truncate(c.as_ptr(), 5000) } as i64,
        )));
        let data = fs::read(&f).unwrap();
        log.push(format!(
            "len={} tail_zero={}",
            data.len(),
            data[3000..].iter().all(|&b| b == 0)
        ));
        // truncate through an open handle
        let file = fs::OpenOptions::new().write(true).open(&f).unwrap();
        file.set_len(10).unwrap();
        log.push(stat_line(&f));
        drop(file);
        // utimens: both set, then UTIME_OMIT for one, UTIME_NOW for the other
        let set = |a: libc::timespec, m: libc::timespec| {
            let t = [a, m];
            // SAFETY: `c` is a NUL-terminated CString; `t` holds the two timespecs utimensat reads.
            err_of(unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), t.as_ptr(), 0) } as i64)
        };
        let ts = |s, n| libc::timespec {
            tv_sec: s,
            tv_nsec: n,
        };
        log.push(errname(set(
            ts(1_000_000_000, 123_456_789),
            ts(1_100_000_000, 987_654_321),
        )));
        let m = fs::metadata(&f).unwrap();
        log.push(format!(
            "atime={}.{} mtime={}.{}",
            m.atime(),
            m.atime_nsec(),
            m.mtime(),
            m.mtime_nsec()
        ));
        log.push(errname(set(ts(0, libc::UTIME_OMIT), ts(1_200_000_000, 5))));
        let m = fs::metadata(&f).unwrap();
        log.push(format!(
            "touch -m keeps atime: atime={} mtime={}.{}",
            m.atime(),
            m.mtime(),
            m.mtime_nsec()
        ));
        log.push(errname(set(ts(1_300_000_000, 7), ts(0, libc::UTIME_OMIT))));
        let m = fs::metadata(&f).unwrap();
        log.push(format!(
            "touch -a keeps mtime: atime={}.{} mtime={}",
            m.atime(),
            m.atime_nsec(),
            m.mtime()
        ));
        let before = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        log.push(errname(set(ts(0, libc::UTIME_NOW), ts(0, libc::UTIME_NOW))));
        let m = fs::metadata(&f).unwrap();
        log.push(format!(
            "now: {}",
            m.mtime() >= before - 1 && m.mtime() <= before + 5
        ));
        // symlink times without following
        std::os::unix::fs::symlink("f", root.join("l")).unwrap();
        let l = cpath(&root.join("l"));
        let t = [ts(1_000, 0), ts(2_000, 0)];
        // SAFETY: `l` is a NUL-terminated CString; `t` holds the two timespecs utimensat reads.
        let r = unsafe {
            libc::utimensat(
                libc::AT_FDCWD,
                l.as_ptr(),
                t.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        log.push(errname(err_of(r as i64)));
        log.push(format!(
            "link mtime={}",
            fs::symlink_metadata(root.join("l")).unwrap().mtime()
        ));
        log.push(format!(
            "target mtime unchanged: {}",
            fs::metadata(&f).unwrap().mtime() != 2_000
        ));
        // errors
        log.push(io_err(fs::set_permissions(
            root.join("nope"),
            fs::Permissions::from_mode(0o600),
        )));
    });
}

#[test]
fn namespace_operations_and_their_errors() {
    require_fuse!();
    compare("", |root, log| {
        log.push(io_err(fs::create_dir(root.join("a"))));
        log.push(io_err(fs::create_dir(root.join("a"))));
        fs::set_permissions(root.join("a"), fs::Permissions::from_mode(0o751)).unwrap();
        log.push(stat_line(&root.join("a")));
        fs::write(root.join("a/x"), b"x").unwrap();
        log.push(io_err(fs::remove_dir(root.join("a"))));
        log.push(io_err(fs::remove_file(root.join("a/x"))));
        log.push(io_err(fs::remove_file(root.join("a/x"))));
        log.push(io_err(fs::remove_dir(root.join("a"))));
        log.push(io_err(fs::remove_file(root.join("."))));
        // rename: plain, over an existing file, NOREPLACE, EXCHANGE
        fs::write(root.join("one"), b"1").unwrap();
        fs::write(root.join("two"), b"22").unwrap();
        log.push(io_err(fs::rename(root.join("one"), root.join("uno"))));
        log.push(format!("{:?}", fs::read(root.join("uno")).ok()));
        log.push(stat_line(&root.join("one")));
        let rename2 = |a: &str, b: &str, flags: u32| {
            let (a, b) = (cpath(&root.join(a)), cpath(&root.join(b)));
            // SAFETY: `a` and `b` are NUL-terminated CStrings that outlive the call.
            let r = unsafe {
                libc::renameat2(
                    libc::AT_FDCWD,
                    a.as_ptr(),
                    libc::AT_FDCWD,
                    b.as_ptr(),
                    flags,
                )
            };
            errname(err_of(r as i64))
        };
        log.push(rename2("uno", "two", libc::RENAME_NOREPLACE));
        log.push(rename2("uno", "two", libc::RENAME_EXCHANGE));
        log.push(format!(
            "{:?} {:?}",
            fs::read(root.join("uno")).unwrap(),
            fs::read(root.join("two")).unwrap()
        ));
        log.push(rename2("uno", "three", libc::RENAME_EXCHANGE));
        log.push(rename2("uno", "two", 0));
        log.push(format!("{:?}", fs::read(root.join("two")).unwrap()));
        fs::create_dir_all(root.join("p/q")).unwrap();
        fs::write(root.join("p/q/f"), b"f").unwrap();
        log.push(io_err(fs::rename(root.join("p/q"), root.join("moved"))));
        log.push(format!("{:?}", fs::read(root.join("moved/f")).ok()));
        fs::create_dir(root.join("full")).unwrap();
        fs::write(root.join("full/x"), b"").unwrap();
        log.push(io_err(fs::rename(root.join("moved"), root.join("full"))));
        // hard links: one inode, both names see the same data
        fs::write(root.join("h1"), b"first").unwrap();
        log.push(io_err(fs::hard_link(root.join("h1"), root.join("h2"))));
        log.push(io_err(fs::hard_link(root.join("h1"), root.join("h2"))));
        fs::write(root.join("h2"), b"second version").unwrap();
        log.push(format!(
            "{:?}",
            String::from_utf8(fs::read(root.join("h1")).unwrap())
        ));
        log.push(stat_line(&root.join("h1")));
        let same = fs::metadata(root.join("h1")).unwrap().ino()
            == fs::metadata(root.join("h2")).unwrap().ino();
        log.push(format!("same inode {same}"));
        fs::remove_file(root.join("h2")).unwrap();
        log.push(stat_line(&root.join("h1")));
        // symlinks
        log.push(io_err(std::os::unix::fs::symlink("h1", root.join("s"))));
        log.push(io_err(std::os::unix::fs::symlink("x", root.join("s"))));
        log.push(format!("{:?}", fs::read_link(root.join("s")).ok()));
        log.push(format!("{:?}", fs::read(root.join("s")).ok()));
        std::os::unix::fs::symlink("dangling", root.join("dl")).unwrap();
        log.push(io_err(fs::read(root.join("dl"))));
        log.push(io_err(fs::read_link(root.join("h1"))));
        // mknod: fifo, socket, character device
        let mk = |name: &str, mode: u32, dev: u64| {
            let c = cpath(&root.join(name));
            // SAFETY: `c` is a NUL-terminated CString that outlives the call.
            errname(err_of(unsafe { libc::mknod(c.as_ptr(), mode, dev) } as i64))
        };
        log.push(mk("fifo", libc::S_IFIFO | 0o644, 0));
        log.push(stat_line(&root.join("fifo")));
        log.push(mk("sock", libc::S_IFSOCK | 0o600, 0));
        log.push(stat_line(&root.join("sock")));
        log.push(mk("null", libc::S_IFCHR | 0o666, libc::makedev(1, 3)));
        log.push(stat_line(&root.join("null")));
        log.push(mk("fifo", libc::S_IFIFO | 0o644, 0));
        // long names
        log.push(io_err(fs::write(root.join("n".repeat(256)), b"")));
    });
}

#[test]
fn open_flags_read_write() {
    require_fuse!();
    compare("", |root, log| {
        let f = root.join("f");
        let data = pattern(3 << 20, 7);
        fs::write(&f, &data).unwrap();
        log.push(format!("read back equal {}", fs::read(&f).unwrap() == data));
        // O_APPEND writes land at the end, also with a second non-append writer
        let mut app = fs::OpenOptions::new().append(true).open(&f).unwrap();
        app.write_all(b"tail").unwrap();
        let other = fs::OpenOptions::new().write(true).open(&f).unwrap();
        other.write_all_at(b"HEAD", 0).unwrap();
        app.write_all(b"more").unwrap();
        drop((app, other));
        let now = fs::read(&f).unwrap();
        log.push(format!(
            "len {} head {:?} end {:?}",
            now.len(),
            &now[..4],
            &now[now.len() - 8..]
        ));
        // O_TRUNC
        drop(
            fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(&f)
                .unwrap(),
        );
        log.push(stat_line(&f));
        // O_EXCL
        log.push(io_err(
            fs::OpenOptions::new().write(true).create_new(true).open(&f),
        ));
        log.push(io_err(
            fs::OpenOptions::new().read(true).open(root.join("none")),
        ));
        // create with mode (umask of this process applies on both sides)
        let c = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(root.join("new"))
            .unwrap();
        drop(c);
        log.push(stat_line(&root.join("new")));
        // pwrite at offsets, sparse gaps read back as zeros
        let mut g = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(root.join("g"))
            .unwrap();
        g.write_all_at(b"abc", 1 << 20).unwrap();
        g.write_all_at(b"xyz", 10).unwrap();
        let mut back = Vec::new();
        g.seek(SeekFrom::Start(0)).unwrap();
        g.read_to_end(&mut back).unwrap();
        log.push(format!(
            "len {} sum {}",
            back.len(),
            back.iter().map(|&b| b as u64).sum::<u64>()
        ));
        // O_DIRECT: aligned I/O through the mount
        let mut buf = AlignedBuf::new(8192);
        buf.as_mut().copy_from_slice(&pattern(8192, 3));
        let d = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .custom_flags(libc::O_DIRECT)
            .open(root.join("direct"));
        match d {
            Ok(d) => {
                // SAFETY: `buf` is a live 4096-aligned buffer of 8192 bytes; `d` keeps the
                // descriptor open.
                let n = unsafe { libc::pwrite(d.as_raw_fd(), buf.ptr().cast(), 8192, 4096) };
                log.push(format!("direct write {n}"));
                let mut rb = AlignedBuf::new(8192);
                // SAFETY: `rb` is a live, exclusively borrowed, 4096-aligned buffer of 8192 bytes.
                let n = unsafe { libc::pread(d.as_raw_fd(), rb.ptr().cast(), 8192, 4096) };
                log.push(format!(
                    "direct read {n} equal {}",
                    rb.as_mut() == &pattern(8192, 3)[..]
                ));
            }
            Err(e) => log.push(format!("O_DIRECT open: {e}")),
        }
        // O_NOFOLLOW: fine on a file, ELOOP on a symlink
        std::os::unix::fs::symlink("g", root.join("to-g")).unwrap();
        let nofollow = |p: &Path| {
            io_err(
                fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(p),
            )
        };
        log.push(format!(
            "nofollow file {} link {}",
            nofollow(&root.join("g")),
            nofollow(&root.join("to-g"))
        ));
        // write to a directory, read a directory
        log.push(io_err(fs::write(root, b"x")));
        log.push(io_err(fs::OpenOptions::new().write(true).open(root)));
        // fsync, fdatasync, and fsync of a directory
        let g2 = fs::File::open(root.join("g")).unwrap();
        log.push(io_err(g2.sync_all()));
        log.push(io_err(g2.sync_data()));
        let dir = fs::File::open(root).unwrap();
        log.push(io_err(dir.sync_all()));
    });
}

struct AlignedBuf {
    ptr: *mut u8,
    len: usize,
}

impl AlignedBuf {
    fn new(len: usize) -> AlignedBuf {
        let layout = std::alloc::Layout::from_size_align(len, 4096).unwrap();
        // SAFETY: every caller asks for a non-zero length (8192), so the layout is not
        // zero-sized.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        assert!(!ptr.is_null());
        AlignedBuf { ptr, len }
    }
    fn ptr(&mut self) -> *mut u8 {
        self.ptr
    }
    fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: `new` checked `ptr` non-null; it holds `len` zeroed bytes until drop, borrowed
        // through `&mut self`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        let layout = std::alloc::Layout::from_size_align(self.len, 4096).unwrap();
        // SAFETY: `ptr` came from alloc_zeroed with this same layout, and is freed only here.
        unsafe { std::alloc::dealloc(self.ptr, layout) };
    }
}

#[test]
fn xattrs_statfs_access() {
    require_fuse!();
    // statfs: the mount reports the backing filesystem's numbers
    let mount = Mount::new("");
    let sv = |p: &Path| {
        // SAFETY: statvfs is plain old data (integers only); all-zero is a valid value.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: the path CString lives to the end of the statement; `st` is a valid out pointer.
        assert_eq!(unsafe { libc::statvfs(cpath(p).as_ptr(), &mut st) }, 0);
        st
    };
    let (a, b) = (sv(&mount.mnt), sv(&mount.backing));
    assert_eq!(
        (a.f_blocks, a.f_bsize, a.f_files, a.f_namemax),
        (b.f_blocks, b.f_bsize, b.f_files, b.f_namemax)
    );
    drop(mount);

    compare("", |root, log| {
        let f = root.join("f");
        fs::write(&f, b"data").unwrap();
        let c = cpath(&f);
        let set = |name: &str, val: &[u8], flags: i32| {
            let n = CString::new(name).unwrap();
            // SAFETY: `c` and `n` are NUL-terminated CStrings; setxattr reads `val.len()` bytes of
            // `val`.
            let r = unsafe {
                libc::setxattr(
                    c.as_ptr(),
                    n.as_ptr(),
                    val.as_ptr().cast(),
                    val.len(),
                    flags,
                )
            };
            errname(err_of(r as i64))
        };
        let get = |name: &str| {
            let n = CString::new(name).unwrap();
            let mut buf = [0u8; 256];
            // SAFETY: size 0 with a null buffer only asks for the value's size.
            let size = unsafe { libc::getxattr(c.as_ptr(), n.as_ptr(), std::ptr::null_mut(), 0) };
            // SAFETY: getxattr writes at most `buf.len()` bytes into `buf`.
            let r = unsafe {
                libc::getxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
            };
            if r < 0 {
                errname(err_of(-1))
            } else {
                format!(
                    "size={size} {:?}",
                    String::from_utf8_lossy(&buf[..r as usize])
                )
            }
        };
        log.push(set("user.color", b"blue", 0));
        log.push(set("user.color", b"red", libc::XATTR_CREATE));
        log.push(set("user.shape", b"round", libc::XATTR_REPLACE));
        log.push(set("user.shape", b"square", 0));
        log.push(get("user.color"));
        log.push(get("user.missing"));
        let n = CString::new("user.color").unwrap();
        let mut tiny = [0u8; 2];
        // SAFETY: getxattr writes at most 2 bytes into `tiny`, which has 2.
        let r = unsafe { libc::getxattr(c.as_ptr(), n.as_ptr(), tiny.as_mut_ptr().cast(), 2) };
        log.push(format!("too small: {}", errname(err_of(r as i64))));
        let mut list = [0u8; 256];
        // SAFETY: `c` is a NUL-terminated CString; listxattr writes at most `list.len()` bytes into
        // `list`.
        let r = unsafe { libc::listxattr(c.as_ptr(), list.as_mut_ptr().cast(), list.len()) };
        let mut names: Vec<String> = list[..r.max(0) as usize]
            .split(|&b| b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .filter(|s| s.starts_with("user."))
            .collect();
        names.sort();
        log.push(format!("{names:?}"));
        // SAFETY: `c` and `n` are NUL-terminated CStrings that outlive the call.
        let r = unsafe { libc::removexattr(c.as_ptr(), n.as_ptr()) };
        log.push(errname(err_of(r as i64)));
        // SAFETY: as above.
        let r = unsafe { libc::removexattr(c.as_ptr(), n.as_ptr()) };
        log.push(errname(err_of(r as i64)));
        // access(2): root passes R/W everywhere, X only where some x bit is set
        fs::set_permissions(&f, fs::Permissions::from_mode(0o644)).unwrap();
        for mask in [libc::F_OK, libc::R_OK, libc::W_OK, libc::X_OK] {
            log.push(format!(
                "access {mask}: {}",
                // SAFETY: `c` is a NUL-terminated CString that outlives the call.
                errname(err_of(unsafe { libc::access(c.as_ptr(), mask) } as i64))
            ));
        }
        fs::set_permissions(&f, fs::Permissions::from_mode(0o700)).unwrap();
        log.push(format!(
            "x: {}",
            errname(err_of(
                // SAFETY: as above.
                unsafe { libc::access(c.as_ptr(), libc::X_OK) } as i64
            ))
        ));
        let missing = cpath(&root.join("missing"));
        log.push(errname(err_of(
            // SAFETY: `missing` is a NUL-terminated CString that outlives the call.
            unsafe { libc::access(missing.as_ptr(), libc::F_OK) } as i64,
        )));
    });
}

#[test]
fn fallocate_lseek_copy_file_range_locks() {
    require_fuse!();
    compare("", |root, log| {
        let f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(root.join("f"))
            .unwrap();
        let fd = f.as_raw_fd();
        // allocate 4 MiB, then punch a hole in the middle
        // SAFETY: fallocate takes plain integers; `f` keeps `fd` open.
        let r = unsafe { libc::fallocate(fd, 0, 0, 4 << 20) };
        log.push(format!("fallocate {}", errname(err_of(r as i64))));
        let m = f.metadata().unwrap();
        log.push(format!(
            "size {} allocated>=4MiB {}",
            m.size(),
            m.blocks() * 512 >= 4 << 20
        ));
        f.write_all_at(&pattern(4 << 20, 9), 0).unwrap();
        // SAFETY: as above.
        let r = unsafe {
            libc::fallocate(
                fd,
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                1 << 20,
                2 << 20,
            )
        };
        log.push(format!("punch {}", errname(err_of(r as i64))));
        let m = f.metadata().unwrap();
        log.push(format!(
            "size {} blocks-dropped {}",
            m.size(),
            m.blocks() * 512 <= (2 << 20) + 65536
        ));
        let mut mid = vec![1u8; 4096];
        f.read_exact_at(&mut mid, 2 << 20).unwrap();
        log.push(format!("hole reads zero {}", mid.iter().all(|&b| b == 0)));
        // SEEK_DATA / SEEK_HOLE
        let seek = |off: i64, whence: i32| {
            // SAFETY: lseek takes plain integers; `f` keeps `fd` open.
            let r = unsafe { libc::lseek(fd, off, whence) };
            if r < 0 {
                errname(err_of(-1))
            } else {
                r.to_string()
            }
        };
        log.push(format!("hole from 0: {}", seek(0, libc::SEEK_HOLE)));
        log.push(format!("data from 1M: {}", seek(1 << 20, libc::SEEK_DATA)));
        log.push(format!("data past end: {}", seek(5 << 20, libc::SEEK_DATA)));
        log.push(format!(
            "set: {} end: {}",
            seek(100, libc::SEEK_SET),
            seek(0, libc::SEEK_END)
        ));
        // copy_file_range within the mount
        let g = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(root.join("g"))
            .unwrap();
        let mut off_in: i64 = 3 << 20;
        let mut off_out: i64 = 100;
        // SAFETY: `f` and `g` keep both descriptors open; the offsets are valid, exclusively
        // borrowed out pointers.
        let n = unsafe {
            libc::copy_file_range(fd, &mut off_in, g.as_raw_fd(), &mut off_out, 65536, 0)
        };
        log.push(format!("copied {n} to {off_out}"));
        let mut back = vec![0u8; 65536];
        g.read_exact_at(&mut back, 100).unwrap();
        log.push(format!(
            "copy equal {}",
            back == pattern(4 << 20, 9)[3 << 20..(3 << 20) + 65536]
        ));
        // flock: a second open file description conflicts
        let f2 = fs::File::open(root.join("f")).unwrap();
        // SAFETY: flock takes plain integers; `f` keeps `fd` open.
        let r1 = unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) };
        // SAFETY: as above; `f2` keeps its descriptor open.
        let r2 = unsafe { libc::flock(f2.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        log.push(format!(
            "flock {} then {}",
            errname(err_of(r1 as i64)),
            errname(err_of(r2 as i64))
        ));
        // SAFETY: as above.
        unsafe { libc::flock(fd, libc::LOCK_UN) };
        // POSIX (OFD) record locks conflict between descriptions too
        let lk = |fd: i32, start: i64| {
            // SAFETY: flock (the struct) is plain old data; all-zero is a valid value.
            let mut fl: libc::flock = unsafe { std::mem::zeroed() };
            fl.l_type = libc::F_WRLCK as i16;
            fl.l_whence = libc::SEEK_SET as i16;
            fl.l_start = start;
            fl.l_len = 10;
            errname(err_of(
                // SAFETY: `fl` is a valid, initialised struct flock that F_OFD_SETLK only reads.
                unsafe { libc::fcntl(fd, libc::F_OFD_SETLK, &fl) } as i64,
            ))
        };
        log.push(format!(
            "ofd {} {} {}",
            lk(fd, 0),
            lk(f2.as_raw_fd(), 5),
            lk(f2.as_raw_fd(), 100)
        ));
    });
}

#[test]
fn open_file_survives_rename_and_unlink_in_the_backing() {
    require_fuse!();
    // Zero TTLs: the name is re-resolved at once after it changes in the backing.
    let mount = Mount::new("entry_timeout=0,attr_timeout=0");
    fs::write(mount.b("doc"), pattern(100_000, 5)).unwrap();
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(mount.m("doc"))
        .unwrap();
    // rename behind the mount's back
    fs::create_dir(mount.b("elsewhere")).unwrap();
    fs::rename(mount.b("doc"), mount.b("elsewhere/renamed")).unwrap();
    let mut buf = vec![0u8; 1000];
    f.read_exact_at(&mut buf, 5000).unwrap();
    assert!(buf == pattern(100_000, 5)[5000..6000]);
    f.write_all_at(b"written after rename", 0).unwrap();
    f.sync_all().unwrap();
    assert_eq!(
        &fs::read(mount.b("elsewhere/renamed")).unwrap()[..20],
        b"written after rename"
    );
    assert!(fs::read(mount.m("elsewhere/renamed"))
        .unwrap()
        .starts_with(b"written after rename"));
    // unlink behind the mount's back: the descriptor keeps working, nlink is 0
    fs::remove_file(mount.b("elsewhere/renamed")).unwrap();
    f.write_all_at(b"still here", 50_000).unwrap();
    f.seek(SeekFrom::Start(50_000)).unwrap();
    let mut back = [0u8; 10];
    f.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"still here");
    assert_eq!(f.metadata().unwrap().nlink(), 0);
    assert_eq!(f.metadata().unwrap().size(), 100_000);
    // a new file under the old name is a different inode with its own data
    fs::write(mount.b("elsewhere/renamed"), b"new").unwrap();
    assert_eq!(fs::read(mount.m("elsewhere/renamed")).unwrap(), b"new");
    f.read_exact_at(&mut back, 50_000).unwrap();
    assert_eq!(&back, b"still here");
}

#[test]
fn unlinked_open_file_through_the_mount_reports_nlink_zero() {
    require_fuse!();
    let mount = Mount::new("");
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(mount.m("tmp"))
        .unwrap();
    f.write_all_at(b"abc", 0).unwrap();
    fs::remove_file(mount.m("tmp")).unwrap();
    assert_eq!(f.metadata().unwrap().nlink(), 0);
    let mut b = [0u8; 3];
    f.read_exact_at(&mut b, 0).unwrap();
    assert_eq!(&b, b"abc");
    // no .fuse_hidden files appear
    let names: Vec<_> = fs::read_dir(&mount.backing).unwrap().collect();
    assert!(names.is_empty(), "{names:?}");
}

#[test]
fn errors_exdev_enospc_across_filesystems_inside_the_backing() {
    require_fuse!();
    let mount = Mount::new("");
    let small = mount.b("small");
    fs::create_dir(&small).unwrap();
    let st = common::sh(
        &format!("mount -t tmpfs -o size=1m tmpfs '{}'", small.display()),
        Path::new("/"),
    );
    assert_eq!(st.0, 0, "mount tmpfs: {}", st.2);
    struct Umount(std::path::PathBuf);
    impl Drop for Umount {
        fn drop(&mut self) {
            common::umount_lazy(&self.0);
        }
    }
    let _g = Umount(small.clone());
    fs::write(mount.m("top"), b"t").unwrap();
    // rename across filesystems: EXDEV, as on the backing
    let e = fs::rename(mount.m("top"), mount.m("small/top")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EXDEV));
    // a full filesystem: ENOSPC
    let mut f = fs::File::create(mount.m("small/big")).unwrap();
    let chunk = vec![7u8; 1 << 16];
    let err = loop {
        if let Err(e) = f.write_all(&chunk) {
            break e;
        }
    };
    let err = f.sync_all().err().unwrap_or(err);
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    // inodes of the inner filesystem get distinct numbers from the outer one
    fs::write(mount.m("small/x"), b"").ok();
    let inner = fs::metadata(mount.m("small")).unwrap();
    let outer = fs::metadata(&mount.mnt).unwrap();
    assert_ne!(inner.ino(), outer.ino());
    drop(f);
}
