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
//! - `control`   – the control socket (stats, set/get, gc, drop) and its client.
//! - `knobs`     – the table of runtime knobs `set` and `get` change and show.
//! - `fsck`      – `bcachefs-lite fsck`: checks (and repairs) a cache file that is not mounted.
//! - `metrics`   – Prometheus text format, the metrics HTTP endpoint, the `stats --watch` view.
//! - `poison`    – the cache set's one failure signal.
//! - `warm`      – `bcachefs-lite warm`: reads trees into the cache through the control socket.
//! - `sys`       – raw syscalls below everything (fstat, pread/pwrite loops).
//! - `backing_faults` – (tests only, feature `fault-injection`) a seam that fails chosen
//!   backing calls with a chosen errno.
//! - `meta`      – the metadata cache: attributes, listings, negative entries, symlinks.
//! - `offline`   – offline mode: bounded backing calls, detection, the probe, the return.
//! - `key`       – vocabulary types below everything: file id, key position, bucket pointer.
//! - `error`     – the core error type and its errno class.

pub mod alloc;
#[cfg(any(test, feature = "fault-injection"))]
pub mod backing_faults;
pub mod cli_cache;
pub mod daemon;
pub mod device;
pub mod error;
pub mod fs;
pub mod fsck;
/// Decoder harnesses for the fuzz targets and tests/decoders.rs; not an API.
#[doc(hidden)]
pub mod fuzzing;
pub mod index;
pub mod journal;
pub mod key;
pub mod knobs;
pub mod meta;
pub mod metrics;
pub mod offline;
pub mod options;
pub mod poison;
pub mod sys;
pub mod warm;

pub use alloc::{Allocator, BucketPtr, KeyPos, Reserve};
pub use error::{Error, Result};
pub mod cache;
pub mod control;
