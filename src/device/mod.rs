//! The cache file behind a small I/O seam.
//!
//! Model: everything the cache does to its file goes through [`CacheDevice`]: positioned reads
//! and writes, `fdatasync`, and `punch_hole` (discard). [`FileDevice`] is the real file;
//! `FaultyDevice` (in `faulty.rs`, built only for tests and with the `fault-injection` feature,
//! never part of the library's public API otherwise) wraps any device and, after N mutating
//! operations (or of one call site), fails with a chosen errno, tears or silently drops writes,
//! and fails chosen reads; `PowerCutDevice` loses every write not yet fsync'd at a chosen sync
//! point and tears the last one. Tests put either under a whole `CacheSet`
//! (`CacheSet::open_device`) to simulate I/O errors and power loss at every point.
//!
//! Assumptions about the medium (what the crash ordering relies on): a write that returned is
//! durable only after a later `fdatasync` returned Ok; a write may be torn at any byte when power
//! is lost before that; a punched range reads back as zeroes.
//!
//! Invariants: methods take `&self` and are safe to call from many threads (positioned I/O, no
//! shared cursor). Lock order: none held across calls except the fault plan's own small mutex.
//! What may block: every method does synchronous I/O.

#[cfg(any(test, feature = "fault-injection"))]
mod faulty;
pub mod format;
#[cfg(any(test, feature = "fault-injection"))]
pub use faulty::{FaultKind, FaultyDevice, PowerCutDevice, Site};

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;

/// Positioned I/O on the cache file. Implementations must be usable from many threads.
pub trait CacheDevice: Send + Sync {
    /// Read exactly `buf.len()` bytes at `off`. Reading past the end is an error.
    fn pread(&self, buf: &mut [u8], off: u64) -> io::Result<()>;
    /// Write all of `buf` at `off`.
    fn pwrite(&self, buf: &[u8], off: u64) -> io::Result<()>;
    /// Make every completed write durable.
    fn fdatasync(&self) -> io::Result<()>;
    /// Deallocate `[off, off+len)` keeping the file size; the range reads back as zeroes.
    fn punch_hole(&self, off: u64, len: u64) -> io::Result<()>;
    /// Current size of the file in bytes.
    fn len(&self) -> io::Result<u64>;
    /// True when the file is empty.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
}

/// The real cache file.
#[derive(Debug)]
pub struct FileDevice {
    file: File,
}

impl FileDevice {
    /// Wrap an open file (opened read-write for a cache in use, read-only for `show-super`).
    pub fn new(file: File) -> Self {
        FileDevice { file }
    }

    /// The underlying file.
    pub fn file(&self) -> &File {
        &self.file
    }
}

impl CacheDevice for FileDevice {
    fn pread(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, off)
    }

    fn pwrite(&self, buf: &[u8], off: u64) -> io::Result<()> {
        self.file.write_all_at(buf, off)
    }

    fn fdatasync(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn punch_hole(&self, off: u64, len: u64) -> io::Result<()> {
        let (Ok(off), Ok(len)) = (libc::off_t::try_from(off), libc::off_t::try_from(len)) else {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        };
        // SAFETY: plain syscall on a descriptor we own; no memory is passed.
        let rc = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                off,
                len,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }
}

impl<D: CacheDevice> CacheDevice for std::sync::Arc<D> {
    fn pread(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        (**self).pread(buf, off)
    }
    fn pwrite(&self, buf: &[u8], off: u64) -> io::Result<()> {
        (**self).pwrite(buf, off)
    }
    fn fdatasync(&self) -> io::Result<()> {
        (**self).fdatasync()
    }
    fn punch_hole(&self, off: u64, len: u64) -> io::Result<()> {
        (**self).punch_hole(off, len)
    }
    fn len(&self) -> io::Result<u64> {
        (**self).len()
    }
}
