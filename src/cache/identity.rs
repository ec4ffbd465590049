//! File identity: which backing file a cache key belongs to, collision-free across every
//! filesystem the backing tree spans and across remounts.
//!
//! # Model
//!
//! A [`FileId`] is `slot << 56 | st_ino`. The slot names one backing filesystem and comes
//! from a persistent table in the cache file (journal record `FsSlot`, repeated in full in
//! every index checkpoint entry). A filesystem is known by `(f_type, f_fsid)` from
//! `fstatfs`, which is stable across remounts and reboots for the filesystems people cache
//! (ext4, xfs, btrfs subvolumes, NFS); `st_dev` is not (NFS and btrfs get anonymous device
//! numbers at mount time), so it only tells apart filesystems that share an fsid (a
//! filesystem without one, `f_fsid == 0`, or two clones of one image) while both are
//! mounted: such a slot is keyed by its `st_dev` too. Nothing is hashed, so two files can
//! only share an id if they are the same inode of the same filesystem.
//!
//! At most [`MAX_SLOTS`] filesystems per cache file; files on a filesystem beyond that, and
//! files whose inode number does not fit in 56 bits, get no id and are served uncached
//! (counted in stats as `uncacheable_files`). Slots are never reused.
//!
//! # Invariants
//!
//! * While the daemon runs, one `st_dev` maps to one slot and one slot to one `st_dev`.
//! * A slot's record is queued in the journal before any key or validator that uses it, in
//!   the same queue, so a crash can lose a key's slot only together with the key. Replay
//!   drops every key whose slot is unknown (an old cache file, a torn tail).
//! * Across remounts a slot is matched by `(f_type, f_fsid)`; if two filesystems could
//!   claim it (identical fsids, new device numbers) the validator, checked before a byte is
//!   served, still refuses another file's data.
//!
//! # Locks
//!
//! One mutex around the table, held for a few map operations; the journal queue's mutex is
//! taken under it (so a slot's record is queued before its first user can queue a key).
//! Nothing here blocks on I/O except the `fstatfs` done before the lock.

use std::collections::HashMap;
use std::os::fd::RawFd;

use parking_lot::Mutex;

use crate::index::FileId;
use crate::journal::format::Record;

/// Slots per cache file (the top byte of a file id; 255 is never used).
pub const MAX_SLOTS: usize = 255;
const INO_BITS: u32 = 56;

/// How a slot recognises its filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsKey {
    pub fs_type: u64,
    pub fsid: u64,
    pub dev: u64,
    /// The `dev` is part of the key (no usable fsid, or an fsid shared with another slot).
    pub dev_keyed: bool,
}

#[derive(Default)]
struct Table {
    slots: Vec<FsKey>,
    /// `st_dev` → slot, for filesystems seen since mount.
    live: HashMap<u64, u8>,
}

#[derive(Default)]
pub struct Identity {
    table: Mutex<Table>,
}

/// `(f_type, f_fsid)` of the filesystem `fd` lives on.
fn fs_of(fd: RawFd) -> Option<(u64, u64)> {
    // SAFETY: statfs is plain old data; all-zero is a valid value.
    let mut sfs: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: fd is a descriptor the caller holds open; sfs is a valid out pointer.
    if unsafe { libc::fstatfs(fd, &mut sfs) } != 0 {
        return None;
    }
    // SAFETY: fsid_t is two i32s (`__val`), 8 bytes with no padding.
    let fsid: [i32; 2] = unsafe { std::mem::transmute::<libc::fsid_t, [i32; 2]>(sfs.f_fsid) };
    let fsid = u64::from(fsid[0] as u32) | u64::from(fsid[1] as u32) << 32;
    Some((sfs.f_type as u64, fsid))
}

impl Identity {
    pub fn new() -> Identity {
        Identity::default()
    }

    /// Learns a slot from a replayed `FsSlot` record (idempotent; the newest record wins).
    pub fn restore(&self, slot: u8, key: FsKey) {
        let mut t = self.table.lock();
        let i = slot as usize;
        if i >= MAX_SLOTS {
            return;
        }
        if t.slots.len() <= i {
            // A gap can only come from a record lost in a torn tail; fill it with a key no
            // filesystem has, so that slot is never handed out again.
            t.slots.resize(
                i + 1,
                FsKey {
                    fs_type: u64::MAX,
                    fsid: u64::MAX,
                    dev: u64::MAX,
                    dev_keyed: true,
                },
            );
        }
        t.slots[i] = key;
    }

    /// Whether `slot` is known (replay drops keys of unknown slots).
    pub fn knows_slot_of(&self, file: FileId) -> bool {
        ((file >> INO_BITS) as usize) < self.table.lock().slots.len()
    }

    /// Every slot as journal records, for the index checkpoint entry.
    pub fn records(&self) -> Vec<Record> {
        let t = self.table.lock();
        t.slots
            .iter()
            .enumerate()
            .map(|(i, k)| slot_record(i as u8, k))
            .collect()
    }

    /// The file id of the backing inode `st` (held open by `fd`), assigning its filesystem a
    /// slot on first sight; `queue` receives the new slot's record under the table lock.
    /// `None`: the file cannot be cached (no slot left, inode number too large).
    /// The id of `st` when its filesystem already has a live slot (no syscall); the outer
    /// None: not known without one (the caller uses [`Identity::file_id`]).
    pub fn file_id_known(&self, st: &libc::stat) -> Option<Option<FileId>> {
        if st.st_ino >> INO_BITS != 0 {
            return Some(None);
        }
        let slot = *self.table.lock().live.get(&st.st_dev)?;
        Some(Some(u64::from(slot) << INO_BITS | st.st_ino))
    }

    pub fn file_id(
        &self,
        fd: RawFd,
        st: &libc::stat,
        queue: impl FnOnce(Record),
    ) -> Option<FileId> {
        let ino = st.st_ino;
        if ino >> INO_BITS != 0 {
            return None;
        }
        let dev = st.st_dev;
        if let Some(&slot) = self.table.lock().live.get(&dev) {
            return Some(u64::from(slot) << INO_BITS | ino);
        }
        let (fs_type, fsid) = fs_of(fd).unwrap_or((0, 0));
        let mut t = self.table.lock();
        if let Some(&slot) = t.live.get(&dev) {
            return Some(u64::from(slot) << INO_BITS | ino);
        }
        let claimed: Vec<u8> = t.live.values().copied().collect();
        let free = |i: usize| !claimed.contains(&(i as u8));
        let same_fs = |k: &FsKey| k.fs_type == fs_type && k.fsid == fsid;
        let found = {
            let fits = |k: &FsKey| same_fs(k) && (!k.dev_keyed || k.dev == dev);
            // the same device first, then any unclaimed slot of this filesystem
            (t.slots.iter().enumerate())
                .find(|(i, k)| fits(k) && k.dev == dev && free(*i))
                .or_else(|| {
                    (t.slots.iter().enumerate())
                        .find(|(i, k)| fits(k) && !k.dev_keyed && fsid != 0 && free(*i))
                })
                .map(|(i, _)| i)
        };
        let slot = match found {
            Some(i) => {
                t.slots[i].dev = dev;
                i
            }
            None => {
                if t.slots.len() >= MAX_SLOTS {
                    return None;
                }
                let key = FsKey {
                    fs_type,
                    fsid,
                    dev,
                    dev_keyed: fsid == 0 || t.slots.iter().any(same_fs),
                };
                t.slots.push(key);
                let i = t.slots.len() - 1;
                queue(slot_record(i as u8, &key));
                i
            }
        };
        t.live.insert(dev, slot as u8);
        Some((slot as u64) << INO_BITS | ino)
    }

    /// Number of slots in use (stats).
    pub fn slots(&self) -> usize {
        self.table.lock().slots.len()
    }
}

impl FsKey {
    /// The slot and key an `FsSlot` record names; `None` for any other record.
    pub fn from_record(r: &Record) -> Option<(u8, FsKey)> {
        match *r {
            Record::FsSlot {
                slot,
                fs_type,
                fsid,
                dev,
                dev_keyed,
            } => Some((
                slot,
                FsKey {
                    fs_type,
                    fsid,
                    dev,
                    dev_keyed,
                },
            )),
            _ => None,
        }
    }
}

fn slot_record(slot: u8, k: &FsKey) -> Record {
    Record::FsSlot {
        slot,
        fs_type: k.fs_type,
        fsid: k.fsid,
        dev: k.dev,
        dev_keyed: k.dev_keyed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(dev: u64, ino: u64) -> libc::stat {
        // SAFETY: stat is plain old data; all-zero is a valid value.
        let mut s: libc::stat = unsafe { std::mem::zeroed() };
        s.st_dev = dev;
        s.st_ino = ino;
        s
    }

    #[test]
    fn each_device_gets_its_own_slot_and_ids_never_collide() {
        let id = Identity::new();
        let mut queued = Vec::new();
        // fd 0 is not a filesystem fstatfs can tell apart here: every device looks the same
        // (fsid from the same fs), which is exactly the twin case that must key on st_dev.
        let dir = tempfile::tempdir().unwrap();
        let f = std::fs::File::open(dir.path()).unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
        let mut ids = Vec::new();
        for dev in 0..40u64 {
            ids.push(id.file_id(fd, &st(dev, 7), |r| queued.push(r)).unwrap());
        }
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 40, "same inode number on 40 filesystems: 40 ids");
        assert_eq!(queued.len(), 40, "one slot record per new filesystem");
        assert_eq!(
            id.file_id(fd, &st(3, 7), |_| panic!("no new slot")),
            Some(3 << 56 | 7)
        );
        assert_eq!(id.file_id(fd, &st(1, 1 << 56), |_| {}), None);
    }

    #[test]
    fn a_remount_finds_the_same_slot_by_fsid_even_with_a_new_device_number() {
        let dir = tempfile::tempdir().unwrap();
        let f = std::fs::File::open(dir.path()).unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
        let first = Identity::new();
        let mut recs = Vec::new();
        let a = first.file_id(fd, &st(10, 5), |r| recs.push(r)).unwrap();
        let again = Identity::new();
        for r in first.records() {
            let (slot, key) = FsKey::from_record(&r).unwrap();
            again.restore(slot, key);
        }
        let b = again
            .file_id(fd, &st(99, 5), |_| panic!("must reuse the slot"))
            .unwrap();
        assert_eq!(a, b);
        assert!(again.knows_slot_of(b));
        assert!(!again.knows_slot_of(7 << 56 | 5));
    }

    #[test]
    fn slots_run_out_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let f = std::fs::File::open(dir.path()).unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
        let id = Identity::new();
        for dev in 0..MAX_SLOTS as u64 {
            assert!(id.file_id(fd, &st(dev, 2), |_| {}).is_some());
        }
        assert_eq!(id.file_id(fd, &st(1000, 2), |_| {}), None);
    }
}
