//! Data I/O on the cache file, apart from the allocator's state: a fill's write, a hit's read,
//! and the fdatasync that makes written data durable before the keys that point at it are
//! journaled (invariant 3). Positioned I/O, no lock of its own, safe from many threads; every
//! call blocks on the cache file. A failed sync poisons the cache set (`crate::poison`); it
//! does not wake the allocator's waiters itself (it holds no reference to them): the
//! allocator thread and `bucket_alloc(wait)` recheck the poison within 500 / 100 ms.

use std::sync::Arc;

use crate::device::format::{Superblock, SECTOR};
use crate::device::CacheDevice;
use crate::error::{Error, Result};
use crate::key::BucketPtr;
use crate::poison::Poison;

pub struct CacheData {
    dev: Arc<dyn CacheDevice>,
    sb: Superblock,
    poison: Poison,
}

impl CacheData {
    pub(super) fn new(dev: Arc<dyn CacheDevice>, sb: Superblock, poison: Poison) -> CacheData {
        CacheData { dev, sb, poison }
    }

    /// Write `data` at `ptr` (length a multiple of the sector size, within the bucket).
    pub fn write(&self, ptr: BucketPtr, data: &[u8]) -> Result<()> {
        let off = self.offset(ptr, data.len())?;
        self.dev
            .pwrite(data, off)
            .map_err(|e| Error::io("pwrite data", e))
    }

    /// Read `buf.len()` bytes at `ptr`. The caller checks the gen before trusting them.
    pub fn read(&self, ptr: BucketPtr, buf: &mut [u8]) -> Result<()> {
        let off = self.offset(ptr, buf.len())?;
        self.dev
            .pread(buf, off)
            .map_err(|e| Error::io("pread data", e))
    }

    /// Make completed data writes durable. A failure poisons the cache set.
    pub fn sync(&self) -> Result<()> {
        self.dev.fdatasync().map_err(|e| {
            if self.poison.set("fdatasync data failed") {
                tracing::error!("cache file fdatasync failed: {e}; caching stops");
            }
            Error::io("fdatasync", e)
        })
    }

    fn offset(&self, ptr: BucketPtr, len: usize) -> Result<u64> {
        if u64::from(ptr.bucket) >= self.sb.nbuckets {
            return Err(Error::InvalidArgument(format!(
                "bucket {} out of range",
                ptr.bucket
            )));
        }
        let end = u64::from(ptr.offset) * SECTOR + len as u64;
        if end > u64::from(self.sb.bucket_size) {
            return Err(Error::InvalidArgument(format!(
                "I/O past the end of bucket {}",
                ptr.bucket
            )));
        }
        Ok(self.sb.bucket_offset(ptr.bucket) + u64::from(ptr.offset) * SECTOR)
    }
}
