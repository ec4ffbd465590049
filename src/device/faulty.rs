//! A fault-injecting [`CacheDevice`] for tests (redb's crash backend): fails, tears or
//! freezes the Nth mutating operation. Built only under `cfg(test)` and the
//! `fault-injection` feature (which the integration tests enable through the crate's
//! dev-dependency on itself). Locks: the fault plan's own small mutex, never across I/O.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use super::CacheDevice;

/// What a [`FaultyDevice`] does when its fault triggers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// The triggering operation and every later mutating operation fail with `EIO`;
    /// nothing of the triggering write reaches the file.
    Fail,
    /// The triggering write stores only its first `keep` bytes and fails with `EIO`;
    /// every later mutating operation fails.
    TearAndFail { keep: usize },
    /// A transient error: only the triggering operation fails (a write stores its first `keep`
    /// bytes first); later operations succeed. Catches code that ignores an error and goes on.
    FailOnce { keep: usize },
    /// Power loss: the triggering write stores only its first `keep` bytes but reports success,
    /// and every later mutating operation (write, sync, punch) is silently dropped while
    /// reporting success. `keep: 0` drops the triggering write entirely.
    TearAndFreeze { keep: usize },
}

/// A device wrapper that injects one fault at mutating operation number `at_op` (0-based,
/// counting `pwrite`, `fdatasync` and `punch_hole`). Reads always pass through.
pub struct FaultyDevice<D> {
    inner: D,
    ops: AtomicU64,
    plan: Mutex<Option<(u64, FaultKind)>>,
}

impl<D: CacheDevice> FaultyDevice<D> {
    /// A wrapper with no fault armed.
    pub fn new(inner: D) -> Self {
        FaultyDevice {
            inner,
            ops: AtomicU64::new(0),
            plan: Mutex::new(None),
        }
    }

    /// Arm a fault at mutating operation `at_op` (counted from the device's creation).
    pub fn arm(&self, at_op: u64, kind: FaultKind) {
        *self.plan.lock() = Some((at_op, kind));
    }

    /// Remove any armed fault (operations after a triggered fault keep failing/dropping only
    /// while the plan is armed).
    pub fn disarm(&self) {
        *self.plan.lock() = None;
    }

    /// Number of mutating operations issued so far.
    pub fn ops(&self) -> u64 {
        self.ops.load(Ordering::SeqCst)
    }

    /// The wrapped device.
    pub fn inner(&self) -> &D {
        &self.inner
    }

    /// Decide the fate of one mutating operation: `None` = pass through, or the fault.
    fn fate(&self) -> Option<(bool, FaultKind)> {
        let n = self.ops.fetch_add(1, Ordering::SeqCst);
        let plan = *self.plan.lock();
        match plan {
            Some((at, kind)) if n >= at => Some((n == at, kind)),
            _ => None,
        }
    }
}

fn eio() -> io::Error {
    io::Error::from_raw_os_error(libc::EIO)
}

impl<D: CacheDevice> CacheDevice for FaultyDevice<D> {
    fn pread(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        self.inner.pread(buf, off)
    }

    fn pwrite(&self, buf: &[u8], off: u64) -> io::Result<()> {
        match self.fate() {
            None => self.inner.pwrite(buf, off),
            Some((_, FaultKind::Fail)) => Err(eio()),
            Some((first, FaultKind::TearAndFail { keep })) => {
                if first && keep > 0 {
                    self.inner.pwrite(&buf[..keep.min(buf.len())], off)?;
                }
                Err(eio())
            }
            Some((first, FaultKind::TearAndFreeze { keep })) => {
                if first && keep > 0 {
                    self.inner.pwrite(&buf[..keep.min(buf.len())], off)?;
                }
                Ok(())
            }
            Some((false, FaultKind::FailOnce { .. })) => self.inner.pwrite(buf, off),
            Some((true, FaultKind::FailOnce { keep })) => {
                if keep > 0 {
                    self.inner.pwrite(&buf[..keep.min(buf.len())], off)?;
                }
                Err(eio())
            }
        }
    }

    fn fdatasync(&self) -> io::Result<()> {
        match self.fate() {
            None | Some((false, FaultKind::FailOnce { .. })) => self.inner.fdatasync(),
            Some((_, FaultKind::TearAndFreeze { .. })) => Ok(()),
            Some(_) => Err(eio()),
        }
    }

    fn punch_hole(&self, off: u64, len: u64) -> io::Result<()> {
        match self.fate() {
            None | Some((false, FaultKind::FailOnce { .. })) => self.inner.punch_hole(off, len),
            Some((_, FaultKind::TearAndFreeze { .. })) => Ok(()),
            Some(_) => Err(eio()),
        }
    }

    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::FileDevice;

    fn tmp_dev(len: u64) -> (tempfile::NamedTempFile, FileDevice) {
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(len).unwrap();
        let dev = FileDevice::new(f.reopen().unwrap());
        (f, dev)
    }

    #[test]
    fn tear_and_fail_writes_prefix_then_fails_everything() {
        let (_f, dev) = tmp_dev(8192);
        let fd = FaultyDevice::new(dev);
        fd.pwrite(&[1u8; 10], 0).unwrap();
        fd.arm(1, FaultKind::TearAndFail { keep: 3 });
        assert!(fd.pwrite(&[2u8; 10], 100).is_err());
        assert!(fd.fdatasync().is_err());
        assert!(fd.pwrite(&[3u8; 10], 200).is_err());
        let mut buf = [0u8; 10];
        fd.pread(&mut buf, 100).unwrap();
        assert_eq!(buf, [2, 2, 2, 0, 0, 0, 0, 0, 0, 0]);
        fd.pread(&mut buf, 200).unwrap();
        assert_eq!(buf, [0; 10]);
        assert_eq!(fd.ops(), 4);
    }

    #[test]
    fn fail_once_then_recovers() {
        let (_f, dev) = tmp_dev(8192);
        let fd = FaultyDevice::new(dev);
        fd.arm(0, FaultKind::FailOnce { keep: 2 });
        assert!(fd.pwrite(&[5u8; 4], 0).is_err());
        fd.pwrite(&[6u8; 4], 8).unwrap();
        fd.fdatasync().unwrap();
        let mut buf = [0u8; 12];
        fd.pread(&mut buf, 0).unwrap();
        assert_eq!(buf, [5, 5, 0, 0, 0, 0, 0, 0, 6, 6, 6, 6]);
    }

    #[test]
    fn freeze_reports_success_but_drops() {
        let (_f, dev) = tmp_dev(8192);
        let fd = FaultyDevice::new(dev);
        fd.arm(0, FaultKind::TearAndFreeze { keep: 0 });
        fd.pwrite(&[9u8; 4], 0).unwrap();
        fd.fdatasync().unwrap();
        let mut buf = [1u8; 4];
        fd.pread(&mut buf, 0).unwrap();
        assert_eq!(buf, [0; 4]);
    }
}
