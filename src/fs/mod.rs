//! The FUSE layer: a passthrough of the backing directory through fuser.
//!
//! Model: [`inode::InodeTable`] maps FUSE node ids to backing inodes, reached through
//! `O_PATH` descriptors (`self.inodes.fd(&inode)`, a bounded cache reopened by file
//! handle; see its header); open files and directories are handles in sharded maps (in
//! exclusive mode the kernel opens them without asking and sends handle 0, served through
//! the daemon's own handles: [`implicit`]); every
//! operation is the corresponding `*at` syscall on those descriptors, so the
//! backing decides data, attributes and errors. Requests that create files or
//! depend on permissions run with the caller's credentials ([`creds`]).
//!
//! Invariants:
//! - Hard links are one FUSE inode; an open file keeps its data when renamed or
//!   unlinked anywhere (descriptors, not paths).
//! - The backing is opened without `O_APPEND`: the kernel computes every write's
//!   offset, so mmap writeback and appends land where the kernel says.
//! - With the kernel's write cache (`kernel_write_cache`, docs/DESIGN.md "The kernel's
//!   write cache") the mtime a file has is the one the kernel gave its writes: its SETATTR
//!   of mtime and ctime is set as the daemon, and a page write keeps the last one it sent.
//! - Errors from the backing reach the caller unchanged; nothing here panics on
//!   any input (a panic would take the user's home directory down).
//!
//! Threads and locks: fuser runs N worker threads, each handler takes `&self`.
//! Lock order: inode table (its own order: maps -> descriptor LRU -> inode slot) ->
//! handle maps (DashMap shards) -> one directory stream's mutex; the tables of the daemon's
//! own handles (`implicit`) are each taken alone, never across a syscall. No lock is held
//! across a syscall on a regular file's data.
//! What may block: every handler blocks on the backing filesystem; nothing blocks
//! on another request.

pub mod creds;
pub mod implicit;
pub mod inode;
pub mod sys;

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use fuser::{
    AccessFlags, CopyFileRangeFlags, Errno, FileAttr, FileHandle, Filesystem, FopenFlags,
    Generation, INodeNo, InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLseek,
    ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use parking_lot::Mutex;

use crate::cache::{CacheSet, Changed, FileState, Revalidated, Touch};
use crate::meta::{self, Change, Coherence, DirCheck, MetaCache, Name, XattrLookup};
use crate::offline::Offline;
use crate::options::MountOptions;
use creds::{CallerCreds, WithoutFsetid};
use inode::{Inode, InodeTable};
use sys::cstr;

/// Largest read or write the kernel sends us (and what we ask it for).
pub const MAX_IO: u32 = 1 << 20;

/// An open regular file (or anything opened with open(2) that is not a directory).
struct FileHandleState {
    file: OwnedFd,
    /// Keeps the inode alive while the file is open.
    inode: Arc<Inode>,
    /// Keeps its `O_PATH` descriptor open (getattr/setattr after an unlink in the backing).
    _pin: inode::Pin,
    /// Reads through this handle go through the cache (a regular file, cache active).
    cached: bool,
    /// Opened with O_APPEND (the backing descriptor is not: see `backing_open_flags`).
    append: bool,
    /// What the backing said at open or at the last watch (uncached files only: cached
    /// ones are compared with the cache's validator).
    seen: Mutex<(i64, i64, i64, i64, i64)>,
    /// Opened for writing (a flush while offline must not claim the data reached the backing).
    writable: bool,
    /// Opened while offline: `file` is a placeholder (`/dev/null`), reads come from the
    /// cache alone; after the return the backing file is opened on first need (`reopened`).
    offline: bool,
    reopened: Mutex<Option<Arc<OwnedFd>>>,
    /// The daemon's own handle of a file the kernel opened without OPEN (`no_open`): it
    /// outlives the kernel's files, and is watched less often ([`IMPLICIT_CHECK_PASSES`]).
    implicit: bool,
}

/// Size, mtime and ctime of `st`, to notice a change made outside the mount.
fn change_mark(st: &libc::stat) -> (i64, i64, i64, i64, i64) {
    (
        st.st_size,
        st.st_mtime,
        st.st_mtime_nsec,
        st.st_ctime,
        st.st_ctime_nsec,
    )
}

/// An open directory stream. `DIR*` is not thread-safe; the mutex makes it so.
struct DirStream {
    dir: *mut libc::DIR,
}

// SAFETY: the DIR* is only used under the handle's mutex, from one thread at a time.
unsafe impl Send for DirStream {}

impl DirStream {
    /// `fdopendir`: the stream takes `fd` over (closedir closes it).
    fn from_fd(fd: OwnedFd) -> io::Result<DirStream> {
        // SAFETY: `fd` is an open directory descriptor we own; on success the DIR*
        // owns it, so ownership is released below and only closedir closes it.
        let dir = unsafe { libc::fdopendir(fd.as_raw_fd()) };
        if dir.is_null() {
            return Err(io::Error::last_os_error());
        }
        std::mem::forget(fd); // owned by the DIR* now
        Ok(DirStream { dir })
    }

    fn rewind(&mut self) {
        // SAFETY: `self.dir` is the live stream from fdopendir (closed only by drop), and
        // `&mut self` means no other thread uses it.
        unsafe { libc::rewinddir(self.dir) }
    }

    /// Back to a position an entry's `d_off` gave.
    fn seek(&mut self, pos: libc::c_long) {
        // SAFETY: as in `rewind`: a live stream, used by one thread.
        unsafe { libc::seekdir(self.dir, pos) }
    }

    /// The next entry, or None at the end of the directory.
    fn next_entry(&mut self) -> io::Result<Option<DirEntry>> {
        // the backing fault seam (a no-op without the `fault-injection` feature)
        // SAFETY: as in `rewind`: a live stream, used by one thread.
        crate::sys::fault_fd(crate::sys::FaultOp::Readdir, unsafe {
            libc::dirfd(self.dir)
        })?;
        // readdir returns NULL both at the end and on error; only errno tells them apart.
        // SAFETY: __errno_location returns this thread's errno, valid for the thread's life.
        unsafe { *libc::__errno_location() = 0 };
        // SAFETY: as in `rewind`: a live stream, used by one thread.
        let ent = unsafe { libc::readdir64(self.dir) };
        if ent.is_null() {
            let err = io::Error::last_os_error();
            return match err.raw_os_error() {
                Some(0) | None => Ok(None),
                Some(_) => Err(err),
            };
        }
        // SAFETY: a non-null dirent from readdir stays valid until the next readdir or
        // closedir on this stream, neither of which can happen while `&mut self` is held;
        // it is copied out before returning.
        let ent = unsafe { &*ent };
        // SAFETY: the kernel NUL-terminates d_name within the record.
        let name = unsafe { std::ffi::CStr::from_ptr(ent.d_name.as_ptr()) };
        Ok(Some(DirEntry {
            backing_ino: ent.d_ino,
            next_offset: ent.d_off,
            d_type: ent.d_type,
            name: name.to_bytes().to_vec(),
        }))
    }

    /// The stream's descriptor (owned by the stream; valid while it lives).
    fn fd(&self) -> RawFd {
        // SAFETY: `self.dir` is the live stream; dirfd only reads it.
        unsafe { libc::dirfd(self.dir) }
    }
}

impl Drop for DirStream {
    fn drop(&mut self) {
        // SAFETY: `self.dir` came from fdopendir and is closed exactly once, here; it
        // closes the descriptor the stream owns.
        unsafe { libc::closedir(self.dir) };
    }
}

struct DirHandleState {
    /// The backing's stream; None: this handle is served from `listing`. Shared with the
    /// helper that reads a batch of it (a bounded call, `crate::offline`).
    stream: Arc<Mutex<Option<DirStream>>>,
    /// The metadata cache's listing this handle serves (offsets are indexes into it).
    listing: Option<Arc<Vec<meta::Dirent>>>,
    /// The metadata cache's gen of the directory at open: a listing read whole through
    /// `stream` is stored under it.
    gen: Option<u64>,
    collect: Mutex<Option<Collect>>,
    inode: Arc<Inode>,
    _pin: Option<inode::Pin>,
}

impl DirHandleState {
    /// A handle served from `listing` (offsets are indexes into it).
    fn of_listing(inode: Arc<Inode>, listing: Arc<Vec<meta::Dirent>>, gen: Option<u64>) -> Self {
        DirHandleState {
            stream: Arc::new(Mutex::new(None)),
            listing: Some(listing),
            gen,
            collect: Mutex::new(None),
            inode,
            _pin: None,
        }
    }
}

/// A listing being read whole from the start, for the metadata cache.
struct Collect {
    gen: u64,
    entries: Vec<meta::Dirent>,
    /// The offset the next read must start at to continue it.
    next: u64,
    bytes: usize,
}

/// What the kernel must be told to drop.
pub enum Inval {
    /// An inode's attributes and pages (a directory's cached listing too).
    Inode(u64),
    /// A name in a directory.
    Entry(u64, Vec<u8>),
}

/// The TTLs a reply gives the kernel.
#[derive(Debug, Clone, Copy)]
struct ReplyTtls {
    attr: Duration,
    entry: Duration,
}

/// Kernel TTLs in exclusive mode: nothing changes behind the mount, and what the sweep
/// notices is invalidated explicitly.
const EXCLUSIVE_TTL: Duration = Duration::from_secs(3600);

/// Entries read from a directory stream per bounded call.
const READDIR_BATCH: usize = 128;

/// One entry read from a directory stream.
struct DirEntry {
    backing_ino: u64,
    next_offset: i64,
    d_type: u8,
    name: Vec<u8>,
}

/// How [`PassthroughFs::lookup_backing`] records what it found.
#[derive(Debug, Clone, Copy)]
enum Found {
    /// A lookup, under the directory's gen (None: the cache does not record names).
    Lookup(Option<u64>),
    /// A name just created through the mount.
    Made,
}

/// What one setattr asks to change; `None` leaves that attribute alone.
struct AttrChange {
    mode: Option<u32>,
    uid: Option<u32>,
    gid: Option<u32>,
    size: Option<u64>,
    atime: Option<TimeOrNow>,
    mtime: Option<TimeOrNow>,
}

pub struct PassthroughFs {
    /// The read cache; None: a plain passthrough.
    cache: Option<Arc<CacheSet>>,
    /// Inodes whose kernel page cache must be dropped (sent by the invalidation thread,
    /// never from a request handler, which could deadlock on a page lock).
    invalidate: Mutex<Option<std::sync::mpsc::Sender<Inval>>>,
    /// The metadata cache; None: every metadata request goes to the backing.
    meta: Option<Arc<MetaCache>>,
    /// The kernel checks permissions itself (`default_permissions`).
    default_permissions: bool,
    /// Long kernel TTLs in exclusive mode. Not with `allow_other` unless the kernel checks
    /// permissions: without `default_permissions` a path walk through the kernel's cached
    /// dentries never asks the daemon, so one user's lookup would let another through
    /// a directory it may not search for as long as the dentry lives.
    long_kernel_ttls: bool,
    inodes: Arc<InodeTable>,
    files: Arc<DashMap<u64, Arc<FileHandleState>>>,
    dirs: DashMap<u64, Arc<DirHandleState>>,
    next_handle: AtomicU64,
    /// The kernel TTLs put in replies; changeable at run time (`bcachefs-lite set`).
    ttls: Arc<Ttls>,
    /// The mount id of the backing root's filesystem when its files have handles: only
    /// files there are written back (writeback reopens them by handle on it); files of
    /// other filesystems inside the backing stay writethrough.
    wb_mount: Option<i32>,
    /// Exclusive mode's `no_open`: files the kernel opened without an OPEN request are
    /// served through these handles (see [`implicit`]). None: every open asks the daemon.
    implicit: Option<Mutex<implicit::ImplicitHandles>>,
    /// With `no_open`, also `no_opendir`: directories read without OPENDIR, served with
    /// handle 0 through these (see [`implicit`]).
    implicit_dirs: Option<Mutex<implicit::ImplicitDirs<Arc<DirHandleState>>>>,
    /// `kernel_write_cache`: FUSE_WRITEBACK_CACHE is asked for at init. The kernel then
    /// may read a page through any handle of the file to fill the rest of a partial write,
    /// so a write-only open opens the backing read-write where it may
    /// ([`PassthroughFs::widened_for_write_cache`]).
    kernel_write_cache: bool,
}

/// The attribute and entry TTLs the kernel is told, read on every reply, so a change made
/// with `bcachefs-lite set attr_timeout=...` applies to the replies from then on.
#[derive(Debug)]
pub struct Ttls {
    attr_ns: AtomicU64,
    entry_ns: AtomicU64,
}

fn duration_ns(d: Duration) -> u64 {
    d.as_nanos().min(u128::from(u64::MAX)) as u64
}

impl Ttls {
    pub fn new(attr: Duration, entry: Duration) -> Ttls {
        Ttls {
            attr_ns: AtomicU64::new(duration_ns(attr)),
            entry_ns: AtomicU64::new(duration_ns(entry)),
        }
    }
    pub fn attr(&self) -> Duration {
        Duration::from_nanos(self.attr_ns.load(Ordering::Relaxed))
    }
    pub fn entry(&self) -> Duration {
        Duration::from_nanos(self.entry_ns.load(Ordering::Relaxed))
    }
    pub fn set_attr(&self, d: Duration) {
        self.attr_ns.store(duration_ns(d), Ordering::Relaxed);
    }
    pub fn set_entry(&self, d: Duration) {
        self.entry_ns.store(duration_ns(d), Ordering::Relaxed);
    }
}

fn errno(e: io::Error) -> Errno {
    match e.raw_os_error() {
        Some(code) => Errno::from_i32(code),
        None => {
            tracing::warn!("unexpected error without errno: {e}");
            Errno::EIO
        }
    }
}

/// Runs `f` with the caller's credentials.
fn as_caller<T>(req: &Request, f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    let _creds = CallerCreds::switch(req.uid(), req.gid(), req.pid())?;
    f()
}

impl PassthroughFs {
    /// A passthrough of the directory `backing`.
    pub fn new(backing: &Path, options: &MountOptions) -> io::Result<PassthroughFs> {
        let c = cstr(backing.as_os_str())?;
        let fd = sys::open_path_at(libc::AT_FDCWD, &c)?;
        let st = sys::fstat_path(fd.as_raw_fd())?;
        if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
            return Err(io::Error::from_raw_os_error(libc::ENOTDIR));
        }
        creds::init();
        // no_open and no_opendir: decided once, with one capacity for both tables
        let no_open = Self::no_open(options)
            .then(|| implicit::ImplicitHandles::cap_for_limit(sys::nofile_limit().0));
        Ok(PassthroughFs {
            cache: None,
            invalidate: Mutex::new(None),
            meta: None,
            default_permissions: options.default_permissions,
            long_kernel_ttls: !options.allow_other || options.default_permissions,
            inodes: Arc::new(InodeTable::new(fd, &st)),
            files: Arc::new(DashMap::new()),
            dirs: DashMap::new(),
            next_handle: AtomicU64::new(1),
            ttls: Arc::new(Ttls::new(options.attr_timeout, options.entry_timeout)),
            wb_mount: None,
            implicit: no_open.map(|cap| Mutex::new(implicit::ImplicitHandles::new(cap))),
            implicit_dirs: no_open.map(|cap| Mutex::new(implicit::ImplicitDirs::new(cap))),
            kernel_write_cache: options.kernel_write_cache,
        })
    }

    /// Serves reads of regular files through `cache`, and gives its writeback a way to
    /// reopen files of the backing root's filesystem by handle (starting the writeback
    /// thread, which writes back what replay found).
    pub fn with_cache(mut self, cache: Arc<CacheSet>) -> PassthroughFs {
        // the root keeps its descriptor for life (no handle of its own): ask for its mount id;
        // a file is written back only when its own handle names the same mount
        let root = self.inodes.get(inode::ROOT_ID);
        // open_by_handle_at wants a real descriptor on the filesystem, not an O_PATH one
        let root_fd = root
            .as_ref()
            .and_then(|r| self.inodes.fd(r).ok())
            .and_then(|fd| {
                let path = sys::proc_path(fd.as_raw_fd());
                sys::open_at(libc::AT_FDCWD, &path, libc::O_RDONLY | libc::O_DIRECTORY, 0).ok()
            });
        let mount = root_fd
            .as_ref()
            .and_then(|fd| sys::name_to_handle(fd.as_raw_fd()).ok())
            .map(|(_, mount)| mount);
        match (mount, root_fd) {
            (Some(mount), Some(fd)) => {
                self.wb_mount = Some(mount);
                let reopen: crate::cache::writeback::Reopener =
                    Arc::new(move |handle_type: i32, bytes: &[u8], flags: i32| {
                        let h = sys::BackingHandle {
                            handle_type,
                            bytes: bytes.into(),
                        };
                        creds::as_daemon(|| sys::open_by_handle(fd.as_raw_fd(), &h, flags))
                    });
                cache.start_writeback(reopen);
            }
            _ => tracing::warn!(
                "the backing root gives no file handles: cache_mode=writeback writes through"
            ),
        }
        self.cache = Some(cache);
        self
    }

    /// The handle to write `inode` back by, when writeback may hold its data dirty.
    fn writeback_handle(&self, inode: &Inode) -> Option<crate::meta::HandleRef> {
        let h = inode.handle_ref()?;
        (Some(h.mount) == self.wb_mount).then_some(h)
    }

    /// The kernel TTLs (shared with the control socket's `set`).
    pub fn ttls(&self) -> Arc<Ttls> {
        self.ttls.clone()
    }

    /// Serves metadata through `meta`.
    pub fn with_meta(mut self, meta: Arc<MetaCache>) -> PassthroughFs {
        let m = meta.clone();
        self.inodes
            .set_stale_hook(Box::new(move |id| m.forget_inode(id)));
        if let Some(cache) = &self.cache {
            // writeback moves the backing's size and mtime: the cached stat follows
            let (m, inodes) = (meta.clone(), self.inodes.clone());
            cache.set_written_hook(Arc::new(move |st: &libc::stat| {
                match inodes.known_id(st.st_dev, st.st_ino) {
                    Some(id) => {
                        m.apply(Change::Attr { id, st: Some(st) });
                        true
                    }
                    None => false,
                }
            }));
        }
        if let Err(e) = self.persist_meta(&meta) {
            tracing::warn!("metadata cache not persisted: {e}");
        }
        self.meta = Some(meta);
        self
    }

    /// With a cache file: loads the metadata checkpoint the mount found (a remount starts
    /// warm) and arranges for one at a clean unmount. The crash rule: a checkpoint is
    /// written only after `syncfs` made the backing state it describes durable, and it is
    /// trusted only when it is the journal's newest entry (nothing changed after it);
    /// otherwise its entries start expired and each is checked with one stat at first use.
    fn persist_meta(&self, meta: &Arc<MetaCache>) -> io::Result<()> {
        let Some(cache) = &self.cache else {
            return Ok(());
        };
        let root = self
            .inodes
            .get(inode::ROOT_ID)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ESTALE))?;
        let fd = self.inodes.fd(&root)?;
        let st = sys::fstat_path(fd.as_raw_fd())?;
        // the root's filesystem gets its slot now: cached files then need no syscall for it
        drop(cache.file_state(fd.as_raw_fd(), &st));
        let mount = sys::name_to_handle(fd.as_raw_fd()).ok().map(|(_, m)| m);
        if let Some((blob, trusted)) = cache.take_meta_checkpoint() {
            match meta::format::Checkpoint::decode(&blob) {
                Ok(c) => {
                    // trusted: alone in the journal's newest entry and written clean
                    let trusted = trusted && c.clean;
                    let n = meta.load(c, st.st_ino, st.st_dev, mount, trusted);
                    tracing::info!(entries = n, trusted, "metadata checkpoint loaded");
                }
                Err(e) => tracing::warn!("metadata checkpoint not loaded: {e}"),
            }
        }
        // syncfs refuses an O_PATH descriptor: a real one of the root directory
        let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC;
        let keep = sys::open(&sys::proc_path(fd.as_raw_fd()), flags)?;
        let m = meta.clone();
        let (dev, ino) = (st.st_dev, st.st_ino);
        let saved = AtomicU64::new(u64::MAX);
        cache.set_meta_saver(Box::new(move |clean| {
            let version = m.version();
            if !clean && saved.swap(version, Ordering::Relaxed) == version {
                return None;
            }
            // what a trusted checkpoint describes must be durable in the backing before it
            // is; a snapshot is never trusted (its entries are checked after a crash)
            if clean {
                // offline: the backing cannot vouch (and a syncfs of a dead share hangs);
                // the snapshot below is written untrusted, as after a crash
                if crate::offline::is_offline() {
                    tracing::warn!("offline at unmount: the metadata checkpoint is not trusted");
                    return Some(m.checkpoint(dev, ino, false).encode());
                }
                if let Err(e) = sys::syncfs(keep.as_raw_fd()) {
                    tracing::warn!("syncfs of the backing failed ({e}); no metadata checkpoint");
                    return None;
                }
            }
            Some(m.checkpoint(dev, ino, clean).encode())
        }));
        Ok(())
    }

    pub fn meta(&self) -> Option<&Arc<MetaCache>> {
        self.meta.as_ref()
    }

    pub fn cache(&self) -> Option<&Arc<CacheSet>> {
        self.cache.as_ref()
    }

    /// Inode and descriptor figures for `stats` (shared; lives as long as the mount).
    pub fn fd_cache(&self) -> Arc<inode::FdCache> {
        self.inodes.fd_cache()
    }

    /// The inodes whose kernel pages must be dropped arrive on the returned channel;
    /// hand it to [`spawn_invalidator`] once the session exists.
    pub fn invalidation_channel(&self) -> std::sync::mpsc::Receiver<Inval> {
        let (tx, rx) = std::sync::mpsc::channel::<Inval>();
        *self.invalidate.lock() = Some(tx);
        rx
    }

    /// The active cache and the file's state in it, when `inode` is a file it serves.
    fn cache_for<'a>(
        &'a self,
        inode: &'a Inode,
    ) -> Option<(&'a Arc<CacheSet>, &'a Arc<FileState>)> {
        let file = inode.file.as_ref()?;
        self.cache
            .as_ref()
            .filter(|c| c.is_active())
            .map(|c| (c, file))
    }

    /// `st`, the backing's stat of `inode`, as the mount reports it: in writeback, with the
    /// size and mtime of its dirty data laid over it (the backing gets them at writeback).
    fn attr(&self, inode: &Inode, st: &libc::stat) -> FileAttr {
        match (&self.cache, &inode.file) {
            (Some(cache), Some(file)) => {
                let mut st = *st;
                cache.overlay_dirty_attr(file.id, &mut st);
                sys::attr_from_stat(&st, inode.id)
            }
            _ => sys::attr_from_stat(st, inode.id),
        }
    }

    /// Asks the invalidation thread to drop the kernel's pages of `inode`.
    fn invalidate_pages(&self, inode: &Inode) {
        if let Some(tx) = self.invalidate.lock().as_ref() {
            let _ = tx.send(Inval::Inode(inode.id));
        }
    }

    /// Runs `apply`, a change of the file's bytes, size or times on the backing, through the
    /// cache's change protocol (`CacheSet::change`); `fd` is a descriptor of the backing
    /// file. Every handler that changes a file goes through here, so none can forget to
    /// drop keys, notice an outside change or record the validator.
    fn change<T>(
        &self,
        inode: &Inode,
        fd: RawFd,
        touch: Touch,
        apply: impl FnOnce() -> io::Result<T>,
    ) -> (io::Result<T>, Changed) {
        if let Err(e) = self.refuse_if_offline() {
            return (Err(e), Changed::default());
        }
        let out = match self.cache_for(inode) {
            None => (apply(), Changed::default()),
            Some((cache, file)) => {
                // writeback: every change but a writeback write writes the file's dirty data
                // back first, under the file's write lock (held until the change is done)
                let _w = cache.write_lock(file);
                if cache.has_dirty(file) {
                    if let Err(e) = cache.flush_file_locked(file) {
                        return (Err(e), Changed::default());
                    }
                }
                cache.backing_changed(file);
                let (result, changed) = cache.change(file, fd, touch, apply);
                if changed.outside_change {
                    self.invalidate_pages(inode);
                }
                (result, changed)
            }
        };
        if let Some(meta) = &self.meta {
            // size, times (and set-id bits) moved: the next getattr asks the backing
            meta.apply(Change::Attr {
                id: inode.id,
                st: None,
            });
        }
        out
    }

    /// Writes `inode`'s dirty data back now (before something reads its backing file).
    fn flush_dirty(&self, inode: &Inode) -> io::Result<()> {
        match self.cache_for(inode) {
            Some((cache, file)) if cache.has_dirty(file) => {
                let _w = cache.write_lock(file);
                cache.flush_file_locked(file)
            }
            _ => Ok(()),
        }
    }

    fn inode(&self, ino: INodeNo) -> io::Result<Arc<Inode>> {
        self.inodes
            .get(ino.0)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ESTALE))
    }

    fn file(&self, fh: FileHandle) -> io::Result<Arc<FileHandleState>> {
        self.files
            .get(&fh.0)
            .map(|h| h.clone())
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EBADF))
    }

    /// Whether files are opened without OPEN requests (`no_open`, see [`implicit`]): in
    /// exclusive mode (nothing outside changes a file whose pages the kernel keeps),
    /// unless `open_requests` is set, and only where the open's permission check is not
    /// ours to make: the kernel checks (`default_permissions`), or only the mounting
    /// user's processes reach the mount (no `allow_other`) and that user is root, whom
    /// an open of a regular file is not refused for permissions.
    fn no_open(options: &MountOptions) -> bool {
        // SAFETY: geteuid takes no arguments and cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        options.coherence == Coherence::Exclusive
            && !options.open_requests
            && (options.default_permissions || (!options.allow_other && root))
    }

    /// The handle a request names; handle 0 under `no_open` is the daemon's own handle
    /// of inode `ino` for `access`, opened on first need.
    fn file_of(
        &self,
        ino: INodeNo,
        fh: FileHandle,
        access: implicit::Access,
    ) -> io::Result<Arc<FileHandleState>> {
        match &self.implicit {
            Some(table) if fh.0 == 0 => self.implicit_file(table, ino, access),
            _ => self.file(fh),
        }
    }

    fn implicit_file(
        &self,
        table: &Mutex<implicit::ImplicitHandles>,
        ino: INodeNo,
        access: implicit::Access,
    ) -> io::Result<Arc<FileHandleState>> {
        let known = table.lock().get(ino.0, access);
        if let Some(h) = known.and_then(|fh| self.file(FileHandle(fh)).ok()) {
            return Ok(h);
        }
        let inode = self.inode(ino)?;
        if let Some(o) = self.offline_now() {
            // not kept: the return must open the backing file, not this placeholder
            return match access {
                implicit::Access::Write => Err(o.refuse_write()),
                implicit::Access::Read => self.offline_handle(o, &inode).map(Arc::new),
            };
        }
        let ifd = self.inodes.fd(&inode)?;
        let path = sys::proc_path(ifd.as_raw_fd());
        let open = |flags| sys::open(&path, flags | libc::O_CLOEXEC);
        // As the daemon: the kernel checked the caller (see `no_open`). A file the
        // daemon may write but not read (mode 0200 on a root-squashed NFS) is opened
        // write-only; its reads then fail as they would on a write-only descriptor.
        let (file, flags) = match access {
            implicit::Access::Read => (open(libc::O_RDONLY), libc::O_RDONLY),
            implicit::Access::Write => match open(libc::O_RDWR) {
                Err(e) if e.raw_os_error() == Some(libc::EACCES) => {
                    (open(libc::O_WRONLY), libc::O_WRONLY)
                }
                r => (r, libc::O_RDWR),
            },
        };
        let file = file.map_err(|e| self.inodes.limit_error(e))?;
        let st = sys::fstat(&file).ok();
        // the validator check an open makes; the kernel keeps its pages regardless, so a
        // file found changed has them dropped here (an open would have withheld
        // FOPEN_KEEP_CACHE)
        if let (Some((cache, file)), Some(st)) = (self.cache_for(&inode), st.as_ref()) {
            if cache.implicit_open_check(file, st) {
                self.invalidate_pages(&inode);
            }
        }
        let fh = self.add_file_handle(file, inode, flags, st.as_ref(), true);
        let inserted = table.lock().insert(ino.0, access, fh);
        let evicted = match inserted {
            Ok(evicted) => evicted,
            Err(first) => {
                // another request opened it meanwhile: use that one, close ours
                let mine = self.files.remove(&fh);
                if let Ok(h) = self.file(FileHandle(first)) {
                    return Ok(h);
                }
                return mine
                    .map(|(_, h)| h)
                    .ok_or_else(|| io::Error::from_raw_os_error(libc::EBADF));
            }
        };
        sys::IMPLICIT_HANDLES.fetch_add(1, Ordering::Relaxed);
        for old in evicted {
            self.evict_implicit(table, old);
        }
        self.file(FileHandle(fh))
    }

    /// Closes an implicit handle the table let go, unless its file has no name left (it
    /// could not be opened again: an unlinked file still open in the kernel), which is
    /// kept until the kernel forgets the inode.
    fn evict_implicit(&self, table: &Mutex<implicit::ImplicitHandles>, fh: u64) {
        let Ok(h) = self.file(FileHandle(fh)) else {
            return;
        };
        let nameless = sys::fstat(&h.file).is_ok_and(|st| st.st_nlink == 0);
        let access = if h.writable {
            implicit::Access::Write
        } else {
            implicit::Access::Read
        };
        if nameless && table.lock().keep(h.inode.id, access, fh) {
            return;
        }
        self.files.remove(&fh);
        sys::IMPLICIT_HANDLES.fetch_sub(1, Ordering::Relaxed);
    }

    /// The kernel forgot inode `id`: its implicit handles go (a later lookup of the same
    /// file makes a new inode entry, which must not be served through the old one).
    fn forget_implicit(&self, id: u64) {
        let Some(table) = &self.implicit else {
            return;
        };
        if self.inodes.get(id).is_some() {
            return; // still known (looked up again meanwhile, or its count not yet 0)
        }
        let gone = table.lock().forget(id);
        for fh in gone {
            if self.files.remove(&fh).is_some() {
                sys::IMPLICIT_HANDLES.fetch_sub(1, Ordering::Relaxed);
            }
        }
        if let Some(dirs) = &self.implicit_dirs {
            let gone = dirs.lock().forget(id);
            drop(gone); // its stream closes here, outside the lock
        }
    }

    /// The directory handle a request names; handle 0 under `no_opendir` is the daemon's
    /// own handle of directory `ino` (see [`PassthroughFs::implicit_dir`]).
    fn dir_of(&self, ino: INodeNo, fh: FileHandle, offset: u64) -> io::Result<Arc<DirHandleState>> {
        match &self.implicit_dirs {
            Some(table) if fh.0 == 0 => self.implicit_dir(table, ino, offset),
            _ => self.dir(fh),
        }
    }

    /// The handle serving a READDIR(PLUS) of `ino` at `offset` sent without OPENDIR. The
    /// offsets the kernel keeps (in its readdir cache, in a directory stream's position)
    /// live as long as its inode, so each directory keeps one offset space from its first
    /// read until FORGET ([`implicit::DirSpace`]): indexes into a metadata-cache listing if
    /// one was known then, else the backing's own cookies. At offset 0 (an opendir or a
    /// rewinddir), or when its handle was let go, the handle is renewed: a new snapshot of
    /// the listing (read whole from the backing if the metadata cache let it go), or a
    /// stream under the directory's current gen, so a listing read to its end is stored in
    /// the metadata cache.
    fn implicit_dir(
        &self,
        table: &Mutex<implicit::ImplicitDirs<Arc<DirHandleState>>>,
        ino: INodeNo,
        offset: u64,
    ) -> io::Result<Arc<DirHandleState>> {
        use implicit::DirSpace;
        let (space, kept) = table.lock().get(ino.0);
        if let (Some(h), true) = (&kept, offset != 0) {
            return Ok(h.clone());
        }
        let inode = self.inode(ino)?;
        let (space, h) = if let Some(o) = self.offline_now() {
            // offline: the last listing read, however old (opendir_offline's answer)
            let listing = self.meta.as_ref().and_then(|m| m.listing_cached(inode.id));
            match (space, listing) {
                (Some(DirSpace::Listing) | None, Some(listing)) => (
                    DirSpace::Listing,
                    DirHandleState::of_listing(inode, listing, None),
                ),
                _ => return Err(o.refuse(inode.id, "this directory's listing")),
            }
        } else {
            let (gen, listing) = match &self.meta {
                Some(meta) => (Some(self.dir_gen(meta, &inode)?), meta.listing(inode.id)),
                None => (None, None),
            };
            match (space, listing) {
                (Some(DirSpace::Listing) | None, Some(listing)) => (
                    DirSpace::Listing,
                    DirHandleState::of_listing(inode, listing, gen),
                ),
                (Some(DirSpace::Listing), None) => {
                    // the index space stays: a snapshot of the whole directory now
                    let reading = self.implicit_stream_handle(&inode, gen)?;
                    let mut entries = Vec::new();
                    self.read_dir(&reading, 0, |e| {
                        entries.push(meta::Dirent {
                            name: e.name.clone().into_boxed_slice(),
                            backing_ino: e.backing_ino,
                            d_type: e.d_type,
                        });
                        true
                    })?;
                    let listing = Arc::new(entries);
                    (
                        DirSpace::Listing,
                        DirHandleState::of_listing(inode, listing, gen),
                    )
                }
                (Some(DirSpace::Cookies), _) | (None, None) => {
                    (DirSpace::Cookies, self.implicit_stream_handle(&inode, gen)?)
                }
            }
        };
        let h = Arc::new(h);
        let (kept_space, gone) = table.lock().put(ino.0, space, h.clone());
        drop(gone); // streams let go close here, outside the lock
        if kept_space != space {
            // another request decided this directory's space meanwhile: ask again
            return self.implicit_dir(table, ino, offset);
        }
        Ok(h)
    }

    /// A handle of `inode` reading the backing directory (opened as the daemon: the kernel
    /// checked the caller, see `no_open`).
    fn implicit_stream_handle(
        &self,
        inode: &Arc<Inode>,
        gen: Option<u64>,
    ) -> io::Result<DirHandleState> {
        let ifd = self.inodes.fd(inode)?;
        let stream =
            Self::open_dir_stream(ifd.as_raw_fd()).map_err(|e| self.inodes.limit_error(e))?;
        Ok(DirHandleState {
            stream: Arc::new(Mutex::new(Some(stream))),
            listing: None,
            gen,
            collect: Mutex::new(None),
            _pin: Some(self.inodes.pin(inode)),
            inode: inode.clone(),
        })
    }

    fn dir(&self, fh: FileHandle) -> io::Result<Arc<DirHandleState>> {
        self.dirs
            .get(&fh.0)
            .map(|h| h.clone())
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EBADF))
    }

    fn new_handle(&self) -> u64 {
        self.next_handle.fetch_add(1, Ordering::Relaxed)
    }

    /// Looks `name` up in `parent`, counting one kernel lookup on success: from the
    /// metadata cache when it knows the answer (no backing call), else from the backing.
    /// `req`: the caller, whose search permission a cached answer must respect (None: the
    /// daemon's own lookup, readdirplus).
    fn do_lookup(
        &self,
        req: Option<&Request>,
        parent: &Inode,
        name: &OsStr,
    ) -> io::Result<(FileAttr, ReplyTtls)> {
        self.or_offline(
            || self.do_lookup_online(req, parent, name),
            |o| self.lookup_offline(o, req, parent, name),
        )
    }

    fn do_lookup_online(
        &self,
        req: Option<&Request>,
        parent: &Inode,
        name: &OsStr,
    ) -> io::Result<(FileAttr, ReplyTtls)> {
        let Some(meta) = &self.meta else {
            return self.lookup_backing(parent, name, Found::Lookup(None));
        };
        let gen = self.dir_gen(meta, parent)?;
        if let Some(found) = self.lookup_meta(meta, req, parent, name)? {
            return Ok(found);
        }
        self.lookup_backing(parent, name, Found::Lookup(Some(gen)))
    }

    /// A lookup answered by the metadata cache: Ok(None) when it does not know.
    fn lookup_meta(
        &self,
        meta: &MetaCache,
        req: Option<&Request>,
        parent: &Inode,
        name: &OsStr,
    ) -> io::Result<Option<(FileAttr, ReplyTtls)>> {
        if let Some(req) = req {
            if !self.may(meta, parent.id, req, libc::S_IXOTH) {
                return Ok(None);
            }
        }
        let id = match meta.name(parent.id, name.as_bytes()) {
            Some(Name::Absent) => return Err(io::Error::from_raw_os_error(libc::ENOENT)),
            Some(Name::Child(id)) => id,
            _ => return Ok(None),
        };
        let Some((st, left)) = meta.attr(id) else {
            return Ok(None);
        };
        let cache = self.cache.as_ref();
        let file = || match cache {
            Some(c) => c.file_state_known(&st),
            None => Some(None),
        };
        let Some(inode) = self.inodes.lookup_cached(id, &st, meta.handle(id), file) else {
            return Ok(None);
        };
        let ttls = self.reply_ttls(left, meta.dir_remaining(parent.id));
        Ok(Some((self.attr(&inode, &st), ttls)))
    }

    /// Whether the caller may search (`want` = x) or read (r) inode `dir` (a directory, or
    /// a file for its `user.*` xattrs), judged from its cached attributes without the backing. Conservative: root, the owner by
    /// the owner bits, anyone else only when group and other bits both allow (the
    /// caller's groups are not known here); false sends the request to the backing,
    /// which decides with the caller's credentials.
    fn may(&self, meta: &MetaCache, dir: u64, req: &Request, want: u32) -> bool {
        if self.default_permissions || req.uid() == 0 {
            return true;
        }
        let Some((st, _)) = meta.attr(dir) else {
            return false;
        };
        self.may_st(&st, Some(req), want)
    }

    /// [`PassthroughFs::may`] on attributes `st` the caller has (offline: the last known).
    /// `req` None: the daemon's own request (readdirplus), allowed.
    fn may_st(&self, st: &libc::stat, req: Option<&Request>, want: u32) -> bool {
        let Some(req) = req else {
            return true;
        };
        if self.default_permissions || req.uid() == 0 {
            return true;
        }
        let mode = st.st_mode;
        if st.st_uid == req.uid() {
            return (mode >> 6) & want == want;
        }
        (mode >> 3) & want == want && mode & want == want
    }

    /// The metadata cache's gen for `dir`'s names, checking the directory with one stat
    /// when it is due.
    fn dir_gen(&self, meta: &MetaCache, dir: &Inode) -> io::Result<u64> {
        if let DirCheck::Fresh(gen) = meta.dir_check(dir.id) {
            return Ok(gen);
        }
        let st = sys::fstat_path(self.inodes.fd(dir)?.as_raw_fd())?;
        Ok(meta.check_dir(dir.id, &st, dir.handle_ref()))
    }

    /// Kernel TTLs for a reply whose attributes stay trusted `attr_left` and whose name
    /// `entry_left` (shared mode: never past what the metadata cache trusts).
    fn reply_ttls(&self, attr_left: Duration, entry_left: Duration) -> ReplyTtls {
        match &self.meta {
            Some(m) if m.coherence == Coherence::Exclusive && self.long_kernel_ttls => ReplyTtls {
                attr: EXCLUSIVE_TTL.max(self.ttls.attr()),
                entry: EXCLUSIVE_TTL.max(self.ttls.entry()),
            },
            Some(m) if m.coherence == Coherence::Exclusive => ReplyTtls {
                attr: self.ttls.attr(),
                entry: self.ttls.entry(),
            },
            Some(_) => ReplyTtls {
                attr: self.ttls.attr().min(attr_left),
                entry: self.ttls.entry().min(entry_left),
            },
            None => ReplyTtls {
                attr: self.ttls.attr(),
                entry: self.ttls.entry(),
            },
        }
    }

    /// TTLs for attributes just read from the backing.
    fn fresh_ttls(&self, dir: Option<u64>) -> ReplyTtls {
        match &self.meta {
            Some(m) => {
                let entry = dir.map_or(m.ttl(), |d| m.dir_remaining(d));
                self.reply_ttls(m.ttl(), entry)
            }
            None => self.reply_ttls(Duration::MAX, Duration::MAX),
        }
    }

    /// Looks `name` up in the backing; records what it found in the metadata cache: as a
    /// lookup under the directory's gen, or (`Found::Made`) as a name just created.
    fn lookup_backing(
        &self,
        parent: &Inode,
        name: &OsStr,
        found: Found,
    ) -> io::Result<(FileAttr, ReplyTtls)> {
        let c = cstr(name)?;
        let pfd = self.inodes.fd(parent)?;
        let fd = match sys::open_path_at(pfd.as_raw_fd(), &c) {
            Ok(fd) => fd,
            Err(e) => {
                if let (Some(meta), Found::Lookup(Some(gen))) = (&self.meta, found) {
                    if e.raw_os_error() == Some(libc::ENOENT) {
                        meta.put_name(parent.id, gen, name.as_bytes(), Name::Absent);
                    }
                }
                return Err(self.inodes.limit_error(e));
            }
        };
        let st = sys::fstat_path(fd.as_raw_fd())?;
        let file = match &self.cache {
            Some(cache) if st.st_mode & libc::S_IFMT == libc::S_IFREG => {
                cache.file_state(fd.as_raw_fd(), &st)
            }
            _ => None,
        };
        let inode = self.inodes.lookup_insert(fd, &st, file)?;
        self.revalidate(&inode, &st);
        if let Some(meta) = &self.meta {
            match found {
                Found::Lookup(gen) => {
                    meta.put_attr(inode.id, &st, inode.handle_ref());
                    if let Some(gen) = gen {
                        meta.put_name(parent.id, gen, name.as_bytes(), Name::Child(inode.id));
                    }
                }
                Found::Made => meta.apply(Change::Created {
                    dir: parent.id,
                    name: name.as_bytes(),
                    child: inode.id,
                    st: &st,
                    handle: inode.handle_ref(),
                }),
            }
        }
        Ok((self.attr(&inode, &st), self.fresh_ttls(Some(parent.id))))
    }

    /// Fresh attributes of a regular file reached us, to be sent in this request's reply
    /// (getattr after the TTL, a lookup, readdirplus): a backing changed underneath drops
    /// what is cached for it, and the kernel's pages. When the size or mtime moved, the
    /// reply itself makes the kernel drop them (`FUSE_AUTO_INVAL_DATA`); an `inval_inode`
    /// then would race the reply, and the kernel discards the attributes of a reply that
    /// an invalidation overtook (its attr_version moved), so an lseek(SEEK_END) or an
    /// append could go on with the old size. Only a change that kept size and mtime (a
    /// rewrite with `touch -r`) needs the notification, and its reply carries no new size.
    fn revalidate(&self, inode: &Inode, st: &libc::stat) {
        if let Some((cache, file)) = self.cache_for(inode) {
            let r = cache.revalidate_detail(file, st);
            if r == (Revalidated::Changed {
                size_or_mtime_moved: false,
            }) {
                self.invalidate_pages(inode);
            }
        }
    }

    /// Creates `name` in `parent` with `make(parent_fd, name)`, as the caller, and replies
    /// with the new entry (mknod, mkdir, symlink).
    fn make_entry(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        reply: ReplyEntry,
        make: impl FnOnce(RawFd, &std::ffi::CString) -> io::Result<()>,
    ) {
        let result = self
            .refuse_if_offline()
            .and_then(|()| self.inode(parent))
            .and_then(|p| as_caller(req, || self.namespace_make(&p, name, make).map(|(_, e)| e)));
        self.reply_entry(result, reply);
    }

    // ---- Namespace changes: the one way they reach the metadata cache ----------------
    //
    // Every handler that adds, removes or moves a name calls one of the three functions
    // below, which make the change on the backing and then tell the metadata cache
    // (`MetaCache::apply`) before the reply: the new name and its attributes, the removed
    // name (now a negative entry) and the attributes it drops, the directories' new times.
    // A failure that says something about the names (EEXIST, ENOENT...) forgets them.

    /// `make(dir_fd, name)` creates `name` in `dir`; then the new entry is looked up.
    fn namespace_make<T>(
        &self,
        dir: &Inode,
        name: &OsStr,
        make: impl FnOnce(RawFd, &std::ffi::CString) -> io::Result<T>,
    ) -> io::Result<(T, (FileAttr, ReplyTtls))> {
        self.refuse_if_offline()?;
        let c = cstr(name)?;
        let made = {
            let pfd = self.inodes.fd(dir)?;
            make(pfd.as_raw_fd(), &c)
        };
        let made = match made {
            Ok(t) => t,
            Err(e) => {
                self.namespace_failed(&e, &[(dir.id, name.as_bytes())]);
                return Err(e);
            }
        };
        self.dirs_changed(&[dir]);
        let entry = self.lookup_backing(dir, name, Found::Made)?;
        Ok((made, entry))
    }

    /// unlinkat(dir, name, flags).
    fn namespace_remove(&self, dir: &Inode, name: &OsStr, flags: i32) -> io::Result<()> {
        self.refuse_if_offline()?;
        let c = cstr(name)?;
        let pfd = self.inodes.fd(dir)?;
        let child = self
            .meta
            .as_ref()
            .and_then(|m| self.child_before(m, dir, &pfd, &c));
        if let Err(e) = sys::unlinkat(pfd.as_raw_fd(), &c, flags) {
            self.namespace_failed(&e, &[(dir.id, name.as_bytes())]);
            return Err(e);
        }
        drop(pfd);
        self.dirs_changed(&[dir]);
        if let Some(meta) = &self.meta {
            meta.apply(Change::Removed {
                dir: dir.id,
                name: name.as_bytes(),
                child,
            });
        }
        Ok(())
    }

    /// After a rename or link through the mount: the cached regular file `child` (a node id)
    /// now named `name` in `dir` had its ctime moved by us (`CacheSet::ctime_moved_by_us`);
    /// one fstatat, only for a file whose data is cached.
    fn renamed_file_ctime(&self, child: Option<u64>, dir: RawFd, name: &std::ffi::CStr) {
        let Some(inode) = child.and_then(|id| self.inodes.get(id)) else {
            return;
        };
        let Some((cache, file)) = self.cache_for(&inode) else {
            return;
        };
        if cache.has_validator(file) {
            if let Ok(st) = sys::fstatat(dir, name) {
                if st.st_ino == inode.backing_ino && st.st_dev == inode.dev {
                    cache.ctime_moved_by_us(file, &st);
                }
            }
        }
    }

    /// renameat2(from, name, to, newname, flags).
    fn namespace_rename(
        &self,
        from: &Inode,
        name: &OsStr,
        to: &Inode,
        newname: &OsStr,
        flags: u32,
    ) -> io::Result<()> {
        self.refuse_if_offline()?;
        let old = cstr(name)?;
        let new = cstr(newname)?;
        let (pfd, npfd) = (self.inodes.fd(from)?, self.inodes.fd(to)?);
        let (child, target) = match &self.meta {
            Some(m) => (
                self.child_before(m, from, &pfd, &old),
                self.child_before(m, to, &npfd, &new),
            ),
            None => (None, None),
        };
        let names = [(from.id, name.as_bytes()), (to.id, newname.as_bytes())];
        if let Err(e) = sys::renameat2(pfd.as_raw_fd(), &old, npfd.as_raw_fd(), &new, flags) {
            self.namespace_failed(&e, &names);
            return Err(e);
        }
        self.renamed_file_ctime(child, npfd.as_raw_fd(), &new);
        if flags & libc::RENAME_EXCHANGE != 0 {
            self.renamed_file_ctime(target, pfd.as_raw_fd(), &old);
        }
        drop((pfd, npfd));
        self.dirs_changed(&[from, to]);
        if let Some(meta) = &self.meta {
            let exchange = flags & libc::RENAME_EXCHANGE != 0;
            if child.is_some() && child == target && !exchange {
                // two links of one inode: rename does nothing; let lookups say so
                meta.apply(Change::Unknown(&names));
                return Ok(());
            }
            meta.apply(Change::Renamed {
                from: from.id,
                name: name.as_bytes(),
                to: to.id,
                newname: newname.as_bytes(),
                exchange,
                child,
                target,
            });
        }
        Ok(())
    }

    /// The node id `name` in `dir` has just before a change: from the metadata cache in
    /// exclusive mode, else one fstatat. None: absent (or not to be known).
    fn child_before(
        &self,
        meta: &MetaCache,
        dir: &Inode,
        dfd: &inode::InodeFd,
        name: &std::ffi::CString,
    ) -> Option<u64> {
        if meta.coherence == Coherence::Exclusive {
            if let Some((Name::Child(id), _)) = meta.lookup_cached(dir.id, name.as_bytes()) {
                return Some(id);
            }
        }
        let st = sys::fstatat(dfd.as_raw_fd(), name).ok()?;
        Some(self.inodes.id_for_dirent(st.st_dev, st.st_ino))
    }

    /// A namespace change failed with `e`: names whose state it contradicts are
    /// forgotten (the cache may have been wrong about them).
    fn namespace_failed(&self, e: &io::Error, names: &[(u64, &[u8])]) {
        let Some(meta) = &self.meta else { return };
        let telling = [
            libc::EEXIST,
            libc::ENOENT,
            libc::ENOTEMPTY,
            libc::ENOTDIR,
            libc::EISDIR,
            libc::ESTALE,
        ];
        if e.raw_os_error().is_some_and(|c| telling.contains(&c)) {
            meta.apply(Change::Unknown(names));
        }
    }

    /// The directories' times moved through the mount: their new stats become their
    /// validators (one stat each; a directory that cannot be stat'ed is forgotten).
    fn dirs_changed(&self, dirs: &[&Inode]) {
        let Some(meta) = &self.meta else { return };
        let mut stats = Vec::with_capacity(dirs.len());
        for (i, dir) in dirs.iter().enumerate() {
            if dirs[..i].iter().any(|d| d.id == dir.id) {
                continue;
            }
            let st = self
                .inodes
                .fd(dir)
                .and_then(|fd| sys::fstat_path(fd.as_raw_fd()));
            match st {
                Ok(st) => stats.push((dir.id, st)),
                Err(_) => {
                    meta.drop_dir(dir.id);
                }
            }
        }
        meta.apply(Change::Dirs(&stats));
    }

    /// An inode's attributes changed through the mount in a way no other path records
    /// (an xattr change moves ctime): its new stat goes to the metadata cache.
    fn attr_changed(&self, inode: &Inode) {
        let Some(meta) = &self.meta else { return };
        let st = self
            .inodes
            .fd(inode)
            .and_then(|fd| sys::fstat_path(fd.as_raw_fd()));
        meta.apply(Change::Attr {
            id: inode.id,
            st: st.as_ref().ok(),
        });
    }

    // ---- end of namespace changes ----------------------------------------------------

    fn reply_entry(&self, result: io::Result<(FileAttr, ReplyTtls)>, reply: ReplyEntry) {
        match result {
            Ok((attr, ttls)) => {
                reply.entry_with_ttls(&ttls.attr, &ttls.entry, &attr, Generation(0))
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    /// Flags for opening the backing file for a kernel open with `flags`.
    fn backing_open_flags(flags: i32) -> i32 {
        // O_APPEND: the kernel already computed each write's offset.
        // O_DIRECT: served with FOPEN_DIRECT_IO instead (our buffers are not aligned).
        // O_CREAT/O_EXCL/O_NOCTTY: meaningless when reopening an existing inode.
        // O_NOFOLLOW: the kernel resolved the path already, and /proc/self/fd/N is
        // itself a (magic) symlink that O_NOFOLLOW would refuse with ELOOP.
        let strip = libc::O_APPEND
            | libc::O_DIRECT
            | libc::O_CREAT
            | libc::O_EXCL
            | libc::O_NOCTTY
            | libc::O_NOFOLLOW;
        (flags & !strip) | libc::O_CLOEXEC
    }

    /// With the kernel's write cache, the backing flags `backing` of a write-only open made
    /// read-write: the kernel reads the rest of a page a write covers in part through the
    /// handle it writes by. None: nothing to widen (the open stays as asked).
    fn widened_for_write_cache(&self, backing: i32) -> Option<i32> {
        (self.kernel_write_cache && backing & libc::O_ACCMODE == libc::O_WRONLY)
            .then_some((backing & !libc::O_ACCMODE) | libc::O_RDWR)
    }

    /// `open(backing flags)`, read-write instead of write-only under the kernel's write cache
    /// where the caller may read the file (else as asked: the kernel's fill of a partial
    /// page then fails, as a read through a write-only descriptor would).
    fn open_for_write_cache(
        &self,
        backing: i32,
        open: impl Fn(i32) -> io::Result<OwnedFd>,
    ) -> io::Result<OwnedFd> {
        match self.widened_for_write_cache(backing) {
            Some(wide) => match open(wide) {
                Err(e) if e.raw_os_error() == Some(libc::EACCES) => open(backing),
                r => r,
            },
            None => open(backing),
        }
    }

    fn fopen_flags(&self, flags: i32) -> FopenFlags {
        // O_DIRECT: served as FOPEN_DIRECT_IO; not under the kernel's write cache, whose
        // dirty pages of another descriptor such a read would not see (the kernel writes
        // them back before its own O_DIRECT I/O: found by the differential tester, a read
        // of bytes written through a buffered descriptor gave 0)
        let mut fopen = if flags & libc::O_DIRECT != 0 && !self.kernel_write_cache {
            FopenFlags::FOPEN_DIRECT_IO
        } else {
            FopenFlags::empty()
        };
        // A read-only handle has nothing to report at close (no write error can be
        // pending on it, and no lock is ours to release: POSIX locks stay in the
        // kernel): the kernel skips its FLUSH request, one round trip of the four a
        // small file's open-read-close costs (issue 12). Writable handles still get
        // `flush` (close(dup(fd)) on the backing, where NFS reports write errors).
        if flags & libc::O_ACCMODE == libc::O_RDONLY {
            fopen |= FopenFlags::FOPEN_NOFLUSH;
        }
        fopen
    }

    /// `st`: the opened descriptor's fstat (one per open serves both this handle's change
    /// mark and `open_validate`); None if it failed.
    fn add_file_handle(
        &self,
        file: OwnedFd,
        inode: Arc<Inode>,
        flags: i32,
        st: Option<&libc::stat>,
        implicit: bool,
    ) -> u64 {
        let fh = self.new_handle();
        let cached = self.cache_for(&inode).is_some();
        let seen = st.map(change_mark).unwrap_or_default();
        self.files.insert(
            fh,
            Arc::new(FileHandleState {
                file,
                _pin: self.inodes.pin(&inode),
                inode,
                cached,
                append: flags & libc::O_APPEND != 0,
                seen: Mutex::new(seen),
                writable: flags & libc::O_ACCMODE != libc::O_RDONLY,
                offline: false,
                reopened: Mutex::new(None),
                implicit,
            }),
        );
        fh
    }

    /// Open (or create) of a regular file: checks the validator, and answers whether
    /// the kernel may keep the pages it has (FOPEN_KEEP_CACHE).
    fn open_validate(&self, inode: &Inode, st: Option<&libc::stat>, flags: i32) -> FopenFlags {
        let mut fopen = self.fopen_flags(flags);
        let Some((cache, file)) = self.cache_for(inode) else {
            return fopen;
        };
        let Some(st) = st else {
            return fopen;
        };
        if cache.open_check(file, st) && flags & libc::O_DIRECT == 0 {
            fopen |= FopenFlags::FOPEN_KEEP_CACHE;
        }
        fopen
    }

    fn do_setattr(
        &self,
        inode: &Inode,
        change: AttrChange,
        fh: Option<FileHandle>,
    ) -> io::Result<FileAttr> {
        let size = change.size;
        let handle = match fh {
            Some(fh) => self.file(fh).ok(),
            None => None,
        };
        let ifd = self.inodes.fd(inode)?;
        let path = sys::proc_path(ifd.as_raw_fd());
        let touch = size.map_or(Touch::Attributes, Touch::From);
        let fd = handle
            .as_ref()
            .map_or(ifd.as_raw_fd(), |h| h.file.as_raw_fd());
        let (result, _) = self.change(inode, fd, touch, || {
            Self::apply_setattr(inode, ifd.as_raw_fd(), &handle, &path, change)
        });
        result?;
        let st = match &handle {
            Some(h) => sys::fstat(&h.file)?,
            None => sys::fstat_path(ifd.as_raw_fd())?,
        };
        if let Some(meta) = &self.meta {
            meta.apply(Change::Attr {
                id: inode.id,
                st: Some(&st),
            });
        }
        Ok(self.attr(inode, &st))
    }

    /// Whether `caller` may set `inode`'s times explicitly (the owner or root), by the
    /// metadata cache's stat or one fstat.
    fn may_set_times(&self, inode: &Inode, caller: u32) -> bool {
        if caller == 0 {
            return true;
        }
        let cached = self.meta.as_ref().and_then(|m| m.attr_cached(inode.id));
        let st = cached.or_else(|| {
            let fd = self.inodes.fd(inode).ok()?;
            sys::fstat_path(fd.as_raw_fd()).ok()
        });
        st.is_some_and(|st| st.st_uid == caller)
    }

    /// The mtime the kernel's write cache gave its writes of `inode` (see `setattr`), set
    /// as the daemon: the kernel let the caller write the file, which is what moves an
    /// mtime, and a writer who is not the owner could not set it explicitly (its close
    /// would fail with EPERM). With dirty data in writeback it is what the mount reports and
    /// the backing gets at writeback (no backing call, the data stays dirty); else it is
    /// set on the backing.
    fn kernel_mtime(&self, inode: &Inode, mtime: std::time::SystemTime) -> io::Result<FileAttr> {
        let ts = sys::timespec(Some(TimeOrNow::SpecificTime(mtime)));
        let ns = ts.tv_sec * 1_000_000_000 + ts.tv_nsec;
        inode.kernel_mtime_ns.store(ns, Ordering::Relaxed);
        if let Some((cache, file)) = self.cache_for(inode) {
            if cache.set_dirty_mtime(file, ns) {
                // the backing did not move: getattr's answer, the dirty mtime laid over it
                return self.getattr_online(inode, None).map(|(attr, _)| attr);
            }
        }
        let change = AttrChange {
            mode: None,
            uid: None,
            gid: None,
            size: None,
            atime: None,
            mtime: Some(TimeOrNow::SpecificTime(mtime)),
        };
        self.do_setattr(inode, change, None)
    }

    fn apply_setattr(
        inode: &Inode,
        ifd: RawFd,
        handle: &Option<Arc<FileHandleState>>,
        path: &std::ffi::CString,
        change: AttrChange,
    ) -> io::Result<()> {
        let AttrChange {
            mode,
            uid,
            gid,
            size,
            atime,
            mtime,
        } = change;
        if let Some(mode) = mode {
            match &handle {
                Some(h) => sys::fchmod(h.file.as_raw_fd(), mode)?,
                None if inode.is_symlink() => {
                    return Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP))
                }
                None => sys::chmod(path, mode)?,
            };
        }
        if uid.is_some() || gid.is_some() {
            let u = uid.unwrap_or(u32::MAX);
            let g = gid.unwrap_or(u32::MAX);
            let flags = libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW;
            sys::fchownat(ifd, c"", u, g, flags)?;
        }
        if let Some(size) = size {
            let size =
                i64::try_from(size).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
            match &handle {
                Some(h) => sys::ftruncate(h.file.as_raw_fd(), size)?,
                None => sys::truncate(path, size)?,
            };
        }
        if atime.is_some() || mtime.is_some() {
            let times = [sys::timespec(atime), sys::timespec(mtime)];
            match &handle {
                Some(h) => sys::futimens(h.file.as_raw_fd(), &times)?,
                None if inode.is_symlink() => {
                    let flags = libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW;
                    sys::utimensat(ifd, c"", &times, flags)?
                }
                None => sys::utimensat(libc::AT_FDCWD, path, &times, 0)?,
            };
        }
        Ok(())
    }

    /// FOPEN flags of a directory open: with a metadata cache the kernel may cache the
    /// listing (it checks the directory's mtime before reusing it, and drops it on its
    /// own changes); it keeps what it cached when the listing came from the metadata
    /// cache, which vouches that it is current.
    fn opendir_flags(&self, listing_known: bool) -> FopenFlags {
        match &self.meta {
            Some(_) if listing_known => FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE,
            Some(_) => FopenFlags::FOPEN_CACHE_DIR,
            None => FopenFlags::empty(),
        }
    }

    fn open_dir_stream(inode_fd: RawFd) -> io::Result<DirStream> {
        sys::count_meta_call();
        // Through /proc/self/fd/N, not openat(fd, "."): looking up "." inside the
        // directory needs search (x) permission, but opendir needs only read (r), and
        // this runs with the caller's credentials (pjdfstest open/06 on a 0477 dir).
        let path = sys::proc_path(inode_fd);
        let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC;
        DirStream::from_fd(sys::open(&path, flags)?)
    }

    /// Reads entries of `handle` starting at `offset`, handing each to `add`
    /// until it returns false (the reply buffer is full). The stream is left
    /// positioned after the last accepted entry. A handle served from the metadata
    /// cache's listing reads that (offsets are indexes); a stream read whole from the
    /// start in consecutive calls stores its listing in the metadata cache.
    fn read_dir(
        &self,
        handle: &DirHandleState,
        offset: u64,
        mut add: impl FnMut(&DirEntry) -> bool,
    ) -> io::Result<()> {
        if let Some(listing) = &handle.listing {
            for (i, e) in listing.iter().enumerate().skip(offset as usize) {
                let entry = DirEntry {
                    backing_ino: e.backing_ino,
                    next_offset: i as i64 + 1,
                    d_type: e.d_type,
                    name: e.name.to_vec(),
                };
                if !add(&entry) {
                    break;
                }
            }
            return Ok(());
        }
        let mut collect = handle.collect.lock();
        if offset == 0 {
            *collect = handle.gen.map(|gen| Collect {
                gen,
                entries: Vec::new(),
                next: 0,
                bytes: 0,
            });
        }
        if collect.as_ref().is_some_and(|c| c.next != offset) {
            *collect = None;
        }
        let limit = self.meta.as_ref().map_or(0, |m| m.budget() / 4);
        // the first batch positions the stream where the kernel asks (0: the start); the
        // next call seeks again, so entries read ahead and not accepted need no seek back
        let mut position = Some(offset);
        loop {
            let (entries, at_end) = Self::read_batch(&handle.stream, position.take())?;
            for entry in entries {
                if !add(&entry) {
                    return Ok(());
                }
                if let Some(c) = collect.as_mut() {
                    c.next = entry.next_offset as u64;
                    c.bytes += entry.name.len() + 64;
                    c.entries.push(meta::Dirent {
                        name: entry.name.clone().into_boxed_slice(),
                        backing_ino: entry.backing_ino,
                        d_type: entry.d_type,
                    });
                    if c.bytes > limit {
                        *collect = None; // too big to keep
                    }
                }
            }
            if at_end {
                if let (Some(c), Some(meta)) = (collect.take(), &self.meta) {
                    meta.put_listing(handle.inode.id, c.gen, c.entries);
                }
                return Ok(());
            }
        }
    }

    /// Reads up to [`READDIR_BATCH`] entries of `stream` (first positioned at `position`,
    /// when given) as one bounded backing call; true at the end of the directory.
    fn read_batch(
        stream: &Arc<Mutex<Option<DirStream>>>,
        position: Option<u64>,
    ) -> io::Result<(Vec<DirEntry>, bool)> {
        let stream = stream.clone();
        crate::offline::call(crate::sys::FaultOp::Readdir, move || {
            let mut guard = stream.lock();
            let Some(stream) = guard.as_mut() else {
                return Err(io::Error::from_raw_os_error(libc::EBADF));
            };
            match position {
                Some(0) => stream.rewind(),
                Some(at) => stream.seek(at as libc::c_long),
                None => {}
            }
            let mut out = Vec::new();
            while out.len() < READDIR_BATCH {
                match stream.next_entry()? {
                    Some(e) => out.push(e),
                    None => return Ok((out, true)),
                }
            }
            Ok((out, false))
        })
    }

    /// The inode number a directory entry is listed with: the directory itself for ".",
    /// else the number the entry's backing inode has (or would get) as a node id.
    fn dirent_id(&self, dir: &DirHandleState, e: &DirEntry) -> u64 {
        if e.name == b"." {
            dir.inode.id
        } else {
            self.inodes.id_for_dirent(dir.inode.dev, e.backing_ino)
        }
    }

    fn xattr_reply(result: io::Result<Vec<u8>>, size: u32, reply: ReplyXattr) {
        match result {
            Ok(data) if size == 0 => reply.size(data.len() as u32),
            Ok(data) if data.len() > size as usize => reply.error(Errno::ERANGE),
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(errno(e)),
        }
    }

    /// Runs a getxattr/listxattr-style call twice: once for the size, once for the data.
    fn sized_call(mut call: impl FnMut(&mut [u8]) -> io::Result<usize>) -> io::Result<Vec<u8>> {
        loop {
            let len = call(&mut [])?;
            let mut buf = vec![0u8; len];
            match call(&mut buf) {
                Ok(n) => {
                    buf.truncate(n);
                    return Ok(buf);
                }
                // It grew between the two calls; ask again.
                Err(e) if e.raw_os_error() == Some(libc::ERANGE) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// What the metadata cache knows of xattr `name` of `inode` (None: its name list), when
    /// the caller may be answered from it: root; `security.*` and `system.*` (readable by
    /// whoever reached the inode); `user.*` when the cached mode lets the caller read the
    /// file (as [`PassthroughFs::may`] judges, conservatively). `trusted.*` and anything else
    /// go to the backing, which decides with the caller's credentials.
    fn cached_xattr(
        &self,
        inode: &Inode,
        req: &Request,
        name: Option<&[u8]>,
    ) -> Option<XattrLookup> {
        let meta = self.meta.as_ref()?;
        let root = req.uid() == 0;
        let allowed = root
            || match name {
                None => true,
                Some(n) if n.starts_with(b"security.") || n.starts_with(b"system.") => true,
                Some(n) if n.starts_with(b"user.") => self.may(meta, inode.id, req, 4),
                Some(_) => false,
            };
        allowed.then(|| meta.xattr(inode.id, name, root))
    }

    /// Stores what a backing xattr call found, when [`PassthroughFs::cached_xattr`] said
    /// it may be stored: a value, or ENODATA as absent; other errors are not kept.
    fn store_xattr(
        &self,
        inode: &Inode,
        req: &Request,
        cached: Option<XattrLookup>,
        name: Option<&[u8]>,
        got: &io::Result<Vec<u8>>,
    ) {
        let (Some(meta), Some(XattrLookup::Miss(xgen))) = (&self.meta, cached) else {
            return;
        };
        let root = req.uid() == 0;
        match got {
            Ok(v) => meta.put_xattr(inode.id, xgen, name, root, Some(v)),
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => {
                meta.put_xattr(inode.id, xgen, name, root, None)
            }
            Err(_) => {}
        }
    }

    /// The magic link to `inode`, valid while the returned descriptor guard lives.
    fn xattr_target(&self, inode: &Inode) -> io::Result<(inode::InodeFd, std::ffi::CString)> {
        if inode.is_symlink() {
            // No way to reach a symlink's own xattrs through an O_PATH descriptor.
            return Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP));
        }
        let fd = self.inodes.fd(inode)?;
        let path = sys::proc_path(fd.as_raw_fd());
        Ok((fd, path))
    }
}

// ---- Offline (issue 16): what is served while the backing is unreachable ----------------
//
// While `crate::offline` says the backing is unreachable, requests are answered from the
// caches alone: names, attributes, listings and symlink targets from the metadata cache as
// last known (never an entry a change through the mount expired), the bytes of files that
// are wholly cached and whose cached validator is the metadata cache's attributes. The rest
// is refused at once with EHOSTDOWN (one log line per inode per offline period), every
// change with EROFS. A request whose backing call fails because the mount just went
// offline is answered the offline way (`or_offline`).

/// The TTLs of replies made offline (at most a second: the kernel asks again soon, and
/// sees the backing's answers soon after the return).
const OFFLINE_TTL: Duration = Duration::from_secs(1);

/// A descriptor to read a file's backing data through (see `PassthroughFs::data_fd`).
enum DataFd<'a> {
    Own(&'a OwnedFd),
    Reopened(Arc<OwnedFd>),
}

impl AsRawFd for DataFd<'_> {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            DataFd::Own(fd) => fd.as_raw_fd(),
            DataFd::Reopened(fd) => fd.as_raw_fd(),
        }
    }
}

impl PassthroughFs {
    /// The offline state, when the mount is offline now.
    fn offline_now(&self) -> Option<&'static Arc<Offline>> {
        crate::offline::get().filter(|o| o.is_offline())
    }

    /// A change of the backing while offline: EROFS.
    fn refuse_if_offline(&self) -> io::Result<()> {
        match self.offline_now() {
            Some(o) => Err(o.refuse_write()),
            None => Ok(()),
        }
    }

    /// `online`, unless the mount is offline, before it or by the end of it (its backing
    /// call found the backing gone): then `offline`.
    fn or_offline<T>(
        &self,
        online: impl FnOnce() -> io::Result<T>,
        offline: impl FnOnce(&Offline) -> io::Result<T>,
    ) -> io::Result<T> {
        if let Some(o) = self.offline_now() {
            return offline(o);
        }
        match online() {
            Err(e) => match self.offline_now() {
                Some(o) => offline(o),
                None => Err(e),
            },
            ok => ok,
        }
    }

    fn offline_ttls(&self) -> ReplyTtls {
        ReplyTtls {
            attr: self.ttls.attr().min(OFFLINE_TTL),
            entry: self.ttls.entry().min(OFFLINE_TTL),
        }
    }

    /// A lookup from the metadata cache alone.
    fn lookup_offline(
        &self,
        o: &Offline,
        req: Option<&Request>,
        parent: &Inode,
        name: &OsStr,
    ) -> io::Result<(FileAttr, ReplyTtls)> {
        let Some(meta) = &self.meta else {
            return Err(o.refuse(parent.id, "a lookup (no metadata cache)"));
        };
        let searchable = meta
            .attr_cached(parent.id)
            .is_some_and(|st| self.may_st(&st, req, libc::S_IXOTH));
        if !searchable {
            return Err(o.refuse(parent.id, "a directory's search permission"));
        }
        let id = match meta.lookup_cached(parent.id, name.as_bytes()) {
            Some((Name::Absent, _)) => {
                o.served(parent.id);
                return Err(io::Error::from_raw_os_error(libc::ENOENT));
            }
            Some((Name::Child(id), _)) => id,
            _ => return Err(o.refuse(parent.id, "a name in this directory")),
        };
        let Some(st) = meta.attr_cached(id) else {
            return Err(o.refuse(id, "the attributes of this inode"));
        };
        let cache = self.cache.as_ref();
        let file = || match cache {
            Some(c) => c.file_state_known(&st),
            None => Some(None),
        };
        let Some(inode) = self.inodes.lookup_cached(id, &st, meta.handle(id), file) else {
            tracing::debug!(
                id,
                dev = st.st_dev,
                ino = st.st_ino,
                "offline: inode not in the table"
            );
            return Err(o.refuse(id, "this inode"));
        };
        o.served(inode.id);
        Ok((self.attr(&inode, &st), self.offline_ttls()))
    }

    /// getattr through the backing (or the metadata cache while trusted).
    fn getattr_online(
        &self,
        inode: &Inode,
        fh: Option<FileHandle>,
    ) -> io::Result<(FileAttr, ReplyTtls)> {
        // An open handle answers from its descriptor (right even after rename/unlink),
        // always: an fstat of an open file (before an mmap, an append) must see an
        // outside change now, and costs no path walk. Only path stats are cached. A
        // handle opened offline has no backing descriptor: it answers as a path stat.
        let handle = fh.and_then(|fh| self.file(fh).ok()).filter(|h| !h.offline);
        if handle.is_none() {
            if let Some((st, left)) = self.meta.as_ref().and_then(|m| m.attr(inode.id)) {
                return Ok((self.attr(inode, &st), self.reply_ttls(left, left)));
            }
        }
        let st = match handle {
            Some(h) => sys::fstat(&h.file)?,
            None => sys::fstat_path(self.inodes.fd(inode)?.as_raw_fd())?,
        };
        self.revalidate(inode, &st);
        if let Some(meta) = &self.meta {
            meta.put_attr(inode.id, &st, inode.handle_ref());
        }
        Ok((self.attr(inode, &st), self.fresh_ttls(None)))
    }

    /// opendir through the backing (or the metadata cache's fresh listing).
    fn opendir_online(&self, req: &Request, inode: Arc<Inode>) -> io::Result<(u64, bool)> {
        // A listing the metadata cache knows (and the caller may read) is served from
        // it, without opening the backing directory.
        let (gen, listing) = match &self.meta {
            Some(meta) => {
                let gen = self.dir_gen(meta, &inode)?;
                let listing = if self.may(meta, inode.id, req, libc::S_IROTH) {
                    meta.listing(inode.id)
                } else {
                    None
                };
                (Some(gen), listing)
            }
            None => (None, None),
        };
        let (stream, pin) = match listing {
            Some(_) => (None, None),
            None => {
                let ifd = self.inodes.fd(&inode)?;
                let stream = as_caller(req, || Self::open_dir_stream(ifd.as_raw_fd()))
                    .map_err(|e| self.inodes.limit_error(e))?;
                (Some(stream), Some(self.inodes.pin(&inode)))
            }
        };
        let known = listing.is_some();
        let fh = self.new_handle();
        self.dirs.insert(
            fh,
            Arc::new(DirHandleState {
                stream: Arc::new(Mutex::new(stream)),
                listing,
                gen,
                collect: Mutex::new(None),
                _pin: pin,
                inode,
            }),
        );
        Ok((fh, known))
    }

    /// opendir while offline: the last listing the metadata cache read, however old.
    fn opendir_offline(
        &self,
        o: &Offline,
        req: &Request,
        inode: &Arc<Inode>,
    ) -> io::Result<(u64, bool)> {
        let Some(meta) = &self.meta else {
            return Err(o.refuse(inode.id, "a directory listing (no metadata cache)"));
        };
        let readable = meta
            .attr_cached(inode.id)
            .is_some_and(|st| self.may_st(&st, Some(req), libc::S_IROTH));
        let listing = meta.listing_cached(inode.id).filter(|_| readable);
        let Some(listing) = listing else {
            return Err(o.refuse(inode.id, "this directory's listing"));
        };
        let fh = self.new_handle();
        self.dirs.insert(
            fh,
            Arc::new(DirHandleState {
                stream: Arc::new(Mutex::new(None)),
                listing: Some(listing),
                gen: None,
                collect: Mutex::new(None),
                _pin: None,
                inode: inode.clone(),
            }),
        );
        o.served(inode.id);
        // not "known": the kernel must not keep this listing past the return
        Ok((fh, false))
    }

    fn getattr_offline(&self, o: &Offline, inode: &Inode) -> io::Result<(FileAttr, ReplyTtls)> {
        match self.meta.as_ref().and_then(|m| m.attr_cached(inode.id)) {
            Some(st) => {
                o.served(inode.id);
                Ok((self.attr(inode, &st), self.offline_ttls()))
            }
            None => Err(o.refuse(inode.id, "the attributes of this inode")),
        }
    }

    /// An open while offline: read-only, of a regular file that is wholly cached and
    /// whose cached validator is its last known attributes. The handle's descriptor is a
    /// placeholder; its reads come from the cache.
    fn open_offline(
        &self,
        o: &Offline,
        req: &Request,
        inode: &Arc<Inode>,
        flags: i32,
    ) -> io::Result<(u64, FopenFlags)> {
        if flags & libc::O_ACCMODE != libc::O_RDONLY {
            return Err(o.refuse_write());
        }
        let Some(st) = self.meta.as_ref().and_then(|m| m.attr_cached(inode.id)) else {
            return Err(o.refuse(inode.id, "the attributes of this file"));
        };
        if !self.may_st(&st, Some(req), libc::S_IROTH) {
            return Err(o.refuse(inode.id, "this file's read permission"));
        }
        let handle = self.offline_handle(o, inode)?;
        let fh = self.new_handle();
        self.files.insert(fh, Arc::new(handle));
        Ok((fh, self.fopen_flags(flags)))
    }

    /// A read-only handle of a regular file while offline, if it is wholly cached and
    /// its cached validator is its last known attributes: its descriptor is a
    /// placeholder; its reads come from the cache.
    fn offline_handle(&self, o: &Offline, inode: &Arc<Inode>) -> io::Result<FileHandleState> {
        let Some(st) = self.meta.as_ref().and_then(|m| m.attr_cached(inode.id)) else {
            return Err(o.refuse(inode.id, "the attributes of this file"));
        };
        let servable = st.st_mode & libc::S_IFMT == libc::S_IFREG
            && self
                .cache_for(inode)
                .is_some_and(|(cache, file)| cache.offline_servable(file, &st));
        if !servable {
            return Err(o.refuse(inode.id, "all of this file's data"));
        }
        let placeholder: OwnedFd = std::fs::File::open("/dev/null")?.into();
        o.served(inode.id);
        Ok(FileHandleState {
            file: placeholder,
            _pin: self.inodes.pin(inode),
            inode: inode.clone(),
            cached: true,
            append: false,
            seen: Mutex::new(change_mark(&st)),
            writable: false,
            offline: true,
            reopened: Mutex::new(None),
            implicit: false,
        })
    }

    /// SEEK_DATA / SEEK_HOLE on a handle opened offline: all of a wholly cached file is
    /// data (its size from the handle's attributes at open).
    fn lseek_offline(h: &FileHandleState, offset: i64, whence: i32) -> io::Result<i64> {
        let size = h.seen.lock().0;
        match whence {
            libc::SEEK_DATA if offset < size => Ok(offset),
            libc::SEEK_HOLE if offset < size => Ok(size),
            libc::SEEK_DATA | libc::SEEK_HOLE => Err(io::Error::from_raw_os_error(libc::ENXIO)),
            _ => Err(io::Error::from_raw_os_error(libc::EINVAL)),
        }
    }

    /// A read from the cache alone.
    fn read_offline(&self, h: &FileHandleState, offset: u64, size: u32) -> io::Result<Vec<u8>> {
        let Some(o) = crate::offline::get() else {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        };
        let data = self
            .cache_for(&h.inode)
            .filter(|_| h.cached)
            .and_then(|(cache, file)| cache.read_cached(file, offset, size));
        match data {
            Some(d) => {
                o.served(h.inode.id);
                Ok(d)
            }
            None => Err(o.refuse(h.inode.id, "this part of the file")),
        }
    }

    /// The descriptor a handle's data is read through: its own, or for a handle opened
    /// offline the backing file, opened on first need after the return (as the daemon:
    /// the open was granted offline from the cached mode).
    fn data_fd<'a>(&self, h: &'a FileHandleState) -> io::Result<DataFd<'a>> {
        if !h.offline {
            return Ok(DataFd::Own(&h.file));
        }
        let mut reopened = h.reopened.lock();
        if let Some(fd) = reopened.as_ref() {
            return Ok(DataFd::Reopened(fd.clone()));
        }
        let ifd = self.inodes.fd(&h.inode)?;
        let path = sys::proc_path(ifd.as_raw_fd());
        let fd = Arc::new(sys::open(&path, libc::O_RDONLY | libc::O_CLOEXEC)?);
        *reopened = Some(fd.clone());
        Ok(DataFd::Reopened(fd))
    }

    /// A read through the backing (and the cache); on an error the reply comes back.
    fn read_online(
        &self,
        handle: &FileHandleState,
        offset: u64,
        size: u32,
        pid: u32,
        reply: ReplyData,
    ) -> Result<(), (io::Error, ReplyData)> {
        let fd = match self.data_fd(handle) {
            Ok(fd) => fd,
            Err(e) => return Err((e, reply)),
        };
        if let Some((cache, file)) = self.cache_for(&handle.inode).filter(|_| handle.cached) {
            // the thread's buffer, reused from request to request (not zeroed again:
            // `read_into` writes every byte it serves)
            let read = READ_BUF.with(|buf| {
                let mut buf = buf.borrow_mut();
                match cache.read_into(file, fd.as_raw_fd(), offset, size, pid, &mut buf) {
                    Ok(r) => {
                        reply.data(&buf[r.data.clone()]);
                        Ok(r)
                    }
                    Err(e) => Err((e, reply)),
                }
            });
            let result = read?;
            if result.outside_change {
                self.invalidate_pages(&handle.inode);
            }
            // the fill happens after the reply: the reader does not wait for it
            if let Some(fill) = result.fill {
                cache.fill(file, fill);
            }
            return Ok(());
        }
        let size = size as usize;
        READ_BUF.with(|buf| {
            let mut buf = buf.borrow_mut();
            if buf.len() < size {
                buf.resize(size, 0);
            }
            match sys::pread_full(fd.as_raw_fd(), &mut buf[..size], offset) {
                Ok(n) => {
                    reply.data(&buf[..n]);
                    Ok(())
                }
                Err(e) => Err((e, reply)),
            }
        })
    }

    /// What the mount does when the backing returns (`Offline::on_return`): the metadata
    /// cache trusts nothing until checked again, and the kernel drops what it holds of
    /// the inodes served offline (their next use asks us, and we ask the backing).
    pub fn offline_return_hook(&self) -> crate::offline::ReturnHook {
        let meta = self.meta.clone();
        let invalidate = self.invalidate.lock().clone();
        Box::new(move |served: Option<&[u64]>| {
            if let Some(meta) = &meta {
                let n = meta.expire_all();
                tracing::info!(entries = n, "metadata cache expired after the return");
            }
            if let (Some(tx), Some(ids)) = (&invalidate, served) {
                for &id in ids {
                    let _ = tx.send(Inval::Inode(id));
                }
            }
        })
    }
}

thread_local! {
    static READ_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Filesystem for PassthroughFs {
    fn destroy(&mut self) {
        if let Some(cache) = &self.cache {
            cache.close();
        }
    }

    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        let _ = config.set_max_write(MAX_IO);
        if let Err(max) = config.set_max_readahead(MAX_IO) {
            let _ = config.set_max_readahead(max);
        }
        let wanted = InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_READDIRPLUS_AUTO
            | InitFlags::FUSE_PARALLEL_DIROPS
            // Not FUSE_ATOMIC_O_TRUNC: with it the kernel sends O_TRUNC inside OPEN and
            // checks ETXTBSY (and the rest of handle_truncate) only after the daemon has
            // truncated, so open(O_RDONLY|O_TRUNC) of a running program emptied it while
            // failing. Without it the kernel checks first, then sends a size-0 SETATTR.
            | InitFlags::FUSE_EXPORT_SUPPORT
            | InitFlags::FUSE_CACHE_SYMLINKS
            // A read through a descriptor opened before an outside change: after the
            // attribute timeout the kernel asks getattr and drops its pages when mtime or
            // size moved (NFS's close-to-open plus attribute revalidation).
            | InitFlags::FUSE_AUTO_INVAL_DATA
            // The kernel stops clearing set-id bits with a SETATTR sent as the writer
            // (which fails with EPERM for a non-owner: pjdfstest chmod/12) and flags the
            // write instead; see `write`. Truncate (also O_TRUNC) and chown run with
            // the caller's credentials, so the backing clears the bits for those itself.
            | InitFlags::FUSE_HANDLE_KILLPRIV_V2;
        // `kernel_write_cache` (docs/DESIGN.md "The kernel's write cache"): writes stay in
        // the page cache and reach the daemon as page writeback (FUSE_WRITE_CACHE), the
        // kernel keeps its own size and mtime of a cached file
        let wanted = if self.kernel_write_cache {
            wanted | InitFlags::FUSE_WRITEBACK_CACHE
        } else {
            wanted
        };
        if self.kernel_write_cache
            && !config
                .capabilities()
                .contains(InitFlags::FUSE_WRITEBACK_CACHE)
        {
            tracing::warn!("kernel_write_cache: the kernel offers no FUSE_WRITEBACK_CACHE");
            self.kernel_write_cache = false;
        }
        let _ = config.add_capabilities(wanted & config.capabilities());
        Ok(())
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let result = self
            .inode(parent)
            .and_then(|p| as_caller(req, || self.do_lookup(Some(req), &p, name)));
        self.reply_entry(result, reply);
    }

    // batch_forget: fuser 0.18's default hands each node, with its own count, to
    // `forget`, which is exact; it cannot be overridden (the `ForgetOne` type in its
    // signature lives in a private module and cannot be named).
    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        if let Some(inode) = self.inodes.forget(ino.0, nlookup) {
            // writeback: dirty data of a file with no name left that nothing through the
            // mount can reach any more is dropped, not written back
            if let Some((cache, file)) = self.cache_for(&inode) {
                cache.forgotten(file);
            }
        }
        self.forget_implicit(ino.0);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let result = self.inode(ino).and_then(|inode| {
            self.or_offline(
                || self.getattr_online(&inode, fh),
                |o| self.getattr_offline(o, &inode),
            )
        });
        match result {
            Ok((attr, ttls)) => reply.attr(&ttls.attr, &attr),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        ctime: Option<std::time::SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        // The kernel's write cache keeps its own mtime of the writes it holds and sends it
        // with a ctime at close, fsync or its inode writeback: with the handle of a
        // writable open, as the closing process, or with none, from its flusher (as root).
        // A utimensat(2) of the mtime alone looks the same, but names no handle (only a
        // truncate does, with a size): it is taken the same way when the caller may set the
        // mtime anyway (the owner, root), and else goes the usual way, as the caller.
        let kernel_mtime = match (self.kernel_write_cache, mtime, ctime, mode, uid, gid) {
            (true, Some(TimeOrNow::SpecificTime(m)), Some(_), None, None, None)
                if size.is_none() && atime.is_none() =>
            {
                self.inode(ino)
                    .ok()
                    .filter(|i| fh.is_some() || self.may_set_times(i, req.uid()))
                    .map(|i| (i, m))
            }
            _ => None,
        };
        if let Some((inode, m)) = kernel_mtime {
            let result = self
                .refuse_if_offline()
                .and_then(|()| self.kernel_mtime(&inode, m));
            return match result {
                Ok(attr) => reply.attr(&self.fresh_ttls(None).attr, &attr),
                Err(e) => reply.error(errno(e)),
            };
        }
        let result = self
            .refuse_if_offline()
            .and_then(|()| self.inode(ino))
            .and_then(|inode| {
                as_caller(req, || {
                    let change = AttrChange {
                        mode,
                        uid,
                        gid,
                        size,
                        atime,
                        mtime,
                    };
                    self.do_setattr(&inode, change, fh)
                })
            });
        match result {
            Ok(attr) => reply.attr(&self.fresh_ttls(None).attr, &attr),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let result = self.inode(ino).and_then(|inode| {
            let online = || {
                if let Some(target) = self.meta.as_ref().and_then(|m| m.link(inode.id)) {
                    return Ok(target.into_vec());
                }
                let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
                let fd = self.inodes.fd(&inode)?;
                let n = sys::readlinkat(fd.as_raw_fd(), c"", &mut buf)?;
                buf.truncate(n);
                if let Some(meta) = &self.meta {
                    meta.put_link(inode.id, &buf);
                }
                Ok(buf)
            };
            let offline =
                |o: &Offline| match self.meta.as_ref().and_then(|m| m.link_cached(inode.id)) {
                    Some(t) => {
                        o.served(inode.id);
                        Ok(t.into_vec())
                    }
                    None => Err(o.refuse(inode.id, "this symlink's target")),
                };
            self.or_offline(online, offline)
        });
        match result {
            Ok(target) => reply.data(&target),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        self.make_entry(req, parent, name, reply, |dir, c| {
            sys::mknodat(dir, c, mode, rdev.into())
        });
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        self.make_entry(req, parent, name, reply, |dir, c| {
            sys::mkdirat(dir, c, mode)
        });
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let result = self
            .inode(parent)
            .and_then(|p| as_caller(req, || self.namespace_remove(&p, name, 0)));
        reply_empty(result, reply);
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let result = self
            .inode(parent)
            .and_then(|p| as_caller(req, || self.namespace_remove(&p, name, libc::AT_REMOVEDIR)));
        reply_empty(result, reply);
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let target = match cstr(target.as_os_str()) {
            Ok(t) => t,
            Err(e) => return reply.error(errno(e)),
        };
        self.make_entry(req, parent, link_name, reply, |dir, c| {
            sys::symlinkat(&target, dir, c)
        });
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let result = self.inode(parent).and_then(|p| {
            let np = self.inode(newparent)?;
            as_caller(req, || {
                self.namespace_rename(&p, name, &np, newname, flags.bits())
            })
        });
        reply_empty(result, reply);
    }

    fn link(
        &self,
        req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let result = self
            .refuse_if_offline()
            .and_then(|()| self.inode(ino))
            .and_then(|inode| {
                let np = self.inode(newparent)?;
                as_caller(req, || {
                    let ifd = self.inodes.fd(&inode)?;
                    let link = |npfd: RawFd, new: &std::ffi::CString| {
                        let direct =
                            sys::linkat(ifd.as_raw_fd(), c"", npfd, new, libc::AT_EMPTY_PATH);
                        let linked = if direct.is_err() && !inode.is_symlink() {
                            // AT_EMPTY_PATH needs CAP_DAC_READ_SEARCH, which an unprivileged
                            // caller's credentials lack; the magic link needs none.
                            let path = sys::proc_path(ifd.as_raw_fd());
                            sys::linkat(libc::AT_FDCWD, &path, npfd, new, libc::AT_SYMLINK_FOLLOW)
                        } else {
                            direct
                        };
                        if linked.is_ok() {
                            self.renamed_file_ctime(Some(inode.id), npfd, new);
                        }
                        linked
                    };
                    self.namespace_make(&np, newname, link).map(|(_, e)| e)
                })
            });
        self.reply_entry(result, reply);
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        sys::OPEN_REQUESTS.fetch_add(1, Ordering::Relaxed);
        if self.implicit.is_some() {
            // no_open: the kernel takes ENOSYS as success, opens this file and every
            // later one itself, and sends their requests with handle 0 (see `implicit`)
            return reply.error(Errno::ENOSYS);
        }
        let result = self.inode(ino).and_then(|inode| {
            let online = || {
                let ifd = self.inodes.fd(&inode)?;
                let path = sys::proc_path(ifd.as_raw_fd());
                // No O_TRUNC arrives here: without FUSE_ATOMIC_O_TRUNC the kernel truncates
                // with a SETATTR of size 0, which goes through the change protocol.
                let file = as_caller(req, || {
                    self.open_for_write_cache(Self::backing_open_flags(flags.0), |f| {
                        sys::open(&path, f)
                    })
                })
                .map_err(|e| self.inodes.limit_error(e))?;
                let st = sys::fstat(&file).ok();
                let fopen = self.open_validate(&inode, st.as_ref(), flags.0);
                Ok((
                    self.add_file_handle(file, inode.clone(), flags.0, st.as_ref(), false),
                    fopen,
                ))
            };
            self.or_offline(online, |o| self.open_offline(o, req, &inode, flags.0))
        });
        match result {
            Ok((fh, fopen)) => reply.opened(FileHandle(fh), fopen),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn read(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let handle = match self.file_of(ino, fh, implicit::Access::Read) {
            Ok(h) => h,
            Err(e) => return reply.error(errno(e)),
        };
        let size = size.min(MAX_IO);
        let reply = if handle.offline && self.offline_now().is_some() {
            reply
        } else if self.offline_now().is_none() {
            match self.read_online(&handle, offset, size, req.pid(), reply) {
                Ok(()) => return,
                Err((e, reply)) if self.offline_now().is_none() => return reply.error(errno(e)),
                // the backing went away during the read: the cache may have it all
                Err((_, reply)) => reply,
            }
        } else {
            reply
        };
        match self.read_offline(&handle, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let handle = match self
            .refuse_if_offline()
            .and_then(|()| self.file_of(ino, fh, implicit::Access::Write))
        {
            Ok(h) => h,
            Err(e) => return reply.error(errno(e)),
        };
        let fd = handle.file.as_raw_fd();
        // a page write of the kernel's write cache keeps the mtime the kernel has: the last
        // it sent (see `Inode::kernel_mtime_ns`), or else the file's before this write (the
        // kernel's writes fell in the tick of the mtime it was told, or it will send its
        // own); not the time of the daemon's write
        let kernel_mtime = match write_flags.contains(WriteFlags::FUSE_WRITE_CACHE) {
            true => Some(handle.inode.kernel_mtime_ns.load(Ordering::Relaxed))
                .filter(|&t| t != i64::MIN)
                .or_else(|| {
                    let dirty = self
                        .cache_for(&handle.inode)
                        .and_then(|(c, f)| c.dirty_attr(f.id));
                    match dirty {
                        Some(a) => Some(a.mtime_ns),
                        None => sys::fstat(&handle.file)
                            .ok()
                            .map(|st| st.st_mtime * 1_000_000_000 + st.st_mtime_nsec),
                    }
                }),
            false => None,
        };
        // An O_APPEND write(2) (not page-cache writeback, which carries FUSE_WRITE_CACHE):
        // the kernel computed `offset` from the size it has cached, which misses a growth
        // made outside the mount since (it refreshes the size before an append only with
        // its own writeback cache). Append where the file ends (the backing's end; in
        // writeback, the end of the dirty data), atomically, as O_APPEND on a local file
        // would; the offset the kernel gave is only a lower bound.
        // A handle 0 (no_open) was not opened by this file's open: the request's flags
        // say what that open asked for.
        let (append, sync_asked) = if fh.0 == 0 {
            (flags.0 & libc::O_APPEND != 0, flags.0 & libc::O_DSYNC != 0)
        } else {
            // a handle's backing descriptor has the open's O_SYNC/O_DSYNC itself
            (handle.append, false)
        };
        // O_SYNC writes of dirty data are durable in the cache file before the reply
        let dirty_sync = flags.0 & libc::O_DSYNC != 0;
        let datasync = flags.0 & libc::O_SYNC != libc::O_SYNC;
        let appending = append && !write_flags.contains(WriteFlags::FUSE_WRITE_CACHE);
        let touch = if appending {
            Touch::Append { offset }
        } else {
            Touch::Range {
                offset,
                len: data.len() as u64,
            }
        };
        // The writer lacks CAP_FSETID: write without it too, so the backing clears the
        // file's set-id bits as it would for that writer (HANDLE_KILLPRIV_V2).
        let kill_suidgid = write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID);
        // Writeback: the data goes to the cache, dirty (an append at the end the mount
        // reports), the backing untouched; not a write that must clear set-id bits.
        if let Some(((cache, file), h)) = self
            .cache_for(&handle.inode)
            .filter(|(c, _)| c.writeback_ready())
            .zip(self.writeback_handle(&handle.inode))
        {
            let setid = kill_suidgid
                && sys::fstat(&handle.file)
                    .is_ok_and(|st| st.st_mode & (libc::S_ISUID | libc::S_ISGID) != 0);
            if !setid {
                let r = cache.write_dirty(
                    file,
                    fd,
                    (h.handle_type, &h.bytes),
                    offset,
                    appending,
                    data,
                    req.pid(),
                    kernel_mtime,
                );
                // the backing's attributes did not move: the metadata cache keeps them, and
                // getattr lays the dirty size and mtime over them
                let r = r.and_then(|(n, outside)| {
                    if dirty_sync {
                        cache.fsync_dirty(file, fd, datasync)?;
                    }
                    Ok((n, outside))
                });
                match r {
                    Ok((n, outside)) => {
                        if outside {
                            self.invalidate_pages(&handle.inode);
                        }
                        reply.written(n as u32)
                    }
                    Err(e) => reply.error(errno(e)),
                }
                return;
            }
        }
        let (written, changed) = self.change(&handle.inode, fd, touch, || {
            let _no_fsetid = kill_suidgid.then(WithoutFsetid::now);
            let n = if appending {
                crate::sys::append_full(fd, data)
            } else {
                sys::pwrite_full(fd, data, offset)
            }?;
            if let Some(t) = kernel_mtime {
                crate::sys::set_mtime_fd(fd, Some(t))?;
            }
            if sync_asked {
                sys::sync(fd, datasync)?;
            }
            Ok(n)
        });
        // writethrough: the backing has it; the cache gets the whole blocks, unless
        // another change overlapped this one (then nobody knows which bytes won) or it was
        // an append (which landed where the backing's end was, not at `offset`)
        let fill = match (&written, changed.fill_ticket, self.cache_for(&handle.inode)) {
            (Ok(n), Some(ticket), Some((cache, file))) if *n == data.len() && !appending => cache
                .write_fill(file, ticket, offset, data, req.pid())
                .map(|f| (cache, file, f)),
            _ => None,
        };
        match written {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(errno(e)),
        }
        // after the reply, as for a read miss: the writer does not wait for the cache
        if let Some((cache, file, fill)) = fill {
            cache.fill(file, fill);
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close(dup(fd)) gives the backing the close it would have seen (NFS flushes
        // and reports write errors on close) without closing our descriptor. Read-only
        // handles are opened with FOPEN_NOFLUSH and never get here.
        sys::FLUSH_REQUESTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if fh.0 == 0 && self.implicit.is_some() {
            // A close of a file opened without OPEN (no_open): our descriptor stays open,
            // so there is no backing close to make. ENOSYS tells the kernel to send no
            // more FLUSH (one round trip per close); fsync still reports write errors.
            return reply.error(Errno::ENOSYS);
        }
        let result = self.file(fh).and_then(|h| {
            if h.offline || (!h.writable && self.offline_now().is_some()) {
                return Ok(()); // nothing to report: read-only, and no backing close to make
            }
            // offline, a writable handle's flush is refused: the data may not be there
            crate::offline::call_inline(crate::sys::FaultOp::Fsync, || {
                let dup = sys::dup(h.file.as_raw_fd())?;
                sys::close(dup)
            })
        });
        reply_empty(result, reply);
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.files.remove(&fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let result = self.file_of(ino, fh, implicit::Access::Read).and_then(|h| {
            if h.offline {
                return Ok(()); // read-only, from the cache: nothing to sync
            }
            match self.cache_for(&h.inode) {
                // writeback: durable in the cache file (and the backing's size with it)
                Some((cache, file))
                    if cache.cache_mode() == crate::device::format::CacheMode::Writeback
                        || cache.has_dirty(file) =>
                {
                    cache.fsync_dirty(file, h.file.as_raw_fd(), datasync)
                }
                _ => crate::offline::call_inline(crate::sys::FaultOp::Fsync, || {
                    sys::sync(h.file.as_raw_fd(), datasync)
                }),
            }
        });
        reply_empty(result, reply);
    }

    fn opendir(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        sys::OPEN_REQUESTS.fetch_add(1, Ordering::Relaxed);
        if self.implicit_dirs.is_some() {
            // no_opendir: as for open, the kernel takes ENOSYS as success, opens every
            // directory itself from now on (keeping its readdir cache: it assumes
            // FOPEN_CACHE_DIR | FOPEN_KEEP_CACHE) and reads them with handle 0
            return reply.error(Errno::ENOSYS);
        }
        let result = self.inode(ino).and_then(|inode| {
            self.or_offline(
                || self.opendir_online(req, inode.clone()),
                |o| self.opendir_offline(o, req, &inode),
            )
        });
        match result {
            Ok((fh, known)) => reply.opened(FileHandle(fh), self.opendir_flags(known)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let result = self.dir_of(ino, fh, offset).and_then(|h| {
            self.read_dir(&h, offset, |e| {
                let id = self.dirent_id(&h, e);
                let name = OsStr::from_bytes(&e.name);
                !reply.add(
                    INodeNo(id),
                    e.next_offset as u64,
                    sys::dirent_type(e.d_type),
                    name,
                )
            })
        });
        reply_empty(result, reply);
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let mut added = 0usize;
        let mut failed: Option<io::Error> = None;
        let result = self.dir_of(ino, fh, offset).and_then(|h| {
            self.read_dir(&h, offset, |e| {
                let name = OsStr::from_bytes(&e.name);
                let dot = e.name == b"." || e.name == b"..";
                // The kernel takes no lookup reference for "." and ".."; every other
                // entry is a lookup, undone if the reply buffer cannot take it.
                let attr = if dot {
                    let id = self.dirent_id(&h, e);
                    // SAFETY: stat is plain old data (integers only); all-zero is valid.
                    let mut st: libc::stat = unsafe { std::mem::zeroed() };
                    st.st_mode = libc::S_IFDIR;
                    (
                        sys::attr_from_stat(&st, id),
                        self.fresh_ttls(Some(h.inode.id)),
                    )
                } else {
                    match self.do_lookup(None, &h.inode, name) {
                        Ok(found) => found,
                        // Gone since the directory was read: skip it, as ls would.
                        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return true,
                        // Anything else (EMFILE..., offline: EHOSTDOWN for an entry whose
                        // attributes are not cached) must reach the caller, not shorten the
                        // listing silently: stop here; this entry is retried next call.
                        Err(e) => {
                            failed = Some(e);
                            return false;
                        }
                    }
                };
                let (attr, ttls) = attr;
                let full = reply.add(
                    attr.ino,
                    e.next_offset as u64,
                    name,
                    &ttls.entry,
                    &attr,
                    Generation(0),
                );
                if full && !dot {
                    self.inodes.forget(attr.ino.0, 1);
                }
                added += usize::from(!full);
                !full
            })
        });
        let result = match (result, failed) {
            (Ok(()), Some(e)) if added == 0 => Err(e),
            (result, _) => result,
        };
        reply_empty(result, reply);
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.dirs.remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let result = self.dir_of(ino, fh, 1).and_then(|h| {
            if let Some(stream) = h.stream.lock().as_ref() {
                return sys::sync(stream.fd(), datasync);
            }
            // served from the metadata cache: open the directory to sync it
            let ifd = self.inodes.fd(&h.inode)?;
            let stream = Self::open_dir_stream(ifd.as_raw_fd())?;
            sys::sync(stream.fd(), datasync)
        });
        reply_empty(result, reply);
    }

    fn statfs(&self, _req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        let result = self.inode(ino).and_then(|inode| {
            if let Some(o) = self.offline_now() {
                return Err(o.refuse(inode.id, "filesystem statistics"));
            }
            let fd = sys::uncounted(|| self.inodes.fd(&inode))?;
            sys::fstatvfs(fd.as_raw_fd())
        });
        match result {
            Ok(st) => reply.statfs(
                st.f_blocks,
                st.f_bfree,
                st.f_bavail,
                st.f_files,
                st.f_ffree,
                st.f_bsize as u32,
                st.f_namemax as u32,
                st.f_frsize as u32,
            ),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let result = self
            .refuse_if_offline()
            .and_then(|()| self.inode(ino))
            .and_then(|inode| {
                let (_fd, path) = self.xattr_target(&inode)?;
                let name = cstr(name)?;
                as_caller(req, || sys::setxattr(&path, &name, value, flags))?;
                self.attr_changed(&inode);
                Ok(())
            });
        reply_empty(result, reply);
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let result = self.inode(ino).and_then(|inode| {
            if let Some(o) = self.offline_now() {
                return Err(o.xattrs_offline());
            }
            if inode.is_symlink() {
                return Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP));
            }
            let key = Some(name.as_bytes());
            let cached = self.cached_xattr(&inode, req, key);
            if let Some(XattrLookup::Hit(v)) = cached {
                return v
                    .map(Into::into)
                    .ok_or_else(|| io::Error::from_raw_os_error(libc::ENODATA));
            }
            let (_fd, path) = self.xattr_target(&inode)?;
            let cname = cstr(name)?;
            let got = as_caller(req, || {
                Self::sized_call(|buf| sys::getxattr(&path, &cname, buf))
            });
            self.store_xattr(&inode, req, cached, key, &got);
            got
        });
        Self::xattr_reply(result, size, reply);
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let result = self.inode(ino).and_then(|inode| {
            if let Some(o) = self.offline_now() {
                return Err(o.xattrs_offline());
            }
            if inode.is_symlink() {
                return Ok(Vec::new());
            }
            let cached = self.cached_xattr(&inode, req, None);
            if let Some(XattrLookup::Hit(Some(list))) = cached {
                return Ok(list.into());
            }
            let fd = self.inodes.fd(&inode)?;
            let path = sys::proc_path(fd.as_raw_fd());
            let got = as_caller(req, || Self::sized_call(|buf| sys::listxattr(&path, buf)));
            self.store_xattr(&inode, req, cached, None, &got);
            got
        });
        Self::xattr_reply(result, size, reply);
    }

    fn removexattr(&self, req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let result = self
            .refuse_if_offline()
            .and_then(|()| self.inode(ino))
            .and_then(|inode| {
                let (_fd, path) = self.xattr_target(&inode)?;
                let name = cstr(name)?;
                as_caller(req, || sys::removexattr(&path, &name))?;
                self.attr_changed(&inode);
                Ok(())
            });
        reply_empty(result, reply);
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        let result = self.inode(ino).and_then(|inode| {
            let online = || {
                let fd = self.inodes.fd(&inode)?;
                let path = sys::proc_path(fd.as_raw_fd());
                // AT_EACCESS: check with the fsuid/fsgid we switched to, not the real ids.
                as_caller(req, || {
                    sys::faccessat(libc::AT_FDCWD, &path, mask.bits(), libc::AT_EACCESS)
                })
            };
            let offline = |o: &Offline| {
                let bits = mask.bits();
                if bits & libc::W_OK != 0 {
                    return Err(o.refuse_write());
                }
                let Some(st) = self.meta.as_ref().and_then(|m| m.attr_cached(inode.id)) else {
                    return Err(o.refuse(inode.id, "the attributes of this inode"));
                };
                let want = (if bits & libc::R_OK != 0 {
                    libc::S_IROTH
                } else {
                    0
                }) | (if bits & libc::X_OK != 0 {
                    libc::S_IXOTH
                } else {
                    0
                });
                if want != 0 && !self.may_st(&st, Some(req), want) {
                    return Err(o.refuse(inode.id, "this inode's permissions"));
                }
                o.served(inode.id);
                Ok(())
            };
            self.or_offline(online, offline)
        });
        reply_empty(result, reply);
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let result = self
            .refuse_if_offline()
            .and_then(|()| self.inode(parent))
            .and_then(|p| {
                as_caller(req, || {
                    let open_flags =
                        Self::backing_open_flags(flags) | libc::O_CREAT | (flags & libc::O_EXCL);
                    let (file, (attr, ttls)) = self.namespace_make(&p, name, |pfd, c| {
                        self.open_for_write_cache(open_flags | libc::O_NOFOLLOW, |f| {
                            sys::open_at(pfd, c, f, mode)
                        })
                        .map_err(|e| self.inodes.limit_error(e))
                    })?;
                    let inode = self.inode(attr.ino)?;
                    let st = sys::fstat(&file).ok();
                    let fopen = self.open_validate(&inode, st.as_ref(), flags);
                    Ok((
                        attr,
                        ttls,
                        self.add_file_handle(file, inode, flags, st.as_ref(), false),
                        fopen,
                    ))
                })
            });
        match result {
            Ok((attr, ttls, fh, fopen)) => {
                reply.created(&ttls.entry, &attr, Generation(0), FileHandle(fh), fopen)
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn fallocate(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let result = self
            .refuse_if_offline()
            .and_then(|()| self.file_of(ino, fh, implicit::Access::Write))
            .and_then(|h| {
                let fd = h.file.as_raw_fd();
                // Modes that move data (collapse, insert) change everything after `offset`; the
                // rest (allocate, keep size, punch hole, zero range) only the range itself.
                let shifts = libc::FALLOC_FL_COLLAPSE_RANGE | libc::FALLOC_FL_INSERT_RANGE;
                let touch = if mode & shifts != 0 {
                    Touch::From(offset)
                } else {
                    Touch::Range {
                        offset,
                        len: length,
                    }
                };
                self.change(&h.inode, fd, touch, || {
                    // no kill flag here: an unprivileged caller's fallocate clears set-id bits
                    let _no_fsetid = WithoutFsetid::unless_root(req.uid());
                    sys::fallocate(fd, mode, offset as libc::off_t, length as libc::off_t)
                })
                .0
            });
        reply_empty(result, reply);
    }

    fn lseek(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        if self.kernel_write_cache {
            // The kernel holds writes the backing has not seen, and asks SEEK_DATA/SEEK_HOLE
            // without writing them first: ENOSYS makes it answer every lseek itself from
            // then on (the whole file data, a hole only at its end; found by the
            // differential tester, which read a written byte at an offset said to be a hole)
            return reply.error(Errno::ENOSYS);
        }
        let result = self.file_of(ino, fh, implicit::Access::Read).and_then(|h| {
            if h.offline {
                return Self::lseek_offline(&h, offset, whence);
            }
            // SEEK_DATA/SEEK_HOLE ask the backing: dirty data must be there first
            if whence == libc::SEEK_DATA || whence == libc::SEEK_HOLE {
                self.flush_dirty(&h.inode)?;
            }
            sys::lseek(h.file.as_raw_fd(), offset, whence)
        });
        match result {
            Ok(pos) => reply.offset(pos),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn copy_file_range(
        &self,
        req: &Request,
        ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        let result = self
            .refuse_if_offline()
            .and_then(|()| self.file_of(ino_in, fh_in, implicit::Access::Read))
            .and_then(|src| {
                let dst = self.file_of(ino_out, fh_out, implicit::Access::Write)?;
                if src.offline || dst.offline {
                    // no backing descriptor to copy from: the kernel falls back to read + write
                    return Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP));
                }
                // the copy reads the source's backing file: its dirty data must be there first
                self.flush_dirty(&src.inode)?;
                let mut off_in = offset_in as libc::off64_t;
                let mut off_out = offset_out as libc::off64_t;
                let len = len.min(u32::MAX as u64 & !0xfff) as usize;
                let touch = Touch::Range {
                    offset: offset_out,
                    len: len as u64,
                };
                let out_fd = dst.file.as_raw_fd();
                self.change(&dst.inode, out_fd, touch, || {
                    let _no_fsetid = WithoutFsetid::unless_root(req.uid());
                    sys::copy_file_range(
                        src.file.as_raw_fd(),
                        &mut off_in,
                        out_fd,
                        &mut off_out,
                        len,
                        0,
                    )
                })
                .0
            });
        match result {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(errno(e)),
        }
    }
}

/// Notices changes made outside the mount to files that are open through it, for readers
/// that send no request the daemon could check on (an mmap whose pages are all resident):
/// once per attribute timeout it fstats every open file and, when one changed, drops the
/// cache's extents (through the validator) and asks for the kernel's pages to be dropped.
pub struct OpenFileWatcher {
    files: Arc<DashMap<u64, Arc<FileHandleState>>>,
    cache: Option<Arc<CacheSet>>,
    invalidate: std::sync::mpsc::Sender<Inval>,
    /// The pass interval is the attribute TTL in force (at least 100 ms).
    ttls: Arc<Ttls>,
    /// Passes made; implicit handles (`no_open`) are checked every
    /// [`IMPLICIT_CHECK_PASSES`]th only.
    passes: AtomicU64,
}

/// The daemon's own handles (`no_open`, exclusive mode) are watched every this many passes
/// (30 s at the default attribute TTL): there are up to a sixteenth of the descriptor limit
/// of them, mostly of files no process has open any more, and exclusive mode rules outside
/// changes out; this check is what still notices a file rewritten in place outside (its
/// directory's times, which the sweep checks, do not move), now that no open asks.
pub const IMPLICIT_CHECK_PASSES: u64 = 30;

impl PassthroughFs {
    /// The watcher of open files; call after [`PassthroughFs::invalidation_channel`].
    pub fn open_file_watcher(&self) -> Option<OpenFileWatcher> {
        let invalidate = self.invalidate.lock().clone()?;
        Some(OpenFileWatcher {
            files: self.files.clone(),
            cache: self.cache.clone(),
            invalidate,
            ttls: self.ttls.clone(),
            passes: AtomicU64::new(0),
        })
    }
}

impl OpenFileWatcher {
    /// One pass over the open files; returns how many changed underneath.
    pub fn check_once(&self) -> usize {
        let handles: Vec<Arc<FileHandleState>> =
            self.files.iter().map(|e| e.value().clone()).collect();
        let mut done = std::collections::HashSet::new();
        let mut changed = 0;
        let implicit_too = self.passes.fetch_add(1, Ordering::Relaxed) % IMPLICIT_CHECK_PASSES == 0;
        if crate::offline::is_offline() {
            return 0; // nothing to ask the backing; the return revalidates
        }
        for h in handles {
            // a handle opened offline has no backing descriptor to watch
            if h.offline
                || (h.implicit && !implicit_too)
                || !h.inode.is_regular()
                || !done.insert(h.inode.id)
            {
                continue;
            }
            let Ok(st) = sys::fstat(&h.file) else {
                continue;
            };
            let cache = self.cache.as_ref().filter(|c| c.is_active());
            let outside = match (cache, h.inode.file.as_ref()) {
                (Some(cache), Some(file)) => cache.revalidate(file, &st),
                _ => {
                    let mut seen = h.seen.lock();
                    let now = change_mark(&st);
                    std::mem::replace(&mut *seen, now) != now
                }
            };
            if outside {
                changed += 1;
                let _ = self.invalidate.send(Inval::Inode(h.inode.id));
            }
        }
        changed
    }

    /// Runs [`OpenFileWatcher::check_once`] every attribute timeout, on its own thread,
    /// for the life of the daemon.
    pub fn spawn(self) {
        let spawned = std::thread::Builder::new()
            .name("bcl-watch".into())
            .spawn(move || loop {
                std::thread::sleep(self.ttls.attr().max(Duration::from_millis(100)));
                self.check_once();
            });
        if let Err(e) = spawned {
            tracing::warn!("no open-file watcher: {e}");
        }
    }
}

/// Starts the thread that tells the kernel to drop an inode's pages when the backing
/// changed underneath (`Notifier::inval_inode`), off the request threads.
pub fn spawn_invalidator(rx: std::sync::mpsc::Receiver<Inval>, notifier: fuser::Notifier) {
    let spawned = std::thread::Builder::new()
        .name("bcl-inval".into())
        .spawn(move || {
            for what in rx {
                match what {
                    Inval::Inode(ino) => {
                        if let Err(e) = notifier.inval_inode(INodeNo(ino), 0, 0) {
                            tracing::debug!(ino, "inval_inode: {e}");
                        }
                    }
                    Inval::Entry(dir, name) => {
                        let name = OsStr::from_bytes(&name);
                        if let Err(e) = notifier.inval_entry(INodeNo(dir), name) {
                            tracing::debug!(dir, "inval_entry: {e}");
                        }
                    }
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("no invalidation thread: {e}");
    }
}

/// The replies that end with `ok()` or an errno (empty replies, directory listings).
trait Done {
    fn ok(self);
    fn error(self, e: Errno);
}

macro_rules! impl_done {
    ($($t:ty),*) => {$(
        impl Done for $t {
            fn ok(self) {
                <$t>::ok(self)
            }
            fn error(self, e: Errno) {
                <$t>::error(self, e)
            }
        }
    )*};
}
impl_done!(ReplyEmpty, ReplyDirectory, ReplyDirectoryPlus);

/// Answers `reply` from `result`: ok, or the error's errno (the one errno boundary).
fn reply_empty<T>(result: io::Result<T>, reply: impl Done) {
    match result {
        Ok(_) => reply.ok(),
        Err(e) => reply.error(errno(e)),
    }
}

/// Exclusive mode's check for outside changes: the backing should change only through
/// the mount, so nothing else tells us when it did. Once at mount and then every
/// `interval`, each cached directory's mtime/ctime is compared with its validator (one
/// stat each, by file handle, not counted as a request's backing call); a directory that
/// moved, or is gone, loses its names, listing and attributes, the kernel is told to drop
/// what it cached of it, and it is logged and counted (`metadata_outside_changes`).
pub struct MetaSweeper {
    meta: Arc<MetaCache>,
    inodes: Arc<InodeTable>,
    invalidate: std::sync::mpsc::Sender<Inval>,
    interval: Duration,
}

impl PassthroughFs {
    /// The sweeper of exclusive mode; call after [`PassthroughFs::invalidation_channel`].
    pub fn meta_sweeper(&self) -> Option<MetaSweeper> {
        let meta = self.meta.clone()?;
        if meta.coherence != Coherence::Exclusive {
            return None;
        }
        let invalidate = self.invalidate.lock().clone()?;
        Some(MetaSweeper {
            interval: (meta.ttl() * 10).max(Duration::from_millis(100)),
            meta,
            inodes: self.inodes.clone(),
            invalidate,
        })
    }
}

/// The longest a sweep waits after one check (a backing that took seconds to answer).
const SWEEP_YIELD_MAX: Duration = Duration::from_millis(100);

/// A sweep's check waits until requests made no backing call for this long...
const SWEEP_QUIET: Duration = Duration::from_millis(20);

/// ...but at most this long, so a busy mount is still swept.
const SWEEP_QUIET_MAX: Duration = Duration::from_secs(1);

impl MetaSweeper {
    /// One pass; returns how many directories changed underneath.
    pub fn sweep_once(&self) -> usize {
        let mut changed = 0;
        if crate::offline::is_offline() {
            return 0; // the backing cannot answer; the return expires everything anyway
        }
        for (id, v) in self.meta.dir_validators() {
            // a background pass yields the backing to the requests: after each check it
            // waits twice as long as the check took, so it takes at most a third of a slow
            // backing (after a remount, hundreds of stats of evicted directory inodes would
            // otherwise queue every request's backing call behind them) and next to nothing
            // of a fast one
            // and it waits for a quiet moment first: right after a remount the first
            // requests (a git status: a chdir, the index, the untracked scan) found each of
            // their backing calls queued behind the sweep's on a throttled backing
            let quiet_wait = Instant::now();
            while sys::since_last_request_call().is_some_and(|d| d < SWEEP_QUIET)
                && quiet_wait.elapsed() < SWEEP_QUIET_MAX
            {
                std::thread::sleep(SWEEP_QUIET);
            }
            let started = Instant::now();
            let st = match self
                .inodes
                .get(id)
                .and_then(|i| self.inodes.stat_if_open(&i))
            {
                Some(st) => st,
                None => match self.meta.handle(id) {
                    Some(h) => self.inodes.stat_by_handle(&h),
                    None => continue,
                },
            };
            self.meta
                .counters
                .sweep_checks
                .fetch_add(1, Ordering::Relaxed);
            std::thread::sleep((started.elapsed() * 2).min(SWEEP_YIELD_MAX));
            let moved = match &st {
                Ok(st) => !MetaCache::validator_matches(v, st),
                Err(e) => matches!(e.raw_os_error(), Some(libc::ESTALE | libc::ENOENT)),
            };
            // a change through the mount since the validators were read is no outside one
            if !moved || self.meta.validator_of(id) != Some(v) {
                continue;
            }
            changed += 1;
            let names = self.meta.drop_dir(id);
            self.meta.outside_change(id, "directory times moved");
            for name in names {
                let _ = self.invalidate.send(Inval::Entry(id, name.into_vec()));
            }
            let _ = self.invalidate.send(Inval::Inode(id));
        }
        changed
    }

    /// Sweeps now and then every interval, on its own thread, for the life of the daemon.
    pub fn spawn(self) {
        let spawned = std::thread::Builder::new()
            .name("bcl-meta-sweep".into())
            .spawn(move || loop {
                let n = self.sweep_once();
                if n > 0 {
                    tracing::warn!(
                        directories = n,
                        "coherence=exclusive, but the backing changed outside the mount; \
                         the cached metadata of those directories was dropped"
                    );
                }
                std::thread::sleep(self.interval);
            });
        if let Err(e) = spawned {
            tracing::warn!("no metadata sweep: {e}");
        }
    }
}
