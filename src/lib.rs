//! bcachefs-lite: a FUSE caching filesystem whose cache file is managed like
//! Linux bcache (buckets with 8-bit generations, keys pointing into buckets).
//!
//! Module map (dependencies point down only; `alloc`, `journal`, `index`
//! never import `fs`):
//!
//! - `options` – mount option parsing (`-o a,b=c`).
//! - `fs`      – the fuser adapter: inode table, handles, credentials, errno.
//! - `error`   – the core error type and its errno class.

pub mod daemon;
pub mod fs;
pub mod options;
