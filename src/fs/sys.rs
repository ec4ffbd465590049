//! Thin, safe wrappers around the `*at` syscalls the passthrough needs (and the few
//! descriptor and xattr calls that have no `*at` form): Rust types in, `io::Result` out,
//! errno unchanged. Each `unsafe` block says why it is sound.
//!
//! Every backing inode is reached through an `O_PATH` descriptor; operations that
//! cannot take an `O_PATH` descriptor directly go through its `/proc/self/fd/N`
//! magic link, as libfuse's passthrough_hp does. Nothing here locks; everything
//! here may block on the backing filesystem. Built with the `fault-injection` feature, `open`,
//! `open_at`, `open_path_at`, `fsync` and `fdatasync` first ask the test seam
//! (`crate::backing_faults`) whether to fail; otherwise the hook is an empty inline function.
//!
//! Bounded backing calls (`crate::offline`; run on a helper thread with the calling
//! thread's caller identity, abandoned past `backing_timeout`, refused while offline):
//! `open_path_at` (lookup), `open` and `open_at` without `O_CREAT`/`O_TRUNC` (open,
//! opendir), `fstatat`, `fstat_path`, `readlinkat`, `open_by_handle` (reopen of an evicted
//! inode), `fstatvfs`. Calls that change the backing are not bounded (an abandoned one could
//! land later); offline, `fs` refuses them before they are made.

use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{FileAttr, FileType, INodeNo};

pub use crate::sys::{cvt, cvt_size, pread_full, pwrite_full};
use crate::sys::{fault_fd, fault_name, FaultOp};

/// A name from the kernel as a C string; names never contain NUL, but if one did
/// it would be EINVAL, not a panic.
pub fn cstr(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// `/proc/self/fd/N`: reopens or addresses what an `O_PATH` descriptor points at.
pub fn proc_path(fd: RawFd) -> CString {
    CString::new(format!("/proc/self/fd/{fd}")).expect("no NUL in a formatted number")
}

/// Metadata syscalls made on the backing for requests (lookups, stats, readlink, xattr
/// reads, directory opens, reopens by handle): `stats` shows it as `backing_metadata_calls`, so a test can
/// prove a cached tree is served without any. The exclusive mode's sweep is not counted
/// here (it has its own figure).
pub static BACKING_META_CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// FLUSH requests served (`stats`: `flush_requests`); a read-only open gets none
/// (FOPEN_NOFLUSH).
pub static FLUSH_REQUESTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// OPEN and OPENDIR requests that reached the daemon (`stats`: `open_requests`); in
/// exclusive mode the first of each is answered ENOSYS and the kernel sends no more
/// (`no_open`, `no_opendir`).
pub static OPEN_REQUESTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Backing descriptors held for files the kernel opened without an OPEN (`stats`:
/// `implicit_handles`).
pub static IMPLICIT_HANDLES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

thread_local! {
    static UNCOUNTED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` without counting its calls in [`BACKING_META_CALLS`] (statfs: about the
/// filesystem, not the tree's metadata).
pub fn uncounted<T>(f: impl FnOnce() -> T) -> T {
    UNCOUNTED.with(|u| u.set(true));
    let out = f();
    UNCOUNTED.with(|u| u.set(false));
    out
}

/// When a request last made a counted backing metadata call, in nanoseconds since
/// [`call_epoch`] (0: never): exclusive mode's sweep waits for a quiet moment by it.
static LAST_REQUEST_CALL_NS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn call_epoch() -> std::time::Instant {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(std::time::Instant::now)
}

/// Counts one backing metadata syscall (see [`BACKING_META_CALLS`]).
pub fn count_meta_call() {
    if UNCOUNTED.with(|u| u.get()) {
        return;
    }
    BACKING_META_CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let now = call_epoch().elapsed().as_nanos() as u64;
    LAST_REQUEST_CALL_NS.store(now.max(1), std::sync::atomic::Ordering::Relaxed);
}

/// How long since a request last made a backing metadata call (None: none has).
pub fn since_last_request_call() -> Option<std::time::Duration> {
    let at = LAST_REQUEST_CALL_NS.load(std::sync::atomic::Ordering::Relaxed);
    (at != 0).then(|| {
        let now = call_epoch().elapsed().as_nanos() as u64;
        std::time::Duration::from_nanos(now.saturating_sub(at))
    })
}

/// `syncfs(fd)`: everything of the filesystem `fd` is on reaches its storage.
pub fn syncfs(fd: RawFd) -> io::Result<()> {
    // SAFETY: syncfs takes a descriptor and touches no memory of ours.
    cvt(unsafe { libc::syncfs(fd) }).map(drop)
}

/// Runs the backing call `f` bounded (`crate::offline::call`), on a helper switched to this
/// thread's caller identity (`creds::current`).
fn bounded<T: Send + 'static>(
    op: FaultOp,
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    let who = super::creds::current();
    crate::offline::call(op, move || {
        let _creds = match &who {
            Some(w) => Some(w.assume()?),
            None => None,
        };
        f()
    })
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)` (bounded).
pub fn fstatat(dir: RawFd, name: &CStr) -> io::Result<libc::stat> {
    count_meta_call();
    let name = name.to_owned();
    bounded(FaultOp::Getattr, move || fstatat_now(dir, &name))
}

fn fstatat_now(dir: RawFd, name: &CStr) -> io::Result<libc::stat> {
    // SAFETY: stat is plain old data (integers only); all-zero is a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `name` is NUL-terminated and borrowed for the call; `st` a valid out pointer.
    cvt(unsafe { libc::fstatat(dir, name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) })?;
    Ok(st)
}

/// Opens `name` in `dir` as an `O_PATH` handle, never following a final symlink (bounded).
pub fn open_path_at(dir: RawFd, name: &CString) -> io::Result<OwnedFd> {
    count_meta_call();
    let name = name.clone();
    bounded(FaultOp::Lookup, move || open_path_at_now(dir, &name))
}

fn open_path_at_now(dir: RawFd, name: &CString) -> io::Result<OwnedFd> {
    fault_name(FaultOp::Lookup, name)?;
    let flags = libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: `name` is a NUL-terminated string borrowed for the call.
    let fd = cvt(unsafe { libc::openat(dir, name.as_ptr(), flags) })?;
    // SAFETY: openat just returned this new descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `openat(dir, name, flags, mode)`; bounded unless it may create or truncate.
pub fn open_at(dir: RawFd, name: &CString, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    if flags & (libc::O_CREAT | libc::O_TRUNC) != 0 {
        return open_at_now(dir, name, flags, mode);
    }
    let name = name.clone();
    bounded(FaultOp::Open, move || open_at_now(dir, &name, flags, mode))
}

fn open_at_now(dir: RawFd, name: &CString, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    fault_name(FaultOp::Open, name)?;
    // SAFETY: `name` is a NUL-terminated string borrowed for the call; `mode` is passed
    // as the variadic argument openat reads when `flags` create a file.
    let fd = cvt(unsafe { libc::openat(dir, name.as_ptr(), flags | libc::O_CLOEXEC, mode) })?;
    // SAFETY: openat just returned this new descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `fstatat(fd, "", AT_EMPTY_PATH)`: works on `O_PATH` descriptors, needs no permission.
pub fn fstat_path(fd: RawFd) -> io::Result<libc::stat> {
    count_meta_call();
    crate::sys::fstat_fd(fd)
}

pub fn fstat(fd: &impl AsRawFd) -> io::Result<libc::stat> {
    fstat_path(fd.as_raw_fd())
}

/// `open(2)` of a path (a `/proc/self/fd/N` magic link, as the callers use it) with
/// exactly `flags` (no mode: never called with `O_CREAT`).
pub fn open(path: &CStr, flags: i32) -> io::Result<OwnedFd> {
    if flags & (libc::O_CREAT | libc::O_TRUNC) != 0 {
        return open_now(path, flags);
    }
    let path = path.to_owned();
    bounded(FaultOp::Open, move || open_now(&path, flags))
}

fn open_now(path: &CStr, flags: i32) -> io::Result<OwnedFd> {
    fault_name(FaultOp::Open, path)?;
    // SAFETY: `path` is a NUL-terminated string borrowed for the call.
    let fd = cvt(unsafe { libc::open(path.as_ptr(), flags) })?;
    // SAFETY: open just returned this new descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `dup(2)`: a second descriptor for the open file `fd` refers to.
pub fn dup(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: dup takes no pointers; an invalid `fd` is EBADF.
    let new = cvt(unsafe { libc::dup(fd) })?;
    // SAFETY: dup just returned this new descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// `close(2)`, reporting its error (which dropping an `OwnedFd` would discard).
pub fn close(fd: OwnedFd) -> io::Result<()> {
    // SAFETY: `into_raw_fd` gives up ownership, so this is the descriptor's only close.
    cvt(unsafe { libc::close(fd.into_raw_fd()) }).map(drop)
}

pub fn fsync(fd: RawFd) -> io::Result<()> {
    fault_fd(FaultOp::Fsync, fd)?;
    // SAFETY: fsync takes no pointers; an invalid `fd` is EBADF.
    cvt(unsafe { libc::fsync(fd) }).map(drop)
}

/// `fdatasync` when `datasync` (the kernel's FUSE_FSYNC_FDATASYNC), else `fsync`.
pub fn sync(fd: RawFd, datasync: bool) -> io::Result<()> {
    if datasync {
        fdatasync(fd)
    } else {
        fsync(fd)
    }
}

pub fn fdatasync(fd: RawFd) -> io::Result<()> {
    fault_fd(FaultOp::Fsync, fd)?;
    // SAFETY: fdatasync takes no pointers; an invalid `fd` is EBADF.
    cvt(unsafe { libc::fdatasync(fd) }).map(drop)
}

pub fn fchmod(fd: RawFd, mode: libc::mode_t) -> io::Result<()> {
    // SAFETY: fchmod takes no pointers; an invalid `fd` is EBADF.
    cvt(unsafe { libc::fchmod(fd, mode) }).map(drop)
}

pub fn chmod(path: &CStr, mode: libc::mode_t) -> io::Result<()> {
    // SAFETY: `path` is a NUL-terminated string borrowed for the call.
    cvt(unsafe { libc::chmod(path.as_ptr(), mode) }).map(drop)
}

pub fn fchownat(
    dir: RawFd,
    path: &CStr,
    uid: libc::uid_t,
    gid: libc::gid_t,
    flags: i32,
) -> io::Result<()> {
    // SAFETY: `path` is a NUL-terminated string borrowed for the call.
    cvt(unsafe { libc::fchownat(dir, path.as_ptr(), uid, gid, flags) }).map(drop)
}

pub fn ftruncate(fd: RawFd, size: libc::off_t) -> io::Result<()> {
    // SAFETY: ftruncate takes no pointers; an invalid `fd` is EBADF.
    cvt(unsafe { libc::ftruncate(fd, size) }).map(drop)
}

pub fn truncate(path: &CStr, size: libc::off_t) -> io::Result<()> {
    // SAFETY: `path` is a NUL-terminated string borrowed for the call.
    cvt(unsafe { libc::truncate(path.as_ptr(), size) }).map(drop)
}

/// `futimens`: `times` is [atime, mtime] (see [`timespec`]).
pub fn futimens(fd: RawFd, times: &[libc::timespec; 2]) -> io::Result<()> {
    // SAFETY: `times` points at the two timespecs the call reads, borrowed for the call.
    cvt(unsafe { libc::futimens(fd, times.as_ptr()) }).map(drop)
}

/// `utimensat`: `times` is [atime, mtime] (see [`timespec`]).
pub fn utimensat(
    dir: RawFd,
    path: &CStr,
    times: &[libc::timespec; 2],
    flags: i32,
) -> io::Result<()> {
    // SAFETY: `path` is NUL-terminated and `times` holds the two timespecs the call
    // reads; both are borrowed for the call.
    cvt(unsafe { libc::utimensat(dir, path.as_ptr(), times.as_ptr(), flags) }).map(drop)
}

/// `readlinkat` into `buf`; the length of the target (not NUL-terminated, possibly
/// truncated to `buf.len()`).
pub fn readlinkat(dir: RawFd, path: &CStr, buf: &mut [u8]) -> io::Result<usize> {
    count_meta_call();
    let (path, len) = (path.to_owned(), buf.len());
    let target = bounded(FaultOp::Getattr, move || {
        let mut v = vec![0u8; len];
        let n = readlinkat_now(dir, &path, &mut v)?;
        v.truncate(n);
        Ok(v)
    })?;
    buf[..target.len()].copy_from_slice(&target);
    Ok(target.len())
}

fn readlinkat_now(dir: RawFd, path: &CStr, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `path` is NUL-terminated; the kernel writes at most `buf.len()` bytes into
    // `buf`, which is exclusively borrowed for the call.
    cvt_size(unsafe { libc::readlinkat(dir, path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) })
}

pub fn mknodat(dir: RawFd, name: &CStr, mode: libc::mode_t, dev: libc::dev_t) -> io::Result<()> {
    // SAFETY: `name` is a NUL-terminated string borrowed for the call.
    cvt(unsafe { libc::mknodat(dir, name.as_ptr(), mode, dev) }).map(drop)
}

pub fn mkdirat(dir: RawFd, name: &CStr, mode: libc::mode_t) -> io::Result<()> {
    // SAFETY: `name` is a NUL-terminated string borrowed for the call.
    cvt(unsafe { libc::mkdirat(dir, name.as_ptr(), mode) }).map(drop)
}

pub fn unlinkat(dir: RawFd, name: &CStr, flags: i32) -> io::Result<()> {
    // SAFETY: `name` is a NUL-terminated string borrowed for the call.
    cvt(unsafe { libc::unlinkat(dir, name.as_ptr(), flags) }).map(drop)
}

pub fn symlinkat(target: &CStr, dir: RawFd, name: &CStr) -> io::Result<()> {
    // SAFETY: `target` and `name` are NUL-terminated strings borrowed for the call.
    cvt(unsafe { libc::symlinkat(target.as_ptr(), dir, name.as_ptr()) }).map(drop)
}

pub fn renameat2(
    old_dir: RawFd,
    old: &CStr,
    new_dir: RawFd,
    new: &CStr,
    flags: libc::c_uint,
) -> io::Result<()> {
    // SAFETY: `old` and `new` are NUL-terminated strings borrowed for the call.
    cvt(unsafe { libc::renameat2(old_dir, old.as_ptr(), new_dir, new.as_ptr(), flags) }).map(drop)
}

pub fn linkat(
    old_dir: RawFd,
    old: &CStr,
    new_dir: RawFd,
    new: &CStr,
    flags: i32,
) -> io::Result<()> {
    // SAFETY: `old` and `new` are NUL-terminated strings borrowed for the call.
    cvt(unsafe { libc::linkat(old_dir, old.as_ptr(), new_dir, new.as_ptr(), flags) }).map(drop)
}

/// `faccessat`: `mode` is `F_OK` or a mask of `R_OK`/`W_OK`/`X_OK`.
pub fn faccessat(dir: RawFd, path: &CStr, mode: i32, flags: i32) -> io::Result<()> {
    // SAFETY: `path` is a NUL-terminated string borrowed for the call.
    cvt(unsafe { libc::faccessat(dir, path.as_ptr(), mode, flags) }).map(drop)
}

pub fn fallocate(fd: RawFd, mode: i32, offset: libc::off_t, len: libc::off_t) -> io::Result<()> {
    // SAFETY: fallocate takes no pointers; an invalid `fd` is EBADF.
    cvt(unsafe { libc::fallocate(fd, mode, offset, len) }).map(drop)
}

/// `lseek`: the new offset (for `SEEK_DATA`/`SEEK_HOLE`, where the data or hole starts).
pub fn lseek(fd: RawFd, offset: libc::off_t, whence: i32) -> io::Result<libc::off_t> {
    // SAFETY: lseek takes no pointers; an invalid `fd` is EBADF.
    let pos = unsafe { libc::lseek(fd, offset, whence) };
    if pos < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(pos)
    }
}

/// `copy_file_range` with explicit offsets, which it advances by what it copied.
pub fn copy_file_range(
    fd_in: RawFd,
    off_in: &mut libc::off64_t,
    fd_out: RawFd,
    off_out: &mut libc::off64_t,
    len: usize,
    flags: libc::c_uint,
) -> io::Result<usize> {
    // SAFETY: `off_in` and `off_out` are exclusively borrowed offsets the kernel reads
    // and updates; no other memory is passed.
    cvt_size(unsafe { libc::copy_file_range(fd_in, off_in, fd_out, off_out, len, flags) as isize })
}

/// `fstatvfs`: the statistics of the filesystem `fd` is on (an `O_PATH` one works).
pub fn fstatvfs(fd: RawFd) -> io::Result<libc::statvfs> {
    bounded(FaultOp::Getattr, move || fstatvfs_now(fd))
}

fn fstatvfs_now(fd: RawFd) -> io::Result<libc::statvfs> {
    // SAFETY: statvfs is plain old data (integers only); all-zero is a valid value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid, exclusively borrowed out pointer.
    cvt(unsafe { libc::fstatvfs(fd, &mut st) })?;
    Ok(st)
}

pub fn setxattr(path: &CStr, name: &CStr, value: &[u8], flags: i32) -> io::Result<()> {
    // SAFETY: `path` and `name` are NUL-terminated; the kernel reads `value.len()` bytes
    // of `value`; all are borrowed for the call.
    cvt(unsafe {
        libc::setxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    })
    .map(drop)
}

/// A null pointer for an empty buffer: size 0 asks the xattr calls for the size needed.
fn xattr_buf(buf: &mut [u8]) -> *mut libc::c_void {
    if buf.is_empty() {
        std::ptr::null_mut()
    } else {
        buf.as_mut_ptr().cast()
    }
}

/// `getxattr` into `buf` (empty: the size the value needs); the value's length.
pub fn getxattr(path: &CStr, name: &CStr, buf: &mut [u8]) -> io::Result<usize> {
    count_meta_call();
    let len = buf.len();
    let ptr = xattr_buf(buf);
    // SAFETY: `path` and `name` are NUL-terminated; `ptr` is null with length 0, or
    // points at `buf`, exclusively borrowed, of which the kernel writes at most `len` bytes.
    cvt_size(unsafe { libc::getxattr(path.as_ptr(), name.as_ptr(), ptr, len) })
}

/// `listxattr` into `buf` (empty: the size the list needs); the list's length.
pub fn listxattr(path: &CStr, buf: &mut [u8]) -> io::Result<usize> {
    count_meta_call();
    let len = buf.len();
    let ptr = xattr_buf(buf);
    // SAFETY: `path` is NUL-terminated; `ptr` is null with length 0, or points at `buf`,
    // exclusively borrowed, of which the kernel writes at most `len` bytes.
    cvt_size(unsafe { libc::listxattr(path.as_ptr(), ptr.cast(), len) })
}

pub fn removexattr(path: &CStr, name: &CStr) -> io::Result<()> {
    // SAFETY: `path` and `name` are NUL-terminated strings borrowed for the call.
    cvt(unsafe { libc::removexattr(path.as_ptr(), name.as_ptr()) }).map(drop)
}

pub fn file_type(mode: libc::mode_t) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

/// `d_type` of a directory entry as a FUSE file type (DT_UNKNOWN reads as a file;
/// the kernel only uses it as a hint).
pub fn dirent_type(d_type: u8) -> FileType {
    match d_type {
        libc::DT_DIR => FileType::Directory,
        libc::DT_LNK => FileType::Symlink,
        libc::DT_FIFO => FileType::NamedPipe,
        libc::DT_SOCK => FileType::Socket,
        libc::DT_CHR => FileType::CharDevice,
        libc::DT_BLK => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

fn system_time(secs: i64, nsecs: i64) -> SystemTime {
    let nsecs = nsecs.clamp(0, 999_999_999) as u32;
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nsecs)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + Duration::from_nanos(nsecs.into())
    }
}

/// The backing's `stat` as FUSE attributes, reported under FUSE inode number `ino`.
pub fn attr_from_stat(st: &libc::stat, ino: u64) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: st.st_size as u64,
        blocks: st.st_blocks as u64,
        atime: system_time(st.st_atime, st.st_atime_nsec),
        mtime: system_time(st.st_mtime, st.st_mtime_nsec),
        ctime: system_time(st.st_ctime, st.st_ctime_nsec),
        crtime: UNIX_EPOCH,
        kind: file_type(st.st_mode),
        perm: (st.st_mode & 0o7777) as u16,
        nlink: st.st_nlink as u32,
        uid: st.st_uid,
        gid: st.st_gid,
        rdev: st.st_rdev as u32,
        blksize: st.st_blksize as u32,
        flags: 0,
    }
}

/// A `timespec` for utimensat: a set time, "now", or "leave alone".
pub fn timespec(t: Option<fuser::TimeOrNow>) -> libc::timespec {
    match t {
        None => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        Some(fuser::TimeOrNow::Now) => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        Some(fuser::TimeOrNow::SpecificTime(t)) => match t.duration_since(UNIX_EPOCH) {
            Ok(d) => libc::timespec {
                tv_sec: d.as_secs() as libc::time_t,
                tv_nsec: d.subsec_nanos() as libc::c_long,
            },
            Err(e) => {
                let d = e.duration();
                let mut sec = -(d.as_secs() as i64);
                let mut nsec = -(d.subsec_nanos() as i64);
                if nsec < 0 {
                    sec -= 1;
                    nsec += 1_000_000_000;
                }
                libc::timespec {
                    tv_sec: sec as libc::time_t,
                    tv_nsec: nsec as libc::c_long,
                }
            }
        },
    }
}

/// A backing file handle from `name_to_handle_at`: reaches an inode again without a
/// path or a descriptor (as NFS servers do), until the inode is deleted (`ESTALE`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackingHandle {
    pub handle_type: i32,
    pub bytes: Box<[u8]>,
}

const MAX_HANDLE: usize = libc::MAX_HANDLE_SZ as usize;

/// `struct file_handle` followed by room for the largest handle, suitably aligned.
#[repr(C, align(8))]
struct HandleBuf([u8; 8 + MAX_HANDLE]);

impl HandleBuf {
    fn header(&mut self) -> *mut libc::file_handle {
        self.0.as_mut_ptr().cast()
    }
}

/// `name_to_handle_at(fd, "", AT_EMPTY_PATH)`: the handle of what `fd` (any descriptor,
/// `O_PATH` included) refers to, and the id of the mount it is on.
pub fn name_to_handle(fd: RawFd) -> io::Result<(BackingHandle, i32)> {
    let mut buf = HandleBuf([0; 8 + MAX_HANDLE]);
    let fh = buf.header();
    // SAFETY: `fh` points at the start of `buf`, which is 8-aligned and large enough
    // for the header; nothing else references `buf`.
    unsafe { (*fh).handle_bytes = MAX_HANDLE as libc::c_uint };
    let mut mount_id: libc::c_int = 0;
    // SAFETY: `fd` is a descriptor (checked by the kernel), the empty path is a valid C
    // string, `fh` has `handle_bytes` bytes of room after its header, `mount_id` is a
    // valid out-pointer; the kernel writes no more than that.
    cvt(unsafe {
        libc::name_to_handle_at(fd, c"".as_ptr(), fh, &mut mount_id, libc::AT_EMPTY_PATH)
    })?;
    // SAFETY: the kernel filled in the header on success.
    let (len, handle_type) = unsafe { ((*fh).handle_bytes as usize, (*fh).handle_type) };
    let len = len.min(MAX_HANDLE);
    Ok((
        BackingHandle {
            handle_type,
            bytes: buf.0[8..8 + len].into(),
        },
        mount_id,
    ))
}

/// `open_by_handle_at`: reopens the inode `handle` names on the filesystem `mount_fd`
/// is on. Needs `CAP_DAC_READ_SEARCH`; `ESTALE` once the inode is gone.
pub fn open_by_handle(mount_fd: RawFd, handle: &BackingHandle, flags: i32) -> io::Result<OwnedFd> {
    let handle = handle.clone();
    bounded(FaultOp::Lookup, move || {
        open_by_handle_now(mount_fd, &handle, flags)
    })
}

fn open_by_handle_now(mount_fd: RawFd, handle: &BackingHandle, flags: i32) -> io::Result<OwnedFd> {
    let mut buf = HandleBuf([0; 8 + MAX_HANDLE]);
    let len = handle.bytes.len().min(MAX_HANDLE);
    buf.0[8..8 + len].copy_from_slice(&handle.bytes[..len]);
    let fh = buf.header();
    // SAFETY: as in `name_to_handle`: `fh` is the aligned header at the start of `buf`.
    unsafe {
        (*fh).handle_bytes = len as libc::c_uint;
        (*fh).handle_type = handle.handle_type;
    }
    // SAFETY: `fh` is a valid file_handle with `len` bytes of handle after it; the
    // kernel only reads it. The returned descriptor is new and owned by us.
    let fd = cvt(unsafe { libc::open_by_handle_at(mount_fd, fh, flags | libc::O_CLOEXEC) })?;
    // SAFETY: `fd` was just returned by the kernel and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The soft and hard `RLIMIT_NOFILE` of this process.
pub fn nofile_limit() -> (u64, u64) {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `rl` is a valid out-pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } != 0 {
        return (1024, 1024);
    }
    (rl.rlim_cur, rl.rlim_max)
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (as libfuse's passthrough_hp
/// does); returns (old soft, new soft).
pub fn raise_nofile_limit() -> io::Result<(u64, u64)> {
    let (soft, hard) = nofile_limit();
    if soft >= hard {
        return Ok((soft, soft));
    }
    let rl = libc::rlimit {
        rlim_cur: hard,
        rlim_max: hard,
    };
    // SAFETY: `rl` is a valid, initialised rlimit.
    cvt(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &rl) })?;
    Ok((soft, hard))
}

/// How many descriptors this process has open (entries of /proc/self/fd).
pub fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count().saturating_sub(1)) // the read_dir's own descriptor
        .unwrap_or(0)
}
