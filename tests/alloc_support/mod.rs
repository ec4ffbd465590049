//! Helpers shared by the allocator integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bcachefs_lite::alloc::{Allocator, OpenOptions};
use bcachefs_lite::device::format::{Geometry, Replacement};
use bcachefs_lite::device::{CacheDevice, FileDevice};

pub const BLOCK: u32 = 512;
pub const JOURNAL: u64 = 16 * 512;

/// A geometry with exactly `nbuckets` buckets of `bucket` bytes and 512-byte blocks.
pub fn geometry(nbuckets: u64, bucket: u32, replacement: Replacement, discard: bool) -> Geometry {
    let b = u64::from(bucket);
    let first = (4096 + JOURNAL).div_ceil(b) * b;
    Geometry {
        size: first + nbuckets * b,
        bucket_size: bucket,
        block_size: BLOCK,
        journal_size: Some(JOURNAL),
        replacement,
        discard,
        ..Geometry::default()
    }
}

/// Format a cache file in `dir`.
pub fn format(dir: &Path, nbuckets: u64, bucket: u32, rep: Replacement, discard: bool) -> PathBuf {
    let p = dir.join("test.cache");
    Allocator::format(&p, &geometry(nbuckets, bucket, rep, discard), false).unwrap();
    p
}

/// Open without the allocator thread (tests drive `allocator_step`).
pub fn open_manual(path: &Path) -> Allocator {
    Allocator::open_with(
        path,
        OpenOptions {
            start_allocator: false,
            ..Default::default()
        },
    )
    .unwrap()
}

/// Open on an explicit device without the allocator thread.
pub fn open_dev(dev: Arc<dyn CacheDevice>) -> bcachefs_lite::Result<Allocator> {
    Allocator::open_device(
        dev,
        OpenOptions {
            start_allocator: false,
            ..Default::default()
        },
    )
}

/// A plain file device on `path`.
pub fn file_dev(path: &Path) -> FileDevice {
    FileDevice::new(
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap(),
    )
}

/// Report an empty index to GC (everything not metadata is empty).
pub fn gc_empty(c: &Allocator) {
    let r = c.gc_begin();
    c.gc_finish(r).unwrap();
}

/// Gens as recorded in the newest valid checkpoint on disk.
pub fn disk_gens(path: &Path) -> Vec<u8> {
    let dev = FileDevice::new(std::fs::File::open(path).unwrap());
    bcachefs_lite::alloc::read_newest_checkpoint(&dev)
        .unwrap()
        .1
        .checkpoint
        .gens
}
