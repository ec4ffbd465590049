//! Handles for files the kernel opens without asking the daemon (`no_open`).
//!
//! In exclusive mode the first OPEN is answered `ENOSYS`: the kernel takes that as
//! success and from then on opens regular files itself, without OPEN or RELEASE
//! requests, sending their reads and writes with file handle 0 and keeping their pages
//! (FOPEN_KEEP_CACHE is what it assumes). A small file's `cat` or `grep` then costs the
//! daemon nothing once its pages are cached, where it cost two round trips and an open
//! and close of the backing file. The daemon serves handle 0 through a descriptor of its
//! own per inode and access ([`Access`]), opened on first need and kept in this table.
//!
//! Why only in exclusive mode, and only where the open's permission check is not ours
//! to make (see `PassthroughFs::new`): an open without a request is never checked
//! against the backing, and the kernel's kept pages are right only while nothing
//! outside changes the file (exclusive mode's sweep drops them when something did).
//!
//! Invariants:
//! - At most one entry per (inode, access); at most `cap` entries, and when a new one
//!   would pass it the oldest are closed first ([`ImplicitHandles::insert`] returns
//!   them), except a file whose last name is gone (it could not be opened again), which
//!   the caller puts back; every entry goes when the kernel forgets its inode.
//! - A descriptor in use is not closed by eviction: requests hold an `Arc` to its
//!   handle, and the table only drops its own reference.
//!
//! Locks: one `Mutex` around the table, taken alone, never across a syscall.

use std::collections::{HashMap, VecDeque};

/// What an implicit handle's descriptor was opened for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    Read,
    /// Read and write (or write alone, where reading is refused): also serves reads.
    Write,
}

/// The table: (inode id, access) -> the handle number in the open-files map.
#[derive(Debug)]
pub struct ImplicitHandles {
    by_inode: HashMap<(u64, Access), u64>,
    /// Insertion order, oldest first; may hold keys already removed (skipped when met).
    order: VecDeque<(u64, Access)>,
    cap: usize,
}

impl ImplicitHandles {
    /// A table of at most `cap` (at least 1) entries.
    pub fn new(cap: usize) -> ImplicitHandles {
        ImplicitHandles {
            by_inode: HashMap::new(),
            order: VecDeque::new(),
            cap: cap.max(1),
        }
    }

    /// The capacity for a soft descriptor limit: each entry holds two descriptors (its
    /// own and its inode's pinned `O_PATH` one), so a sixteenth of the limit keeps an
    /// eighth of it, beside the inode cache's quarter.
    pub fn cap_for_limit(soft_limit: u64) -> usize {
        (soft_limit / 16).clamp(16, 4096) as usize
    }

    /// The handle serving `access` to inode `id`: a read may use a write handle.
    pub fn get(&self, id: u64, access: Access) -> Option<u64> {
        match access {
            Access::Read => self
                .by_inode
                .get(&(id, Access::Read))
                .or_else(|| self.by_inode.get(&(id, Access::Write))),
            Access::Write => self.by_inode.get(&(id, Access::Write)),
        }
        .copied()
    }

    /// Adds `fh` for (id, access), unless another thread added one first: then that one
    /// is returned in `Err` (the caller closes its own). On success, returns the
    /// handles evicted to stay within the capacity, oldest first.
    pub fn insert(&mut self, id: u64, access: Access, fh: u64) -> Result<Vec<u64>, u64> {
        if let Some(&other) = self.by_inode.get(&(id, access)) {
            return Err(other);
        }
        self.by_inode.insert((id, access), fh);
        self.order.push_back((id, access));
        let mut evicted = Vec::new();
        while self.by_inode.len() > self.cap {
            let Some(key) = self.order.pop_front() else {
                break;
            };
            if key == (id, access) {
                self.order.push_back(key); // never the one just added
                continue;
            }
            if let Some(old) = self.by_inode.remove(&key) {
                evicted.push(old);
            }
        }
        // keys of removed entries pile up only until the queue is twice the table
        if self.order.len() > 2 * self.by_inode.len() + 16 {
            let live = &self.by_inode;
            self.order.retain(|k| live.contains_key(k));
        }
        Ok(evicted)
    }

    /// Puts an evicted handle back (its file has no name left), as the newest entry; it
    /// goes when its inode is forgotten. False if the slot was taken meanwhile.
    pub fn keep(&mut self, id: u64, access: Access, fh: u64) -> bool {
        if self.by_inode.contains_key(&(id, access)) {
            return false;
        }
        self.by_inode.insert((id, access), fh);
        self.order.push_back((id, access));
        true
    }

    /// Removes inode `id`'s entries (the kernel forgot it); returns their handles.
    pub fn forget(&mut self, id: u64) -> Vec<u64> {
        [Access::Read, Access::Write]
            .iter()
            .filter_map(|a| self.by_inode.remove(&(id, *a)))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.by_inode.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_inode.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_is_served_by_a_write_handle_but_not_the_reverse() {
        let mut t = ImplicitHandles::new(8);
        t.insert(5, Access::Write, 100).unwrap();
        assert_eq!(t.get(5, Access::Read), Some(100));
        t.insert(6, Access::Read, 101).unwrap();
        assert_eq!(t.get(6, Access::Write), None);
    }

    #[test]
    fn a_second_insert_for_the_same_slot_returns_the_first() {
        let mut t = ImplicitHandles::new(8);
        t.insert(5, Access::Read, 100).unwrap();
        assert_eq!(t.insert(5, Access::Read, 101), Err(100));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn the_table_stays_within_its_capacity_evicting_the_oldest() {
        let mut t = ImplicitHandles::new(3);
        let mut evicted = Vec::new();
        for i in 0..10u64 {
            evicted.extend(t.insert(i, Access::Read, 1000 + i).unwrap());
            assert!(t.len() <= 3, "{} entries", t.len());
        }
        assert_eq!(evicted, (1000..1007).collect::<Vec<_>>());
        assert_eq!(t.get(9, Access::Read), Some(1009));
        assert_eq!(t.get(0, Access::Read), None);
    }

    #[test]
    fn forget_removes_both_accesses_and_stale_queue_keys_are_skipped() {
        let mut t = ImplicitHandles::new(2);
        t.insert(1, Access::Read, 10).unwrap();
        t.insert(1, Access::Write, 11).unwrap();
        let mut gone = t.forget(1);
        gone.sort();
        assert_eq!(gone, vec![10, 11]);
        assert!(t.is_empty());
        // the queue still names inode 1: eviction must skip it, not miscount
        assert_eq!(t.insert(2, Access::Read, 20).unwrap(), Vec::<u64>::new());
        assert_eq!(t.insert(3, Access::Read, 30).unwrap(), Vec::<u64>::new());
        assert_eq!(t.insert(4, Access::Read, 40).unwrap(), vec![20]);
    }

    #[test]
    fn a_kept_handle_comes_back_as_the_newest() {
        let mut t = ImplicitHandles::new(2);
        t.insert(1, Access::Read, 10).unwrap();
        t.insert(2, Access::Read, 20).unwrap();
        let evicted = t.insert(3, Access::Read, 30).unwrap();
        assert_eq!(evicted, vec![10]);
        // inode 1 has no name left: the caller keeps it; now 2 is the oldest
        assert!(t.keep(1, Access::Read, 10));
        assert_eq!(t.len(), 3, "over the capacity until the next insert");
        assert_eq!(t.insert(4, Access::Read, 40).unwrap(), vec![20, 30]);
    }

    #[test]
    fn the_queue_of_removed_keys_does_not_grow_without_bound() {
        let mut t = ImplicitHandles::new(4);
        for i in 0..10_000u64 {
            t.insert(i, Access::Read, i).unwrap();
            t.forget(i);
        }
        assert!(t.order.len() <= 2 * t.len() + 17, "queue {}", t.order.len());
    }
}
