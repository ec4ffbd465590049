//! Offline mode (issue 16): when the backing goes away (a network share down, a laptop off
//! the VPN) the mount keeps serving what it has cached, read-only, fails the rest fast,
//! and comes back by itself.
//!
//! # Model
//!
//! One [`Offline`] per daemon, installed once ([`install`]) and reached through [`get`]:
//! the backing syscall wrappers below everything (`sys`, `fs::sys`) call [`call`], which
//! is a plain call when nothing is installed (unit tests, `fsck`, mode `none`).
//!
//! - **Online**, every bounded call (module list in docs/DESIGN.md, "Offline") runs on a
//!   helper thread ([`Pool`]) while the FUSE worker waits at most `backing_timeout`; a
//!   call that does not return in time is abandoned (its helper is left to finish, and
//!   counted until it does), the mount goes offline and the caller gets `EHOSTDOWN`.
//!   `backing_timeout=0` makes the calls inline (no helper, no hang detection); so does
//!   the default on a local filesystem (10 s on a network or FUSE one: [`Offline::new`]).
//! - An error that says the backing is unreachable ([`unreachable_errno`]: ENOTCONN,
//!   ESTALE, EHOSTDOWN, ENETUNREACH, ... and EIO when the backing is a network filesystem
//!   by `statfs` type, or the test seam says so) is *confirmed* with a stat of the backing
//!   root before the mount goes offline: a stale handle of one deleted file, or an EIO of
//!   one bad file, leaves the mount online, with the error passed through as before.
//! - **Offline**, bounded calls are not made at all: they fail at once with `EHOSTDOWN`,
//!   and `fs` serves what the caches hold (reads of wholly cached files, names, attributes
//!   and listings from the metadata cache); writes get `EROFS`.
//! - The probe thread stats the backing root every `offline_probe_interval` while
//!   offline (unless forced with `set offline=true`); the first success returns the mount
//!   online and runs the return hooks (`fs` drops the metadata cache's trust and asks the
//!   kernel to drop what it holds of the files served offline).
//!
//! # Invariants
//!
//! - A FUSE worker never waits on a bounded backing call longer than `backing_timeout`
//!   (plus a helper hand-off); a hung call holds a helper, never a worker.
//! - Only calls without side effects on the backing are bounded (stats, lookups, opens
//!   without `O_CREAT`/`O_TRUNC`, reads, directory reads): an abandoned call that lands
//!   late changes nothing, and its result is dropped (a descriptor it opened is closed).
//! - At most one root check runs at a time: a hung probe is not stacked by the next one.
//!
//! # Locks
//!
//! `status`, `logged`, `served` and the pool's queue are small mutexes, each taken alone and
//! never across a syscall. The return hooks run with no lock of this module held.
//!
//! # What may block
//!
//! [`Offline::call`] up to `backing_timeout`; the probe thread on its root check.

use std::collections::HashSet;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::{Condvar, Mutex};

use crate::sys::FaultOp;

/// Default `backing_timeout=` on a network or FUSE backing.
pub const DEFAULT_BACKING_TIMEOUT: Duration = Duration::from_secs(10);
/// Default `offline_probe_interval=`.
pub const DEFAULT_PROBE_INTERVAL: Duration = Duration::from_secs(5);
/// A confirmation stat of the root waits at most this long (or `backing_timeout`).
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(2);
/// A root stat that succeeded vouches for the backing this long (errors within it pass
/// through without another confirmation).
const CONFIRM_VALID: Duration = Duration::from_secs(1);
/// Most helper threads alive at once (hung ones included).
const MAX_HELPERS: usize = 256;
/// Most refused inodes logged per offline period.
const MAX_LOGGED: usize = 1024;
/// Most inodes remembered as served offline (beyond: the return revalidates everything).
const MAX_SERVED: usize = 1 << 16;

/// `-o offline=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Go offline when the backing is unreachable, come back by itself.
    Auto,
    /// Never: backing errors pass through, calls are made inline as without this module.
    Never,
}

impl std::str::FromStr for Policy {
    type Err = ();
    fn from_str(s: &str) -> Result<Policy, ()> {
        match s {
            "auto" => Ok(Policy::Auto),
            "never" => Ok(Policy::Never),
            _ => Err(()),
        }
    }
}

impl Policy {
    pub fn name(self) -> &'static str {
        match self {
            Policy::Auto => "auto",
            Policy::Never => "never",
        }
    }
}

/// Whether `errno` says the backing itself is unreachable (EIO only for a network
/// filesystem: on a local disk it is one bad file or sector, not an absent backing).
pub fn unreachable_errno(errno: i32, network: bool) -> bool {
    matches!(
        errno,
        libc::ENOTCONN
            | libc::ESTALE
            | libc::EHOSTDOWN
            | libc::EHOSTUNREACH
            | libc::ENETUNREACH
            | libc::ENETDOWN
            | libc::ETIMEDOUT
            | libc::ECONNABORTED
            | libc::ECONNRESET
    ) || (errno == libc::EIO && network)
}

/// Filesystem types (`statfs` `f_type`) whose EIO means the server went away: NFS, SMB
/// and CIFS, FUSE (sshfs, rclone, s3fs...), Ceph, AFS, 9p, Coda, NCP, GFS2, Lustre.
const NETWORK_FS_TYPES: &[i64] = &[
    0x6969,
    0x517B,
    0xFF53_4D42,
    0xFE53_4D42,
    0x6573_5546,
    0x00C3_6400,
    0x5346_414F,
    0x0102_1997,
    0x7375_7245,
    0x564C,
    0x0116_1970,
    0x0BD0_0BD0,
];

/// Whether the filesystem of `fd` is a network one (by `fstatfs` type). In a
/// `fault-injection` build `BCL_BACKING_NETWORK=1` says so for any backing (the tests'
/// backing is a local directory).
pub fn is_network_fs(fd: &OwnedFd) -> bool {
    #[cfg(any(test, feature = "fault-injection"))]
    if std::env::var_os("BCL_BACKING_NETWORK").is_some_and(|v| v == "1") {
        return true;
    }
    // SAFETY: statfs is plain old data; all-zero is a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid descriptor and an out pointer to a statfs we own.
    if unsafe { libc::fstatfs(fd.as_raw_fd(), &mut st) } != 0 {
        return false;
    }
    NETWORK_FS_TYPES.contains(&(st.f_type as i64))
}

fn ehostdown() -> io::Error {
    io::Error::from_raw_os_error(libc::EHOSTDOWN)
}

/// The figures `stats` shows (also in src/metrics.rs).
#[derive(Default)]
pub struct Counters {
    /// Online -> offline switches.
    pub transitions: AtomicU64,
    /// Requests answered from the caches while offline.
    pub served: AtomicU64,
    /// Requests refused while offline (not cached: EHOSTDOWN; a write: EROFS).
    pub refused: AtomicU64,
    /// Bounded calls abandoned after `backing_timeout`.
    pub timed_out: AtomicU64,
    /// Root checks made by the probe.
    pub probes: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

struct Status {
    since: SystemTime,
    reason: String,
    /// `set offline=true`: the probe leaves it offline.
    forced: bool,
}

/// What a hook run at the return to online gets: the node ids served while offline (None:
/// too many were served to remember them; revalidate everything).
pub type ReturnHook = Box<dyn Fn(Option<&[u64]>) + Send + Sync>;

/// Offline state of one mount.
pub struct Offline {
    policy: Policy,
    /// EIO counts as unreachable (a network backing).
    network: bool,
    offline: AtomicBool,
    status: Mutex<Option<Status>>,
    timeout_ns: AtomicU64,
    probe_ns: AtomicU64,
    /// `O_PATH` descriptor of the backing root (probe and confirmation).
    root: OwnedFd,
    pool: Pool,
    /// A root check is running (at most one at a time).
    checking: Arc<AtomicBool>,
    /// When a root check last succeeded.
    last_ok: Mutex<Option<Instant>>,
    pub counters: Counters,
    /// Keys already logged as refused in this offline period.
    logged: Mutex<HashSet<u64>>,
    /// Node ids served while offline (None: overflowed).
    served: Mutex<Option<HashSet<u64>>>,
    hooks: Mutex<Vec<Arc<ReturnHook>>>,
    wake: Condvar,
    wake_lock: Mutex<()>,
}

static GLOBAL: OnceLock<Arc<Offline>> = OnceLock::new();

/// Installs the daemon's offline state (once; a second install is ignored).
pub fn install(o: Arc<Offline>) {
    let _ = GLOBAL.set(o);
}

/// The daemon's offline state, when installed.
pub fn get() -> Option<&'static Arc<Offline>> {
    GLOBAL.get()
}

/// Runs the backing call `f` bounded (see the module header); inline when no offline
/// state is installed.
pub fn call<T: Send + 'static>(
    op: FaultOp,
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    match get() {
        Some(o) => o.call(op, f),
        None => f(),
    }
}

/// As [`call`] for a call the caller makes on its own thread (its arguments are borrowed):
/// refused while offline, its errors checked; used where [`bounds_calls`] is false.
pub fn call_inline<T>(op: FaultOp, f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    match get() {
        Some(o) => o.call_inline(op, f),
        None => f(),
    }
}

/// Whether [`call`] runs calls on helpers (an installed state, policy auto, a timeout).
pub fn bounds_calls() -> bool {
    get().is_some_and(|o| o.bounds_calls())
}

/// Whether the installed state says offline (false when none is installed).
pub fn is_offline() -> bool {
    get().is_some_and(|o| o.is_offline())
}

impl Offline {
    /// The offline state of a backing whose root is `root` (an `O_PATH` descriptor).
    /// `timeout` None: [`DEFAULT_BACKING_TIMEOUT`] on a network or FUSE backing, where a
    /// server can hang a call for minutes; on a local filesystem calls run inline (a hand-off
    /// to a helper costs each open, lookup and stat two context switches, 40-50 % of a warm
    /// `grep -r` of a source tree, for hangs a local disk does not have).
    pub fn new(
        policy: Policy,
        root: OwnedFd,
        timeout: Option<Duration>,
        probe: Duration,
    ) -> Offline {
        let network = is_network_fs(&root);
        let timeout = timeout.unwrap_or(if network {
            DEFAULT_BACKING_TIMEOUT
        } else {
            Duration::ZERO
        });
        Offline {
            policy,
            network,
            offline: AtomicBool::new(false),
            status: Mutex::new(None),
            timeout_ns: AtomicU64::new(ns(timeout)),
            probe_ns: AtomicU64::new(ns(probe.max(Duration::from_millis(10)))),
            root,
            pool: Pool::new(),
            checking: Arc::new(AtomicBool::new(false)),
            last_ok: Mutex::new(None),
            counters: Counters::default(),
            logged: Mutex::new(HashSet::new()),
            served: Mutex::new(Some(HashSet::new())),
            hooks: Mutex::new(Vec::new()),
            wake: Condvar::new(),
            wake_lock: Mutex::new(()),
        }
    }

    pub fn policy(&self) -> Policy {
        self.policy
    }

    pub fn network(&self) -> bool {
        self.network
    }

    pub fn is_offline(&self) -> bool {
        self.offline.load(Ordering::Acquire)
    }

    pub fn backing_timeout(&self) -> Duration {
        Duration::from_nanos(self.timeout_ns.load(Ordering::Relaxed))
    }

    pub fn set_backing_timeout(&self, d: Duration) {
        self.timeout_ns.store(ns(d), Ordering::Relaxed);
    }

    pub fn probe_interval(&self) -> Duration {
        Duration::from_nanos(self.probe_ns.load(Ordering::Relaxed))
    }

    pub fn set_probe_interval(&self, d: Duration) {
        self.probe_ns
            .store(ns(d.max(Duration::from_millis(10))), Ordering::Relaxed);
        self.wake.notify_all();
    }

    /// A hook run (on the thread that brought the mount back) at every return to online.
    pub fn on_return(&self, hook: ReturnHook) {
        self.hooks.lock().push(Arc::new(hook));
    }

    /// Whether calls run on helpers (policy auto, `backing_timeout` above zero).
    pub fn bounds_calls(&self) -> bool {
        self.policy == Policy::Auto && !self.backing_timeout().is_zero()
    }

    /// See [`call`].
    pub fn call<T: Send + 'static>(
        &self,
        op: FaultOp,
        f: impl FnOnce() -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        if !self.bounds_calls() {
            return self.call_inline(op, f);
        }
        if self.is_offline() {
            return Err(ehostdown());
        }
        let timeout = self.backing_timeout();
        let result = match self.pool.run(f, timeout, &self.counters) {
            Ok(r) => r,
            Err(why) => {
                self.go_offline(
                    format!("a backing {} call {}", op.name(), why.say(timeout)),
                    false,
                );
                return Err(ehostdown());
            }
        };
        self.check_result(op, result)
    }

    /// See [`call_inline`].
    pub fn call_inline<T>(&self, op: FaultOp, f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
        if self.policy == Policy::Never {
            return f();
        }
        if self.is_offline() {
            return Err(ehostdown());
        }
        self.check_result(op, f())
    }

    /// An error that may mean the backing is gone is confirmed (and may switch offline).
    fn check_result<T>(&self, op: FaultOp, result: io::Result<T>) -> io::Result<T> {
        if let Err(e) = &result {
            if let Some(errno) = e.raw_os_error() {
                if unreachable_errno(errno, self.network) {
                    self.suspect(op, errno);
                }
            }
        }
        result
    }

    /// A bounded call failed with an errno that may mean the backing is gone: confirm with
    /// a stat of the root (at most once per [`CONFIRM_VALID`]) before going offline.
    fn suspect(&self, op: FaultOp, errno: i32) {
        if self.is_offline() {
            return;
        }
        if self
            .last_ok
            .lock()
            .is_some_and(|t| t.elapsed() < CONFIRM_VALID)
        {
            return;
        }
        let wait = self.backing_timeout().min(CONFIRM_TIMEOUT);
        let what = format!(
            "a backing {} call failed with {}",
            op.name(),
            errno_name(errno)
        );
        match self.root_check(wait) {
            Ok(()) => {}
            Err(RootCheck::Failed(e)) if unreachable_errno(e, self.network) => self.go_offline(
                format!(
                    "{what}, and a stat of the backing root with {}",
                    errno_name(e)
                ),
                false,
            ),
            Err(RootCheck::Failed(_)) => {}
            Err(RootCheck::Hung) => self.go_offline(
                format!("{what}, and a stat of the backing root hung"),
                false,
            ),
        }
    }

    /// One stat of the backing root on a helper, waiting at most `wait` (inline when
    /// `wait` is zero). Never two at once: a check still running counts as hung.
    fn root_check(&self, wait: Duration) -> Result<(), RootCheck> {
        if self.checking.swap(true, Ordering::AcqRel) {
            return Err(RootCheck::Hung);
        }
        let root = self.root.as_raw_fd();
        let checking = self.checking.clone();
        // The root descriptor lives as long as the daemon (`self` is installed for good
        // or owned by the caller for the whole check), so a late check uses a valid fd.
        let stat = move || {
            let r = crate::sys::fault_fd(FaultOp::Getattr, root).and_then(|()| reach(root));
            checking.store(false, Ordering::Release);
            r
        };
        let r = if wait.is_zero() {
            stat()
        } else {
            match self.pool.run(stat, wait, &self.counters) {
                Ok(r) => r,
                Err(_) => return Err(RootCheck::Hung),
            }
        };
        match r {
            Ok(()) => {
                *self.last_ok.lock() = Some(Instant::now());
                Ok(())
            }
            Err(e) => Err(RootCheck::Failed(e.raw_os_error().unwrap_or(libc::EIO))),
        }
    }

    /// Switches offline (no-op when already offline, except that `forced` sticks).
    pub fn go_offline(&self, reason: String, forced: bool) {
        {
            let mut s = self.status.lock();
            if let Some(st) = s.as_mut() {
                st.forced |= forced;
                return;
            }
            *s = Some(Status {
                since: SystemTime::now(),
                reason: reason.clone(),
                forced,
            });
            self.offline.store(true, Ordering::Release);
        }
        bump(&self.counters.transitions);
        self.logged.lock().clear();
        *self.served.lock() = Some(HashSet::new());
        tracing::warn!(
            "backing offline: {reason}; serving what is cached, read-only (uncached: \
             EHOSTDOWN, writes: EROFS); probing every {:?}",
            self.probe_interval()
        );
    }

    /// Switches online (no-op when online) and runs the return hooks.
    pub fn go_online(&self, reason: &str) {
        let since = {
            let mut s = self.status.lock();
            let Some(st) = s.take() else {
                return;
            };
            self.offline.store(false, Ordering::Release);
            st.since
        };
        let served = self.served.lock().replace(HashSet::new());
        let served: Option<Vec<u64>> = served.map(|s| s.into_iter().collect());
        let away = SystemTime::now().duration_since(since).unwrap_or_default();
        tracing::warn!(
            files = served.as_ref().map_or(-1, |s| s.len() as i64),
            "backing online again after {:.1}s ({reason}); revalidating what was served offline",
            away.as_secs_f64()
        );
        let hooks: Vec<Arc<ReturnHook>> = self.hooks.lock().clone();
        for h in hooks {
            h(served.as_deref());
        }
    }

    /// `set offline=true|false`.
    pub fn force(&self, offline: bool) -> Result<(), String> {
        if self.policy == Policy::Never {
            return Err("this mount has offline=never".into());
        }
        if offline {
            self.go_offline("forced (set offline=true)".into(), true);
        } else {
            self.go_online("forced (set offline=false)");
        }
        Ok(())
    }

    /// A request answered from the caches while offline; `id` its node id.
    pub fn served(&self, id: u64) {
        bump(&self.counters.served);
        let mut s = self.served.lock();
        if let Some(set) = s.as_mut() {
            if set.len() >= MAX_SERVED {
                *s = None;
            } else {
                set.insert(id);
            }
        }
    }

    /// A request refused while offline: `EHOSTDOWN` (not cached), logged once per `key`
    /// (a node id) per offline period; no file names at this level.
    pub fn refuse(&self, key: u64, what: &str) -> io::Error {
        bump(&self.counters.refused);
        let mut logged = self.logged.lock();
        if logged.len() < MAX_LOGGED && logged.insert(key) {
            tracing::warn!(
                inode = key,
                "offline: {what} is not cached; refused with EHOSTDOWN"
            );
        } else if logged.len() == MAX_LOGGED && logged.insert(u64::MAX) {
            tracing::warn!("offline: more refusals; not logged until the backing returns");
        }
        ehostdown()
    }

    /// A change refused while offline: `EROFS` (counted, not logged per call).
    pub fn refuse_write(&self) -> io::Error {
        bump(&self.counters.refused);
        io::Error::from_raw_os_error(libc::EROFS)
    }

    /// xattrs (cached online, not yet served offline): getxattr and listxattr answer
    /// `EOPNOTSUPP` (`ls -l` then takes it as "no ACLs"), counted as refused, not logged.
    pub fn xattrs_offline(&self) -> io::Error {
        bump(&self.counters.refused);
        io::Error::from_raw_os_error(libc::EOPNOTSUPP)
    }

    /// `backing`: `online`, or `offline since <UTC time> (<reason>)`.
    pub fn describe(&self) -> String {
        match &*self.status.lock() {
            None => "online".into(),
            Some(st) => format!(
                "offline since {} ({}{})",
                utc(st.since),
                st.reason,
                if st.forced { "; forced" } else { "" }
            ),
        }
    }

    /// The figures `stats` shows.
    pub fn figures(&self) -> Vec<(String, serde_json::Value)> {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let timed_out = get(&c.timed_out);
        vec![
            ("backing".into(), self.describe().into()),
            ("offline".into(), u64::from(self.is_offline()).into()),
            ("offline_policy".into(), self.policy.name().into()),
            ("backing_network_fs".into(), u64::from(self.network).into()),
            (
                "backing_timeout_ms".into(),
                (self.backing_timeout().as_millis() as u64).into(),
            ),
            (
                "offline_probe_interval_ms".into(),
                (self.probe_interval().as_millis() as u64).into(),
            ),
            ("offline_transitions".into(), get(&c.transitions).into()),
            ("offline_served".into(), get(&c.served).into()),
            ("offline_refused".into(), get(&c.refused).into()),
            ("offline_probes".into(), get(&c.probes).into()),
            ("backing_calls_timed_out".into(), timed_out.into()),
            (
                "backing_calls_hung".into(),
                timed_out
                    .saturating_sub(self.pool.late.load(Ordering::Relaxed))
                    .into(),
            ),
            (
                "backing_helper_threads".into(),
                self.pool.threads.load(Ordering::Relaxed).into(),
            ),
        ]
    }

    /// One probe: while offline and not forced, a root check; success returns online.
    pub fn probe_once(&self) -> bool {
        let forced = self.status.lock().as_ref().is_none_or(|s| s.forced);
        if !self.is_offline() || forced {
            return false;
        }
        bump(&self.counters.probes);
        let wait = self.backing_timeout();
        match self.root_check(wait) {
            Ok(()) => {
                self.go_online("a stat of the backing root succeeded");
                true
            }
            Err(e) => {
                tracing::debug!("offline probe: {e:?}");
                false
            }
        }
    }

    /// Starts the probe thread (for the life of the daemon).
    pub fn spawn_probe(self: &Arc<Offline>) {
        if self.policy == Policy::Never {
            return;
        }
        let me = self.clone();
        let spawned = std::thread::Builder::new()
            .name("bcl-probe".into())
            .spawn(move || loop {
                {
                    let mut g = me.wake_lock.lock();
                    me.wake.wait_for(&mut g, me.probe_interval());
                }
                me.probe_once();
            });
        if let Err(e) = spawned {
            tracing::warn!("no offline probe thread (the mount will not come back by itself): {e}");
        }
    }
}

/// A call on the backing root that its server must answer: a stat could come from the
/// client's attribute cache (NFS, FUSE), an open of the directory cannot (NFS revalidates
/// on open, FUSE sends OPENDIR), and `fstatvfs` asks the server for its figures.
fn reach(root: std::os::fd::RawFd) -> io::Result<()> {
    let path = std::ffi::CString::new(format!("/proc/self/fd/{root}")).expect("no NUL");
    let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC;
    // SAFETY: a NUL-terminated path borrowed for the call.
    let fd = crate::sys::cvt(unsafe { libc::open(path.as_ptr(), flags) })?;
    // SAFETY: open just returned it; nothing else owns it.
    let dir = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: statvfs is plain old data; all-zero is a valid value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid descriptor and an out pointer we own.
    crate::sys::cvt(unsafe { libc::fstatvfs(dir.as_raw_fd(), &mut st) })?;
    Ok(())
}

#[derive(Debug)]
enum RootCheck {
    Failed(i32),
    Hung,
}

fn ns(d: Duration) -> u64 {
    d.as_nanos().min(u128::from(u64::MAX)) as u64
}

/// An errno as its name where we know it (log lines), else its number.
pub fn errno_name(e: i32) -> String {
    let name = match e {
        libc::ENOTCONN => "ENOTCONN",
        libc::ESTALE => "ESTALE",
        libc::EHOSTDOWN => "EHOSTDOWN",
        libc::EHOSTUNREACH => "EHOSTUNREACH",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::ENETDOWN => "ENETDOWN",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::ECONNABORTED => "ECONNABORTED",
        libc::ECONNRESET => "ECONNRESET",
        libc::EIO => "EIO",
        libc::ENOENT => "ENOENT",
        libc::EACCES => "EACCES",
        _ => return format!("errno {e}"),
    };
    name.into()
}

/// `2026-12-01 14:40:03 UTC`, from the civil-from-days algorithm (no time crate).
pub fn utc(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

// ---- the helper pool ------------------------------------------------------------------

type Job = Box<dyn FnOnce() + Send>;

/// Why a bounded call got no answer.
#[derive(Debug)]
enum NoAnswer {
    TimedOut,
    /// Every helper is busy (hung) and no new one may start.
    Exhausted,
}

impl NoAnswer {
    fn say(&self, timeout: Duration) -> String {
        match self {
            NoAnswer::TimedOut => format!("hung for more than {:.1}s", timeout.as_secs_f64()),
            NoAnswer::Exhausted => format!("found all {MAX_HELPERS} helper threads hung"),
        }
    }
}

/// Helper threads for bounded calls. Every queued job has a helper of its own (an idle one
/// reserved by `idle`, or one started for it), so a job never waits behind a hung one.
struct Pool {
    tx: Mutex<mpsc::Sender<Job>>,
    rx: Arc<Mutex<mpsc::Receiver<Job>>>,
    /// Helpers waiting for a job and not yet reserved.
    idle: Arc<AtomicUsize>,
    /// Helpers alive.
    threads: Arc<AtomicUsize>,
    /// Abandoned jobs that have returned since.
    late: Arc<AtomicU64>,
}

/// A job's state: whether its caller still waits.
const PENDING: u8 = 0;
const DONE: u8 = 1;
const ABANDONED: u8 = 2;

impl Pool {
    fn new() -> Pool {
        let (tx, rx) = mpsc::channel::<Job>();
        Pool {
            tx: Mutex::new(tx),
            rx: Arc::new(Mutex::new(rx)),
            idle: Arc::new(AtomicUsize::new(0)),
            threads: Arc::new(AtomicUsize::new(0)),
            late: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Runs `f` on a helper; waits at most `timeout` for its result.
    fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> io::Result<T> + Send + 'static,
        timeout: Duration,
        counters: &Counters,
    ) -> Result<io::Result<T>, NoAnswer> {
        let reserved = self
            .idle
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok();
        if !reserved && !self.start_helper() {
            return Err(NoAnswer::Exhausted);
        }
        let (rtx, rrx) = mpsc::sync_channel::<io::Result<T>>(1);
        let state = Arc::new(AtomicU8::new(PENDING));
        let job_state = state.clone();
        let late = self.late.clone();
        let job: Job = Box::new(move || {
            let r = f();
            let _ = rtx.send(r);
            if job_state
                .compare_exchange(PENDING, DONE, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                late.fetch_add(1, Ordering::Relaxed);
            }
        });
        if self.tx.lock().send(job).is_err() {
            return Err(NoAnswer::Exhausted);
        }
        match rrx.recv_timeout(timeout) {
            Ok(r) => Ok(r),
            Err(_) => {
                if state
                    .compare_exchange(PENDING, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    bump(&counters.timed_out);
                    Err(NoAnswer::TimedOut)
                } else {
                    // it finished just now: its result is in the channel
                    rrx.recv().map_err(|_| NoAnswer::TimedOut)
                }
            }
        }
    }

    /// Starts one helper, unless [`MAX_HELPERS`] are alive.
    fn start_helper(&self) -> bool {
        let ok = self
            .threads
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_HELPERS).then_some(n + 1)
            })
            .is_ok();
        if !ok {
            return false;
        }
        let rx = self.rx.clone();
        let idle = self.idle.clone();
        let threads = self.threads.clone();
        let spawned = std::thread::Builder::new()
            .name("bcl-backing".into())
            .stack_size(256 << 10)
            .spawn(move || loop {
                let job = rx.lock().recv();
                let Ok(job) = job else {
                    threads.fetch_sub(1, Ordering::AcqRel);
                    return;
                };
                job();
                idle.fetch_add(1, Ordering::AcqRel);
            });
        if spawned.is_err() {
            self.threads.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> OwnedFd {
        let c = std::ffi::CString::new("/").unwrap();
        // SAFETY: a NUL-terminated path; the new descriptor is owned below.
        let fd = unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: open just returned it.
        unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) }
    }

    #[test]
    fn a_hung_call_is_abandoned_after_the_timeout_and_switches_offline() {
        let o = Offline::new(
            Policy::Auto,
            root(),
            Some(Duration::from_millis(200)),
            Duration::from_secs(60),
        );
        let t = Instant::now();
        let r: io::Result<()> = o.call(FaultOp::Read, || {
            std::thread::sleep(Duration::from_millis(1500));
            Ok(())
        });
        assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::EHOSTDOWN));
        assert!(
            t.elapsed() < Duration::from_millis(1000),
            "{:?}",
            t.elapsed()
        );
        assert!(o.is_offline());
        assert!(
            o.describe().starts_with("offline since "),
            "{}",
            o.describe()
        );
        // offline: not even attempted
        let r: io::Result<u32> = o.call(FaultOp::Read, || Ok(7));
        assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::EHOSTDOWN));
        // the root of this machine answers: the probe brings it back
        assert!(o.probe_once());
        assert!(!o.is_offline());
        assert_eq!(o.call(FaultOp::Read, || Ok(7)).unwrap(), 7);
        assert_eq!(o.counters.transitions.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn an_unreachable_errno_goes_offline_only_when_the_root_fails_too() {
        let o = Offline::new(
            Policy::Auto,
            root(),
            Some(Duration::from_secs(5)),
            Duration::from_secs(60),
        );
        // the root of this machine answers: one file's ESTALE is passed through
        let r: io::Result<()> = o.call(FaultOp::Open, || {
            Err(io::Error::from_raw_os_error(libc::ESTALE))
        });
        assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::ESTALE));
        assert!(!o.is_offline());
        // EIO on a local backing is one bad file
        assert!(!unreachable_errno(libc::EIO, false));
        assert!(unreachable_errno(libc::EIO, true));
    }

    #[test]
    fn never_calls_inline_and_cannot_be_forced() {
        // no timeout given: inline on this local disk, bounded on a network one
        let local = Offline::new(Policy::Auto, root(), None, Duration::from_secs(60));
        assert!(!local.network() && !local.bounds_calls());
        let o = Offline::new(
            Policy::Never,
            root(),
            Some(Duration::from_millis(1)),
            Duration::from_secs(60),
        );
        let r: io::Result<u8> = o.call(FaultOp::Read, || {
            std::thread::sleep(Duration::from_millis(20));
            Ok(1)
        });
        assert_eq!(r.unwrap(), 1);
        assert!(o.force(true).is_err());
        assert!(!o.is_offline());
    }

    #[test]
    fn utc_formats_the_civil_date() {
        assert_eq!(utc(UNIX_EPOCH), "1970-01-01 00:00:00 UTC");
        let t = UNIX_EPOCH + Duration::from_secs(1_796_135_603);
        assert_eq!(utc(t), "2026-12-01 14:33:23 UTC");
    }
}
