//! The inode table: FUSE node ids for backing inodes.
//!
//! Model: every backing inode the kernel knows about is one [`Inode`] holding an
//! `O_PATH` descriptor, keyed by the backing's `(st_dev, st_ino)`. Hard links are
//! therefore one FUSE inode, and an inode keeps working when it is renamed or
//! unlinked, inside or outside the mount, because nothing remembers paths.
//!
//! Node ids: the backing root is `FUSE_ROOT_ID` (1). An inode on the root's
//! filesystem keeps its backing inode number as node id (so `st_ino`, `d_ino` and
//! hard-link detection by tools agree with the backing, and ids are stable across
//! remounts); inodes of other filesystems mounted inside the backing, and the rare
//! backing inode numbers 1 or >= 2^63, get ids from a counter in the upper half.
//!
//! Invariants:
//! - `(dev, ino)` maps to at most one node id, and a node id to at most one inode.
//!   Holding the `O_PATH` descriptor pins the backing inode, so its number cannot be
//!   reused by the backing while the entry exists.
//! - An entry lives while the kernel's lookup count for it is above zero; the root
//!   is never removed.
//!
//! Locks: one `RwLock` over both maps and the counts; readers (every request
//! resolving a node id) share it, lookup and forget take it for a few map
//! operations. No syscall runs under it. Nothing here blocks otherwise.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use parking_lot::RwLock;

use crate::cache::FileState;

pub const ROOT_ID: u64 = 1;
const SYNTHETIC_BASE: u64 = 1 << 63;

/// One backing inode the kernel holds a reference to.
#[derive(Debug)]
pub struct Inode {
    pub id: u64,
    /// `O_PATH | O_NOFOLLOW` descriptor of the backing inode.
    pub fd: OwnedFd,
    pub dev: u64,
    pub backing_ino: u64,
    /// `S_IFMT` bits; an inode never changes type.
    pub kind: libc::mode_t,
    /// The cache's shared state for this file (its id and change sequence); `None` when
    /// there is no cache, for anything but a regular file, and for files the cache cannot
    /// identify (see `cache::identity`).
    pub file: Option<Arc<FileState>>,
}

impl Inode {
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    pub fn is_symlink(&self) -> bool {
        self.kind == libc::S_IFLNK
    }

    pub fn is_dir(&self) -> bool {
        self.kind == libc::S_IFDIR
    }

    pub fn is_regular(&self) -> bool {
        self.kind == libc::S_IFREG
    }
}

struct Entry {
    inode: Arc<Inode>,
    lookups: u64,
}

struct Maps {
    by_id: HashMap<u64, Entry>,
    by_key: HashMap<(u64, u64), u64>,
    next_synthetic: u64,
}

pub struct InodeTable {
    root_dev: u64,
    root_ino: u64,
    maps: RwLock<Maps>,
}

impl InodeTable {
    /// A table whose root is the backing directory held open by `root_fd`.
    pub fn new(root_fd: OwnedFd, st: &libc::stat) -> InodeTable {
        let root = Arc::new(Inode {
            id: ROOT_ID,
            file: None,
            fd: root_fd,
            dev: st.st_dev,
            backing_ino: st.st_ino,
            kind: st.st_mode & libc::S_IFMT,
        });
        let mut by_id = HashMap::new();
        by_id.insert(
            ROOT_ID,
            Entry {
                inode: root,
                lookups: 1,
            },
        );
        let mut by_key = HashMap::new();
        by_key.insert((st.st_dev, st.st_ino), ROOT_ID);
        InodeTable {
            root_dev: st.st_dev,
            root_ino: st.st_ino,
            maps: RwLock::new(Maps {
                by_id,
                by_key,
                next_synthetic: SYNTHETIC_BASE,
            }),
        }
    }

    pub fn get(&self, id: u64) -> Option<Arc<Inode>> {
        self.maps.read().by_id.get(&id).map(|e| e.inode.clone())
    }

    /// The node id a directory entry `(dev, ino)` is (or would be) reported as, for
    /// `d_ino` in readdir. Does not create an entry.
    pub fn id_for_dirent(&self, dev: u64, ino: u64) -> u64 {
        if let Some(id) = self.maps.read().by_key.get(&(dev, ino)) {
            return *id;
        }
        if dev == self.root_dev && ino == self.root_ino {
            ROOT_ID
        } else if ino != ROOT_ID && ino < SYNTHETIC_BASE {
            ino
        } else {
            // Not known yet: any stable non-zero number will do for d_ino.
            ino | 1
        }
    }

    /// Records one kernel lookup of the backing inode described by `st`, held open
    /// by `fd`. Returns the inode (an existing one when already known, in which
    /// case `fd` is closed). `file` is the cache's state for it, computed by the caller
    /// before the table lock is taken (it may call fstatfs).
    pub fn lookup_insert(
        &self,
        fd: OwnedFd,
        st: &libc::stat,
        file: Option<Arc<FileState>>,
    ) -> Arc<Inode> {
        let key = (st.st_dev, st.st_ino);
        let mut maps = self.maps.write();
        if let Some(&id) = maps.by_key.get(&key) {
            if let Some(entry) = maps.by_id.get_mut(&id) {
                entry.lookups += 1;
                return entry.inode.clone();
            }
        }
        let id = if st.st_dev == self.root_dev && st.st_ino != ROOT_ID && st.st_ino < SYNTHETIC_BASE
        {
            st.st_ino
        } else {
            maps.next_synthetic += 1;
            maps.next_synthetic
        };
        let inode = Arc::new(Inode {
            id,
            file,
            fd,
            dev: st.st_dev,
            backing_ino: st.st_ino,
            kind: st.st_mode & libc::S_IFMT,
        });
        maps.by_key.insert(key, id);
        maps.by_id.insert(
            id,
            Entry {
                inode: inode.clone(),
                lookups: 1,
            },
        );
        inode
    }

    /// Drops `n` kernel lookups of `id`; the entry (and its descriptor, unless an
    /// open handle still shares it) goes when none are left.
    pub fn forget(&self, id: u64, n: u64) {
        if id == ROOT_ID {
            return;
        }
        let mut maps = self.maps.write();
        let Some(entry) = maps.by_id.get_mut(&id) else {
            return;
        };
        entry.lookups = entry.lookups.saturating_sub(n);
        if entry.lookups == 0 {
            if let Some(entry) = maps.by_id.remove(&id) {
                let key = (entry.inode.dev, entry.inode.backing_ino);
                if maps.by_key.get(&key) == Some(&id) {
                    maps.by_key.remove(&key);
                }
            }
        }
    }

    /// Number of inodes the kernel currently holds (root included).
    pub fn len(&self) -> usize {
        self.maps.read().by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::sys;

    fn open(path: &std::path::Path) -> (OwnedFd, libc::stat) {
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        let fd = sys::open_path_at(libc::AT_FDCWD, &c).unwrap();
        let st = sys::fstat_path(fd.as_raw_fd()).unwrap();
        (fd, st)
    }

    #[test]
    fn hard_links_share_one_inode_and_forget_removes_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), b"x").unwrap();
        std::fs::hard_link(dir.path().join("a"), dir.path().join("b")).unwrap();
        let (rfd, rst) = open(dir.path());
        let table = InodeTable::new(rfd, &rst);
        let (fa, sa) = open(&dir.path().join("a"));
        let (fb, sb) = open(&dir.path().join("b"));
        let a = table.lookup_insert(fa, &sa, None);
        let b = table.lookup_insert(fb, &sb, None);
        assert_eq!(a.id, b.id);
        assert_eq!(a.id, sa.st_ino, "same-filesystem inodes keep their number");
        assert_eq!(table.len(), 2);
        table.forget(a.id, 1);
        assert!(table.get(a.id).is_some(), "one lookup is still held");
        table.forget(a.id, 1);
        assert!(table.get(a.id).is_none());
        table.forget(ROOT_ID, 100);
        assert!(table.get(ROOT_ID).is_some(), "root is never forgotten");
    }
}
