//! Fault-injecting [`CacheDevice`]s for tests (redb's crash backend). [`FaultyDevice`] fails,
//! tears or freezes the Nth mutating operation (of every kind, or only of one call site:
//! a region of the file and an operation, see [`Site`]) with a chosen errno (EIO by
//! default, ENOSPC...), and fails chosen reads. [`PowerCutDevice`] keeps what is durable
//! apart from what was only written: at the chosen `fdatasync` it "cuts the power", every
//! write since the previous sync is lost except a torn prefix of the last one, and every
//! later operation is silently dropped; [`PowerCutDevice::durable_image`] is the file a
//! reboot would find. Built only under `cfg(test)` and the `fault-injection` feature (which
//! the integration tests enable through the crate's dev-dependency on itself). Locks: each
//! device's own small mutexes, never across the inner device's I/O except the power-cut
//! device's `state` (held across its inner call so the image and the file agree).

use std::io;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};

use parking_lot::Mutex;

use super::CacheDevice;

/// What a [`FaultyDevice`] does when its fault triggers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// The triggering operation and every later mutating operation fail with `EIO`;
    /// nothing of the triggering write reaches the file.
    Fail,
    /// The triggering write stores only its first `keep` bytes and fails with `EIO`;
    /// every later mutating operation fails.
    TearAndFail { keep: usize },
    /// A transient error: only the triggering operation fails (a write stores its first `keep`
    /// bytes first); later operations succeed. Catches code that ignores an error and goes on.
    FailOnce { keep: usize },
    /// Power loss: the triggering write stores only its first `keep` bytes but reports success,
    /// and every later mutating operation (write, sync, punch) is silently dropped while
    /// reporting success. `keep: 0` drops the triggering write entirely.
    TearAndFreeze { keep: usize },
}

/// Which operations a fault counts and hits: one call site of the cache file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Site {
    /// Every mutating operation (what [`FaultyDevice::arm`] counts).
    Any,
    /// `pwrite`s that start in `[lo, hi)` (the superblock and gens area, the journal ring, the
    /// buckets: fills and index checkpoint blobs).
    Writes { lo: u64, hi: u64 },
    /// `fdatasync`.
    Sync,
    /// `punch_hole` (discard).
    Punch,
    /// `pread`s that start in `[lo, hi)` (for [`FaultyDevice::arm_reads`]).
    Reads { lo: u64, hi: u64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Write,
    Sync,
    Punch,
    Read,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Write => "write",
            Op::Sync => "sync",
            Op::Punch => "punch",
            Op::Read => "read",
        }
    }
}

impl Site {
    fn matches(self, op: Op, off: u64) -> bool {
        match self {
            Site::Any => op != Op::Read,
            Site::Writes { lo, hi } => op == Op::Write && (lo..hi).contains(&off),
            Site::Sync => op == Op::Sync,
            Site::Punch => op == Op::Punch,
            Site::Reads { lo, hi } => op == Op::Read && (lo..hi).contains(&off),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Plan {
    site: Site,
    /// Fault at this matching operation: absolute op number for `Site::Any`, else the
    /// count of matching operations since arming.
    at: u64,
    seen: u64,
    kind: FaultKind,
    triggered: bool,
}

/// A device wrapper that injects one fault at mutating operation number `at_op` (0-based,
/// counting `pwrite`, `fdatasync` and `punch_hole`), or at the Nth operation of one call site
/// ([`FaultyDevice::arm_site`]). Reads pass through unless [`FaultyDevice::arm_reads`].
pub struct FaultyDevice<D> {
    inner: D,
    ops: AtomicU64,
    plan: Mutex<Option<Plan>>,
    /// (site, fail only once) for reads.
    read_plan: Mutex<Option<(Site, bool)>>,
    errno: AtomicI32,
    faults: AtomicU64,
    first_fault: Mutex<Option<&'static str>>,
}

impl<D: CacheDevice> FaultyDevice<D> {
    /// A wrapper with no fault armed.
    pub fn new(inner: D) -> Self {
        FaultyDevice {
            inner,
            ops: AtomicU64::new(0),
            plan: Mutex::new(None),
            read_plan: Mutex::new(None),
            errno: AtomicI32::new(libc::EIO),
            faults: AtomicU64::new(0),
            first_fault: Mutex::new(None),
        }
    }

    /// Arm a fault at mutating operation `at_op` (counted from the device's creation).
    pub fn arm(&self, at_op: u64, kind: FaultKind) {
        *self.plan.lock() = Some(Plan {
            site: Site::Any,
            at: at_op,
            seen: 0,
            kind,
            triggered: false,
        });
    }

    /// Arm a fault at the `nth` (0-based) operation of `site` from now on; once it has
    /// triggered, every later mutating operation is treated as `kind` says.
    pub fn arm_site(&self, site: Site, nth: u64, kind: FaultKind) {
        *self.plan.lock() = Some(Plan {
            site,
            at: nth,
            seen: 0,
            kind,
            triggered: false,
        });
    }

    /// Fail reads of `site` (a `Site::Reads` range): every one, or only the next (`once`).
    pub fn arm_reads(&self, site: Site, once: bool) {
        *self.read_plan.lock() = Some((site, once));
    }

    /// The errno injected faults fail with (EIO unless set; ENOSPC for a full disk).
    pub fn set_errno(&self, errno: i32) {
        self.errno.store(errno, Ordering::SeqCst);
    }

    /// The kind of operation the mutating fault triggered on (`write`, `sync`, `punch`).
    pub fn faulted_op(&self) -> Option<&'static str> {
        *self.first_fault.lock()
    }

    /// How many operations an injected fault has failed or torn so far.
    pub fn faults(&self) -> u64 {
        self.faults.load(Ordering::SeqCst)
    }

    /// Remove any armed fault (operations after a triggered fault keep failing/dropping only
    /// while the plan is armed).
    pub fn disarm(&self) {
        *self.plan.lock() = None;
        *self.read_plan.lock() = None;
    }

    /// Number of mutating operations issued so far.
    pub fn ops(&self) -> u64 {
        self.ops.load(Ordering::SeqCst)
    }

    /// The wrapped device.
    pub fn inner(&self) -> &D {
        &self.inner
    }

    /// Decide the fate of one mutating operation: `None` = pass through, or the fault.
    fn fate(&self, op: Op, off: u64) -> Option<(bool, FaultKind)> {
        let n = self.ops.fetch_add(1, Ordering::SeqCst);
        let mut plan = self.plan.lock();
        let p = plan.as_mut()?;
        if p.triggered {
            return Some((false, p.kind));
        }
        let hit = match p.site {
            Site::Any => n >= p.at,
            site if site.matches(op, off) => {
                p.seen += 1;
                p.seen > p.at
            }
            _ => false,
        };
        if !hit {
            return None;
        }
        p.triggered = true;
        *self.first_fault.lock() = Some(op.name());
        self.faults.fetch_add(1, Ordering::SeqCst);
        Some((true, p.kind))
    }

    fn err(&self) -> io::Error {
        io::Error::from_raw_os_error(self.errno.load(Ordering::SeqCst))
    }
}

impl<D: CacheDevice> CacheDevice for FaultyDevice<D> {
    fn pread(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        {
            let mut plan = self.read_plan.lock();
            if let Some((site, once)) = *plan {
                if site.matches(Op::Read, off) {
                    if once {
                        *plan = None;
                    }
                    self.faults.fetch_add(1, Ordering::SeqCst);
                    return Err(self.err());
                }
            }
        }
        self.inner.pread(buf, off)
    }

    fn pwrite(&self, buf: &[u8], off: u64) -> io::Result<()> {
        let eio = || self.err();
        match self.fate(Op::Write, off) {
            None => self.inner.pwrite(buf, off),
            Some((_, FaultKind::Fail)) => Err(eio()),
            Some((first, FaultKind::TearAndFail { keep })) => {
                if first && keep > 0 {
                    self.inner.pwrite(&buf[..keep.min(buf.len())], off)?;
                }
                Err(eio())
            }
            Some((first, FaultKind::TearAndFreeze { keep })) => {
                if first && keep > 0 {
                    self.inner.pwrite(&buf[..keep.min(buf.len())], off)?;
                }
                Ok(())
            }
            Some((false, FaultKind::FailOnce { .. })) => self.inner.pwrite(buf, off),
            Some((true, FaultKind::FailOnce { keep })) => {
                if keep > 0 {
                    self.inner.pwrite(&buf[..keep.min(buf.len())], off)?;
                }
                Err(eio())
            }
        }
    }

    fn fdatasync(&self) -> io::Result<()> {
        match self.fate(Op::Sync, 0) {
            None | Some((false, FaultKind::FailOnce { .. })) => self.inner.fdatasync(),
            Some((_, FaultKind::TearAndFreeze { .. })) => Ok(()),
            Some(_) => Err(self.err()),
        }
    }

    fn punch_hole(&self, off: u64, len: u64) -> io::Result<()> {
        match self.fate(Op::Punch, off) {
            None | Some((false, FaultKind::FailOnce { .. })) => self.inner.punch_hole(off, len),
            Some((_, FaultKind::TearAndFreeze { .. })) => Ok(()),
            Some(_) => Err(self.err()),
        }
    }

    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
}

/// Power loss at a sync point. Writes reach the inner device at once (so the running cache
/// reads back what it wrote, as from the page cache) and are also kept as pending until the
/// next `fdatasync` makes them durable in an in-memory image of the file. At sync number
/// `cut_at` (0-based) the power goes: that sync reports success but makes nothing durable,
/// the pending writes are lost except the first `tear` bytes of the last one, and every later
/// operation is dropped while reporting success. A punched range counts as a pending write of
/// zeroes.
pub struct PowerCutDevice<D> {
    inner: D,
    cut_at: Option<u64>,
    tear: usize,
    state: Mutex<PowerState>,
    cut: AtomicBool,
}

struct PowerState {
    durable: Vec<u8>,
    pending: Vec<(u64, Vec<u8>)>,
    syncs: u64,
}

impl<D: CacheDevice> PowerCutDevice<D> {
    /// Wraps `inner`, whose current bytes are durable; the power goes at sync `cut_at` (never
    /// for `None`: a dry run that counts the sync points).
    pub fn new(inner: D, cut_at: Option<u64>, tear: usize) -> io::Result<Self> {
        let len = inner.len()?;
        let mut durable = vec![0u8; len as usize];
        inner.pread(&mut durable, 0)?;
        Ok(PowerCutDevice {
            inner,
            cut_at,
            tear,
            state: Mutex::new(PowerState {
                durable,
                pending: Vec::new(),
                syncs: 0,
            }),
            cut: AtomicBool::new(false),
        })
    }

    /// True once the power is gone.
    pub fn is_cut(&self) -> bool {
        self.cut.load(Ordering::SeqCst)
    }

    /// Sync points (`fdatasync` calls) so far, the cutting one included.
    pub fn syncs(&self) -> u64 {
        self.state.lock().syncs
    }

    /// What a reboot finds: the durable bytes (after a cut, with the torn last write).
    pub fn durable_image(&self) -> Vec<u8> {
        self.state.lock().durable.clone()
    }
}

fn apply(image: &mut [u8], off: u64, data: &[u8]) {
    let off = off as usize;
    let end = (off + data.len()).min(image.len());
    if off < end {
        image[off..end].copy_from_slice(&data[..end - off]);
    }
}

impl<D: CacheDevice> CacheDevice for PowerCutDevice<D> {
    fn pread(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        self.inner.pread(buf, off)
    }

    fn pwrite(&self, buf: &[u8], off: u64) -> io::Result<()> {
        let mut st = self.state.lock();
        if self.is_cut() {
            return Ok(());
        }
        self.inner.pwrite(buf, off)?;
        st.pending.push((off, buf.to_vec()));
        Ok(())
    }

    fn fdatasync(&self) -> io::Result<()> {
        let mut st = self.state.lock();
        if self.is_cut() {
            return Ok(());
        }
        let n = st.syncs;
        st.syncs += 1;
        let pending = std::mem::take(&mut st.pending);
        if Some(n) == self.cut_at {
            self.cut.store(true, Ordering::SeqCst);
            if let Some((off, data)) = pending.last() {
                let keep = self.tear.min(data.len());
                apply(&mut st.durable, *off, &data[..keep]);
            }
            return Ok(());
        }
        self.inner.fdatasync()?;
        for (off, data) in &pending {
            apply(&mut st.durable, *off, data);
        }
        Ok(())
    }

    fn punch_hole(&self, off: u64, len: u64) -> io::Result<()> {
        let mut st = self.state.lock();
        if self.is_cut() {
            return Ok(());
        }
        self.inner.punch_hole(off, len)?;
        st.pending.push((off, vec![0u8; len as usize]));
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::FileDevice;

    fn tmp_dev(len: u64) -> (tempfile::NamedTempFile, FileDevice) {
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(len).unwrap();
        let dev = FileDevice::new(f.reopen().unwrap());
        (f, dev)
    }

    #[test]
    fn tear_and_fail_writes_prefix_then_fails_everything() {
        let (_f, dev) = tmp_dev(8192);
        let fd = FaultyDevice::new(dev);
        fd.pwrite(&[1u8; 10], 0).unwrap();
        fd.arm(1, FaultKind::TearAndFail { keep: 3 });
        assert!(fd.pwrite(&[2u8; 10], 100).is_err());
        assert!(fd.fdatasync().is_err());
        assert!(fd.pwrite(&[3u8; 10], 200).is_err());
        let mut buf = [0u8; 10];
        fd.pread(&mut buf, 100).unwrap();
        assert_eq!(buf, [2, 2, 2, 0, 0, 0, 0, 0, 0, 0]);
        fd.pread(&mut buf, 200).unwrap();
        assert_eq!(buf, [0; 10]);
        assert_eq!(fd.ops(), 4);
    }

    #[test]
    fn fail_once_then_recovers() {
        let (_f, dev) = tmp_dev(8192);
        let fd = FaultyDevice::new(dev);
        fd.arm(0, FaultKind::FailOnce { keep: 2 });
        assert!(fd.pwrite(&[5u8; 4], 0).is_err());
        fd.pwrite(&[6u8; 4], 8).unwrap();
        fd.fdatasync().unwrap();
        let mut buf = [0u8; 12];
        fd.pread(&mut buf, 0).unwrap();
        assert_eq!(buf, [5, 5, 0, 0, 0, 0, 0, 0, 6, 6, 6, 6]);
    }

    #[test]
    fn a_site_fault_counts_only_its_site_and_uses_the_errno() {
        let (_f, dev) = tmp_dev(8192);
        let fd = FaultyDevice::new(dev);
        fd.set_errno(libc::ENOSPC);
        fd.arm_site(
            Site::Writes { lo: 4096, hi: 8192 },
            1,
            FaultKind::FailOnce { keep: 0 },
        );
        fd.pwrite(&[1u8; 4], 0).unwrap();
        fd.pwrite(&[1u8; 4], 4096).unwrap();
        fd.fdatasync().unwrap();
        let e = fd.pwrite(&[2u8; 4], 5000).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
        fd.pwrite(&[3u8; 4], 5000).unwrap();
        fd.arm_reads(Site::Reads { lo: 0, hi: 10 }, true);
        let mut b = [0u8; 4];
        assert!(fd.pread(&mut b, 0).is_err());
        fd.pread(&mut b, 0).unwrap();
        assert_eq!(fd.faults(), 2);
    }

    #[test]
    fn a_power_cut_keeps_only_synced_writes_and_a_torn_last_one() {
        let (_f, dev) = tmp_dev(8192);
        let pc = PowerCutDevice::new(dev, Some(1), 2).unwrap();
        pc.pwrite(&[1u8; 4], 0).unwrap();
        pc.fdatasync().unwrap(); // sync 0: durable
        pc.pwrite(&[2u8; 4], 8).unwrap();
        pc.pwrite(&[3u8; 4], 16).unwrap();
        pc.fdatasync().unwrap(); // sync 1: the cut
        pc.pwrite(&[4u8; 4], 24).unwrap();
        assert!(pc.is_cut());
        let img = pc.durable_image();
        assert_eq!(&img[0..4], &[1; 4]);
        assert_eq!(&img[8..12], &[0; 4], "an unsynced write survived");
        assert_eq!(&img[16..20], &[3, 3, 0, 0], "the last write is torn");
        assert_eq!(&img[24..28], &[0; 4]);
    }

    #[test]
    fn freeze_reports_success_but_drops() {
        let (_f, dev) = tmp_dev(8192);
        let fd = FaultyDevice::new(dev);
        fd.arm(0, FaultKind::TearAndFreeze { keep: 0 });
        fd.pwrite(&[9u8; 4], 0).unwrap();
        fd.fdatasync().unwrap();
        let mut buf = [1u8; 4];
        fd.pread(&mut buf, 0).unwrap();
        assert_eq!(buf, [0; 4]);
    }
}
