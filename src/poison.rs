//! The cache set's one failure signal (fjall's `PoisonDart`).
//!
//! Model: the allocator, the journal writer, index checkpoints and the request path
//! (fills, cache reads) all share one [`Poison`]. The first failed write or fsync of
//! the cache file sets it, with a reason; from then on nothing is allocated, nothing is
//! journaled, no cached byte is served, and the mount goes on from the backing alone
//! (mode none). It is never cleared while the cache set is open: after a failed fsync
//! the kernel may have dropped the dirty pages, so retrying could report success for
//! data that is gone.
//!
//! Invariants: `is_set` never goes back to false; the reason is the first failure's.
//! Locks: a mutex around the reason only (taken once, when set, and by stats). Nothing
//! blocks.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

#[derive(Default)]
struct Inner {
    set: AtomicBool,
    reason: Mutex<Option<String>>,
}

/// A shared, sticky failure flag with the first failure's reason.
#[derive(Clone, Default)]
pub struct Poison(Arc<Inner>);

impl std::fmt::Debug for Poison {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Poison").field(&self.reason()).finish()
    }
}

impl Poison {
    pub fn new() -> Poison {
        Poison::default()
    }

    /// Sets the flag. Returns true for the first failure (the caller logs it once).
    pub fn set(&self, reason: impl Into<String>) -> bool {
        let mut r = self.0.reason.lock();
        if r.is_none() {
            *r = Some(reason.into());
        }
        !self.0.set.swap(true, Ordering::AcqRel)
    }

    pub fn is_set(&self) -> bool {
        self.0.set.load(Ordering::Acquire)
    }

    /// Why caching stopped, once it has.
    pub fn reason(&self) -> Option<String> {
        self.0.reason.lock().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reason_sticks_and_every_clone_sees_it() {
        let p = Poison::new();
        let q = p.clone();
        assert!(!q.is_set());
        assert!(p.set("journal append: EIO"));
        assert!(!q.set("later"));
        assert!(q.is_set());
        assert_eq!(p.reason().as_deref(), Some("journal append: EIO"));
    }
}
