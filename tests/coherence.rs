//! No wrong byte: coherence and identity through a real mount with a cache. Each test
//! reproduces one way a cache in front of a home directory could serve stale or foreign
//! bytes (see docs/DESIGN.md, "change protocol" and "file identity"), and fails if it does.

mod common;

use std::fs;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{cpath, pattern, Mount};

/// A backing dir and cache path in a fresh temp dir.
fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
    common::backing_and_cache("bcl-coh")
}

const ATTR: &str = "attr_timeout=0.2,entry_timeout=0.2,metadata_ttl=0.2";

fn mount_cached(dir: tempfile::TempDir, backing: &Path, cache: &Path) -> Mount {
    let opts = format!(
        "cache={},cache_size=64M,sequential_cutoff=0,{ATTR}",
        cache.display()
    );
    Mount::over(dir, backing.to_path_buf(), &opts, &[])
}

/// Waits out one attribute timeout (and a margin for the watcher's pass).
fn one_attr_timeout() {
    std::thread::sleep(Duration::from_millis(450));
}

/// Drops the kernel's pages of one file (POSIX_FADV_DONTNEED on a fresh descriptor).
fn drop_pages(path: &Path) {
    let f = fs::File::open(path).unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
    // SAFETY: posix_fadvise takes plain integers; `f` keeps `fd` open.
    unsafe { libc::posix_fadvise(fd, 0, 0, libc::POSIX_FADV_DONTNEED) };
}

/// O_DIRECT read of `len` bytes at `offset` (aligned buffer).
fn pread_direct(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .unwrap();
    let layout = std::alloc::Layout::from_size_align(len, 4096).unwrap();
    // SAFETY: layout is non-zero sized; freed below.
    let p = unsafe { std::alloc::alloc_zeroed(layout) };
    assert!(!p.is_null());
    // SAFETY: `p` is a non-null, zeroed allocation of `len` bytes, used only through `buf` until it
    // is freed.
    let buf = unsafe { std::slice::from_raw_parts_mut(p, len) };
    let n = f.read_at(buf, offset).unwrap();
    let out = buf[..n].to_vec();
    // SAFETY: `p` was allocated above with `layout`; `buf` is not used after this.
    unsafe { std::alloc::dealloc(p, layout) };
    out
}

/// An O_DIRECT descriptor and an aligned buffer for it.
struct Direct {
    file: fs::File,
    buf: *mut u8,
    layout: std::alloc::Layout,
}

impl Direct {
    fn open(path: &Path, len: usize) -> Direct {
        let file = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
            .unwrap();
        let layout = std::alloc::Layout::from_size_align(len, 4096).unwrap();
        // SAFETY: non-zero size; freed in drop.
        let buf = unsafe { std::alloc::alloc_zeroed(layout) };
        Direct { file, buf, layout }
    }

    fn pread(&self, offset: u64, len: usize) -> Vec<u8> {
        assert!(len <= self.layout.size());
        // SAFETY: buf holds layout.size() bytes.
        let b = unsafe { std::slice::from_raw_parts_mut(self.buf, len) };
        let n = self.file.read_at(b, offset).unwrap();
        b[..n].to_vec()
    }
}

impl Drop for Direct {
    fn drop(&mut self) {
        // SAFETY: allocated in open with this layout.
        unsafe { std::alloc::dealloc(self.buf, self.layout) };
    }
}

#[test]
fn fallocate_in_every_mode_is_seen_through_the_cache() {
    require_fuse!();
    let (dir, backing, cache) = setup();
    let data = pattern(64 << 10, 7);
    fs::write(backing.join("f"), &data).unwrap();
    fs::write(backing.join("g"), &data[..4096]).unwrap();
    let m = mount_cached(dir, &backing, &cache);
    let f = m.m("f");
    // descriptors opened before the change, as a program that keeps its file open has
    let rw = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&f)
        .unwrap();
    let direct = Direct::open(&f, 64 << 10);
    assert_eq!(direct.pread(0, 64 << 10), data, "cold");
    assert_eq!(direct.pread(0, 64 << 10), data, "warm");
    let rw_fd = std::os::fd::AsRawFd::as_raw_fd(&rw);
    let falloc = |mode: i32, offset: i64, len: i64| {
        // SAFETY: fallocate takes plain integers; `rw` keeps `rw_fd` open while the closure lives.
        let r = unsafe { libc::fallocate(rw_fd, mode, offset, len) };
        assert_eq!(
            r,
            0,
            "fallocate mode {mode:#x}: {}",
            std::io::Error::last_os_error()
        );
    };

    // PUNCH_HOLE | KEEP_SIZE over cached blocks: zeros, buffered and O_DIRECT
    falloc(
        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
        8192,
        8192,
    );
    let mut want = data.clone();
    want[8192..16384].fill(0);
    assert_eq!(fs::read(m.b("f")).unwrap(), want, "backing after punch");
    assert_eq!(direct.pread(0, 64 << 10), want, "O_DIRECT read after punch");
    let mut buf = vec![0u8; 64 << 10];
    rw.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(buf, want, "buffered read after punch");

    // ZERO_RANGE over cached blocks
    assert_eq!(direct.pread(0, 64 << 10), want);
    falloc(libc::FALLOC_FL_ZERO_RANGE, 32768, 4096);
    want[32768..36864].fill(0);
    assert_eq!(
        direct.pread(0, 64 << 10),
        want,
        "O_DIRECT read after zero range"
    );
    rw.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(buf, want, "buffered read after zero range");

    // mode 0 growing a 4 KiB file to 16 KiB: the new size is served at once
    let g = m.m("g");
    let grw = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&g)
        .unwrap();
    let gdirect = Direct::open(&g, 16384);
    assert_eq!(gdirect.pread(0, 4096), data[..4096]);
    assert_eq!(gdirect.pread(0, 4096), data[..4096]);
    // SAFETY: fallocate takes plain integers; `grw` keeps the descriptor open.
    let r = unsafe { libc::fallocate(std::os::fd::AsRawFd::as_raw_fd(&grw), 0, 0, 16384) };
    assert_eq!(r, 0);
    let mut grown = data[..4096].to_vec();
    grown.resize(16384, 0);
    assert_eq!(
        gdirect.pread(0, 16384),
        grown,
        "O_DIRECT read after growing"
    );
    assert_eq!(
        gdirect.pread(8192, 8192),
        grown[8192..],
        "read past the old size"
    );
    assert_eq!(fs::read(&g).unwrap(), grown);
}

#[test]
fn a_change_through_the_mount_never_hides_an_earlier_outside_change() {
    require_fuse!();
    let (dir, backing, cache) = setup();
    let old = pattern(20000, 1);
    let new = pattern(20000, 2);
    // each way of changing a file through the mount, after an outside rewrite
    type Change = Box<dyn Fn(&Path)>;
    let changes: Vec<(&str, Change)> = vec![
        (
            "chmod",
            Box::new(|p: &Path| {
                use std::os::unix::fs::PermissionsExt;
                fs::set_permissions(p, fs::Permissions::from_mode(0o755)).unwrap()
            }),
        ),
        (
            "write through an open descriptor",
            Box::new(|p: &Path| {
                // the same bytes the outside change put there, written through the mount
                let f = fs::OpenOptions::new().write(true).open(p).unwrap();
                f.write_all_at(&pattern(20000, 2)[100..200], 100).unwrap();
            }),
        ),
        (
            "utimes",
            Box::new(|p: &Path| {
                let c = cpath(p);
                let times = [
                    libc::timespec {
                        tv_sec: 1000,
                        tv_nsec: 0,
                    },
                    libc::timespec {
                        tv_sec: 0,
                        tv_nsec: libc::UTIME_OMIT,
                    },
                ];
                assert_eq!(
                    // SAFETY: `c` is a NUL-terminated CString; `times` holds the two timespecs
                    // utimensat reads.
                    unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), 0) },
                    0
                );
            }),
        ),
        (
            "truncate to the same size",
            Box::new(|p: &Path| {
                let f = fs::OpenOptions::new().write(true).open(p).unwrap();
                f.set_len(20000).unwrap();
            }),
        ),
    ];
    for (i, _) in changes.iter().enumerate() {
        fs::write(backing.join(format!("f{i}")), &old).unwrap();
    }
    let m = mount_cached(dir, &backing, &cache);
    for (i, (what, change)) in changes.iter().enumerate() {
        let p = m.m(&format!("f{i}"));
        // the kernel and the cache hold the old bytes
        assert_eq!(fs::read(&p).unwrap(), old);
        // rewritten directly in the backing, same size
        fs::write(m.b(&format!("f{i}")), &new).unwrap();
        // a change through the mount before anyone looked
        change(&p);
        assert_eq!(
            fs::read(&p).unwrap(),
            new,
            "after an outside rewrite and a {what}"
        );
        drop_pages(&p);
        assert_eq!(fs::read(&p).unwrap(), new, "from the cache, after a {what}");
    }
}

#[test]
fn a_descriptor_opened_before_an_outside_change_reads_the_new_bytes() {
    require_fuse!();
    let (dir, backing, cache) = setup();
    let old = pattern(64 << 10, 3);
    let new = pattern(64 << 10, 4);
    for n in ["buffered", "direct", "mmap"] {
        fs::write(backing.join(n), &old).unwrap();
    }
    let m = mount_cached(dir, &backing, &cache);

    let buffered = fs::File::open(m.m("buffered")).unwrap();
    let mut buf = vec![0u8; old.len()];
    buffered.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(buf, old);

    let direct = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(m.m("direct"))
        .unwrap();
    assert_eq!(pread_direct(&m.m("direct"), 0, old.len()), old);

    let mapped = fs::File::open(m.m("mmap")).unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&mapped);
    // SAFETY: a private read-only mapping of a file we keep open; unmapped below.
    let map = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            old.len(),
            libc::PROT_READ,
            libc::MAP_SHARED,
            fd,
            0,
        )
    };
    assert_ne!(map, libc::MAP_FAILED);
    // SAFETY: `map` is a live mapping of `old.len()` readable bytes (unmapped at the end of this
    // test, after the last use of `view`); the file is that long.
    let view = unsafe { std::slice::from_raw_parts(map as *const u8, old.len()) };
    assert_eq!(view, &old[..]);

    for n in ["buffered", "direct", "mmap"] {
        // rewrite in place, same size (the inode stays the one the descriptors hold)
        let f = fs::OpenOptions::new().write(true).open(m.b(n)).unwrap();
        f.write_all_at(&new, 0).unwrap();
    }
    one_attr_timeout();
    one_attr_timeout();

    buffered.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(
        buf, new,
        "buffered read through a descriptor opened before the change"
    );

    let layout = std::alloc::Layout::from_size_align(old.len(), 4096).unwrap();
    // SAFETY: the layout is `old.len()` bytes, not zero; freed below with the same layout.
    let p = unsafe { std::alloc::alloc_zeroed(layout) };
    assert!(!p.is_null());
    // SAFETY: `p` is a non-null, zeroed allocation of `old.len()` bytes, used only through `abuf`
    // until it is freed.
    let abuf = unsafe { std::slice::from_raw_parts_mut(p, old.len()) };
    let n = direct.read_at(abuf, 0).unwrap();
    assert_eq!(
        &abuf[..n],
        &new[..],
        "O_DIRECT read through an old descriptor"
    );
    // SAFETY: `p` was allocated above with `layout`; `abuf` is not used after this.
    unsafe { std::alloc::dealloc(p, layout) };

    assert_eq!(
        view,
        &new[..],
        "mmap of a descriptor opened before the change"
    );
    // SAFETY: `map` is the mapping of `old.len()` bytes made above; `view` is not used after this.
    unsafe { libc::munmap(map, old.len()) };
}

/// Mounts a tmpfs at `at` (torn down by [`Submounts`]'s drop).
struct Submounts(Vec<PathBuf>);

impl Drop for Submounts {
    fn drop(&mut self) {
        for p in self.0.iter().rev() {
            let c = cpath(p);
            // SAFETY: `c` is a NUL-terminated CString that outlives the call.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

#[test]
fn files_on_filesystems_mounted_inside_the_backing_never_share_cached_bytes() {
    require_fuse!();
    let (dir, backing, cache) = setup();
    let mut subs = Submounts(Vec::new());
    const N: usize = 40;
    for i in 0..N {
        let d = backing.join(format!("d{i:02}"));
        fs::create_dir(&d).unwrap();
        let c = cpath(&d);
        // SAFETY: all four strings are NUL-terminated C strings (literals or `c`, which outlives
        // the call).
        let r = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                c.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                c"size=1m".as_ptr().cast(),
            )
        };
        assert_eq!(r, 0, "mount tmpfs: {}", std::io::Error::last_os_error());
        subs.0.push(d.clone());
    }
    // The first file on a fresh tmpfs: every one gets the same inode number. Written in a
    // tight loop, so that most also share size, mtime and ctime (one coarse clock tick):
    // nothing but a collision-free identity keeps their cached bytes apart.
    let contents: Vec<Vec<u8>> = (0..N).map(|i| pattern(8192, i as u64 + 100)).collect();
    for (i, c) in contents.iter().enumerate() {
        fs::write(backing.join(format!("d{i:02}/x")), c).unwrap();
    }
    let inos: std::collections::HashSet<u64> = (0..N)
        .map(|i| {
            use std::os::unix::fs::MetadataExt;
            fs::metadata(backing.join(format!("d{i:02}/x")))
                .unwrap()
                .ino()
        })
        .collect();
    assert!(
        inos.len() < N,
        "the test needs inode numbers shared across filesystems"
    );
    let m = mount_cached(dir, &backing, &cache);
    // every file's first read fills the cache; each later one must still get its own bytes
    for round in 0..2 {
        for i in 0..N {
            let p = m.m(&format!("d{i:02}/x"));
            drop_pages(&p);
            assert_eq!(
                fs::read(&p).unwrap(),
                pattern(8192, i as u64 + 100),
                "d{i:02}/x through the mount (round {round})"
            );
        }
    }
    // and after a remount, from the cache file's slot table
    let (status, dir) = m.unmount_keep();
    assert!(status.success());
    let m = mount_cached(dir, &backing, &cache);
    for i in (0..N).rev() {
        let p = m.m(&format!("d{i:02}/x"));
        assert_eq!(
            fs::read(&p).unwrap(),
            pattern(8192, i as u64 + 100),
            "d{i:02}/x after a remount"
        );
    }
    drop(m);
    drop(subs);
}

#[test]
fn overlapping_concurrent_writes_leave_the_cache_equal_to_the_backing() {
    require_fuse!();
    let (dir, backing, cache) = setup();
    fs::write(backing.join("f"), vec![0u8; 1 << 20]).unwrap();
    let m = mount_cached(dir, &backing, &cache);
    let path = m.m("f");
    for round in 0..30u64 {
        let threads: Vec<_> = (0..6u64)
            .map(|t| {
                let path = path.clone();
                std::thread::spawn(move || {
                    let f = fs::OpenOptions::new()
                        .write(true)
                        .custom_flags(libc::O_DIRECT)
                        .open(&path)
                        .unwrap();
                    let layout = std::alloc::Layout::from_size_align(16 << 10, 4096).unwrap();
                    // SAFETY: the layout is 16 KiB, not zero; freed below with the same layout.
                    let p = unsafe { std::alloc::alloc_zeroed(layout) };
                    assert!(!p.is_null());
                    // SAFETY: `p` is a non-null, zeroed allocation of 16 KiB, used only through
                    // `buf` until it is freed.
                    let buf = unsafe { std::slice::from_raw_parts_mut(p, 16 << 10) };
                    for k in 0..64u64 {
                        buf.copy_from_slice(&pattern(16 << 10, round * 1000 + t * 100 + k));
                        // every thread hits the same two overlapping ranges
                        let off = ((k + t) % 2) * (8 << 10);
                        f.write_all_at(buf, off).unwrap();
                    }
                    // SAFETY: `p` was allocated above with `layout`; `buf` is not used after this.
                    unsafe { std::alloc::dealloc(p, layout) };
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let truth = fs::read(m.b("f")).unwrap();
        assert_eq!(
            pread_direct(&path, 0, 64 << 10),
            truth[..64 << 10],
            "round {round}: the cache serves bytes the backing does not hold"
        );
    }
}

#[test]
fn an_append_after_an_outside_growth_lands_at_the_real_end() {
    require_fuse!();
    let (dir, backing, cache) = setup();
    fs::write(backing.join("log"), b"first\n").unwrap();
    let m = mount_cached(dir, &backing, &cache);
    let log = fs::OpenOptions::new()
        .append(true)
        .open(m.m("log"))
        .unwrap();
    use std::io::Write;
    (&log).write_all(b"mount 1\n").unwrap();
    // another machine appends to the shared file
    let mut outside = fs::OpenOptions::new()
        .append(true)
        .open(m.b("log"))
        .unwrap();
    outside
        .write_all(b"outside, a longer line than ours\n")
        .unwrap();
    drop(outside);
    one_attr_timeout();
    // no stat first: the kernel's idea of the size is stale
    (&log).write_all(b"mount 2\n").unwrap();
    assert_eq!(
        fs::read_to_string(m.b("log")).unwrap(),
        "first\nmount 1\noutside, a longer line than ours\nmount 2\n",
        "an O_APPEND write through the mount overwrote the outside append"
    );
}

#[test]
fn a_rename_or_link_through_the_mount_keeps_the_cached_data() {
    require_fuse!();
    let (dir, backing, cache) = setup();
    let data = common::pattern(256 << 10, 60);
    fs::write(backing.join("index"), &data).unwrap();
    let m = mount_cached(dir, &backing, &cache);
    assert!(fs::read(m.m("index")).unwrap() == data);
    common::settle_fills(&m.mnt);
    let before = common::stat_u64(&m.mnt, "invalidations");
    // git's way: the new version written beside, renamed over; here the cached file itself
    // is renamed and linked, which moves its ctime and nothing else
    fs::rename(m.m("index"), m.m("index.renamed")).unwrap();
    fs::hard_link(m.m("index.renamed"), m.m("index.link")).unwrap();
    fs::write("/proc/sys/vm/drop_caches", "3").unwrap();
    assert!(fs::read(m.m("index.link")).unwrap() == data);
    assert_eq!(
        common::stat_u64(&m.mnt, "invalidations") - before,
        0,
        "our own rename or link was taken for an outside change (the cached data dropped)"
    );
    // an outside change of the same file is still one
    one_attr_timeout();
    let mut f = fs::OpenOptions::new()
        .write(true)
        .open(backing.join("index.renamed"))
        .unwrap();
    std::io::Write::write_all(&mut f, b"outside").unwrap();
    drop(f);
    one_attr_timeout();
    let got = fs::read(m.m("index.link")).unwrap();
    assert_eq!(&got[..7], b"outside", "the outside write after the rename");
    assert!(got[7..] == data[7..]);
}
