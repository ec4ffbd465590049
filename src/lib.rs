//! bcachefs-lite: a FUSE caching filesystem whose cache file is managed like
//! Linux bcache (buckets with 8-bit generations, keys pointing into buckets).
//!
//! Module map (dependencies point down only; `alloc`, `journal`, `index`
//! never import `fs`):
//!
//! - `daemon`    – `bcachefs-lite mount`: fork, mount, signals, serve.
//! - `options`   – mount option parsing (`-o a,b=c`).
//! - `fs`        – the fuser adapter: inode table, handles, credentials, errno.
//! - `cli_cache` – the `format` and `show-super` subcommands (library side of the CLI).
//! - `alloc`     – buckets, gens, prios, free lists and reserves, the allocator thread, gens
//!   checkpoints, discard, open buckets and write points (`Allocator`).
//! - `index`     – the in-memory key index: per-file extents (file range -> bucket, gen, crcs).
//! - `journal`   – the journal ring and its entry format (seq + crc32c).
//! - `device`    – the cache file behind the `CacheDevice` seam (fault injection), superblock.
//! - `cache`     – the request path: hits, misses and fills, the change protocol, file identity,
//!   journal writer and replay, GC, stats.
//! - `control`   – the stats socket and its client.
//! - `poison`    – the cache set's one failure signal.
//! - `sys`       – raw syscalls below everything (fstat, pread/pwrite loops).
//! - `meta`      – the metadata cache: attributes, listings, negative entries, symlinks.
//! - `key`       – vocabulary types below everything: file id, key position, bucket pointer.
//! - `error`     – the core error type and its errno class.

pub mod alloc;
pub mod cli_cache;
pub mod daemon;
pub mod device;
pub mod error;
pub mod fs;
/// Decoder harnesses for the fuzz targets and tests/decoders.rs; not an API.
#[doc(hidden)]
pub mod fuzzing;
pub mod index;
pub mod journal;
pub mod key;
pub mod meta;
pub mod options;
pub mod poison;
pub mod sys;

pub use alloc::{Allocator, BucketPtr, KeyPos, Reserve};
pub use error::{Error, Result};
pub mod cache;
pub mod control;
