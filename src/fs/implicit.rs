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
//! Directories likewise (`no_opendir`, [`ImplicitDirs`]): the first OPENDIR is answered
//! `ENOSYS`, the kernel keeps each directory's readdir cache across opens, and READDIR
//! comes with handle 0 and an offset the daemon must understand for as long as the kernel
//! keeps the inode: each directory keeps the offset space ([`DirSpace`]) of its first read
//! until FORGET, while the handles serving them are bounded like the files'.
//!
//! Locks: one `Mutex` around each table, taken alone, never across a syscall.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

/// What an implicit handle's descriptor was opened for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    Read,
    /// Read and write (or write alone, where reading is refused): also serves reads.
    Write,
}

/// Removes the oldest entries of `live` (by `order`, oldest first, which may name keys
/// removed since: skipped) until at most `cap` are left, never `newest`; returns their
/// values, oldest first. Keys of removed entries pile up in `order` only until it is twice
/// the table, then it is compacted. Both tables evict through this.
fn evict_oldest<K: Copy + Eq + Hash, V>(
    live: &mut HashMap<K, V>,
    order: &mut VecDeque<K>,
    cap: usize,
    newest: K,
) -> Vec<V> {
    let mut evicted = Vec::new();
    while live.len() > cap {
        let Some(key) = order.pop_front() else {
            break;
        };
        if key == newest {
            order.push_back(key);
            continue;
        }
        if let Some(old) = live.remove(&key) {
            evicted.push(old);
        }
    }
    if order.len() > 2 * live.len() + 16 {
        order.retain(|k| live.contains_key(k));
    }
    evicted
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
        Ok(evict_oldest(
            &mut self.by_inode,
            &mut self.order,
            self.cap,
            (id, access),
        ))
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

/// The offset space a directory read without OPENDIR (`no_opendir`) was given at its
/// first READDIR: the kernel keeps offsets (in its readdir cache, in an open directory's
/// position) for as long as it keeps the inode, so the space stays until FORGET.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirSpace {
    /// Indexes into a metadata-cache listing (a snapshot of it per handle).
    Listing,
    /// The backing's own cookies (`telldir`), valid across opens of the directory.
    Cookies,
}

/// Per directory inode: its [`DirSpace`] (kept until FORGET: a few bytes each), and for at
/// most `cap` of them, the most recently used, a handle `H` serving it (a listing snapshot,
/// or an open backing stream: the bound is the descriptor budget's). A directory whose
/// handle was let go gets a new one in the same space at its next read.
#[derive(Debug)]
pub struct ImplicitDirs<H> {
    space: HashMap<u64, DirSpace>,
    handles: HashMap<u64, H>,
    /// Directories with a handle, oldest use first; may name ones let go since.
    order: VecDeque<u64>,
    cap: usize,
}

impl<H: Clone> ImplicitDirs<H> {
    pub fn new(cap: usize) -> ImplicitDirs<H> {
        ImplicitDirs {
            space: HashMap::new(),
            handles: HashMap::new(),
            order: VecDeque::new(),
            cap: cap.max(1),
        }
    }

    /// Directory `id`'s space, if decided, and its handle, if one is kept.
    pub fn get(&self, id: u64) -> (Option<DirSpace>, Option<H>) {
        (self.space.get(&id).copied(), self.handles.get(&id).cloned())
    }

    /// Keeps `h` as directory `id`'s handle, in `space`: the first decides it; a handle
    /// in another space than the one decided is not kept (the space in force is returned,
    /// so the caller can make one in it). Returns the space and the handles let go to stay
    /// within the capacity (the caller drops them outside the lock: a stream closes with
    /// its last reference).
    pub fn put(&mut self, id: u64, space: DirSpace, h: H) -> (DirSpace, Vec<H>) {
        let decided = *self.space.entry(id).or_insert(space);
        if decided != space {
            return (decided, Vec::new());
        }
        if self.handles.insert(id, h).is_none() {
            self.order.push_back(id);
        }
        let gone = evict_oldest(&mut self.handles, &mut self.order, self.cap, id);
        (decided, gone)
    }

    /// The kernel forgot directory `id`: its space and handle go.
    pub fn forget(&mut self, id: u64) -> Option<H> {
        self.space.remove(&id);
        self.handles.remove(&id)
    }

    /// Directories whose space is decided.
    pub fn known(&self) -> usize {
        self.space.len()
    }

    /// Handles kept.
    pub fn kept(&self) -> usize {
        self.handles.len()
    }
}

#[cfg(test)]
mod dir_tests {
    use super::*;

    #[test]
    fn a_directory_keeps_its_first_space_until_forgotten() {
        let mut t: ImplicitDirs<u32> = ImplicitDirs::new(4);
        assert_eq!(t.put(7, DirSpace::Cookies, 1).0, DirSpace::Cookies);
        // a handle in another space is not kept; the space in force is returned
        assert_eq!(t.put(7, DirSpace::Listing, 2).0, DirSpace::Cookies);
        assert_eq!(t.get(7), (Some(DirSpace::Cookies), Some(1)));
        assert_eq!(t.put(7, DirSpace::Cookies, 2).0, DirSpace::Cookies);
        assert_eq!(t.forget(7), Some(2));
        assert_eq!(t.get(7), (None, None));
        assert_eq!(t.put(7, DirSpace::Listing, 3).0, DirSpace::Listing);
    }

    #[test]
    fn handles_stay_within_the_capacity_and_spaces_outlive_them() {
        let mut t: ImplicitDirs<u64> = ImplicitDirs::new(3);
        let mut gone = Vec::new();
        for id in 0..10u64 {
            let space = if id % 2 == 0 {
                DirSpace::Listing
            } else {
                DirSpace::Cookies
            };
            gone.extend(t.put(id, space, 100 + id).1);
            assert!(t.kept() <= 3);
        }
        assert_eq!(gone, (100..107).collect::<Vec<_>>());
        assert_eq!(t.known(), 10);
        // a directory whose handle was let go keeps its space
        assert_eq!(t.get(1), (Some(DirSpace::Cookies), None));
        assert_eq!(t.get(2), (Some(DirSpace::Listing), None));
        // renewing a kept handle does not count it twice
        assert!(t.put(9, DirSpace::Cookies, 200).1.is_empty());
        assert_eq!(t.kept(), 3);
    }
}
