//! The core error type.
//!
//! Model: every failure inside the library is one variant of [`Error`]; each variant knows its
//! errno class ([`Error::errno`]), so the FUSE layer maps errors to errno in exactly one place.
//! The CLI prints these as they are. Decoding errors carry what was being decoded and why, in
//! one line, because the CLI prints them as-is.
//!
//! Invariants: constructing or formatting an error never panics and never blocks.

use std::fmt;
use std::io;

/// Result alias used throughout the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A core error. New variants may be added; match with a wildcard arm.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// An I/O call on the cache file failed. `op` names the call (`pwrite`, `fdatasync`, ...).
    Io { op: &'static str, source: io::Error },
    /// The file does not start with the bcachefs-lite magic: it is not a cache file.
    NotACacheFile,
    /// The cache file was written by a newer (or unknown) format version.
    UnsupportedVersion { found: u32, supported: u32 },
    /// A structure's crc32c does not match its contents.
    BadChecksum { what: &'static str },
    /// A structure is malformed (truncated, a field out of range, inconsistent geometry).
    Corrupt { what: &'static str, detail: String },
    /// No valid gens checkpoint could be found while opening the cache file.
    NoValidCheckpoint,
    /// Format options that cannot work; the message says what to change.
    InvalidGeometry(String),
    /// `format` refused to overwrite an existing non-empty file.
    AlreadyExists(String),
    /// No free bucket is available and the caller asked not to wait.
    NoFreeBucket,
    /// Pinning more would pass the pin limit (in buckets).
    PinLimit(usize),
    /// A failed write or fsync of the cache file stopped caching; nothing more is allocated.
    Poisoned,
    /// The cache is shutting down.
    Shutdown,
    /// A caller inside the program passed an argument outside the allowed range (a bucket
    /// index, a sector count): a bug in the caller, never something a user can cause.
    InvalidArgument(String),
    /// The resource is held by someone else (a cache file another mount has locked).
    Busy(String),
    /// The user's configuration cannot work (a missing size for a new cache file, a cache
    /// file bound to another tree); the message says what to change.
    Config(String),
}

impl Error {
    /// Wrap an I/O error with the name of the failed call.
    pub fn io(op: &'static str, source: io::Error) -> Self {
        Error::Io { op, source }
    }

    /// Build a [`Error::Corrupt`].
    pub fn corrupt(what: &'static str, detail: impl Into<String>) -> Self {
        Error::Corrupt {
            what,
            detail: detail.into(),
        }
    }

    /// The errno class of this error, for the FUSE boundary.
    pub fn errno(&self) -> i32 {
        match self {
            Error::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            Error::NotACacheFile
            | Error::UnsupportedVersion { .. }
            | Error::BadChecksum { .. }
            | Error::Corrupt { .. }
            | Error::NoValidCheckpoint
            | Error::Poisoned => libc::EIO,
            Error::InvalidGeometry(_) | Error::InvalidArgument(_) => libc::EINVAL,
            Error::AlreadyExists(_) => libc::EEXIST,
            Error::NoFreeBucket | Error::PinLimit(_) => libc::ENOSPC,
            Error::Shutdown => libc::ESHUTDOWN,
            Error::Busy(_) => libc::EBUSY,
            Error::Config(_) => libc::EINVAL,
        }
    }

    /// True when the error says the cache file itself is not usable as a cache file
    /// (wrong magic, version, checksum, malformed, no valid checkpoint). The CLI exits 2 on these.
    pub fn is_bad_cache_file(&self) -> bool {
        matches!(
            self,
            Error::NotACacheFile
                | Error::UnsupportedVersion { .. }
                | Error::BadChecksum { .. }
                | Error::Corrupt { .. }
                | Error::NoValidCheckpoint
        )
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { op, source } => write!(f, "{op} failed: {source}"),
            Error::NotACacheFile => write!(f, "not a bcachefs-lite cache file (bad magic)"),
            Error::UnsupportedVersion { found, supported } => write!(
                f,
                "cache file format version {found} is not supported (this build reads version \
                 {supported})"
            ),
            Error::BadChecksum { what } => write!(f, "{what}: checksum mismatch"),
            Error::Corrupt { what, detail } => write!(f, "{what} is corrupt: {detail}"),
            Error::NoValidCheckpoint => write!(f, "no valid gens checkpoint found in the journal"),
            Error::InvalidGeometry(m) => write!(f, "{m}"),
            Error::AlreadyExists(m) => write!(f, "{m}"),
            Error::NoFreeBucket => write!(f, "no free bucket available"),
            Error::PinLimit(n) => write!(
                f,
                "pin_limit reached ({n} buckets pinned); unpin a tree or raise pin_limit"
            ),
            Error::Poisoned => {
                write!(
                    f,
                    "cache poisoned after a failed write or fsync; caching is stopped"
                )
            }
            Error::Shutdown => write!(f, "cache is shutting down"),
            Error::InvalidArgument(m) => write!(f, "invalid argument: {m}"),
            Error::Busy(m) | Error::Config(m) => write!(f, "{m}"),
        }
    }
}

/// A call whose failure can only be a bug in this program (an unpin of a bucket we pinned):
/// asserts in debug builds, logs once per call site's message in release builds, and goes on.
/// Failures that stopping the cache explains (poisoned, shutting down) are expected.
pub fn expect_ok<T>(r: Result<T>, what: &'static str) {
    match r {
        Ok(_) | Err(Error::Poisoned) | Err(Error::Shutdown) => {}
        Err(e) => {
            debug_assert!(false, "bug: {what}: {e}");
            tracing::error!("bug: {what}: {e}");
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_classes() {
        assert_eq!(Error::NoFreeBucket.errno(), libc::ENOSPC);
        assert_eq!(Error::Poisoned.errno(), libc::EIO);
        assert_eq!(Error::InvalidGeometry("x".into()).errno(), libc::EINVAL);
        let e = Error::io("pwrite", io::Error::from_raw_os_error(libc::ENOSPC));
        assert_eq!(e.errno(), libc::ENOSPC);
        assert!(Error::NotACacheFile.is_bad_cache_file());
        assert!(!Error::NoFreeBucket.is_bad_cache_file());
    }
}
