//! Raw syscalls that more than one layer needs, below everything (the request path in
//! `cache/` and the FUSE adapter in `fs/` both use them). Each `unsafe` block says why it
//! is sound. Nothing here locks; everything here may block on the filesystem it calls.
//! In a `fault-injection` build `fstat_fd`, `pread_full`, `pwrite_full` and `append_full` ask
//! the test seam (`crate::backing_faults`) first ([`FaultOp`] names the calls); its rules match
//! descriptor paths, so tests name backing files (the cache file's I/O goes through
//! `device::FileDevice` and has its own seam, `device::FaultyDevice`).
//! `fstat_fd` and `pread_full` are bounded backing calls (`crate::offline::call`: on a
//! helper thread, abandoned past `backing_timeout`; refused while offline).

use std::io;
use std::os::fd::RawFd;

/// A backing call the test seam (`backing_faults`, feature `fault-injection`) can fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultOp {
    Read,
    Write,
    Fsync,
    Open,
    Getattr,
    Lookup,
    Readdir,
}

impl FaultOp {
    /// The name a control-file line uses.
    pub fn name(self) -> &'static str {
        match self {
            FaultOp::Read => "read",
            FaultOp::Write => "write",
            FaultOp::Fsync => "fsync",
            FaultOp::Open => "open",
            FaultOp::Getattr => "getattr",
            FaultOp::Lookup => "lookup",
            FaultOp::Readdir => "readdir",
        }
    }
}

#[cfg(any(test, feature = "fault-injection"))]
pub use crate::backing_faults::{fault_fd, fault_name};

/// The backing fault hook: compiled out without the `fault-injection` feature.
#[cfg(not(any(test, feature = "fault-injection")))]
#[inline(always)]
pub fn fault_fd(_op: FaultOp, _fd: RawFd) -> io::Result<()> {
    Ok(())
}

/// The backing fault hook for a name: compiled out without the `fault-injection` feature.
#[cfg(not(any(test, feature = "fault-injection")))]
#[inline(always)]
pub fn fault_name(_op: FaultOp, _name: &std::ffi::CStr) -> io::Result<()> {
    Ok(())
}

/// `-1` → the thread's errno.
pub fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// A negative size → the thread's errno.
pub fn cvt_size(ret: isize) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

/// `fstatat(fd, "", AT_EMPTY_PATH)`: works on `O_PATH` descriptors and open files alike,
/// needs no permission. A bounded backing call (`crate::offline`).
pub fn fstat_fd(fd: RawFd) -> io::Result<libc::stat> {
    crate::offline::call(FaultOp::Getattr, move || fstat_fd_now(fd))
}

/// [`fstat_fd`] on this thread, unbounded.
fn fstat_fd_now(fd: RawFd) -> io::Result<libc::stat> {
    fault_fd(FaultOp::Getattr, fd)?;
    // SAFETY: stat is plain old data; all-zero is a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    let flags = libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW;
    // SAFETY: the path is a NUL-terminated literal and `st` a valid out pointer.
    cvt(unsafe { libc::fstatat(fd, c"".as_ptr(), &mut st, flags) })?;
    Ok(st)
}

/// Repeats `op(done)` (one syscall moving bytes from offset `done` of the buffer; its
/// return value) until `len` bytes have moved, retrying `EINTR`. A 0 return is end of file
/// for reads (`eof_ends`) and `EIO` for writes; an error after some progress ends the loop
/// with what was moved (the caller sees a short count, as from the syscall itself).
fn io_loop(
    len: usize,
    eof_ends: bool,
    what: &str,
    mut op: impl FnMut(usize) -> isize,
) -> io::Result<usize> {
    let mut done = 0;
    while done < len {
        match cvt_size(op(done)) {
            Ok(0) if eof_ends => break,
            Ok(0) => return Err(io::Error::from_raw_os_error(libc::EIO)),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if done > 0 => {
                tracing::debug!("short {what} after {done} bytes: {e}");
                break;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// pread that fills as much of `buf` as the file has, retrying short reads. A bounded
/// backing call (`crate::offline`): on a helper it reads into its own buffer, copied into
/// `buf` when it answers in time (an abandoned read writes into memory nobody waits for).
pub fn pread_full(fd: RawFd, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    if !crate::offline::bounds_calls() {
        return crate::offline::call_inline(FaultOp::Read, || pread_full_now(fd, buf, offset));
    }
    let len = buf.len();
    let data = crate::offline::call(FaultOp::Read, move || {
        let mut v = vec![0u8; len];
        let n = pread_full_now(fd, &mut v, offset)?;
        v.truncate(n);
        Ok(v)
    })?;
    buf[..data.len()].copy_from_slice(&data);
    Ok(data.len())
}

/// [`pread_full`] on this thread, unbounded.
fn pread_full_now(fd: RawFd, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    fault_fd(FaultOp::Read, fd)?;
    let len = buf.len();
    io_loop(len, true, "read", |done| {
        let rest = &mut buf[done..];
        let off = (offset + done as u64) as libc::off_t;
        // SAFETY: `rest` is valid writable memory of `rest.len()` bytes.
        unsafe { libc::pread(fd, rest.as_mut_ptr().cast(), rest.len(), off) }
    })
}

/// pwrite of all of `buf`, retrying short writes.
pub fn pwrite_full(fd: RawFd, buf: &[u8], offset: u64) -> io::Result<usize> {
    fault_fd(FaultOp::Write, fd)?;
    io_loop(buf.len(), false, "write", |done| {
        let rest = &buf[done..];
        let off = (offset + done as u64) as libc::off_t;
        // SAFETY: `rest` is valid readable memory of `rest.len()` bytes.
        unsafe { libc::pwrite(fd, rest.as_ptr().cast(), rest.len(), off) }
    })
}

/// Appends all of `buf` at the file's end, atomically per call as `O_APPEND` would
/// (`pwritev2` with `RWF_APPEND`), on a descriptor opened without `O_APPEND`.
pub fn append_full(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    fault_fd(FaultOp::Write, fd)?;
    io_loop(buf.len(), false, "append", |done| {
        let rest = &buf[done..];
        let iov = libc::iovec {
            iov_base: rest.as_ptr() as *mut libc::c_void,
            iov_len: rest.len(),
        };
        // SAFETY: one iovec over `rest`, valid readable memory; offset -1 with RWF_APPEND
        // writes at the end of the file.
        unsafe { libc::pwritev2(fd, &iov, 1, -1, libc::RWF_APPEND) }
    })
}

/// The uid of the process at the other end of a connected Unix socket (`SO_PEERCRED`:
/// the kernel's record of who connected, which the peer cannot forge).
pub fn peer_uid(fd: RawFd) -> io::Result<libc::uid_t> {
    // SAFETY: ucred is plain old data; all-zero is a valid value.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid out pointers and `len` is the size of `cred`.
    cvt(unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    })?;
    Ok(cred.uid)
}

/// The effective uid of this process.
pub fn euid() -> libc::uid_t {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// `ftruncate` of a backing file (writeback grows the backing synchronously).
pub fn ftruncate_fd(fd: RawFd, size: u64) -> io::Result<()> {
    fault_fd(FaultOp::Write, fd)?;
    let size =
        libc::off_t::try_from(size).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
    // SAFETY: ftruncate takes no pointers; an invalid `fd` is EBADF.
    cvt(unsafe { libc::ftruncate(fd, size) }).map(drop)
}

/// `futimens(fd, [atime omitted, mtime])`: `mtime_ns` None sets it to now.
pub fn set_mtime_fd(fd: RawFd, mtime_ns: Option<i64>) -> io::Result<()> {
    let mtime = match mtime_ns {
        None => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        Some(ns) => libc::timespec {
            tv_sec: ns.div_euclid(1_000_000_000) as libc::time_t,
            tv_nsec: ns.rem_euclid(1_000_000_000) as libc::c_long,
        },
    };
    let times = [
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        mtime,
    ];
    // SAFETY: `times` points at the two timespecs the call reads, borrowed for the call.
    cvt(unsafe { libc::futimens(fd, times.as_ptr()) }).map(drop)
}

/// `fsync` of a backing file (writeback makes a range clean only after it).
pub fn fsync_fd(fd: RawFd) -> io::Result<()> {
    fault_fd(FaultOp::Fsync, fd)?;
    // SAFETY: fsync takes no pointers; an invalid `fd` is EBADF.
    cvt(unsafe { libc::fsync(fd) }).map(drop)
}
