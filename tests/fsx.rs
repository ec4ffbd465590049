//! fsx: a differential random-operation tester (in the tradition of fsx and fsstress).
//!
//! One seeded random sequence of operations is applied to the mount and to a reference
//! directory on a plain local filesystem (a tempdir on /tmp). Every result is compared:
//! return values and errnos, the bytes of every read, sizes, modes and link counts; every
//! `BCL_FSX_CHECK_EVERY` ops (and at the end) everything is compared: the full contents
//! through every open descriptor and through every name, stat fields, which names are hard
//! links of each other, and the directory listing.
//!
//! The operations cover a few files (`f0`..`f5`, up to 4 MiB, so block and bucket
//! boundaries, multi-block extents and partial blocks are hit) and up to 8 descriptors
//! open at once: open with flag combinations (O_CREAT, O_EXCL, O_TRUNC, O_APPEND,
//! O_DIRECT with aligned buffers), read, pread, write, pwrite, mmap read, mmap write +
//! msync, truncate, ftruncate, fallocate (0, KEEP_SIZE, PUNCH_HOLE|KEEP_SIZE, ZERO_RANGE),
//! copy_file_range, lseek (SET, CUR, END, DATA, HOLE), fsync, fdatasync, rename, link,
//! unlink of open files (the descriptors stay in use), chmod, utimens (with UTIME_OMIT
//! and UTIME_NOW), stat, fstat, readdir.
//!
//! External changes are made at random moments directly in the mount's backing directory
//! and mirrored in the reference: rewrite at the same size, grow, shrink, replace by
//! rename (a descriptor open before keeps the old inode, in both trees), and a `touch
//! -r`-style same-size rewrite that restores the old mtime (only ctime tells). After one
//! the tester waits one attribute/entry timeout (the mount uses 0.2 s); from then on the
//! mount must show the new bytes, also through descriptors opened before the change
//! (buffered and O_DIRECT reads), as the design's invariant 7 says.
//!
//! What is deliberately not compared (each would be a difference of filesystems, not a
//! bug): SEEK_DATA/SEEK_HOLE positions (granularity differs; each side's answer is
//! checked for consistency with the contents instead, and reading there must agree);
//! times other than those set explicitly; mmap of an O_DIRECT descriptor (FUSE refuses
//! shared maps of FOPEN_DIRECT_IO files); copy_file_range on O_DIRECT descriptors (ext4
//! needs alignment there, the mount does not). An mmap read first fstat()s its descriptor:
//! a page fault on a cached page never reaches the daemon, so a mapping can only learn of
//! an outside change when something asks for the attributes (which we then require to be
//! enough). Before an outside change the tester sleeps 20 ms, so the change cannot fall
//! in the same timestamp tick as the mount's last write (a validator made of size, mtime
//! and ctime cannot see a change inside one tick).
//!
//! Knobs (environment):
//! - `BCL_FSX_OPS` ops per configuration (default 2000),
//! - `BCL_FSX_SEED` base seed (default fixed; each configuration derives its own from it),
//! - `BCL_FSX_CONFIG` run only this configuration (nocache, lru, fifo, random, tiny, seq0,
//!   writearound, none, meta_shared, meta_exclusive: the metadata cache in each coherence mode; exclusive
//!   makes no outside changes; writeback, writeback_held, writeback_exclusive,
//!   kernel_write_cache, writeback_kernel_write_cache: FUSE_WRITEBACK_CACHE, no outside
//!   changes),
//! - `BCL_FSX_EXTERNAL=0` no outside changes, `BCL_FSX_MMAP=0` no mmap,
//! - `BCL_FSX_SKIP=op,op` leave out operations by name (see [`OPS`], the outside change
//!   kinds `ext_same`, `ext_grow`, `ext_shrink`, `ext_rename`, `ext_touch`, and the
//!   fallocate modes `fa_alloc`, `fa_keep`, `fa_punch`, `fa_zero`; `stale_append` leaves
//!   out the fstat() every O_APPEND write does first, see `refresh_append`),
//! - `BCL_FSX_CHECK_EVERY` ops between full comparisons (default 100),
//! - `BCL_FSX_REVALIDATE=1` (narrowing only): after an outside change, stat every open
//!   descriptor and every name through the mount, so what still fails survives a getattr.
//!
//! On the first mismatch the last 60 ops are printed, the whole log is written under
//! the target directory, and the command line that replays the run is printed.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::Mount;

const NAMES: [&str; 6] = ["f0", "f1", "f2", "f3", "f4", "f5"];
const MAX_SIZE: u64 = 4 << 20;
const MAX_HANDLES: usize = 8;
const ALIGN: usize = 4096;
const TTL: &str = "attr_timeout=0.2,entry_timeout=0.2,metadata_ttl=0.2";
/// One attribute/entry timeout and a margin.
const SETTLE: Duration = Duration::from_millis(260);

/// Every operation kind, with its weight.
const OPS: &[(&str, u32)] = &[
    ("open", 8),
    ("close", 4),
    ("read", 8),
    ("pread", 10),
    ("write", 8),
    ("pwrite", 10),
    ("mmap_read", 5),
    ("mmap_write", 5),
    ("truncate", 3),
    ("ftruncate", 3),
    ("fallocate", 6),
    ("copy_range", 4),
    ("lseek", 5),
    ("fsync", 2),
    ("fdatasync", 2),
    ("rename", 2),
    ("link", 2),
    ("unlink", 2),
    ("chmod", 2),
    ("utimes", 3),
    ("stat", 3),
    ("fstat", 3),
    ("readdir", 2),
    ("external", 2),
];

// ---------------------------------------------------------------------------------
// configurations

struct Config {
    name: &'static str,
    /// Mount options; `CACHE` stands for the cache file's path.
    options: &'static str,
    /// Outside changes are made (not in `coherence=exclusive`, which rules them out).
    external: bool,
}

const CONFIGS: &[Config] = &[
    Config {
        name: "nocache",
        options: "",
        external: true,
    },
    Config {
        name: "lru",
        options: "cache=CACHE,cache_size=64M,replacement=lru",
        external: true,
    },
    Config {
        name: "fifo",
        options: "cache=CACHE,cache_size=64M,replacement=fifo",
        external: true,
    },
    Config {
        name: "random",
        options: "cache=CACHE,cache_size=64M,replacement=random",
        external: true,
    },
    // 8 MiB: 64 KiB buckets; six files of up to 4 MiB do not fit, so buckets are reused
    Config {
        name: "tiny",
        options: "cache=CACHE,cache_size=8M,replacement=lru",
        external: true,
    },
    Config {
        name: "seq0",
        options: "cache=CACHE,cache_size=64M,sequential_cutoff=0",
        external: true,
    },
    // the metadata cache in each coherence mode (every cached configuration runs it, shared
    // by default, with metadata_ttl=0.2 from TTL; exclusive: valid until changed through
    // the mount, long kernel TTLs, no outside changes)
    Config {
        name: "meta_shared",
        options: "cache=CACHE,cache_size=64M,coherence=shared",
        external: true,
    },
    Config {
        name: "meta_exclusive",
        options: "cache=CACHE,cache_size=64M,coherence=exclusive",
        external: false,
    },
    // cache modes (issue 13): writes to the backing only, reads still cached
    Config {
        name: "writearound",
        options: "cache=CACHE,cache_size=8M,cache_mode=writearound,sequential_cutoff=0",
        external: true,
    },
    // writeback (issue 13): a small cache written back at once (buckets reused under dirty
    // data), and a big one that holds everything dirty (only the flush-first paths and the
    // end's flush write it back); no outside changes (an outside change to a file with dirty
    // data loses to the mount by design, which the reference cannot model)
    Config {
        name: "writeback",
        options: "cache=CACHE,cache_size=8M,cache_mode=writeback,writeback_delay=0.05,sequential_cutoff=0",
        external: false,
    },
    Config {
        name: "writeback_held",
        options: "cache=CACHE,cache_size=64M,cache_mode=writeback,writeback_delay=3600",
        external: false,
    },
    // writeback in exclusive mode: files opened without OPEN requests (no_open), their
    // dirty writes arriving through the daemon's own handles
    Config {
        name: "writeback_exclusive",
        options: "cache=CACHE,cache_size=8M,cache_mode=writeback,writeback_delay=0.05,sequential_cutoff=0,coherence=exclusive",
        external: false,
    },
    // the kernel's write cache (FUSE_WRITEBACK_CACHE): writes reach the daemon as page
    // writeback, the kernel keeps its own size and mtime (so no outside changes: it would
    // not take a size the backing changed to from elsewhere)
    Config {
        name: "kernel_write_cache",
        options: "cache=CACHE,cache_size=8M,sequential_cutoff=0,kernel_write_cache",
        external: false,
    },
    Config {
        name: "writeback_kernel_write_cache",
        options: "cache=CACHE,cache_size=8M,cache_mode=writeback,writeback_delay=0.05,sequential_cutoff=0,coherence=exclusive,kernel_write_cache",
        external: false,
    },
    // a cache file named but not opened: plain passthrough
    Config {
        name: "none",
        options: "cache=CACHE,cache_size=64M,cache_mode=none",
        external: true,
    },
];

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => {
            let v = v.trim();
            let parsed = match v.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => v.parse(),
            };
            parsed.unwrap_or_else(|_| panic!("{name}={v}: not a number"))
        }
        _ => default,
    }
}

fn env_on(name: &str) -> bool {
    !matches!(
        std::env::var(name).as_deref(),
        Ok("0") | Ok("no") | Ok("off")
    )
}

// ---------------------------------------------------------------------------------
// small helpers

/// splitmix64: small, seedable, good enough.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in 0..n (n > 0).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    /// Uniform in lo..=hi.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
    /// True with probability pct/100.
    fn pct(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len() as u64) as usize]
    }
}

/// A zeroed buffer aligned for O_DIRECT.
struct ABuf {
    ptr: *mut u8,
    len: usize,
    layout: std::alloc::Layout,
}

impl ABuf {
    fn new(len: usize) -> ABuf {
        let cap = len.max(1).div_ceil(ALIGN) * ALIGN;
        let layout = std::alloc::Layout::from_size_align(cap, ALIGN).unwrap();
        // SAFETY: layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        assert!(!ptr.is_null());
        ABuf { ptr, len, layout }
    }
    fn filled(len: usize, seed: u64) -> ABuf {
        let mut b = ABuf::new(len);
        let mut x = seed | 1;
        for byte in b.as_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *byte = (x >> 32) as u8;
        }
        b
    }
    fn as_ref(&self) -> &[u8] {
        // SAFETY: ptr is valid for layout.size() >= len bytes.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
    fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, and we hold &mut self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for ABuf {
    fn drop(&mut self) {
        // SAFETY: allocated with this layout in new().
        unsafe { std::alloc::dealloc(self.ptr, self.layout) }
    }
}

/// A syscall's result: the value, or the errno.
type Res = Result<i64, i32>;

fn res(r: i64) -> Res {
    if r < 0 {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    } else {
        Ok(r)
    }
}

fn errno_name(e: i32) -> String {
    let n = match e {
        libc::ENOENT => "ENOENT",
        libc::EBADF => "EBADF",
        libc::EINVAL => "EINVAL",
        libc::EEXIST => "EEXIST",
        libc::ENXIO => "ENXIO",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EISDIR => "EISDIR",
        libc::EACCES => "EACCES",
        libc::EPERM => "EPERM",
        libc::EFBIG => "EFBIG",
        libc::ENOSPC => "ENOSPC",
        libc::EXDEV => "EXDEV",
        libc::ENODEV => "ENODEV",
        libc::EIO => "EIO",
        libc::ESTALE => "ESTALE",
        libc::ENOSYS => "ENOSYS",
        _ => return format!("errno {e}"),
    };
    n.to_string()
}

fn show(r: &Res) -> String {
    match r {
        Ok(v) => v.to_string(),
        Err(e) => errno_name(*e),
    }
}

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn flags_name(f: i32) -> String {
    let mut s = match f & libc::O_ACCMODE {
        libc::O_RDONLY => "RDONLY",
        libc::O_WRONLY => "WRONLY",
        _ => "RDWR",
    }
    .to_string();
    for (bit, n) in [
        (libc::O_CREAT, "CREAT"),
        (libc::O_EXCL, "EXCL"),
        (libc::O_TRUNC, "TRUNC"),
        (libc::O_APPEND, "APPEND"),
        (libc::O_DIRECT, "DIRECT"),
    ] {
        if f & bit != 0 {
            s.push('|');
            s.push_str(n);
        }
    }
    s
}

fn fstat(fd: i32) -> Result<libc::stat, i32> {
    // SAFETY: st is plain data written by the kernel.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid out pointer.
    res(unsafe { libc::fstat(fd, &mut st) } as i64).map(|_| st)
}

fn stat(p: &CString) -> Result<libc::stat, i32> {
    // SAFETY: as above.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `p` is a NUL-terminated CString and `st` a valid out pointer.
    res(unsafe { libc::stat(p.as_ptr(), &mut st) } as i64).map(|_| st)
}

/// The stat fields both sides must agree on.
fn stat_key(st: &Result<libc::stat, i32>) -> String {
    match st {
        Ok(s) => format!(
            "size={} mode={:o} nlink={}",
            s.st_size, s.st_mode, s.st_nlink
        ),
        Err(e) => errno_name(*e),
    }
}

fn pread(fd: i32, buf: &mut ABuf, off: u64) -> Res {
    // SAFETY: buf is valid for buf.len bytes.
    res(unsafe { libc::pread(fd, buf.ptr.cast(), buf.len, off as i64) } as i64)
}

/// Reads a whole file through `fd` from offset 0 (aligned, so it also works with
/// O_DIRECT), up to `limit` bytes.
fn read_all(fd: i32, limit: u64) -> Result<Vec<u8>, i32> {
    let mut out = Vec::new();
    let mut buf = ABuf::new(1 << 20);
    loop {
        let n = pread(fd, &mut buf, out.len() as u64)? as usize;
        out.extend_from_slice(&buf.as_ref()[..n]);
        if n == 0 || out.len() as u64 > limit {
            return Ok(out);
        }
    }
}

/// The whole contents of the reference file open as `rfd` (also when `rfd` is write-only
/// or the file has no name any more: reopened through /proc/self/fd).
fn ref_content(rfd: i32) -> Result<Vec<u8>, String> {
    let p = cstr(Path::new(&format!("/proc/self/fd/{rfd}")));
    // SAFETY: open/close of a file for reading.
    let fd = res(unsafe { libc::open(p.as_ptr(), libc::O_RDONLY) } as i64)
        .map_err(|e| format!("TESTER: reopening reference fd {rfd}: {}", errno_name(e)))?;
    let d = read_all(fd as i32, MAX_SIZE * 2);
    // SAFETY: `fd` was opened just above and is closed once, here.
    unsafe { libc::close(fd as i32) };
    d.map_err(|e| format!("TESTER: reading reference fd {rfd}: {}", errno_name(e)))
}

/// Where two byte strings first differ, for messages.
fn first_diff(a: &[u8], b: &[u8]) -> String {
    let at = a.iter().zip(b).position(|(x, y)| x != y);
    match at {
        Some(i) => {
            let end = (i + 16).min(a.len()).min(b.len());
            // the length of the differing run, roughly
            let run = a[i..]
                .iter()
                .zip(&b[i..])
                .take_while(|(x, y)| x != y)
                .count();
            format!(
                "first difference at +{i} (differing run {run}+ bytes): mount {:02x?} reference {:02x?}",
                &a[i..end],
                &b[i..end]
            )
        }
        None => format!("lengths differ: mount {} reference {}", a.len(), b.len()),
    }
}

// ---------------------------------------------------------------------------------
// the tester

struct Handle {
    id: u32,
    /// The name it was opened by (it may have been renamed or unlinked since).
    name: &'static str,
    flags: i32,
    mfd: i32,
    rfd: i32,
    /// The reference inode number, so the log shows which handles share a file.
    ino: u64,
}

impl Handle {
    fn readable(&self) -> bool {
        self.flags & libc::O_ACCMODE != libc::O_WRONLY
    }
    fn direct(&self) -> bool {
        self.flags & libc::O_DIRECT != 0
    }
    fn label(&self) -> String {
        format!(
            "h{}({}#{} {})",
            self.id,
            self.name,
            self.ino,
            flags_name(self.flags)
        )
    }
}

struct Fsx {
    config: &'static str,
    base_seed: u64,
    ops: u64,
    rng: Rng,
    mount: Mount,
    _refdir: tempfile::TempDir,
    refroot: PathBuf,
    handles: Vec<Handle>,
    next_id: u32,
    log: Vec<String>,
    skip: HashSet<String>,
    check_every: u64,
    /// BCL_FSX_REVALIDATE=1: stat every descriptor and name after an outside change.
    revalidate: bool,
    ext_changes: u64,
}

type Step = Result<String, String>;

impl Fsx {
    fn mpath(&self, n: &str) -> CString {
        cstr(&self.mount.mnt.join(n))
    }
    fn rpath(&self, n: &str) -> CString {
        cstr(&self.refroot.join(n))
    }
    fn bpath(&self, n: &str) -> CString {
        cstr(&self.mount.backing.join(n))
    }
    fn on(&self, what: &str) -> bool {
        !self.skip.contains(what)
    }
    fn ref_size_fd(&self, fd: i32) -> u64 {
        fstat(fd).map(|s| s.st_size as u64).unwrap_or(0)
    }
    fn ref_exists(&self, n: &str) -> bool {
        stat(&self.rpath(n)).is_ok()
    }

    /// Compares two results; Err describes the mismatch.
    fn same(what: &str, m: &Res, r: &Res) -> Result<(), String> {
        if m == r {
            Ok(())
        } else {
            Err(format!(
                "{what}: mount gave {}, reference gave {}",
                show(m),
                show(r)
            ))
        }
    }

    // ---- random choices ------------------------------------------------------

    fn gen_off(&mut self, size: u64) -> u64 {
        let r = &mut self.rng;
        let off = match r.below(10) {
            0..=2 => r.range(0, size),
            3..=5 => {
                // near a block boundary
                let blocks = (size + (64 << 10)) / 4096 + 1;
                (r.below(blocks) * 4096).saturating_add_signed(r.range(0, 6) as i64 - 3)
            }
            6 | 7 => {
                // near a 64 KiB / 512 KiB / 1 MiB boundary (bucket sizes of the configs)
                let unit = *r.pick(&[64u64 << 10, 512 << 10, 1 << 20]);
                (r.below(MAX_SIZE / unit + 1) * unit)
                    .saturating_add_signed(r.range(0, 8) as i64 - 4)
            }
            _ => (size + r.range(0, 16 << 10)).saturating_sub(8 << 10),
        };
        off.min(MAX_SIZE)
    }

    fn gen_len(&mut self) -> u64 {
        let r = &mut self.rng;
        match r.below(10) {
            0 | 1 => r.range(1, 16),
            2..=4 => r.range(1, 4096),
            5 | 6 => (r.range(1, 40) * 4096).saturating_add_signed(r.range(0, 4) as i64 - 2),
            7 | 8 => r.range(1, 300 << 10),
            _ => r.range(300 << 10, (1 << 20) + 8192),
        }
        .max(1)
    }

    fn gen_size(&mut self) -> u64 {
        let r = &mut self.rng;
        match r.below(6) {
            0 => 0,
            1 => r.range(0, 8192),
            2 => r.range(1, MAX_SIZE / 4096) * 4096,
            _ => r.range(0, MAX_SIZE),
        }
    }

    fn pick_name(&mut self) -> &'static str {
        NAMES[self.rng.below(NAMES.len() as u64) as usize]
    }

    /// An existing name (in the reference), if any.
    fn pick_existing(&mut self) -> Option<&'static str> {
        let have: Vec<&'static str> = NAMES
            .iter()
            .copied()
            .filter(|n| self.ref_exists(n))
            .collect();
        if have.is_empty() {
            None
        } else {
            Some(*self.rng.pick(&have))
        }
    }

    fn pick_handle(&mut self, want: impl Fn(&Handle) -> bool) -> Option<usize> {
        let ok: Vec<usize> = (0..self.handles.len())
            .filter(|&i| want(&self.handles[i]))
            .collect();
        if ok.is_empty() {
            None
        } else {
            Some(*self.rng.pick(&ok))
        }
    }

    // ---- the run -------------------------------------------------------------

    fn run(&mut self) {
        let ops: Vec<(&str, u32)> = OPS.iter().copied().filter(|(n, _)| self.on(n)).collect();
        let total: u32 = ops.iter().map(|o| o.1).sum();
        assert!(total > 0, "every operation is skipped");
        let started = Instant::now();
        for i in 0..self.ops {
            let mut x = self.rng.below(u64::from(total)) as u32;
            let mut op = ops[0].0;
            for (n, w) in &ops {
                if x < *w {
                    op = n;
                    break;
                }
                x -= w;
            }
            let step = self.step(op);
            self.record(i, op, step);
            if (i + 1) % self.check_every == 0 {
                let step = self.full_check();
                self.record(i, "full_check", step);
            }
        }
        let step = self.full_check();
        self.record(self.ops, "full_check", step);
        if self.config.starts_with("writeback") {
            let step = self.flush_and_compare_backing();
            self.record(self.ops, "flush_and_compare_backing", step);
        }
        let ops = self.ops;
        let ext = self.ext_changes;
        let log = self.write_log();
        if self
            .mount
            .backing
            .parent()
            .unwrap()
            .join("ssd.cache")
            .exists()
        {
            let stats = common::stats(&self.mount.mnt);
            let figure = |k: &str| stats[k].to_string();
            eprintln!(
                "fsx {}: cache hits {} misses {} buckets_total {} buckets_invalidated {} stale_pointers {}",
                self.config,
                figure("cache_hits"),
                figure("cache_misses"),
                figure("buckets_total"),
                figure("buckets_invalidated"),
                figure("stale_pointers")
            );
        }
        eprintln!(
            "fsx {}: {ops} ops ({ext} outside changes) passed in {:.1}s; log {}",
            self.config,
            started.elapsed().as_secs_f64(),
            log.display()
        );
    }

    fn record(&mut self, i: u64, op: &str, step: Step) {
        match step {
            Ok(line) => self.log.push(format!("{i:6} {op} {line}")),
            Err(why) => {
                self.log.push(format!("{i:6} {op} MISMATCH: {why}"));
                self.fail(i, &why);
            }
        }
    }

    /// Writes the whole op log under the target directory; returns its path.
    fn write_log(&self) -> PathBuf {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let file = dir.join(format!("fsx-{}-{:#x}.log", self.config, self.base_seed));
        let _ = std::fs::create_dir_all(&dir);
        let _ = std::fs::write(&file, self.log.join("\n") + "\n");
        file
    }

    fn fail(&self, i: u64, why: &str) -> ! {
        let file = self.write_log();
        let tail = self.log.len().saturating_sub(60);
        eprintln!("---- fsx {}: last ops ----", self.config);
        for l in &self.log[tail..] {
            eprintln!("{l}");
        }
        let mut replay = format!(
            "BCL_FSX_SEED={:#x} BCL_FSX_OPS={} BCL_FSX_CONFIG={}",
            self.base_seed,
            i + 1,
            self.config
        );
        for k in [
            "BCL_FSX_EXTERNAL",
            "BCL_FSX_MMAP",
            "BCL_FSX_SKIP",
            "BCL_FSX_CHECK_EVERY",
            "BCL_FSX_REVALIDATE",
        ] {
            if let Ok(v) = std::env::var(k) {
                replay.push_str(&format!(" {k}={v}"));
            }
        }
        panic!(
            "fsx {} mismatch at op {i}: {why}\nfull log: {}\nreplay: {replay} cargo test --test fsx -- --nocapture",
            self.config,
            file.display()
        );
    }

    fn step(&mut self, op: &str) -> Step {
        match op {
            "open" => self.op_open(),
            "close" => self.op_close(),
            "read" => self.op_read(),
            "pread" => self.op_pread(),
            "write" => self.op_write(),
            "pwrite" => self.op_pwrite(),
            "mmap_read" => self.op_mmap_read(),
            "mmap_write" => self.op_mmap_write(),
            "truncate" => self.op_truncate(),
            "ftruncate" => self.op_ftruncate(),
            "fallocate" => self.op_fallocate(),
            "copy_range" => self.op_copy_range(),
            "lseek" => self.op_lseek(),
            "fsync" | "fdatasync" => self.op_fsync(op == "fdatasync"),
            "rename" => self.op_rename(),
            "link" => self.op_link(),
            "unlink" => self.op_unlink(),
            "chmod" => self.op_chmod(),
            "utimes" => self.op_utimes(),
            "stat" => self.op_stat(),
            "fstat" => self.op_fstat(),
            "readdir" => self.op_readdir(),
            "external" => self.op_external(),
            _ => unreachable!("{op}"),
        }
    }

    // ---- descriptors ---------------------------------------------------------

    fn close_handle(&mut self, idx: usize) -> Step {
        let h = self.handles.remove(idx);
        // SAFETY: both descriptors are ours and closed exactly once.
        let m = res(unsafe { libc::close(h.mfd) } as i64);
        // SAFETY: as above: the reference's descriptor, closed once.
        let r = res(unsafe { libc::close(h.rfd) } as i64);
        Self::same("close", &m, &r)?;
        Ok(format!("{} -> {}", h.label(), show(&m)))
    }

    fn op_open(&mut self) -> Step {
        let mut pre = String::new();
        if self.handles.len() >= MAX_HANDLES {
            let i = self.rng.below(self.handles.len() as u64) as usize;
            pre = format!("(closed {}) ", self.close_handle(i)?);
        }
        let name = self.pick_name();
        let r = &mut self.rng;
        let mut flags = match r.below(20) {
            0..=3 => libc::O_RDONLY,
            4..=6 => libc::O_WRONLY,
            _ => libc::O_RDWR,
        };
        if r.pct(40) {
            flags |= libc::O_CREAT;
            if r.pct(10) {
                flags |= libc::O_EXCL;
            }
        }
        let writable = flags & libc::O_ACCMODE != libc::O_RDONLY;
        if writable && r.pct(10) {
            flags |= libc::O_TRUNC;
        }
        if writable && r.pct(15) {
            flags |= libc::O_APPEND;
        } else if r.pct(18) {
            flags |= libc::O_DIRECT;
        }
        // SAFETY: plain open(2) calls on valid C strings.
        let m = res(unsafe { libc::open(self.mpath(name).as_ptr(), flags, 0o644) } as i64);
        // SAFETY: as above, on the reference's path.
        let rr = res(unsafe { libc::open(self.rpath(name).as_ptr(), flags, 0o644) } as i64);
        let line = format!("{pre}{name} {} -> {}", flags_name(flags), show(&m));
        if let (Ok(mfd), Ok(rfd)) = (m, rr) {
            let id = self.next_id;
            self.next_id += 1;
            self.handles.push(Handle {
                id,
                name,
                flags,
                mfd: mfd as i32,
                rfd: rfd as i32,
                ino: fstat(rfd as i32).map(|s| s.st_ino).unwrap_or(0),
            });
            return Ok(format!("{line} h{id}"));
        }
        for fd in [m, rr].into_iter().flatten() {
            // SAFETY: a descriptor we opened just now and did not keep.
            unsafe { libc::close(fd as i32) };
        }
        Self::same(&format!("open {name} {}", flags_name(flags)), &m, &rr)?;
        Ok(line)
    }

    fn op_close(&mut self) -> Step {
        match self.pick_handle(|_| true) {
            Some(i) => self.close_handle(i),
            None => Ok("no handle".into()),
        }
    }

    /// Before sequential I/O on an O_DIRECT handle: an unaligned position (after a short
    /// read at EOF, say) is moved down to a block boundary on both sides, as ext4 needs.
    fn align_position(&self, h: &Handle) -> Result<String, String> {
        // SAFETY: lseek on our descriptors.
        let rpos = unsafe { libc::lseek(h.rfd, 0, libc::SEEK_CUR) };
        // SAFETY: as above, on the mount's descriptor.
        let mpos = unsafe { libc::lseek(h.mfd, 0, libc::SEEK_CUR) };
        Self::same("position (lseek CUR)", &res(mpos), &res(rpos))?;
        if !h.direct() || rpos % ALIGN as i64 == 0 {
            return Ok(String::new());
        }
        let to = rpos & !(ALIGN as i64 - 1);
        // SAFETY: as above.
        let m = res(unsafe { libc::lseek(h.mfd, to, libc::SEEK_SET) });
        // SAFETY: as above, on the reference's descriptor.
        let r = res(unsafe { libc::lseek(h.rfd, to, libc::SEEK_SET) });
        Self::same("aligning lseek", &m, &r)?;
        Ok(format!("(pos {rpos} -> {to}) "))
    }

    fn direct_round(h: &Handle, off: u64, len: u64) -> (u64, u64) {
        if h.direct() {
            let a = ALIGN as u64;
            (off / a * a, len.div_ceil(a) * a)
        } else {
            (off, len)
        }
    }

    fn compare_read(what: &str, m: Res, mb: &ABuf, r: Res, rb: &ABuf) -> Result<(), String> {
        Self::same(what, &m, &r)?;
        if let Ok(n) = m {
            let (a, b) = (&mb.as_ref()[..n as usize], &rb.as_ref()[..n as usize]);
            if a != b {
                return Err(format!("{what}: wrong bytes, {}", first_diff(a, b)));
            }
        }
        Ok(())
    }

    fn op_read(&mut self) -> Step {
        let Some(i) = self.pick_handle(|_| true) else {
            return self.op_open().map(|l| format!("(no handle, so open) {l}"));
        };
        let len = self.gen_len();
        let h = &self.handles[i];
        let pre = self.align_position(h)?;
        let (_, len) = Self::direct_round(h, 0, len);
        let (mut mb, mut rb) = (ABuf::new(len as usize), ABuf::new(len as usize));
        // SAFETY: buffers valid for len bytes.
        let m = res(unsafe { libc::read(h.mfd, mb.ptr.cast(), mb.len) } as i64);
        // SAFETY: as above: `rb` is valid for `rb.len` bytes.
        let r = res(unsafe { libc::read(h.rfd, rb.ptr.cast(), rb.len) } as i64);
        let what = format!("read {} len {len}", h.label());
        Self::compare_read(&what, m, &mb, r, &rb)?;
        let _ = (&mut mb, &mut rb);
        Ok(format!("{pre}{} len {len} -> {}", h.label(), show(&m)))
    }

    fn op_pread(&mut self) -> Step {
        let Some(i) = self.pick_handle(|_| true) else {
            return self.op_open().map(|l| format!("(no handle, so open) {l}"));
        };
        let size = self.ref_size_fd(self.handles[i].rfd);
        let off = self.gen_off(size);
        let len = self.gen_len();
        let h = &self.handles[i];
        let (off, len) = Self::direct_round(h, off, len);
        let (mut mb, mut rb) = (ABuf::new(len as usize), ABuf::new(len as usize));
        let m = pread(h.mfd, &mut mb, off);
        let r = pread(h.rfd, &mut rb, off);
        let what = format!("pread {} off {off} len {len}", h.label());
        Self::compare_read(&what, m, &mb, r, &rb)?;
        Ok(format!("{} off {off} len {len} -> {}", h.label(), show(&m)))
    }

    fn op_write(&mut self) -> Step {
        let Some(i) = self.pick_handle(|_| true) else {
            return self.op_open().map(|l| format!("(no handle, so open) {l}"));
        };
        let mut len = self.gen_len();
        let seed = self.rng.next();
        let h = &self.handles[i];
        self.refresh_append(h);
        let pre = self.align_position(h)?;
        // SAFETY: lseek on our descriptor.
        let pos = if h.flags & libc::O_APPEND != 0 {
            self.ref_size_fd(h.rfd)
        } else {
            // SAFETY: lseek takes plain integers; `h` holds `rfd` open.
            unsafe { libc::lseek(h.rfd, 0, libc::SEEK_CUR) as u64 }
        };
        len = len.min((MAX_SIZE + 8192).saturating_sub(pos)).max(1);
        let (_, len) = Self::direct_round(h, 0, len);
        let data = ABuf::filled(len as usize, seed);
        // SAFETY: data valid for len bytes.
        let m = res(unsafe { libc::write(h.mfd, data.ptr.cast(), data.len) } as i64);
        // SAFETY: as above, on the reference's descriptor.
        let r = res(unsafe { libc::write(h.rfd, data.ptr.cast(), data.len) } as i64);
        Self::same(&format!("write {} len {len}", h.label()), &m, &r)?;
        Ok(format!(
            "{pre}{} at {pos} len {len} -> {}",
            h.label(),
            show(&m)
        ))
    }

    fn op_pwrite(&mut self) -> Step {
        let Some(i) = self.pick_handle(|_| true) else {
            return self.op_open().map(|l| format!("(no handle, so open) {l}"));
        };
        let size = self.ref_size_fd(self.handles[i].rfd);
        let off = self.gen_off(size);
        let len = self
            .gen_len()
            .min((MAX_SIZE + 8192).saturating_sub(off))
            .max(1);
        let seed = self.rng.next();
        let h = &self.handles[i];
        self.refresh_append(h);
        let (off, len) = Self::direct_round(h, off, len);
        let data = ABuf::filled(len as usize, seed);
        // SAFETY: data valid for len bytes.
        let m = res(unsafe { libc::pwrite(h.mfd, data.ptr.cast(), data.len, off as i64) } as i64);
        // SAFETY: as above, on the reference's descriptor.
        let r = res(unsafe { libc::pwrite(h.rfd, data.ptr.cast(), data.len, off as i64) } as i64);
        Self::same(&format!("pwrite {} off {off} len {len}", h.label()), &m, &r)?;
        Ok(format!("{} off {off} len {len} -> {}", h.label(), show(&m)))
    }

    /// An O_APPEND descriptor is fstat()ed before each write, as a program that appends to
    /// a file others change must do on FUSE: the kernel computes an append's position from
    /// the size it has cached and, without FUSE's writeback cache, nothing refreshes it
    /// first, so after an outside growth the position it returns (lseek CUR) is its own
    /// even though the daemon appends the bytes at the backing's real end (`RWF_APPEND`;
    /// tests/coherence.rs checks those bytes without this fstat). A kernel FUSE limit, the
    /// same without a cache. `stale_append` in BCL_FSX_SKIP leaves the fstat out.
    fn refresh_append(&self, h: &Handle) {
        if h.flags & libc::O_APPEND != 0 && self.on("stale_append") {
            let _ = fstat(h.mfd);
        }
    }

    /// fstat of both descriptors; their sizes must agree.
    fn same_size(&self, h: &Handle) -> Result<u64, String> {
        let m = fstat(h.mfd).map(|s| s.st_size as u64);
        let r = fstat(h.rfd).map(|s| s.st_size as u64);
        if m != r {
            return Err(format!(
                "fstat {} size: mount {m:?} reference {r:?}",
                h.label()
            ));
        }
        r.map_err(|e| format!("fstat {}: {}", h.label(), errno_name(e)))
    }

    /// Maps [off, off+len) of both descriptors (offset rounded down to a page) and hands
    /// the two mappings to `f`.
    fn with_maps<T>(
        h: &Handle,
        off: u64,
        len: u64,
        prot: i32,
        f: impl FnOnce(&mut [u8], &mut [u8]) -> T,
    ) -> Result<T, String> {
        let pg = off & !(ALIGN as u64 - 1);
        let maplen = (off + len - pg) as usize;
        let map = |fd| {
            // SAFETY: a fresh shared mapping of our descriptor; unmapped below.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    maplen,
                    prot,
                    libc::MAP_SHARED,
                    fd,
                    pg as i64,
                )
            };
            if p == libc::MAP_FAILED {
                Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
            } else {
                Ok(p)
            }
        };
        let (m, r) = (map(h.mfd), map(h.rfd));
        let out = match (m, r) {
            (Ok(mp), Ok(rp)) => {
                let skip = (off - pg) as usize;
                // SAFETY: both mappings are maplen bytes long and the accessed range lies
                // within the file's size on both sides (checked by the caller), so no
                // access faults past EOF.
                let (ms, rs) = unsafe {
                    (
                        std::slice::from_raw_parts_mut(mp.cast::<u8>().add(skip), len as usize),
                        std::slice::from_raw_parts_mut(rp.cast::<u8>().add(skip), len as usize),
                    )
                };
                Ok(f(ms, rs))
            }
            _ => Err(format!(
                "mmap {}: mount {:?} reference {:?}",
                h.label(),
                m.err().map(errno_name),
                r.err().map(errno_name)
            )),
        };
        for p in [m, r].into_iter().flatten() {
            // SAFETY: mapped above with maplen.
            unsafe { libc::munmap(p, maplen) };
        }
        out
    }

    fn op_mmap_read(&mut self) -> Step {
        let Some(i) = self.pick_handle(|h| h.readable() && !h.direct()) else {
            return Ok("no readable buffered handle".into());
        };
        let size = self.same_size(&self.handles[i])?;
        if size == 0 {
            return Ok(format!("{} empty", self.handles[i].label()));
        }
        let off = self.rng.below(size);
        let len = self.gen_len().min(size - off);
        let h = &self.handles[i];
        let diff = Self::with_maps(h, off, len, libc::PROT_READ, |m, r| {
            (m != r).then(|| first_diff(m, r))
        })?;
        if let Some(d) = diff {
            return Err(format!(
                "mmap read {} off {off} len {len}: wrong bytes, {d}",
                h.label()
            ));
        }
        Ok(format!("{} off {off} len {len}", h.label()))
    }

    fn op_mmap_write(&mut self) -> Step {
        let Some(i) =
            self.pick_handle(|h| h.flags & libc::O_ACCMODE == libc::O_RDWR && !h.direct())
        else {
            return Ok("no read-write buffered handle".into());
        };
        let size = self.same_size(&self.handles[i])?;
        if size == 0 {
            return Ok(format!("{} empty", self.handles[i].label()));
        }
        let off = self.rng.below(size);
        let len = self.gen_len().min(size - off);
        let data = ABuf::filled(len as usize, self.rng.next());
        let h = &self.handles[i];
        let pg = off & !(ALIGN as u64 - 1);
        let synced = Self::with_maps(h, off, len, libc::PROT_READ | libc::PROT_WRITE, |m, r| {
            m.copy_from_slice(data.as_ref());
            r.copy_from_slice(data.as_ref());
            let sync = |s: &mut [u8]| {
                // SAFETY: `s` starts `off - pg` bytes into its mapping (see `with_maps`), so this
                // is the mapping's start.
                let start = unsafe { s.as_mut_ptr().sub((off - pg) as usize) };
                // SAFETY: the start of the mapping and its length.
                res(
                    unsafe { libc::msync(start.cast(), (off + len - pg) as usize, libc::MS_SYNC) }
                        as i64,
                )
            };
            (sync(m), sync(r))
        })?;
        Self::same(&format!("msync {}", h.label()), &synced.0, &synced.1)?;
        // read the range back through the descriptors
        let (mut mb, mut rb) = (ABuf::new(len as usize), ABuf::new(len as usize));
        let m = pread(h.mfd, &mut mb, off);
        let r = pread(h.rfd, &mut rb, off);
        let what = format!("pread after mmap write {} off {off} len {len}", h.label());
        Self::compare_read(&what, m, &mb, r, &rb)?;
        Ok(format!("{} off {off} len {len}", h.label()))
    }

    fn op_truncate(&mut self) -> Step {
        let name = self.pick_name();
        let size = self.gen_size();
        // SAFETY: truncate(2) on valid paths.
        let m = res(unsafe { libc::truncate(self.mpath(name).as_ptr(), size as i64) } as i64);
        // SAFETY: as above, on the reference's path.
        let r = res(unsafe { libc::truncate(self.rpath(name).as_ptr(), size as i64) } as i64);
        Self::same(&format!("truncate {name} {size}"), &m, &r)?;
        Ok(format!("{name} {size} -> {}", show(&m)))
    }

    fn op_ftruncate(&mut self) -> Step {
        let Some(i) = self.pick_handle(|_| true) else {
            return self.op_open().map(|l| format!("(no handle, so open) {l}"));
        };
        let size = self.gen_size();
        let h = &self.handles[i];
        // SAFETY: ftruncate on our descriptors.
        let m = res(unsafe { libc::ftruncate(h.mfd, size as i64) } as i64);
        // SAFETY: as above, on the reference's descriptor.
        let r = res(unsafe { libc::ftruncate(h.rfd, size as i64) } as i64);
        Self::same(&format!("ftruncate {} {size}", h.label()), &m, &r)?;
        Ok(format!("{} {size} -> {}", h.label(), show(&m)))
    }

    fn op_fallocate(&mut self) -> Step {
        let Some(i) = self.pick_handle(|_| true) else {
            return self.op_open().map(|l| format!("(no handle, so open) {l}"));
        };
        let modes: Vec<(&str, i32)> = [
            ("fa_alloc", 0),
            ("fa_keep", libc::FALLOC_FL_KEEP_SIZE),
            (
                "fa_punch",
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            ),
            ("fa_zero", libc::FALLOC_FL_ZERO_RANGE),
        ]
        .into_iter()
        .filter(|(n, _)| self.on(n))
        .collect();
        if modes.is_empty() {
            return Ok("every mode skipped".into());
        }
        let (mname, mode) = *self.rng.pick(&modes);
        let size = self.ref_size_fd(self.handles[i].rfd);
        let off = self.gen_off(size);
        let len = self
            .gen_len()
            .min((MAX_SIZE + 8192).saturating_sub(off))
            .max(1);
        let h = &self.handles[i];
        // SAFETY: fallocate on our descriptors.
        let m = res(unsafe { libc::fallocate(h.mfd, mode, off as i64, len as i64) } as i64);
        // SAFETY: as above, on the reference's descriptor.
        let r = res(unsafe { libc::fallocate(h.rfd, mode, off as i64, len as i64) } as i64);
        Self::same(
            &format!("fallocate {} {mname} off {off} len {len}", h.label()),
            &m,
            &r,
        )?;
        Ok(format!(
            "{} {mname} off {off} len {len} -> {}",
            h.label(),
            show(&m)
        ))
    }

    fn op_copy_range(&mut self) -> Step {
        let Some(a) = self.pick_handle(|h| !h.direct()) else {
            return self.op_open().map(|l| format!("(no handle, so open) {l}"));
        };
        let Some(b) = self.pick_handle(|h| !h.direct()) else {
            return self.op_open().map(|l| format!("(no handle, so open) {l}"));
        };
        let in_size = self.ref_size_fd(self.handles[a].rfd);
        let out_size = self.ref_size_fd(self.handles[b].rfd);
        let off_in = self.gen_off(in_size);
        let off_out = self.gen_off(out_size);
        let len = self
            .gen_len()
            .min((MAX_SIZE + 8192).saturating_sub(off_out))
            .max(1);
        let (ha, hb) = (&self.handles[a], &self.handles[b]);
        // The VFS checks copy_file_range against the sizes the kernel has cached before FUSE
        // sees the call (generic_copy_file_checks), so after an outside growth it copies 0
        // bytes until something refreshes them: a kernel FUSE limit, the same without a cache.
        // cp and friends fstat first; so does this.
        let _ = fstat(ha.mfd);
        let _ = fstat(hb.mfd);
        let copy = |fin: i32, fout: i32| {
            let (mut oi, mut oo) = (off_in as i64, off_out as i64);
            // SAFETY: copy_file_range with explicit offsets on our descriptors.
            res(
                unsafe { libc::copy_file_range(fin, &mut oi, fout, &mut oo, len as usize, 0) }
                    as i64,
            )
        };
        let m = copy(ha.mfd, hb.mfd);
        let r = copy(ha.rfd, hb.rfd);
        let what = format!(
            "copy_file_range {} off {off_in} -> {} off {off_out} len {len}",
            ha.label(),
            hb.label()
        );
        Self::same(&what, &m, &r)?;
        Ok(format!(
            "{} off {off_in} -> {} off {off_out} len {len} -> {}",
            ha.label(),
            hb.label(),
            show(&m)
        ))
    }

    fn op_lseek(&mut self) -> Step {
        let Some(i) = self.pick_handle(|_| true) else {
            return self.op_open().map(|l| format!("(no handle, so open) {l}"));
        };
        let size = self.ref_size_fd(self.handles[i].rfd);
        let r = &mut self.rng;
        let (wname, whence, off): (&str, i32, i64) = match r.below(5) {
            0 => ("SET", libc::SEEK_SET, 0),
            1 => (
                "CUR",
                libc::SEEK_CUR,
                r.range(0, 128 << 10) as i64 - (64 << 10),
            ),
            2 => (
                "END",
                libc::SEEK_END,
                r.range(0, size + (64 << 10)) as i64 - size as i64,
            ),
            3 => ("DATA", libc::SEEK_DATA, 0),
            _ => ("HOLE", libc::SEEK_HOLE, 0),
        };
        let off = if matches!(whence, libc::SEEK_SET | libc::SEEK_DATA | libc::SEEK_HOLE) {
            self.gen_off(size) as i64
        } else {
            off
        };
        let h = &self.handles[i];
        // SAFETY: lseek on our descriptors.
        let m = res(unsafe { libc::lseek(h.mfd, off, whence) });
        // SAFETY: as above, on the reference's descriptor.
        let rr = res(unsafe { libc::lseek(h.rfd, off, whence) });
        let line = format!(
            "{} {wname} {off} -> mount {} reference {}",
            h.label(),
            show(&m),
            show(&rr)
        );
        if !matches!(whence, libc::SEEK_DATA | libc::SEEK_HOLE) {
            Self::same(&format!("lseek {} {wname} {off}", h.label()), &m, &rr)?;
            return Ok(line);
        }
        // SEEK_DATA / SEEK_HOLE: each answer must be consistent with the contents (the
        // reference's, which the mount's must equal); positions may differ.
        let content = ref_content(h.rfd)?;
        let size = content.len() as u64;
        let zero = |a: u64, b: u64| content[a as usize..b as usize].iter().all(|&c| c == 0);
        let off_u = off as u64;
        let check = |side: &str, got: &Res| -> Result<(), String> {
            let bad = |why: &str| {
                Err(format!(
                    "lseek {} {wname} {off} on the {side}: {} {why} (size {size})",
                    h.label(),
                    show(got)
                ))
            };
            match (whence, got) {
                (libc::SEEK_DATA, Ok(p)) => {
                    let p = *p as u64;
                    if p < off_u || p >= size {
                        return bad("is outside [off, size)");
                    }
                    if !zero(off_u, p) {
                        return bad("skips bytes that are not zero");
                    }
                }
                (libc::SEEK_DATA, Err(libc::ENXIO)) => {
                    if off_u < size && !zero(off_u, size) {
                        return bad("but there are non-zero bytes after off");
                    }
                }
                (_, Ok(p)) => {
                    let p = *p as u64;
                    if p < off_u || p > size {
                        return bad("is outside [off, size]");
                    }
                    if p < size && content[p as usize] != 0 {
                        return bad("is a hole holding a non-zero byte");
                    }
                }
                (_, Err(libc::ENXIO)) => {
                    if off_u < size {
                        return bad("but off is inside the file");
                    }
                }
                _ => return bad("is not an answer lseek may give"),
            }
            Ok(())
        };
        check("mount", &m)?;
        check("reference", &rr)?;
        // reading where the mount said must agree; then both positions are made equal
        if let Ok(p) = m {
            let (mut mb, mut rb) = (ABuf::new(ALIGN), ABuf::new(ALIGN));
            let p = if h.direct() {
                p as u64 & !(ALIGN as u64 - 1)
            } else {
                p as u64
            };
            let mr = pread(h.mfd, &mut mb, p);
            let rr2 = pread(h.rfd, &mut rb, p);
            Self::compare_read(
                &format!("pread at the {wname} position {p}"),
                mr,
                &mb,
                rr2,
                &rb,
            )?;
        }
        // SAFETY: lseek on our descriptors.
        let rpos = unsafe { libc::lseek(h.rfd, 0, libc::SEEK_CUR) };
        // SAFETY: lseek on the mount's descriptor, which `h` holds open.
        let set = res(unsafe { libc::lseek(h.mfd, rpos, libc::SEEK_SET) });
        Self::same("lseek SET to the reference's position", &set, &res(rpos))?;
        Ok(line)
    }

    fn op_fsync(&mut self, data: bool) -> Step {
        let Some(i) = self.pick_handle(|_| true) else {
            return self.op_open().map(|l| format!("(no handle, so open) {l}"));
        };
        let h = &self.handles[i];
        // SAFETY: fsync/fdatasync on our descriptors.
        let (m, r) = unsafe {
            if data {
                (libc::fdatasync(h.mfd), libc::fdatasync(h.rfd))
            } else {
                (libc::fsync(h.mfd), libc::fsync(h.rfd))
            }
        };
        let (m, r) = (res(m as i64), res(r as i64));
        Self::same(&format!("fsync {}", h.label()), &m, &r)?;
        Ok(format!("{} -> {}", h.label(), show(&m)))
    }

    fn op_rename(&mut self) -> Step {
        let (a, b) = (self.pick_name(), self.pick_name());
        // SAFETY: rename(2) on valid paths.
        let m = res(unsafe { libc::rename(self.mpath(a).as_ptr(), self.mpath(b).as_ptr()) } as i64);
        // SAFETY: as above, on the reference's paths.
        let r = res(unsafe { libc::rename(self.rpath(a).as_ptr(), self.rpath(b).as_ptr()) } as i64);
        Self::same(&format!("rename {a} {b}"), &m, &r)?;
        Ok(format!("{a} {b} -> {}", show(&m)))
    }

    fn op_link(&mut self) -> Step {
        let (a, b) = (self.pick_name(), self.pick_name());
        // SAFETY: link(2) on valid paths.
        let m = res(unsafe { libc::link(self.mpath(a).as_ptr(), self.mpath(b).as_ptr()) } as i64);
        // SAFETY: as above, on the reference's paths.
        let r = res(unsafe { libc::link(self.rpath(a).as_ptr(), self.rpath(b).as_ptr()) } as i64);
        Self::same(&format!("link {a} {b}"), &m, &r)?;
        Ok(format!("{a} {b} -> {}", show(&m)))
    }

    fn op_unlink(&mut self) -> Step {
        let a = self.pick_name();
        // SAFETY: unlink(2) on valid paths.
        let m = res(unsafe { libc::unlink(self.mpath(a).as_ptr()) } as i64);
        // SAFETY: as above, on the reference's path.
        let r = res(unsafe { libc::unlink(self.rpath(a).as_ptr()) } as i64);
        Self::same(&format!("unlink {a}"), &m, &r)?;
        Ok(format!("{a} -> {}", show(&m)))
    }

    fn op_chmod(&mut self) -> Step {
        let a = self.pick_name();
        let mode = *self
            .rng
            .pick(&[0o644u32, 0o600, 0o755, 0o444, 0o640, 0o666]);
        // SAFETY: chmod(2) on valid paths.
        let m = res(unsafe { libc::chmod(self.mpath(a).as_ptr(), mode) } as i64);
        // SAFETY: as above, on the reference's path.
        let r = res(unsafe { libc::chmod(self.rpath(a).as_ptr(), mode) } as i64);
        Self::same(&format!("chmod {a} {mode:o}"), &m, &r)?;
        let (ms, rs) = (stat(&self.mpath(a)), stat(&self.rpath(a)));
        if stat_key(&ms) != stat_key(&rs) {
            return Err(format!(
                "stat after chmod {a}: mount {} reference {}",
                stat_key(&ms),
                stat_key(&rs)
            ));
        }
        Ok(format!("{a} {mode:o} -> {}", show(&m)))
    }

    fn op_utimes(&mut self) -> Step {
        let by_fd = !self.handles.is_empty() && self.rng.pct(40);
        let gen_time = |r: &mut Rng| -> libc::timespec {
            match r.below(6) {
                0 => libc::timespec {
                    tv_sec: 0,
                    tv_nsec: libc::UTIME_OMIT,
                },
                1 => libc::timespec {
                    tv_sec: 0,
                    tv_nsec: libc::UTIME_NOW,
                },
                _ => libc::timespec {
                    tv_sec: r.range(1_000_000_000, 1_700_000_000) as i64,
                    tv_nsec: r.below(1_000_000_000) as i64,
                },
            }
        };
        let times = [gen_time(&mut self.rng), gen_time(&mut self.rng)];
        let tname = |t: &libc::timespec| match t.tv_nsec {
            libc::UTIME_OMIT => "OMIT".to_string(),
            libc::UTIME_NOW => "NOW".to_string(),
            _ => format!("{}.{:09}", t.tv_sec, t.tv_nsec),
        };
        // the omitted times are checked in the backing (by name only): the kernel's cached
        // atime may be older than the backing's, which reads through the mount update
        let (target, mst, rst, m, r, backing);
        if by_fd {
            let i = self.rng.below(self.handles.len() as u64) as usize;
            let h = &self.handles[i];
            target = h.label();
            let before = fstat(h.mfd);
            // SAFETY: futimens on our descriptors with a two-element array.
            m = res(unsafe { libc::futimens(h.mfd, times.as_ptr()) } as i64);
            // SAFETY: as above, on the reference's descriptor.
            r = res(unsafe { libc::futimens(h.rfd, times.as_ptr()) } as i64);
            mst = (before, fstat(h.mfd));
            rst = fstat(h.rfd);
            backing = None;
        } else {
            let a = self.pick_name();
            target = a.to_string();
            let before = stat(&self.mpath(a));
            let b_before = stat(&self.bpath(a));
            // SAFETY: utimensat on valid paths with a two-element array.
            m = res(unsafe {
                libc::utimensat(libc::AT_FDCWD, self.mpath(a).as_ptr(), times.as_ptr(), 0)
            } as i64);
            // SAFETY: as above, on the reference's path.
            r = res(unsafe {
                libc::utimensat(libc::AT_FDCWD, self.rpath(a).as_ptr(), times.as_ptr(), 0)
            } as i64);
            mst = (before, stat(&self.mpath(a)));
            rst = stat(&self.rpath(a));
            backing = match (b_before, stat(&self.bpath(a))) {
                (Ok(x), Ok(y)) => Some((x, y)),
                _ => None,
            };
        }
        let line = format!(
            "{target} atime {} mtime {} -> {}",
            tname(&times[0]),
            tname(&times[1]),
            show(&m)
        );
        Self::same(&format!("utimens {line}"), &m, &r)?;
        if m.is_err() {
            return Ok(line);
        }
        // the mount's mtime before: in writeback the backing's may be older (the dirty data's
        // mtime waits in the cache), and the flush before the utimens sets it
        let m_before = mst.0.as_ref().ok().map(|b| (b.st_mtime, b.st_mtime_nsec));
        let (Ok(_), Ok(after), Ok(rs)) = (mst.0, mst.1, rst) else {
            // utimensat with both times UTIME_OMIT succeeds without looking the path up
            if mst.1.err() == rst.err() {
                return Ok(format!("{line}; stat {}", stat_key(&rst)));
            }
            return Err(format!(
                "stat after utimens {line}: mount {} reference {}",
                stat_key(&mst.1),
                stat_key(&rst)
            ));
        };
        let fields = [
            (
                "atime",
                &times[0],
                backing.map(|(b, _)| (b.st_atime, b.st_atime_nsec)),
                backing.map(|(_, b)| (b.st_atime, b.st_atime_nsec)),
                (after.st_atime, after.st_atime_nsec),
                (rs.st_atime, rs.st_atime_nsec),
            ),
            (
                "mtime",
                &times[1],
                backing.map(|(b, _)| (b.st_mtime, b.st_mtime_nsec)),
                backing.map(|(_, b)| (b.st_mtime, b.st_mtime_nsec)),
                (after.st_mtime, after.st_mtime_nsec),
                (rs.st_mtime, rs.st_mtime_nsec),
            ),
        ];
        for (fname, t, b_before, b_after, after, refv) in fields {
            match t.tv_nsec {
                libc::UTIME_NOW => {}
                libc::UTIME_OMIT => {
                    // An omitted atime may still move forward: a read the kernel sent
                    // earlier (async readahead) can reach the backing after the utimens,
                    // and relatime then updates it, as any read of the backing would. It
                    // must not go back, nor become one of the times this call set.
                    let read_since = fname == "atime"
                        && matches!((b_before, b_after), (Some(b), Some(a)) if a > b)
                        && times.iter().all(|o| b_after != Some((o.tv_sec, o.tv_nsec)));
                    // the mount's writes reached the backing since (in writeback: its
                    // mtime; under the kernel's write cache the page writeback's own, later)
                    let written_back = fname == "mtime"
                        && b_after.is_some()
                        && (b_after == m_before
                            || (self.config.contains("kernel_write_cache") && b_after > b_before));
                    if b_before != b_after && !read_since && !written_back {
                        return Err(format!(
                            "utimens {line}: omitted {fname} changed in the backing: {b_before:?} -> {b_after:?}"
                        ));
                    }
                }
                _ => {
                    let want = (t.tv_sec, t.tv_nsec);
                    if after != want || refv != want {
                        return Err(format!(
                            "utimens {line}: {fname} is {after:?} on the mount, {refv:?} on the reference, want {want:?}"
                        ));
                    }
                }
            }
        }
        Ok(line)
    }

    fn op_stat(&mut self) -> Step {
        let a = self.pick_name();
        let (m, r) = (stat(&self.mpath(a)), stat(&self.rpath(a)));
        let (mk, rk) = (stat_key(&m), stat_key(&r));
        if mk != rk {
            return Err(format!("stat {a}: mount {mk} reference {rk}"));
        }
        Ok(format!("{a} -> {mk}"))
    }

    fn op_fstat(&mut self) -> Step {
        let Some(i) = self.pick_handle(|_| true) else {
            return self.op_open().map(|l| format!("(no handle, so open) {l}"));
        };
        let h = &self.handles[i];
        let (mk, rk) = (stat_key(&fstat(h.mfd)), stat_key(&fstat(h.rfd)));
        if mk != rk {
            return Err(format!("fstat {}: mount {mk} reference {rk}", h.label()));
        }
        Ok(format!("{} -> {mk}", h.label()))
    }

    fn listing(dir: &Path) -> Result<Vec<String>, String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .map_err(|e| format!("readdir {}: {e}", dir.display()))?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_, _>>()
            .map_err(|e| format!("readdir {}: {e}", dir.display()))?;
        v.sort();
        Ok(v)
    }

    fn op_readdir(&mut self) -> Step {
        let m = Self::listing(&self.mount.mnt)?;
        let r = Self::listing(&self.refroot)?;
        if m != r {
            return Err(format!("readdir: mount {m:?} reference {r:?}"));
        }
        Ok(format!("{m:?}"))
    }

    // ---- outside changes -----------------------------------------------------

    /// Applies `f` to the backing's path and then the reference's path of the same name.
    fn both_outside(&self, name: &str, f: impl Fn(&CString) -> Res) -> Result<i64, String> {
        let b = f(&self.bpath(name));
        let r = f(&self.rpath(name));
        if b != r {
            return Err(format!(
                "TESTER: outside change of {name} gave {} in the backing, {} in the reference",
                show(&b),
                show(&r)
            ));
        }
        b.map_err(|e| format!("TESTER: outside change of {name}: {}", errno_name(e)))
    }

    fn op_external(&mut self) -> Step {
        let kinds: Vec<&str> = [
            "ext_same",
            "ext_grow",
            "ext_shrink",
            "ext_rename",
            "ext_touch",
        ]
        .into_iter()
        .filter(|k| self.on(k))
        .collect();
        if kinds.is_empty() {
            return Ok("every kind skipped".into());
        }
        let Some(name) = self.pick_existing() else {
            return Ok("no file".into());
        };
        let kind = *self.rng.pick(&kinds);
        let st = stat(&self.rpath(name));
        let size = st.map(|s| s.st_size as u64).unwrap_or(0);
        let ino = st.map(|s| s.st_ino).unwrap_or(0);
        let seed = self.rng.next();
        // the change must not share a timestamp tick with the mount's last change
        std::thread::sleep(Duration::from_millis(20));
        let write_at = |p: &CString, off: u64, len: u64, trunc: bool| -> Res {
            let data = ABuf::filled(len as usize, seed);
            let flags = libc::O_WRONLY
                | if trunc {
                    libc::O_TRUNC | libc::O_CREAT
                } else {
                    0
                };
            // SAFETY: open/pwrite/close of a file we own.
            unsafe {
                let fd = res(libc::open(p.as_ptr(), flags, 0o644) as i64)? as i32;
                let n = res(libc::pwrite(fd, data.ptr.cast(), data.len, off as i64) as i64);
                libc::close(fd);
                n
            }
        };
        let what = match kind {
            "ext_same" | "ext_touch" => {
                // rewrite a range (often all) at the same size
                let (off, len) = if size == 0 || self.rng.pct(40) {
                    (0, size)
                } else {
                    let off = self.rng.below(size);
                    (off, self.rng.range(1, size - off))
                };
                let keep_time = kind == "ext_touch";
                self.both_outside(name, |p| {
                    let old = stat(p)?;
                    if len > 0 {
                        write_at(p, off, len, false)?;
                    }
                    if keep_time {
                        let times = [
                            libc::timespec {
                                tv_sec: old.st_atime,
                                tv_nsec: old.st_atime_nsec,
                            },
                            libc::timespec {
                                tv_sec: old.st_mtime,
                                tv_nsec: old.st_mtime_nsec,
                            },
                        ];
                        // SAFETY: utimensat with a two-element array.
                        res(unsafe {
                            libc::utimensat(libc::AT_FDCWD, p.as_ptr(), times.as_ptr(), 0)
                        } as i64)?;
                    }
                    Ok(0)
                })?;
                format!("off {off} len {len}")
            }
            "ext_grow" => {
                let len = self.rng.range(1, (MAX_SIZE - size.min(MAX_SIZE)).max(1));
                self.both_outside(name, |p| write_at(p, size, len, false))?;
                format!("{size} -> {}", size + len)
            }
            "ext_shrink" => {
                let to = self.rng.below(size.max(1));
                // SAFETY: truncate(2) on a valid path.
                self.both_outside(name, |p| {
                    // SAFETY: `p` is a NUL-terminated CString borrowed for the call.
                    res(unsafe { libc::truncate(p.as_ptr(), to as i64) } as i64)
                })?;
                format!("{size} -> {to}")
            }
            _ => {
                let len = self.gen_size();
                let tmp = format!(".tmp-{name}");
                let (bt, rt) = (
                    cstr(&self.mount.backing.join(&tmp)),
                    cstr(&self.refroot.join(&tmp)),
                );
                for (t, p) in [(&bt, self.bpath(name)), (&rt, self.rpath(name))] {
                    write_at(t, 0, len, true)
                        .and_then(|_| {
                            // SAFETY: rename(2) on valid paths.
                            res(unsafe { libc::rename(t.as_ptr(), p.as_ptr()) } as i64)
                        })
                        .map_err(|e| format!("TESTER: replacing {name}: {}", errno_name(e)))?;
                }
                format!("replaced by a new file of {len} bytes")
            }
        };
        self.ext_changes += 1;
        std::thread::sleep(SETTLE);
        if self.revalidate {
            // narrowing aid: what a program polling for changes would do; leaves only
            // the bugs that survive a fresh getattr (the daemon's page invalidation is
            // asynchronous, hence the pause)
            for h in &self.handles {
                let _ = fstat(h.mfd);
            }
            for n in NAMES {
                let _ = stat(&self.mpath(n));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(format!(
            "{kind} {name}#{ino} {what} (then slept {SETTLE:?})"
        ))
    }

    // ---- full comparison -----------------------------------------------------

    fn full_check(&mut self) -> Step {
        // through every descriptor first (a fresh open could hide stale pages)
        for h in &self.handles {
            let (ms, rs) = (fstat(h.mfd), fstat(h.rfd));
            if stat_key(&ms) != stat_key(&rs) {
                return Err(format!(
                    "fstat {}: mount {} reference {}",
                    h.label(),
                    stat_key(&ms),
                    stat_key(&rs)
                ));
            }
            if !h.readable() {
                continue;
            }
            let m = read_all(h.mfd, MAX_SIZE * 2);
            let r = read_all(h.rfd, MAX_SIZE * 2);
            match (&m, &r) {
                (Ok(a), Ok(b)) if a != b => {
                    return Err(format!(
                        "contents through {}: {}",
                        h.label(),
                        first_diff(a, b)
                    ))
                }
                (Ok(_), Ok(_)) => {}
                _ => {
                    return Err(format!(
                        "reading through {}: mount {:?} reference {:?}",
                        h.label(),
                        m.as_ref().err(),
                        r.as_ref().err()
                    ))
                }
            }
        }
        // every name: stat, contents, and which names are links of one inode
        let mut m_ino: BTreeMap<u64, Vec<&'static str>> = BTreeMap::new();
        let mut r_ino: BTreeMap<u64, Vec<&'static str>> = BTreeMap::new();
        for n in NAMES {
            let (ms, rs) = (stat(&self.mpath(n)), stat(&self.rpath(n)));
            if stat_key(&ms) != stat_key(&rs) {
                return Err(format!(
                    "stat {n}: mount {} reference {}",
                    stat_key(&ms),
                    stat_key(&rs)
                ));
            }
            let (Ok(ms), Ok(rs)) = (ms, rs) else { continue };
            m_ino.entry(ms.st_ino).or_default().push(n);
            r_ino.entry(rs.st_ino).or_default().push(n);
            let read = |p: &CString| -> Result<Vec<u8>, i32> {
                // SAFETY: open/close of a file for reading.
                let fd = res(unsafe { libc::open(p.as_ptr(), libc::O_RDONLY) } as i64)? as i32;
                let d = read_all(fd, MAX_SIZE * 2);
                // SAFETY: `fd` was opened just above and is closed once, here.
                unsafe { libc::close(fd) };
                d
            };
            let (m, r) = (read(&self.mpath(n)), read(&self.rpath(n)));
            if m != r {
                return Err(match (&m, &r) {
                    (Ok(a), Ok(b)) => format!("contents of {n} (fresh open): {}", first_diff(a, b)),
                    _ => format!("reading {n}: mount {:?} reference {:?}", m.err(), r.err()),
                });
            }
        }
        let groups = |m: BTreeMap<u64, Vec<&'static str>>| {
            let mut g: Vec<Vec<&'static str>> = m.into_values().collect();
            g.sort();
            g
        };
        let (mg, rg) = (groups(m_ino), groups(r_ino));
        if mg != rg {
            return Err(format!("hard-link groups: mount {mg:?} reference {rg:?}"));
        }
        let listing = self.op_readdir()?;
        Ok(format!(
            "{} handles, names {listing}, links {rg:?}",
            self.handles.len()
        ))
    }
}

impl Fsx {
    /// Writeback: `bcachefs-lite flush`, then the backing itself must equal the reference.
    fn flush_and_compare_backing(&mut self) -> Step {
        let out = std::process::Command::new(common::BIN)
            .arg("flush")
            .arg(&self.mount.mnt)
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!("flush: {}", String::from_utf8_lossy(&out.stderr)));
        }
        for n in NAMES {
            let (b, r) = (
                std::fs::read(self.mount.backing.join(n)).ok(),
                std::fs::read(self.refroot.join(n)).ok(),
            );
            if b != r {
                return Err(match (&b, &r) {
                    (Some(a), Some(b)) => format!("backing {n} after flush: {}", first_diff(a, b)),
                    _ => format!(
                        "backing {n} after flush: exists {} vs {}",
                        b.is_some(),
                        r.is_some()
                    ),
                });
            }
        }
        Ok("backing equal after flush".into())
    }
}

impl Drop for Fsx {
    fn drop(&mut self) {
        for h in self.handles.drain(..) {
            // SAFETY: our descriptors, closed once.
            unsafe {
                libc::close(h.mfd);
                libc::close(h.rfd);
            }
        }
    }
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

fn run_config(name: &str) {
    if let Ok(only) = std::env::var("BCL_FSX_CONFIG") {
        if !only.is_empty() && only != name {
            eprintln!("fsx {name}: not selected (BCL_FSX_CONFIG={only})");
            return;
        }
    }
    let config = CONFIGS.iter().find(|c| c.name == name).unwrap();
    let base_seed = env_u64("BCL_FSX_SEED", 0xf5c0_2024);
    let ops = env_u64("BCL_FSX_OPS", 2000);
    let mut skip: HashSet<String> = std::env::var("BCL_FSX_SKIP")
        .unwrap_or_default()
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    for s in &skip {
        let known = OPS.iter().any(|(n, _)| n == s)
            || s.starts_with("ext_")
            || s.starts_with("fa_")
            || s == "stale_append";
        assert!(known, "BCL_FSX_SKIP: unknown operation {s}");
    }
    if !env_on("BCL_FSX_EXTERNAL") || !config.external {
        skip.insert("external".into());
    }
    if !env_on("BCL_FSX_MMAP") {
        skip.insert("mmap_read".into());
        skip.insert("mmap_write".into());
    }
    let mut rng = Rng(base_seed ^ fnv(name));

    let dir = tempfile::Builder::new()
        .prefix("bcl-fsx")
        .tempdir()
        .unwrap();
    let backing = dir.path().join("backing");
    std::fs::create_dir(&backing).unwrap();
    let refdir = tempfile::Builder::new()
        .prefix("bcl-fsx-ref")
        .tempdir()
        .unwrap();
    let refroot = refdir.path().to_path_buf();
    // the same starting files on both sides: four of the six names
    for n in &NAMES[..4] {
        let len = rng.range(0, MAX_SIZE) as usize;
        let data = ABuf::filled(len, rng.next());
        std::fs::write(backing.join(n), data.as_ref()).unwrap();
        std::fs::write(refroot.join(n), data.as_ref()).unwrap();
    }
    let cache = dir.path().join("ssd.cache");
    let mut options = config
        .options
        .replace("CACHE", &cache.display().to_string());
    if !options.is_empty() {
        options.push(',');
    }
    options.push_str(TTL);
    let mount = Mount::over(dir, backing, &options, &[]);
    eprintln!(
        "fsx {name}: seed {base_seed:#x}, {ops} ops, -o {options}, skip {:?}",
        skip
    );
    let mut fsx = Fsx {
        config: config.name,
        base_seed,
        ops,
        rng,
        mount,
        _refdir: refdir,
        refroot,
        handles: Vec::new(),
        next_id: 0,
        log: Vec::new(),
        skip,
        check_every: env_u64("BCL_FSX_CHECK_EVERY", 100).max(1),
        ext_changes: 0,
        revalidate: !matches!(
            std::env::var("BCL_FSX_REVALIDATE").as_deref(),
            Err(_) | Ok("") | Ok("0")
        ),
    };
    fsx.run();
}

#[test]
fn fsx_nocache() {
    require_fuse!();
    run_config("nocache");
}

#[test]
fn fsx_cache_lru() {
    require_fuse!();
    run_config("lru");
}

#[test]
fn fsx_cache_fifo() {
    require_fuse!();
    run_config("fifo");
}

#[test]
fn fsx_cache_random() {
    require_fuse!();
    run_config("random");
}

#[test]
fn fsx_tiny_cache_reuses_buckets() {
    require_fuse!();
    run_config("tiny");
}

#[test]
fn fsx_cache_without_sequential_cutoff() {
    require_fuse!();
    run_config("seq0");
}

#[test]
fn fsx_metadata_cache_shared() {
    require_fuse!();
    run_config("meta_shared");
}

#[test]
fn fsx_metadata_cache_exclusive() {
    require_fuse!();
    run_config("meta_exclusive");
}

#[test]
fn fsx_cache_mode_writearound() {
    require_fuse!();
    run_config("writearound");
}

#[test]
fn fsx_cache_mode_none() {
    require_fuse!();
    run_config("none");
}

#[test]
fn fsx_cache_mode_writeback() {
    require_fuse!();
    run_config("writeback");
}

#[test]
fn fsx_cache_mode_writeback_held_dirty() {
    require_fuse!();
    run_config("writeback_held");
}

#[test]
fn fsx_cache_mode_writeback_exclusive() {
    require_fuse!();
    run_config("writeback_exclusive");
}

#[test]
fn fsx_kernel_write_cache() {
    require_fuse!();
    run_config("kernel_write_cache");
}

#[test]
fn fsx_writeback_kernel_write_cache() {
    require_fuse!();
    run_config("writeback_kernel_write_cache");
}
