//! Thin, safe wrappers around the `*at` syscalls the passthrough needs.
//!
//! Every backing inode is reached through an `O_PATH` descriptor; operations that
//! cannot take an `O_PATH` descriptor directly go through its `/proc/self/fd/N`
//! magic link, as libfuse's passthrough_hp does. Nothing here locks; everything
//! here may block on the backing filesystem.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{FileAttr, FileType, INodeNo};

pub use crate::sys::{cvt, cvt_size, pread_full, pwrite_full};

/// A name from the kernel as a C string; names never contain NUL, but if one did
/// it would be EINVAL, not a panic.
pub fn cstr(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// `/proc/self/fd/N`: reopens or addresses what an `O_PATH` descriptor points at.
pub fn proc_path(fd: RawFd) -> CString {
    CString::new(format!("/proc/self/fd/{fd}")).expect("no NUL in a formatted number")
}

/// Opens `name` in `dir` as an `O_PATH` handle, never following a final symlink.
pub fn open_path_at(dir: RawFd, name: &CString) -> io::Result<OwnedFd> {
    let flags = libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    let fd = cvt(unsafe { libc::openat(dir, name.as_ptr(), flags) })?;
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub fn open_at(dir: RawFd, name: &CString, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    let fd = cvt(unsafe { libc::openat(dir, name.as_ptr(), flags | libc::O_CLOEXEC, mode) })?;
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `fstatat(fd, "", AT_EMPTY_PATH)`: works on `O_PATH` descriptors, needs no permission.
pub fn fstat_path(fd: RawFd) -> io::Result<libc::stat> {
    crate::sys::fstat_fd(fd)
}

pub fn fstat(fd: &impl AsRawFd) -> io::Result<libc::stat> {
    fstat_path(fd.as_raw_fd())
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
