//! The metadata cache: attributes, directory listings, negative entries and symlink
//! targets of the backing, kept in the daemon so that a hit costs no backing syscall.
//!
//! # Model
//!
//! Everything is keyed by FUSE node id (`fs::inode`: a backing inode number on the root's
//! filesystem, stable across remounts). Two kinds of entry, each one unit of the LRU:
//!
//! - an **inode entry**: the backing's `stat`, the file handle that reaches the inode again
//!   without a path ([`HandleRef`]), and for a symlink its target;
//! - a **directory entry**: a validator (the directory's mtime and ctime when it was last
//!   checked), the names looked up in it (a child's node id, or [`Name::Absent`]: a
//!   negative entry), and, once a whole listing was read, that listing.
//!
//! # Coherence
//!
//! - `shared` (default): an entry is trusted for `ttl` after it was fetched or checked.
//!   Then one stat revalidates it: for a file the stat *is* the new entry; for a directory
//!   the stat's mtime/ctime are compared with the validator, and when they match every name
//!   and the listing stay good (a name appears or goes only with an mtime change). A
//!   validator whose times were within [`SETTLE`] of the clock when it was taken cannot
//!   vouch (a change in the same timestamp tick would not move them): such a directory's
//!   names are dropped at its next check instead of kept.
//! - `exclusive`: entries are valid until changed through the mount. A background sweep
//!   ([`MetaCache::sweep`], driven by `fs`) compares each cached directory's validator with
//!   the backing and drops what changed (an *outside change*, logged and counted).
//!
//! # Invariants
//!
//! - A name or listing is stored only under a validator taken *before* it was read: the
//!   reader captures the directory's `gen` after the check, and a store with another gen is
//!   refused. Anything that drops names or changes the directory bumps `gen`. One
//!   exception, exclusive mode only: a directory made through the mount gets the listing
//!   `.` and `..` under the stat taken after its mkdir (`State::put_made_dir`; nothing else
//!   writes into it).
//! - Every namespace change through the mount reaches the cache through one call,
//!   [`MetaCache::apply`], in the request that made it, before the reply.
//! - Memory: `bytes` (an estimate incl. map overhead) stays at or below `budget` after
//!   every insert; the least recently used entries are evicted first.
//!
//! # Locks
//!
//! One mutex around [`State`]; held for map operations only, never across a syscall.
//! Nothing here blocks on I/O: the callers (`fs`) make the syscalls.
//!
//! # Offline (issue 16)
//!
//! [`MetaCache::lookup_cached`], [`MetaCache::attr_cached`], [`MetaCache::listing_cached`]
//! and [`MetaCache::link_cached`] answer from whatever is cached, however old (but never an
//! entry a change through the mount expired): what offline mode serves while the backing
//! is unreachable. [`MetaCache::expire_all`] takes the trust back when it returns.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

pub mod format;

/// How far the backing may change behind the mount's back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coherence {
    /// Others may change the backing: entries expire after `metadata_ttl`.
    Shared,
    /// Only this mount changes the backing: entries are valid until changed through it.
    Exclusive,
}

impl std::str::FromStr for Coherence {
    type Err = ();
    fn from_str(s: &str) -> Result<Coherence, ()> {
        match s {
            "shared" => Ok(Coherence::Shared),
            "exclusive" => Ok(Coherence::Exclusive),
            _ => Err(()),
        }
    }
}

impl Coherence {
    pub fn name(self) -> &'static str {
        match self {
            Coherence::Shared => "shared",
            Coherence::Exclusive => "exclusive",
        }
    }
}

/// Default byte budget (`metadata_cache_size=`).
pub const DEFAULT_BUDGET: u64 = 64 << 20;
/// Default `metadata_checkpoint_interval=`: how much metadata a crash can cost (the
/// entries learnt since the last snapshot; they are fetched again) against the write of a
/// snapshot (the whole cache, at most `metadata_cache_size`) each interval it changed.
pub const DEFAULT_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(60);
/// Default `metadata_ttl=` (NFS's `actimeo` order of magnitude).
pub const DEFAULT_TTL: Duration = Duration::from_secs(3);
/// A directory validator whose times lie this close to the clock cannot vouch for its
/// names: a change inside the same timestamp tick would leave them unchanged.
pub const SETTLE: Duration = Duration::from_secs(1);

/// The file handle of a backing inode (`name_to_handle_at`): reaches it again without a
/// path or an open descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandleRef {
    pub mount: i32,
    pub handle_type: i32,
    pub bytes: Box<[u8]>,
}

/// What a name in a directory is known to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Name {
    /// The name exists and is the inode with this node id.
    Child(u64),
    /// The name does not exist (a negative entry).
    Absent,
    /// The name is in the directory's listing; which inode it is was not looked up.
    Listed,
}

/// One entry of a directory listing, as `readdir` gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dirent {
    pub name: Box<[u8]>,
    pub backing_ino: u64,
    pub d_type: u8,
}

/// A namespace change made through the mount, described for [`MetaCache::apply`].
#[derive(Debug)]
pub enum Change<'a> {
    /// `name` was created (or linked) in `dir`: the child's node id, stat and handle.
    Created {
        dir: u64,
        name: &'a [u8],
        child: u64,
        st: &'a libc::stat,
        handle: Option<HandleRef>,
    },
    /// `name` was removed from `dir`; `child` the node id it had, when known.
    Removed {
        dir: u64,
        name: &'a [u8],
        child: Option<u64>,
    },
    /// `from/name` moved to `to/newname` (`exchange`: the two swapped). `child` and
    /// `target` are the node ids of the moved entry and of what `newname` was, if known.
    Renamed {
        from: u64,
        name: &'a [u8],
        to: u64,
        newname: &'a [u8],
        exchange: bool,
        child: Option<u64>,
        target: Option<u64>,
    },
    /// The attributes of `id` changed (setattr, a write, an xattr change): the new stat,
    /// or None when the caller has none (the entry is dropped).
    Attr { id: u64, st: Option<&'a libc::stat> },
    /// The named directories changed (their mtime moved) through the mount: their new
    /// stats, taken after the change.
    Dirs(&'a [(u64, libc::stat)]),
    /// A namespace change whose outcome is unknown (it failed): forget these names.
    Unknown(&'a [(u64, &'a [u8])]),
}

/// The figures `stats` shows.
#[derive(Default)]
pub struct Counters {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub revalidations: AtomicU64,
    pub outside_changes: AtomicU64,
    pub evictions: AtomicU64,
    /// Directories the exclusive mode's sweep checked.
    pub sweep_checks: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Size, mtime and ctime of a directory: what vouches for its names.
type Validator = (i64, i64, i64, i64);

fn validator(st: &libc::stat) -> Validator {
    (st.st_mtime, st.st_mtime_nsec, st.st_ctime, st.st_ctime_nsec)
}

/// Whether the validator's newest time is older than [`SETTLE`] by the wall clock.
fn settled(st: &libc::stat) -> bool {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let newest = (st.st_mtime, st.st_mtime_nsec).max((st.st_ctime, st.st_ctime_nsec));
    let t = Duration::new(
        newest.0.max(0) as u64,
        newest.1.clamp(0, 999_999_999) as u32,
    );
    t + SETTLE <= now
}

struct InodeEntry {
    st: libc::stat,
    handle: Option<HandleRef>,
    link: Option<Box<[u8]>>,
    /// Extended attributes read from the backing, kept while the stat is trusted and its
    /// ctime unchanged (an xattr change moves the ctime).
    xattrs: Option<Box<Xattrs>>,
    /// Bumped whenever `xattrs` is dropped: a store carries the gen read before its call.
    xgen: u64,
    /// When the stat was taken (shared mode: trusted for `ttl` from here).
    fetched: Instant,
    /// Changed through the mount without a new stat: not to be served (the handle stays).
    expired: bool,
    /// Last known good, but not to be trusted before one stat (loaded from a checkpoint
    /// that does not vouch for it, or the backing came back from offline): online it is
    /// served like `expired`; offline it is still the best answer there is.
    recheck: bool,
    tick: u64,
    bytes: usize,
}

/// The extended attributes of one inode known so far.
#[derive(Default)]
struct Xattrs {
    /// A value, or None: the name is absent (ENODATA).
    values: HashMap<Box<[u8]>, Option<Box<[u8]>>>,
    /// The name list as a non-root caller sees it ([0]) and as root does ([1]: with
    /// `trusted.*`).
    lists: [Option<Box<[u8]>>; 2],
}

/// Largest xattr value or name list kept (bigger ones are always read from the backing).
pub const MAX_XATTR_CACHED: usize = 4096;

/// What the cache knows of an inode's extended attribute (or name list).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum XattrLookup {
    /// Cached: the value (None: absent, ENODATA).
    Hit(Option<Box<[u8]>>),
    /// Not cached, but the inode's attributes are trusted: read it from the backing and
    /// store it with this gen.
    Miss(u64),
    /// The inode's attributes are not trusted: read it from the backing, store nothing.
    Untrusted,
}

struct DirEntry {
    validator: Validator,
    /// The validator's times were settled when taken (see [`SETTLE`]).
    settled: bool,
    /// When the validator was last confirmed against the backing.
    checked: Instant,
    /// Loaded from a checkpoint and not yet confirmed: not to be used before a check.
    unchecked: bool,
    /// Bumped on every drop or change of the names (see the module invariants).
    gen: u64,
    names: HashMap<Box<[u8]>, Name>,
    /// The complete listing, `.` and `..` included, in the backing's order.
    listing: Option<Arc<Vec<Dirent>>>,
    tick: u64,
    bytes: usize,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Key {
    Inode(u64),
    Dir(u64),
}

struct State {
    inodes: HashMap<u64, InodeEntry>,
    dirs: HashMap<u64, DirEntry>,
    lru: BTreeMap<u64, Key>,
    next_tick: u64,
    next_gen: u64,
    bytes: usize,
    /// Bumped by every change of what a checkpoint would hold (not by LRU touches).
    version: u64,
}

/// Bytes an inode entry costs (the stat, map slot and LRU node, handle and target).
const INODE_BASE: usize = std::mem::size_of::<InodeEntry>() + 64;
const DIR_BASE: usize = std::mem::size_of::<DirEntry>() + 64;
/// One name in a directory's map (key allocation, map slot).
const NAME_COST: usize = 48;
/// One listing entry (its struct and name allocation).
const DIRENT_COST: usize = std::mem::size_of::<Dirent>() + 16;

fn inode_bytes(e: &InodeEntry) -> usize {
    INODE_BASE
        + e.handle.as_ref().map_or(0, |h| h.bytes.len())
        + e.link.as_ref().map_or(0, |l| l.len())
        + e.xattrs.as_ref().map_or(0, |x| xattrs_bytes(x))
}

fn xattrs_bytes(x: &Xattrs) -> usize {
    let values: usize = x
        .values
        .iter()
        .map(|(k, v)| k.len() + v.as_ref().map_or(0, |v| v.len()) + NAME_COST)
        .sum();
    let lists: usize = x.lists.iter().flatten().map(|l| l.len()).sum();
    std::mem::size_of::<Xattrs>() + values + lists
}

fn dir_bytes(d: &DirEntry) -> usize {
    let names: usize = d.names.keys().map(|k| k.len() + NAME_COST).sum();
    let listing: usize = d
        .listing
        .as_ref()
        .map_or(0, |l| l.iter().map(|e| e.name.len() + DIRENT_COST).sum());
    DIR_BASE + names + listing
}

/// The result of asking whether a directory's names can be used now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirCheck {
    /// Valid: use its names; stores must carry this gen.
    Fresh(u64),
    /// Cached but due for a check (shared mode, past the TTL), or not cached at all: stat
    /// the directory and call [`MetaCache::check_dir`].
    Stale,
}

/// The metadata cache of one mount.
pub struct MetaCache {
    pub coherence: Coherence,
    /// `metadata_ttl` in nanoseconds (changeable at run time: [`MetaCache::set_ttl`]).
    ttl_ns: AtomicU64,
    budget: usize,
    state: Mutex<State>,
    pub counters: Counters,
}

impl MetaCache {
    pub fn new(coherence: Coherence, ttl: Duration, budget: u64) -> MetaCache {
        MetaCache {
            coherence,
            ttl_ns: AtomicU64::new(ttl.as_nanos().min(u128::from(u64::MAX)) as u64),
            budget: budget.min(usize::MAX as u64) as usize,
            state: Mutex::new(State {
                inodes: HashMap::new(),
                dirs: HashMap::new(),
                lru: BTreeMap::new(),
                next_tick: 1,
                next_gen: 1,
                bytes: 0,
                version: 0,
            }),
            counters: Counters::default(),
        }
    }

    /// `metadata_ttl` now.
    pub fn ttl(&self) -> Duration {
        Duration::from_nanos(self.ttl_ns.load(Ordering::Relaxed))
    }

    /// Changes `metadata_ttl` on a live mount (shared mode: how long entries are trusted,
    /// from now on also for those cached; exclusive: the sweep's period is fixed at mount).
    pub fn set_ttl(&self, ttl: Duration) {
        let ns = ttl.as_nanos().min(u128::from(u64::MAX)) as u64;
        self.ttl_ns.store(ns, Ordering::Relaxed);
    }

    fn exclusive(&self) -> bool {
        self.coherence == Coherence::Exclusive
    }

    /// Whether a directory's names may be used now.
    fn dir_fresh(&self, d: &DirEntry) -> bool {
        !d.unchecked && (self.exclusive() || self.remaining(d.checked).is_some())
    }

    /// How long from now an entry fetched at `at` stays trusted (None: not any more).
    fn remaining(&self, at: Instant) -> Option<Duration> {
        if self.exclusive() {
            return Some(Duration::MAX);
        }
        self.ttl()
            .checked_sub(at.elapsed())
            .filter(|d| !d.is_zero())
    }

    /// The cached attributes of `id` while trusted, with how long they stay so (counts a
    /// hit or a miss).
    pub fn attr(&self, id: u64) -> Option<(libc::stat, Duration)> {
        let mut s = self.state.lock();
        let found = s
            .inodes
            .get(&id)
            .filter(|e| !e.expired && !e.recheck)
            .and_then(|e| self.remaining(e.fetched).map(|left| (e.st, left)));
        match found {
            Some(hit) => {
                bump(&self.counters.hits);
                s.touch(Key::Inode(id));
                Some(hit)
            }
            None => {
                bump(&self.counters.misses);
                if s.inodes.contains_key(&id) {
                    // expired: the caller's stat that follows is the revalidation
                    bump(&self.counters.revalidations);
                }
                None
            }
        }
    }

    /// The cached handle of `id`, however old (it names the inode, not its state).
    pub fn handle(&self, id: u64) -> Option<HandleRef> {
        self.state.lock().inodes.get(&id)?.handle.clone()
    }

    /// The cached target of symlink `id`, while its attributes are trusted.
    pub fn link(&self, id: u64) -> Option<Box<[u8]>> {
        let mut s = self.state.lock();
        let hit = s
            .inodes
            .get(&id)
            .filter(|e| !e.expired && !e.recheck && self.remaining(e.fetched).is_some())
            .and_then(|e| e.link.clone());
        match &hit {
            Some(_) => {
                bump(&self.counters.hits);
                s.touch(Key::Inode(id));
            }
            None => bump(&self.counters.misses),
        }
        hit
    }

    /// Fresh attributes of `id` from the backing (a stat just made), with its handle when
    /// known. A different inode under the same id (a reused inode number: its ctime or
    /// type differ) loses the old target.
    pub fn put_attr(&self, id: u64, st: &libc::stat, handle: Option<HandleRef>) {
        let mut s = self.state.lock();
        s.put_inode(id, st, handle);
        self.evict(&mut s);
    }

    /// The target of symlink `id`, just read with `readlink` (kept with its attributes,
    /// which must be cached and trusted).
    pub fn put_link(&self, id: u64, target: &[u8]) {
        let mut s = self.state.lock();
        s.version += 1;
        let Some(e) = s.inodes.get_mut(&id) else {
            return;
        };
        if e.expired || e.recheck || e.st.st_mode & libc::S_IFMT != libc::S_IFLNK {
            return;
        }
        e.link = Some(target.into());
        let bytes = inode_bytes(e);
        let old = std::mem::replace(&mut e.bytes, bytes);
        s.bytes = s.bytes + bytes - old;
        self.evict(&mut s);
    }

    /// Extended attribute `name` of `id` (`None`: the name list; `root`: as root sees it).
    /// Counts a hit or a miss.
    pub fn xattr(&self, id: u64, name: Option<&[u8]>, root: bool) -> XattrLookup {
        let mut s = self.state.lock();
        let Some(e) = s
            .inodes
            .get(&id)
            .filter(|e| !e.expired && !e.recheck && self.remaining(e.fetched).is_some())
        else {
            return XattrLookup::Untrusted;
        };
        let found = e.xattrs.as_ref().and_then(|x| match name {
            Some(n) => x.values.get(n).cloned(),
            None => x.lists[usize::from(root)].clone().map(Some),
        });
        let xgen = e.xgen;
        match found {
            Some(v) => {
                bump(&self.counters.hits);
                s.touch(Key::Inode(id));
                XattrLookup::Hit(v)
            }
            None => {
                bump(&self.counters.misses);
                XattrLookup::Miss(xgen)
            }
        }
    }

    /// What a read of xattr `name` of `id` (None: the name list, as root saw it or not)
    /// found, read after [`MetaCache::xattr`] gave `xgen`: `value` None is ENODATA.
    /// Refused when anything dropped the inode's xattrs since, or it is too big.
    pub fn put_xattr(
        &self,
        id: u64,
        xgen: u64,
        name: Option<&[u8]>,
        root: bool,
        value: Option<&[u8]>,
    ) {
        if value.is_some_and(|v| v.len() > MAX_XATTR_CACHED) || (name.is_none() && value.is_none())
        {
            return;
        }
        let mut s = self.state.lock();
        let Some(e) = s.inodes.get_mut(&id) else {
            return;
        };
        if e.xgen != xgen || e.expired || e.recheck {
            return;
        }
        let x = e.xattrs.get_or_insert_with(Default::default);
        match name {
            Some(n) => {
                x.values.insert(n.into(), value.map(Into::into));
            }
            None => x.lists[usize::from(root)] = value.map(Into::into),
        }
        let bytes = inode_bytes(e);
        let old = std::mem::replace(&mut e.bytes, bytes);
        s.bytes = s.bytes + bytes - old;
        s.version += 1;
        self.evict(&mut s);
    }

    /// Whether the names of `dir` can be used now.
    pub fn dir_check(&self, dir: u64) -> DirCheck {
        let s = self.state.lock();
        match s.dirs.get(&dir) {
            Some(d) if self.dir_fresh(d) => DirCheck::Fresh(d.gen),
            _ => DirCheck::Stale,
        }
    }

    /// A stat of directory `dir` just taken: confirms (or, when its times moved, drops)
    /// its names and listing, records the stat as its attributes, and returns the gen
    /// that stores of what is read from now on must carry.
    pub fn check_dir(&self, dir: u64, st: &libc::stat, handle: Option<HandleRef>) -> u64 {
        let mut s = self.state.lock();
        s.put_inode(dir, st, handle);
        let v = validator(st);
        let settled_now = settled(st);
        let gen = s.next_gen();
        let tick = s.tick();
        let fresh = DirEntry {
            validator: v,
            settled: settled_now,
            checked: Instant::now(),
            unchecked: false,
            gen,
            names: HashMap::new(),
            listing: None,
            tick,
            bytes: DIR_BASE,
        };
        let (old_tick, old_bytes, kept) = match s.dirs.get_mut(&dir) {
            Some(d) if d.validator == v && d.settled => {
                bump(&self.counters.revalidations);
                d.checked = Instant::now();
                d.unchecked = false;
                (
                    Some(std::mem::replace(&mut d.tick, tick)),
                    d.bytes,
                    Some(d.gen),
                )
            }
            Some(d) => {
                if d.validator != v && (!d.names.is_empty() || d.listing.is_some()) {
                    // shared mode: the directory changed since its names were read
                    bump(&self.counters.outside_changes);
                    tracing::debug!(dir, "directory changed in the backing; its names dropped");
                }
                let old = std::mem::replace(d, fresh);
                (Some(old.tick), old.bytes, None)
            }
            None => {
                s.dirs.insert(dir, fresh);
                (None, 0, None)
            }
        };
        if let Some(t) = old_tick {
            s.lru.remove(&t);
        }
        s.lru.insert(tick, Key::Dir(dir));
        let gen = match kept {
            Some(g) => g,
            None => {
                s.bytes = s.bytes + DIR_BASE - old_bytes;
                gen
            }
        };
        self.evict(&mut s);
        gen
    }

    /// What `name` in `dir` is known to be, when `dir` is fresh (counts a hit or a miss).
    /// A name missing from a complete listing is absent.
    pub fn name(&self, dir: u64, name: &[u8]) -> Option<Name> {
        let mut s = self.state.lock();
        let fresh = s.dirs.get(&dir).is_some_and(|d| self.dir_fresh(d));
        let found = s
            .dirs
            .get(&dir)
            .filter(|_| fresh)
            .and_then(|d| match d.names.get(name) {
                Some(Name::Listed) => None,
                Some(n) => Some(*n),
                None if d.listing.is_some() => Some(Name::Absent),
                None => None,
            });
        match found {
            Some(_) => {
                bump(&self.counters.hits);
                s.touch(Key::Dir(dir));
            }
            None => bump(&self.counters.misses),
        }
        found
    }

    /// How long `dir`'s names stay trusted from now (for the kernel's entry TTL).
    pub fn dir_remaining(&self, dir: u64) -> Duration {
        let s = self.state.lock();
        s.dirs
            .get(&dir)
            .filter(|d| !d.unchecked)
            .and_then(|d| self.remaining(d.checked))
            .unwrap_or(Duration::ZERO)
    }

    /// What a lookup of `name` in `dir` found, read under the validator of `gen`.
    pub fn put_name(&self, dir: u64, gen: u64, name: &[u8], what: Name) {
        let mut s = self.state.lock();
        s.version += 1;
        let Some(d) = s.dirs.get_mut(&dir) else {
            return;
        };
        if d.gen != gen {
            return;
        }
        let added = match d.names.insert(name.into(), what) {
            None => name.len() + NAME_COST,
            Some(_) => 0,
        };
        d.bytes += added;
        s.bytes += added;
        self.evict(&mut s);
    }

    /// The complete listing of `dir`, when fresh (counts a hit or a miss).
    pub fn listing(&self, dir: u64) -> Option<Arc<Vec<Dirent>>> {
        let mut s = self.state.lock();
        let found = s
            .dirs
            .get(&dir)
            .filter(|d| self.dir_fresh(d))
            .and_then(|d| d.listing.clone());
        match found {
            Some(_) => {
                bump(&self.counters.hits);
                s.touch(Key::Dir(dir));
            }
            None => bump(&self.counters.misses),
        }
        found
    }

    /// A whole listing of `dir` read from the backing under the validator of `gen`.
    pub fn put_listing(&self, dir: u64, gen: u64, entries: Vec<Dirent>) {
        let mut s = self.state.lock();
        s.version += 1;
        let Some(d) = s.dirs.get_mut(&dir) else {
            return;
        };
        if d.gen != gen {
            return;
        }
        for e in &entries {
            if e.name.as_ref() != b"." && e.name.as_ref() != b".." {
                d.names.entry(e.name.clone()).or_insert(Name::Listed);
            }
        }
        // a name looked up absent but listed now cannot be: the gen says nothing changed
        d.listing = Some(Arc::new(entries));
        let bytes = dir_bytes(d);
        let old = std::mem::replace(&mut d.bytes, bytes);
        s.bytes = s.bytes + bytes - old;
        self.evict(&mut s);
    }

    /// Forgets `dir`'s names and listing (an outside change noticed by a sweep, or a
    /// change whose outcome is unknown). Returns the names it knew (for the kernel's
    /// entry invalidation).
    pub fn drop_dir(&self, dir: u64) -> Vec<Box<[u8]>> {
        let mut s = self.state.lock();
        let Some(d) = s.dirs.remove(&dir) else {
            return Vec::new();
        };
        s.lru.remove(&d.tick);
        s.bytes -= d.bytes;
        s.drop_inode(dir);
        d.names.into_keys().collect()
    }

    /// Forgets everything (`bcachefs-lite drop`); returns how many inodes and directories
    /// it held. Gens keep counting up, so a store in flight under an old gen finds nothing
    /// to add to.
    pub fn clear(&self) -> usize {
        let mut s = self.state.lock();
        s.version += 1;
        let n = s.inodes.len() + s.dirs.len();
        s.inodes.clear();
        s.dirs.clear();
        s.lru.clear();
        s.bytes = 0;
        n
    }

    /// Forgets everything about inode `id` (its handle was found stale: the inode is gone,
    /// so what names it must be looked up again) and counts it as an outside change.
    pub fn forget_inode(&self, id: u64) {
        let mut s = self.state.lock();
        if s.inodes.contains_key(&id) {
            s.drop_inode(id);
            s.drop_dir_entry(id);
            bump(&self.counters.outside_changes);
            tracing::debug!(id, "stale handle: its cached metadata dropped");
        }
    }

    /// Notes an outside change found by a sweep or a check (stats and log).
    pub fn outside_change(&self, dir: u64, what: &str) {
        bump(&self.counters.outside_changes);
        tracing::info!(
            dir,
            "outside change in the backing noticed ({what}); dropped"
        );
    }

    /// The directories with a validator, and the validators (for the exclusive sweep).
    pub fn dir_validators(&self) -> Vec<(u64, (i64, i64, i64, i64))> {
        let s = self.state.lock();
        s.dirs.iter().map(|(id, d)| (*id, d.validator)).collect()
    }

    /// The validator of `dir` now.
    pub fn validator_of(&self, dir: u64) -> Option<(i64, i64, i64, i64)> {
        self.state.lock().dirs.get(&dir).map(|d| d.validator)
    }

    /// Whether `st` still matches `dir`'s validator.
    pub fn validator_matches(v: (i64, i64, i64, i64), st: &libc::stat) -> bool {
        v == validator(st)
    }

    /// The one entry point for changes made through the mount: updates every entry the
    /// change concerns, in the request that made it.
    pub fn apply(&self, change: Change<'_>) {
        let mut s = self.state.lock();
        match change {
            Change::Created {
                dir,
                name,
                child,
                st,
                handle,
            } => {
                s.put_inode(child, st, handle);
                let d_type = d_type_of(st.st_mode);
                s.set_name(dir, name, Name::Child(child), Some((st.st_ino, d_type)));
                if d_type == libc::DT_DIR && self.exclusive() {
                    s.put_made_dir(dir, child, st);
                }
            }
            Change::Removed { dir, name, child } => {
                s.set_name(dir, name, Name::Absent, None);
                if let Some(child) = child {
                    // nlink and ctime moved; a removed directory has nothing left to list
                    s.drop_inode(child);
                    s.drop_dir_entry(child);
                }
            }
            Change::Renamed {
                from,
                name,
                to,
                newname,
                exchange,
                child,
                target,
            } => {
                let moved = s.listed(from, name);
                let over = s.listed(to, newname);
                let child_name = child.map_or(Name::Listed, Name::Child);
                let target_name = target.map_or(Name::Listed, Name::Child);
                if exchange {
                    s.set_name(to, newname, child_name, moved);
                    s.set_name(from, name, target_name, over);
                } else {
                    s.set_name(from, name, Name::Absent, None);
                    s.set_name(to, newname, child_name, moved);
                }
                // ctime of the moved (and, for a directory, its validator and ".."); nlink
                // of the replaced
                for id in [child, target].into_iter().flatten() {
                    s.drop_inode(id);
                    s.drop_dir_entry(id);
                }
                if (child.is_none() && moved.is_none()) || (exchange && target.is_none()) {
                    // a name without a known entry moved: what it is must be looked up
                    s.forget_name(to, newname);
                    if exchange {
                        s.forget_name(from, name);
                    }
                }
            }
            Change::Attr { id, st } => match st {
                Some(st) => {
                    // an xattr change may leave the ctime in the same tick: drop them anyway
                    s.drop_xattrs(id);
                    s.put_inode(id, st, None);
                    if let Some(d) = s.dirs.get_mut(&id) {
                        // a directory's own change (chmod, utimens) moves its ctime
                        d.validator = validator(st);
                        d.settled = settled(st);
                    }
                }
                None => {
                    s.drop_xattrs(id);
                    if let Some(e) = s.inodes.get_mut(&id) {
                        // expire it, but keep the handle (it still names the inode)
                        e.expired = true;
                    }
                }
            },
            Change::Dirs(dirs) => {
                for (dir, st) in dirs {
                    s.put_inode(*dir, st, None);
                    if let Some(d) = s.dirs.get_mut(dir) {
                        d.validator = validator(st);
                        d.settled = settled(st);
                        d.checked = Instant::now();
                    }
                }
            }
            Change::Unknown(names) => {
                for (dir, name) in names {
                    s.forget_name(*dir, name);
                }
            }
        }
        self.evict(&mut s);
    }

    /// A number that changes whenever what [`MetaCache::checkpoint`] would hold changes.
    pub fn version(&self) -> u64 {
        self.state.lock().version
    }

    /// The whole cache as a checkpoint: the entries of the backing root's filesystem
    /// (`root_dev`; node ids elsewhere are not stable across mounts). `clean`: see
    /// [`format::FLAG_CLEAN`].
    pub fn checkpoint(&self, root_dev: u64, root_ino: u64, clean: bool) -> format::Checkpoint {
        use format::{DirRec, InodeRec, NameRec};
        let s = self.state.lock();
        let stable =
            |id: u64| id < (1 << 63) && s.inodes.get(&id).is_none_or(|e| e.st.st_dev == root_dev);
        let mut c = format::Checkpoint {
            root_ino,
            clean,
            ..Default::default()
        };
        for (&id, e) in &s.inodes {
            if e.expired || e.recheck || !stable(id) || e.st.st_dev != root_dev {
                continue;
            }
            let st = &e.st;
            c.inodes.push(InodeRec {
                id,
                ino: st.st_ino,
                mode: st.st_mode,
                uid: st.st_uid,
                gid: st.st_gid,
                nlink: st.st_nlink,
                size: st.st_size,
                blocks: st.st_blocks,
                rdev: st.st_rdev,
                blksize: st.st_blksize,
                times: [
                    (st.st_atime, st.st_atime_nsec),
                    (st.st_mtime, st.st_mtime_nsec),
                    (st.st_ctime, st.st_ctime_nsec),
                ],
                handle: e.handle.as_ref().map(|h| (h.handle_type, h.bytes.to_vec())),
                link: e.link.as_ref().map(|l| l.to_vec()),
            });
        }
        for (&id, d) in &s.dirs {
            if d.unchecked || !stable(id) {
                continue;
            }
            let names = d
                .names
                .iter()
                .map(|(n, what)| {
                    let (kind, child) = match *what {
                        Name::Absent => (0, 0),
                        Name::Child(c) if stable(c) => (1, c),
                        _ => (2, 0),
                    };
                    NameRec {
                        name: n.to_vec(),
                        kind,
                        child,
                    }
                })
                .collect();
            c.dirs.push(DirRec {
                id,
                mtime: (d.validator.0, d.validator.1),
                ctime: (d.validator.2, d.validator.3),
                names,
                listing: d.listing.as_ref().map(|l| {
                    l.iter()
                        .map(|e| (e.name.to_vec(), e.backing_ino, e.d_type))
                        .collect()
                }),
            });
        }
        c
    }

    /// Fills the cache from checkpoint `c` of this backing tree (refused when it describes
    /// another root). `trusted`: written at a clean unmount with nothing after it; in
    /// exclusive mode its entries are then valid at once, else (and always in shared mode)
    /// they start expired, so the first use checks them with one stat. `root_dev` and
    /// `mount` replace the device number and mount id, which change between mounts.
    /// Returns the entries loaded.
    pub fn load(
        &self,
        c: format::Checkpoint,
        root_ino: u64,
        root_dev: u64,
        mount: Option<i32>,
        trusted: bool,
    ) -> usize {
        if c.root_ino != root_ino {
            tracing::warn!("metadata checkpoint of another backing root; not loaded");
            return 0;
        }
        let valid = trusted && self.exclusive();
        let mut s = self.state.lock();
        s.version += 1;
        let mut n = 0;
        for i in c.inodes {
            // SAFETY: stat is plain old data (integers only); all-zero is valid.
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            st.st_dev = root_dev;
            st.st_ino = i.ino;
            st.st_mode = i.mode;
            st.st_uid = i.uid;
            st.st_gid = i.gid;
            st.st_nlink = i.nlink;
            st.st_size = i.size;
            st.st_blocks = i.blocks;
            st.st_rdev = i.rdev;
            st.st_blksize = i.blksize;
            (st.st_atime, st.st_atime_nsec) = i.times[0];
            (st.st_mtime, st.st_mtime_nsec) = i.times[1];
            (st.st_ctime, st.st_ctime_nsec) = i.times[2];
            let handle = match (mount, i.handle) {
                (Some(mount), Some((handle_type, bytes))) => Some(HandleRef {
                    mount,
                    handle_type,
                    bytes: bytes.into(),
                }),
                _ => None,
            };
            s.put_inode(i.id, &st, handle);
            if let Some(e) = s.inodes.get_mut(&i.id) {
                e.recheck = !valid;
                e.link = i.link.map(Into::into);
                let bytes = inode_bytes(e);
                let old = std::mem::replace(&mut e.bytes, bytes);
                s.bytes = s.bytes + bytes - old;
            }
            n += 1;
        }
        for d in c.dirs {
            let gen = s.next_gen();
            let tick = s.tick();
            let mut v_st: libc::stat = unsafe_zeroed_stat();
            (v_st.st_mtime, v_st.st_mtime_nsec) = d.mtime;
            (v_st.st_ctime, v_st.st_ctime_nsec) = d.ctime;
            let mut e = DirEntry {
                validator: validator(&v_st),
                settled: settled(&v_st),
                checked: Instant::now(),
                unchecked: !valid,
                gen,
                names: d
                    .names
                    .into_iter()
                    .map(|r| {
                        let what = match r.kind {
                            0 => Name::Absent,
                            1 => Name::Child(r.child),
                            _ => Name::Listed,
                        };
                        (r.name.into_boxed_slice(), what)
                    })
                    .collect(),
                listing: d.listing.map(|l| {
                    Arc::new(
                        l.into_iter()
                            .map(|(name, backing_ino, d_type)| Dirent {
                                name: name.into_boxed_slice(),
                                backing_ino,
                                d_type,
                            })
                            .collect(),
                    )
                }),
                tick,
                bytes: 0,
            };
            e.bytes = dir_bytes(&e);
            s.bytes += e.bytes;
            if let Some(old) = s.dirs.insert(d.id, e) {
                s.lru.remove(&old.tick);
                s.bytes -= old.bytes;
            }
            s.lru.insert(tick, Key::Dir(d.id));
            n += 1;
        }
        self.evict(&mut s);
        n
    }

    /// Whatever is cached about `name` in `dir`, however old, and since when it was last
    /// known good: for serving metadata while the backing is unreachable (offline mode).
    pub fn lookup_cached(&self, dir: u64, name: &[u8]) -> Option<(Name, Instant)> {
        let s = self.state.lock();
        let d = s.dirs.get(&dir)?;
        let n = match d.names.get(name) {
            Some(n) => *n,
            None if d.listing.is_some() => Name::Absent,
            None => return None,
        };
        Some((n, d.checked))
    }

    /// Entries and bytes cached now.
    pub fn usage(&self) -> (usize, usize, usize) {
        let s = self.state.lock();
        (s.inodes.len(), s.dirs.len(), s.bytes)
    }

    pub fn budget(&self) -> usize {
        self.budget
    }

    /// Evicts least recently used entries until the budget holds.
    fn evict(&self, s: &mut State) {
        while s.bytes > self.budget {
            let Some((_, key)) = s.lru.pop_first() else {
                break;
            };
            bump(&self.counters.evictions);
            match key {
                Key::Inode(id) => {
                    if let Some(e) = s.inodes.remove(&id) {
                        s.bytes -= e.bytes;
                    }
                }
                Key::Dir(id) => {
                    if let Some(d) = s.dirs.remove(&id) {
                        s.bytes -= d.bytes;
                    }
                }
            }
        }
    }

    /// The figures `stats` shows, as (name, JSON value).
    pub fn figures(&self) -> Vec<(String, serde_json::Value)> {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let (inodes, dirs, bytes) = self.usage();
        vec![
            ("metadata_coherence".into(), self.coherence.name().into()),
            (
                "metadata_ttl_ms".into(),
                (self.ttl().as_millis() as u64).into(),
            ),
            ("metadata_hits".into(), get(&c.hits).into()),
            ("metadata_misses".into(), get(&c.misses).into()),
            (
                "metadata_revalidations".into(),
                get(&c.revalidations).into(),
            ),
            (
                "metadata_outside_changes".into(),
                get(&c.outside_changes).into(),
            ),
            ("metadata_evictions".into(), get(&c.evictions).into()),
            ("metadata_sweep_checks".into(), get(&c.sweep_checks).into()),
            ("metadata_entries".into(), (inodes + dirs).into()),
            ("metadata_inodes".into(), inodes.into()),
            ("metadata_dirs".into(), dirs.into()),
            ("metadata_bytes".into(), bytes.into()),
            ("metadata_budget_bytes".into(), self.budget.into()),
        ]
    }
}

// ---- Offline (issue 16): what was last known good, and the return ----------------------

impl MetaCache {
    /// The attributes of `id` last fetched, however old, unless a change through the mount
    /// made them untrue (`expired`): what offline mode serves.
    pub fn attr_cached(&self, id: u64) -> Option<libc::stat> {
        let s = self.state.lock();
        s.inodes.get(&id).filter(|e| !e.expired).map(|e| e.st)
    }

    /// The target of symlink `id`, however old (offline), unless expired.
    pub fn link_cached(&self, id: u64) -> Option<Box<[u8]>> {
        let s = self.state.lock();
        s.inodes
            .get(&id)
            .filter(|e| !e.expired)
            .and_then(|e| e.link.clone())
    }

    /// The complete listing of `dir` last read, however old (offline).
    pub fn listing_cached(&self, dir: u64) -> Option<Arc<Vec<Dirent>>> {
        let s = self.state.lock();
        s.dirs.get(&dir).and_then(|d| d.listing.clone())
    }

    /// The backing came back: nothing cached is trusted until checked again. Every inode
    /// entry must be rechecked (the next getattr or lookup stats it; offline, it is still
    /// served as the last known) and every directory must be
    /// confirmed by one stat before its names or listing are used (an unchanged directory
    /// keeps them). Returns the entries expired.
    pub fn expire_all(&self) -> usize {
        let mut s = self.state.lock();
        for e in s.inodes.values_mut() {
            e.recheck = true;
        }
        for d in s.dirs.values_mut() {
            d.unchecked = true;
        }
        s.inodes.len() + s.dirs.len()
    }
}

fn unsafe_zeroed_stat() -> libc::stat {
    // SAFETY: stat is plain old data (integers only); all-zero is valid.
    unsafe { std::mem::zeroed() }
}

/// The `d_type` of a file of mode `mode`.
pub fn d_type_of(mode: libc::mode_t) -> u8 {
    match mode & libc::S_IFMT {
        libc::S_IFREG => libc::DT_REG,
        libc::S_IFDIR => libc::DT_DIR,
        libc::S_IFLNK => libc::DT_LNK,
        libc::S_IFCHR => libc::DT_CHR,
        libc::S_IFBLK => libc::DT_BLK,
        libc::S_IFIFO => libc::DT_FIFO,
        libc::S_IFSOCK => libc::DT_SOCK,
        _ => libc::DT_UNKNOWN,
    }
}

impl State {
    fn tick(&mut self) -> u64 {
        self.next_tick += 1;
        self.next_tick
    }

    fn next_gen(&mut self) -> u64 {
        self.next_gen += 1;
        self.next_gen
    }

    /// Marks `key` most recently used.
    fn touch(&mut self, key: Key) {
        let tick = self.tick();
        let slot = match key {
            Key::Inode(id) => self.inodes.get_mut(&id).map(|e| &mut e.tick),
            Key::Dir(id) => self.dirs.get_mut(&id).map(|d| &mut d.tick),
        };
        if let Some(t) = slot {
            let old = std::mem::replace(t, tick);
            self.lru.remove(&old);
            self.lru.insert(tick, key);
        }
    }

    fn put_inode(&mut self, id: u64, st: &libc::stat, handle: Option<HandleRef>) {
        self.version += 1;
        let tick = self.tick();
        let gen = self.next_gen();
        match self.inodes.get_mut(&id) {
            Some(e) => {
                let same = e.st.st_ino == st.st_ino
                    && e.st.st_mode & libc::S_IFMT == st.st_mode & libc::S_IFMT
                    && (e.st.st_ctime, e.st.st_ctime_nsec) == (st.st_ctime, st.st_ctime_nsec);
                if !same {
                    e.link = None;
                    e.xattrs = None;
                    e.xgen = gen;
                }
                if e.st.st_ino != st.st_ino {
                    e.handle = None;
                }
                e.st = *st;
                if handle.is_some() {
                    e.handle = handle;
                }
                e.fetched = Instant::now();
                e.expired = false;
                e.recheck = false;
                let bytes = inode_bytes(e);
                let old_bytes = std::mem::replace(&mut e.bytes, bytes);
                let old_tick = std::mem::replace(&mut e.tick, tick);
                self.bytes = self.bytes + bytes - old_bytes;
                self.lru.remove(&old_tick);
            }
            None => {
                let mut e = InodeEntry {
                    st: *st,
                    handle,
                    link: None,
                    xattrs: None,
                    xgen: gen,
                    fetched: Instant::now(),
                    expired: false,
                    recheck: false,
                    tick,
                    bytes: 0,
                };
                e.bytes = inode_bytes(&e);
                self.bytes += e.bytes;
                self.inodes.insert(id, e);
            }
        }
        self.lru.insert(tick, Key::Inode(id));
    }

    /// Forgets `id`'s extended attributes; stores in flight carry an older gen.
    fn drop_xattrs(&mut self, id: u64) {
        let gen = self.next_gen();
        if let Some(e) = self.inodes.get_mut(&id) {
            e.xgen = gen;
            if e.xattrs.take().is_some() {
                self.version += 1;
                let bytes = inode_bytes(e);
                let old = std::mem::replace(&mut e.bytes, bytes);
                self.bytes = self.bytes + bytes - old;
            }
        }
    }

    fn drop_inode(&mut self, id: u64) {
        self.version += 1;
        if let Some(e) = self.inodes.remove(&id) {
            self.lru.remove(&e.tick);
            self.bytes -= e.bytes;
        }
    }

    fn drop_dir_entry(&mut self, id: u64) {
        self.version += 1;
        if let Some(d) = self.dirs.remove(&id) {
            self.lru.remove(&d.tick);
            self.bytes -= d.bytes;
        }
    }

    /// The backing inode number and type `name` has in `dir`'s listing.
    fn listed(&self, dir: u64, name: &[u8]) -> Option<(u64, u8)> {
        let d = self.dirs.get(&dir)?;
        let l = d.listing.as_ref()?;
        l.iter()
            .find(|e| e.name.as_ref() == name)
            .map(|e| (e.backing_ino, e.d_type))
    }

    /// Sets `name` in `dir` (a cached directory) to `what`; `listed` is its listing entry
    /// (None: it leaves the listing). A listed name whose listing entry is unknown makes
    /// the listing unknown.
    fn set_name(&mut self, dir: u64, name: &[u8], what: Name, listed: Option<(u64, u8)>) {
        self.version += 1;
        let gen = self.next_gen();
        let Some(d) = self.dirs.get_mut(&dir) else {
            return;
        };
        d.gen = gen;
        d.names.insert(name.into(), what);
        if let Some(l) = &mut d.listing {
            let l = Arc::make_mut(l);
            l.retain(|e| e.name.as_ref() != name);
            match (what, listed) {
                (Name::Absent, _) => {}
                (_, Some((ino, d_type))) => l.push(Dirent {
                    name: name.into(),
                    backing_ino: ino,
                    d_type,
                }),
                (_, None) => d.listing = None,
            }
        }
        let bytes = dir_bytes(d);
        let old = std::mem::replace(&mut d.bytes, bytes);
        self.bytes = self.bytes + bytes - old;
    }

    /// `child`, a directory just made in `dir` through the mount (exclusive mode: nothing
    /// else writes into it), is known to be empty: its listing is `.` and `..` alone, under
    /// the validator of `st`, the stat taken after the mkdir. Without it, every directory a
    /// `git commit` makes (`.git/objects/xx`) was read from the backing at its first
    /// listing, also after a remount. Needs the parent's backing inode number (for `..`).
    fn put_made_dir(&mut self, dir: u64, child: u64, st: &libc::stat) {
        let Some(parent_ino) = self.inodes.get(&dir).map(|e| e.st.st_ino) else {
            return;
        };
        self.version += 1;
        let gen = self.next_gen();
        let tick = self.tick();
        let dot = |name: &[u8], backing_ino| Dirent {
            name: name.into(),
            backing_ino,
            d_type: libc::DT_DIR,
        };
        let mut e = DirEntry {
            validator: validator(st),
            settled: settled(st),
            checked: Instant::now(),
            unchecked: false,
            gen,
            names: HashMap::new(),
            listing: Some(Arc::new(vec![dot(b".", st.st_ino), dot(b"..", parent_ino)])),
            tick,
            bytes: 0,
        };
        e.bytes = dir_bytes(&e);
        self.bytes += e.bytes;
        if let Some(old) = self.dirs.insert(child, e) {
            self.lru.remove(&old.tick);
            self.bytes -= old.bytes;
        }
        self.lru.insert(tick, Key::Dir(child));
    }

    /// Forgets what `name` in `dir` is, and the listing (it may be wrong about it).
    fn forget_name(&mut self, dir: u64, name: &[u8]) {
        self.version += 1;
        let gen = self.next_gen();
        let Some(d) = self.dirs.get_mut(&dir) else {
            return;
        };
        d.gen = gen;
        d.names.remove(name);
        d.listing = None;
        let bytes = dir_bytes(d);
        let old = std::mem::replace(&mut d.bytes, bytes);
        self.bytes = self.bytes + bytes - old;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(ino: u64, mode: u32, mtime: i64) -> libc::stat {
        // SAFETY: stat is plain old data (integers only); all-zero is valid.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        st.st_ino = ino;
        st.st_mode = mode;
        st.st_mtime = mtime;
        st.st_ctime = mtime;
        st
    }

    /// `name` made in `dir` through the mount: `child`, of stat `st`, without a handle.
    fn created<'a>(dir: u64, name: &'a [u8], child: u64, st: &'a libc::stat) -> Change<'a> {
        Change::Created {
            dir,
            name,
            child,
            st,
            handle: None,
        }
    }

    #[test]
    fn a_changed_directory_loses_its_names_and_a_stale_gen_stores_nothing() {
        let m = MetaCache::new(Coherence::Shared, Duration::from_secs(60), 1 << 20);
        let gen = m.check_dir(1, &st(1, libc::S_IFDIR, 1000), None);
        m.put_name(1, gen, b"a", Name::Child(5));
        m.put_name(1, gen, b"b", Name::Absent);
        assert_eq!(m.name(1, b"a"), Some(Name::Child(5)));
        assert_eq!(m.name(1, b"b"), Some(Name::Absent));
        // same times: kept
        let gen2 = m.check_dir(1, &st(1, libc::S_IFDIR, 1000), None);
        assert_eq!(gen, gen2);
        assert_eq!(m.name(1, b"a"), Some(Name::Child(5)));
        // moved times: dropped, and a store under the old gen is refused
        let gen3 = m.check_dir(1, &st(1, libc::S_IFDIR, 1001), None);
        assert_ne!(gen3, gen);
        assert_eq!(m.name(1, b"a"), None);
        m.put_name(1, gen, b"a", Name::Child(5));
        assert_eq!(
            m.name(1, b"a"),
            None,
            "a read under the old validator is refused"
        );
        assert_eq!(m.counters.outside_changes.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn an_unsettled_validator_does_not_vouch() {
        let m = MetaCache::new(Coherence::Shared, Duration::from_secs(60), 1 << 20);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        let recent = st(1, libc::S_IFDIR, now.as_secs() as i64);
        let gen = m.check_dir(1, &recent, None);
        m.put_name(1, gen, b"a", Name::Child(5));
        m.check_dir(1, &recent, None);
        assert_eq!(
            m.name(1, b"a"),
            None,
            "same times inside the tick vouch for nothing"
        );
    }

    #[test]
    fn a_directory_made_through_the_mount_is_listed_empty_in_exclusive_mode_only() {
        for coherence in [Coherence::Exclusive, Coherence::Shared] {
            let m = MetaCache::new(coherence, Duration::from_secs(60), 1 << 20);
            m.check_dir(1, &st(1, libc::S_IFDIR, 1000), None);
            let made = st(9, libc::S_IFDIR, 1000);
            m.apply(created(1, b"d", 9, &made));
            if coherence == Coherence::Shared {
                // another client may write into it before its validator was taken
                assert!(m.listing(9).is_none());
                continue;
            }
            let names = |m: &MetaCache| -> Vec<(Vec<u8>, u64)> {
                m.listing(9)
                    .expect("a made directory's listing is known")
                    .iter()
                    .map(|e| (e.name.to_vec(), e.backing_ino))
                    .collect()
            };
            assert_eq!(names(&m), vec![(b".".to_vec(), 9), (b"..".to_vec(), 1)]);
            assert_eq!(m.name(9, b"f"), Some(Name::Absent));
            m.apply(created(9, b"f", 10, &st(10, libc::S_IFREG, 1000)));
            assert_eq!(names(&m).len(), 3);
            assert_eq!(m.name(9, b"f"), Some(Name::Child(10)));
        }
    }

    #[test]
    fn listings_answer_absent_names_and_follow_changes() {
        let m = MetaCache::new(Coherence::Exclusive, Duration::from_secs(1), 1 << 20);
        let gen = m.check_dir(1, &st(1, libc::S_IFDIR, 1000), None);
        let e = |n: &str, ino| Dirent {
            name: n.as_bytes().into(),
            backing_ino: ino,
            d_type: libc::DT_REG,
        };
        m.put_listing(1, gen, vec![e(".", 1), e("..", 1), e("x", 7)]);
        assert_eq!(m.name(1, b"nope"), Some(Name::Absent));
        assert_eq!(m.name(1, b"x"), None, "listed, not looked up");
        let child = st(8, libc::S_IFREG, 1000);
        m.apply(created(1, b"y", 8, &child));
        assert_eq!(m.name(1, b"y"), Some(Name::Child(8)));
        assert_eq!(m.listing(1).unwrap().len(), 4);
        m.apply(Change::Renamed {
            from: 1,
            name: b"y",
            to: 1,
            newname: b"z",
            exchange: false,
            child: Some(8),
            target: None,
        });
        assert_eq!(m.name(1, b"y"), Some(Name::Absent));
        assert_eq!(m.name(1, b"z"), Some(Name::Child(8)));
        let names: Vec<_> = m
            .listing(1)
            .unwrap()
            .iter()
            .map(|e| e.name.clone())
            .collect();
        assert!(names.contains(&b"z".to_vec().into_boxed_slice()));
        assert!(!names.contains(&b"y".to_vec().into_boxed_slice()));
        m.apply(Change::Removed {
            dir: 1,
            name: b"z",
            child: Some(8),
        });
        assert_eq!(m.name(1, b"z"), Some(Name::Absent));
        assert!(m.attr(8).is_none());
        assert_eq!(m.listing(1).unwrap().len(), 3);
    }

    #[test]
    fn memory_stays_under_the_budget() {
        let budget = 64 << 10;
        let m = MetaCache::new(Coherence::Exclusive, Duration::from_secs(1), budget);
        for i in 0..10_000u64 {
            m.put_attr(i + 2, &st(i + 2, libc::S_IFREG, 1000), None);
            let gen = m.check_dir(1_000_000 + i, &st(i, libc::S_IFDIR, 1000), None);
            m.put_name(
                1_000_000 + i,
                gen,
                format!("name{i}").as_bytes(),
                Name::Absent,
            );
            assert!(m.usage().2 <= budget as usize);
        }
        assert!(m.counters.evictions.load(Ordering::Relaxed) > 0);
        // the most recent survive
        assert!(m.attr(10_001).is_some());
        assert!(m.attr(2).is_none());
    }

    #[test]
    fn shared_entries_expire() {
        let m = MetaCache::new(Coherence::Shared, Duration::from_millis(50), 1 << 20);
        m.put_attr(2, &st(2, libc::S_IFREG, 1000), None);
        assert!(m.attr(2).is_some());
        std::thread::sleep(Duration::from_millis(60));
        assert!(m.attr(2).is_none());
        assert_eq!(m.counters.revalidations.load(Ordering::Relaxed), 1);
    }
}
