//! Per-thread caller credentials.
//!
//! A request that creates files or depends on permissions runs with the caller's
//! fsuid, fsgid and supplementary groups, so the backing filesystem itself decides
//! ownership and access, exactly as if the caller had made the call.
//!
//! Invariant: credentials are switched with the raw syscalls (`SYS_setfsuid`,
//! `SYS_setfsgid`, `SYS_setgroups`), which change only the calling thread. glibc's
//! `setgroups()` would change every thread of the process (it broadcasts through
//! signals), so it is never used. A [`CallerCreds`] guard restores the daemon's own
//! credentials when dropped, also on early return.
//!
//! [`WithoutFsetid`] drops only CAP_FSETID from this thread's effective set (capset(2)
//! with pid 0 is per thread too), for writes by callers that lack it, so the backing
//! clears set-id bits the way it would for them.
//!
//! Locks: the supplementary-group cache has one mutex, held only to look up or insert.
//! May block: reading `/proc/PID/status` on a cache miss.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// How long a caller's supplementary groups are trusted before /proc is read again.
const GROUPS_TTL: Duration = Duration::from_secs(2);
const GROUPS_CACHE_MAX: usize = 4096;

/// The daemon's own identity, captured once at start-up.
struct OwnIdentity {
    uid: u32,
    gid: u32,
    groups: Vec<libc::gid_t>,
}

fn own_identity() -> &'static OwnIdentity {
    static OWN: OnceLock<OwnIdentity> = OnceLock::new();
    OWN.get_or_init(|| {
        // SAFETY: geteuid takes no arguments and cannot fail.
        let uid = unsafe { libc::geteuid() };
        // SAFETY: getegid takes no arguments and cannot fail.
        let gid = unsafe { libc::getegid() };
        // SAFETY: size 0 only asks for the count; the null list is never written.
        let n = unsafe { libc::getgroups(0, std::ptr::null_mut()) }.max(0) as usize;
        let mut groups = vec![0 as libc::gid_t; n];
        // SAFETY: `groups` has room for `n` gids, and getgroups writes at most `n`.
        let got = unsafe { libc::getgroups(n as libc::c_int, groups.as_mut_ptr()) };
        groups.truncate(got.max(0) as usize);
        OwnIdentity { uid, gid, groups }
    })
}

/// Call once before any worker thread starts, so every thread restores the same identity.
pub fn init() {
    own_identity();
}

type GroupCache = Mutex<HashMap<u32, (Instant, std::sync::Arc<[libc::gid_t]>)>>;

fn group_cache() -> &'static GroupCache {
    static CACHE: OnceLock<GroupCache> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Supplementary groups of process `pid`, from the `Groups:` line of its status file.
/// A process that is gone (or pid 0) has none.
fn caller_groups(pid: u32) -> std::sync::Arc<[libc::gid_t]> {
    let now = Instant::now();
    if let Some((at, groups)) = group_cache().lock().get(&pid) {
        if now.duration_since(*at) < GROUPS_TTL {
            return groups.clone();
        }
    }
    let groups: std::sync::Arc<[libc::gid_t]> = if pid == 0 {
        std::sync::Arc::from(Vec::new())
    } else {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let list: Vec<libc::gid_t> = status
            .lines()
            .find_map(|l| l.strip_prefix("Groups:"))
            .map(|rest| {
                rest.split_whitespace()
                    .filter_map(|g| g.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        std::sync::Arc::from(list)
    };
    let mut cache = group_cache().lock();
    if cache.len() >= GROUPS_CACHE_MAX {
        cache.retain(|_, (at, _)| now.duration_since(*at) < GROUPS_TTL);
        if cache.len() >= GROUPS_CACHE_MAX {
            cache.clear();
        }
    }
    cache.insert(pid, (now, groups.clone()));
    groups
}

fn set_thread_groups(groups: &[libc::gid_t]) -> std::io::Result<()> {
    // SAFETY: the raw syscall (this thread only, unlike glibc's process-wide setgroups)
    // reads `groups.len()` gids from `groups`, borrowed for the call.
    let ret = unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) };
    if ret == -1 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn set_thread_fsuid(uid: u32) {
    // SAFETY: setfsuid takes a plain id, no pointers, and only affects this thread.
    unsafe { libc::syscall(libc::SYS_setfsuid, uid) };
}

fn set_thread_fsgid(gid: u32) {
    // SAFETY: setfsgid takes a plain id, no pointers, and only affects this thread.
    unsafe { libc::syscall(libc::SYS_setfsgid, gid) };
}

/// Runs `f` with the daemon's own fs ids, whatever this thread is switched to, and
/// switches back afterwards. Moving the fsuid back to 0 gives back the capabilities
/// a switch to the caller's fsuid dropped (`CAP_DAC_READ_SEARCH`, which
/// `open_by_handle_at` needs): reopening an inode by handle is the daemon's business,
/// not a permission check of the caller's.
pub fn as_daemon<T>(f: impl FnOnce() -> T) -> T {
    let own = own_identity();
    if own.uid != 0 {
        return f();
    }
    // a bounded call made inside runs as the daemon too (see `current`)
    let caller = CURRENT.with(|c| c.borrow_mut().take());
    let _restore = RestoreCurrent(caller);
    // SAFETY: setfsuid takes a plain id and returns the previous one; no pointers.
    let prev_uid = unsafe { libc::syscall(libc::SYS_setfsuid, own.uid) } as u32;
    // SAFETY: setfsgid takes a plain id and returns the previous one; no pointers.
    let prev_gid = unsafe { libc::syscall(libc::SYS_setfsgid, own.gid) } as u32;
    let result = f();
    set_thread_fsgid(prev_gid);
    set_thread_fsuid(prev_uid);
    result
}

/// A caller's identity, as a thread is switched to it: what a helper thread making a
/// backing call on this thread's behalf (`crate::offline`) switches to as well.
#[derive(Clone, Debug)]
pub struct Identity {
    uid: u32,
    gid: u32,
    groups: std::sync::Arc<[libc::gid_t]>,
}

thread_local! {
    /// The identity this thread is switched to by a [`CallerCreds`] (None: the daemon's).
    static CURRENT: std::cell::RefCell<Option<Identity>> = const { std::cell::RefCell::new(None) };
}

/// Puts a thread's switched identity back when `as_daemon` ends.
struct RestoreCurrent(Option<Identity>);

impl Drop for RestoreCurrent {
    fn drop(&mut self) {
        let who = self.0.take();
        CURRENT.with(|c| *c.borrow_mut() = who);
    }
}

/// The caller identity this thread acts with now (None: the daemon's own).
pub fn current() -> Option<Identity> {
    CURRENT.with(|c| c.borrow().clone())
}

impl Identity {
    /// Switches this thread to the identity until the guard drops. A thread already
    /// switched (the bounded call ran inline, on the caller's own thread) stays as it is.
    pub fn assume(&self) -> std::io::Result<CallerCreds> {
        if CURRENT.with(|c| c.borrow().is_some()) {
            return Ok(CallerCreds { switched: false });
        }
        set_thread_groups(&self.groups)?;
        set_thread_fsgid(self.gid);
        set_thread_fsuid(self.uid);
        CURRENT.with(|c| *c.borrow_mut() = Some(self.clone()));
        Ok(CallerCreds { switched: true })
    }
}

/// While alive, the current thread acts with the caller's credentials.
#[must_use = "credentials are restored when the guard is dropped"]
pub struct CallerCreds {
    switched: bool,
}

impl CallerCreds {
    /// Switches this thread to `uid`/`gid` and the supplementary groups of `pid`.
    /// A no-op when the daemon is not root (it cannot act for others) or when the
    /// caller already has the daemon's identity.
    pub fn switch(uid: u32, gid: u32, pid: u32) -> std::io::Result<Self> {
        let own = own_identity();
        if own.uid != 0 || (uid == own.uid && gid == own.gid) {
            return Ok(CallerCreds { switched: false });
        }
        let groups = caller_groups(pid);
        set_thread_groups(&groups)?;
        set_thread_fsgid(gid);
        set_thread_fsuid(uid);
        CURRENT.with(|c| *c.borrow_mut() = Some(Identity { uid, gid, groups }));
        Ok(CallerCreds { switched: true })
    }
}

impl Drop for CallerCreds {
    fn drop(&mut self) {
        if self.switched {
            CURRENT.with(|c| *c.borrow_mut() = None);
            let own = own_identity();
            set_thread_fsuid(own.uid);
            set_thread_fsgid(own.gid);
            if let Err(e) = set_thread_groups(&own.groups) {
                tracing::error!("cannot restore the daemon's groups: {e}");
            }
        }
    }
}

/// `struct __user_cap_header_struct` of capget(2)/capset(2).
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

/// `struct __user_cap_data_struct`; version 3 takes two (capabilities 0-31, 32-63).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
const CAP_FSETID_BIT: u32 = 1 << 4; // CAP_FSETID

/// This thread's capability sets (pid 0: the calling thread only).
fn thread_caps() -> Option<[CapData; 2]> {
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: `header` is a valid v3 header and `data` the two #[repr(C)] data structs a
    // v3 capget writes; both are exclusively borrowed for the call.
    let ret = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    (ret == 0).then_some(data)
}

fn set_thread_caps(data: &[CapData; 2]) -> bool {
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    // SAFETY: `header` is a valid v3 header and `data` the two #[repr(C)] data structs a
    // v3 capset reads; both are borrowed for the call.
    unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) == 0 }
}

/// While alive, the current thread acts without CAP_FSETID, so a write, truncate or
/// fallocate on the backing clears the file's set-user-ID and set-group-ID bits
/// exactly as the backing's kernel does for an unprivileged writer. Used when the
/// FUSE kernel says the caller lacks CAP_FSETID (`FUSE_WRITE_KILL_SUIDGID`, with
/// `FUSE_HANDLE_KILLPRIV_V2` negotiated), the way virtiofsd does it.
///
/// Like the fsuid switch, capset(2) with pid 0 changes only the calling thread; the
/// capability stays in the permitted set and is raised again on drop.
#[must_use = "CAP_FSETID is restored when the guard is dropped"]
pub struct WithoutFsetid {
    dropped: bool,
}

impl WithoutFsetid {
    pub fn now() -> Self {
        let dropped = match thread_caps() {
            Some(mut caps) if caps[0].effective & CAP_FSETID_BIT != 0 => {
                caps[0].effective &= !CAP_FSETID_BIT;
                set_thread_caps(&caps)
            }
            _ => false, // not held: nothing to drop
        };
        WithoutFsetid { dropped }
    }

    /// Without CAP_FSETID when `uid` (a request's caller) is not root: for operations
    /// whose FUSE request carries no kill flag (fallocate, copy_file_range), where the
    /// kernel no longer sends a mode-clearing SETATTR once HANDLE_KILLPRIV_V2 is on.
    pub fn unless_root(uid: u32) -> Option<Self> {
        (uid != 0).then(Self::now)
    }
}

impl Drop for WithoutFsetid {
    fn drop(&mut self) {
        if !self.dropped {
            return;
        }
        let restored = thread_caps().is_some_and(|mut caps| {
            caps[0].effective |= CAP_FSETID_BIT;
            set_thread_caps(&caps)
        });
        if !restored {
            tracing::error!(
                "cannot restore CAP_FSETID: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_groups_of_a_live_process() {
        let me = std::process::id();
        let groups = caller_groups(me);
        // SAFETY: size 0 only asks for the count; the null list is never written.
        let n = unsafe { libc::getgroups(0, std::ptr::null_mut()) } as usize;
        assert_eq!(groups.len(), n);
    }

    #[test]
    fn switch_changes_only_this_thread_and_restores() {
        // SAFETY: geteuid takes no arguments and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return;
        }
        init();
        // The "Uid:" line ends with the fsuid.
        let fsuid_of = |tid: i32| -> String {
            let s = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).unwrap();
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .unwrap()
                .to_string()
        };
        let (tx, rx) = std::sync::mpsc::channel();
        let other = std::thread::spawn(move || {
            // SAFETY: gettid takes no arguments and cannot fail.
            tx.send(unsafe { libc::gettid() }).unwrap();
            std::thread::park();
        });
        let other_tid = rx.recv().unwrap();
        // SAFETY: gettid takes no arguments and cannot fail.
        let me = unsafe { libc::gettid() };
        {
            let _guard = CallerCreds::switch(4242, 4343, 0).unwrap();
            assert!(fsuid_of(me).ends_with("\t4242"), "{}", fsuid_of(me));
            assert!(
                fsuid_of(other_tid).ends_with("\t0"),
                "{}",
                fsuid_of(other_tid)
            );
        }
        assert!(fsuid_of(me).ends_with("\t0"), "{}", fsuid_of(me));
        other.thread().unpark();
        other.join().unwrap();
    }

    #[test]
    fn without_fsetid_drops_only_on_this_thread_and_restores() {
        let has = |caps: Option<[CapData; 2]>| caps.unwrap()[0].effective & CAP_FSETID_BIT != 0;
        if !has(thread_caps()) {
            return; // not privileged: nothing to drop
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let (back_tx, back_rx) = std::sync::mpsc::channel::<()>();
        let other = std::thread::spawn(move || {
            rx.recv().unwrap();
            let held = has(thread_caps());
            back_tx.send(()).unwrap();
            held
        });
        {
            let _guard = WithoutFsetid::now();
            assert!(!has(thread_caps()));
            tx.send(()).unwrap();
            back_rx.recv().unwrap();
        }
        assert!(other.join().unwrap(), "another thread kept CAP_FSETID");
        assert!(has(thread_caps()), "restored on drop");
        assert!(WithoutFsetid::unless_root(0).is_none());
    }
}
