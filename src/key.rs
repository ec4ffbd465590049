//! Vocabulary types that the allocator, the index, the journal and the request path all
//! speak: a position in the key space, a pointer into the cache file, a file's identity.
//! They live here, below every user, so no subsystem imports another one's types
//! (bcachefs's `bkey`, redb's `PageNumber`). Plain data: no locks, nothing blocks.

/// Stable, collision-free identity of a backing file: `slot << 56 | st_ino`, the slot naming
/// its filesystem (see `cache::identity` and docs/DESIGN.md, "File identity").
pub type FileId = u64;

/// A position in the key space: a file and an offset in sectors. Sequential writes are detected
/// by an allocation starting where the previous one ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyPos {
    pub file: u64,
    pub offset: u64,
}

/// A pointer into the cache file: valid while `gen` equals the bucket's gen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BucketPtr {
    pub bucket: u32,
    pub gen: u8,
    /// Offset within the bucket, in sectors.
    pub offset: u32,
}
