//! The backing fault seam (tests only): makes chosen backing syscalls fail with a chosen
//! errno, so tests can prove that EIO, ENOSPC, EDQUOT, ESTALE, ENOTCONN... from the backing
//! reach the caller unchanged and never poison the cache or leave a key for data that was
//! not read. Built only under `cfg(test)` and the `fault-injection` feature (which the
//! integration tests enable through the crate's dev-dependency on itself, so the daemon
//! binary they run has it); a release build has no hook and no cost.
//!
//! Model: when the daemon starts with `BCL_BACKING_FAULTS=PATH`, every hooked backing call
//! reads the control file PATH (absent or empty: no fault). Each line is
//! `OP ERRNO SUBSTRING`: OP is one of `read write fsync open getattr lookup readdir` (or `*`),
//! ERRNO a name (`EIO`, `ENOSPC`, `EDQUOT`, `ESTALE`, `ENOTCONN`, ...) or a number, and the
//! call fails with ERRNO, before touching the backing, when its target contains SUBSTRING
//! (ERRNO `HANG`: the call blocks for as long as the line is in the file, then goes on,
//! as a dead network share that comes back; offline mode's tests use it):
//! the path of the descriptor (`/proc/self/fd/N`) for descriptor calls, the name for
//! `lookup` and for `open` of a new name. Hooked: `sys::pread_full` (read), `pwrite_full`
//! and `append_full` (write), `fs::sys::{fsync, fdatasync}` (fsync), `fs::sys::{open,
//! open_at}` (open), `sys::fstat_fd` (getattr), `fs::sys::open_path_at` (lookup), and the
//! directory stream's `readdir` (readdir). The cache file never goes through these.
//!
//! Invariants: a hook never changes the backing; with no control file it is a no-op.
//! Locks: none. What may block: reading the control file.

use std::ffi::CStr;
use std::io;
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::OnceLock;

pub use crate::sys::FaultOp;

fn control() -> Option<&'static PathBuf> {
    static PATH: OnceLock<Option<PathBuf>> = OnceLock::new();
    PATH.get_or_init(|| std::env::var_os("BCL_BACKING_FAULTS").map(PathBuf::from))
        .as_ref()
}

/// An errno by name or number.
pub fn parse_errno(s: &str) -> Option<i32> {
    if let Ok(n) = s.parse() {
        return Some(n);
    }
    Some(match s {
        "EIO" => libc::EIO,
        "ENOSPC" => libc::ENOSPC,
        "EDQUOT" => libc::EDQUOT,
        "ESTALE" => libc::ESTALE,
        "ENOTCONN" => libc::ENOTCONN,
        "EACCES" => libc::EACCES,
        "EPERM" => libc::EPERM,
        "EROFS" => libc::EROFS,
        "EFBIG" => libc::EFBIG,
        "ENOENT" => libc::ENOENT,
        "ETIMEDOUT" => libc::ETIMEDOUT,
        "EHOSTDOWN" => libc::EHOSTDOWN,
        "ENETUNREACH" => libc::ENETUNREACH,
        _ => return None,
    })
}

/// What a control-file line asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Errno(i32),
    /// `HANG`: the call blocks while the line is there, then goes on (as a dead network
    /// share that comes back).
    Hang,
}

/// The fault the control file asks for `op` on `target`, if any.
fn fault_for(op: FaultOp, target: &[u8]) -> Option<Fault> {
    let text = std::fs::read_to_string(control()?).ok()?;
    text.lines().find_map(|line| {
        let mut f = line.split_whitespace();
        let (o, e, sub) = (f.next()?, f.next()?, f.next()?);
        if o != "*" && o != op.name() {
            return None;
        }
        let hit = target
            .windows(sub.len().max(1))
            .any(|w| w == sub.as_bytes());
        if !hit {
            None
        } else if e == "HANG" {
            Some(Fault::Hang)
        } else {
            parse_errno(e).map(Fault::Errno)
        }
    })
}

/// Applies the fault for `op` on `target`: an error, or a hang while the line stays.
fn apply(op: FaultOp, target: &[u8]) -> io::Result<()> {
    loop {
        match fault_for(op, target) {
            None => return Ok(()),
            Some(Fault::Errno(e)) => return Err(io::Error::from_raw_os_error(e)),
            Some(Fault::Hang) => std::thread::sleep(std::time::Duration::from_millis(20)),
        }
    }
}

/// The hook for a call on descriptor `fd`.
pub fn fault_fd(op: FaultOp, fd: RawFd) -> io::Result<()> {
    if control().is_none() {
        return Ok(());
    }
    let Ok(path) = std::fs::read_link(format!("/proc/self/fd/{fd}")) else {
        return Ok(());
    };
    apply(op, path.as_os_str().as_bytes())
}

/// The hook for a call on a name (`lookup`, `open` of a new name, or a `/proc/self/fd/N`
/// path, which is resolved first).
pub fn fault_name(op: FaultOp, name: &CStr) -> io::Result<()> {
    if control().is_none() {
        return Ok(());
    }
    let bytes = name.to_bytes();
    let resolved;
    let target = if bytes.starts_with(b"/proc/self/fd/") {
        match std::fs::read_link(std::ffi::OsStr::from_bytes(bytes)) {
            Ok(p) => {
                resolved = p;
                resolved.as_os_str().as_bytes()
            }
            Err(_) => bytes,
        }
    } else {
        bytes
    };
    apply(op, target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_names_and_numbers() {
        assert_eq!(parse_errno("ESTALE"), Some(libc::ESTALE));
        assert_eq!(parse_errno("5"), Some(5));
        assert_eq!(parse_errno("EBOGUS"), None);
        assert_eq!(FaultOp::Readdir.name(), "readdir");
    }
}
