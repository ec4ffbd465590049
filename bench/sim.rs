//! Trace simulator (issue 12): replays block-access traces through the real allocator
//! (`alloc::Allocator`: buckets, gens, prios, free lists, invalidation by lru / fifo / random,
//! gens checkpoints), the real key index (`index::Index`) and the real stream detection
//! (`cache::seq`, for the probation admission), on an in-memory sparse device. No FUSE and no
//! data I/O: a fill allocates sectors and inserts a key exactly as `CacheSet::fill` does, but
//! writes no bytes; a hit is a key whose pin at its gen succeeds (`pin_for_read`, which also
//! refreshes the bucket's prio and promotes a probation bucket).
//!
//! Beside the policies it computes, offline from the whole trace, Belady's OPT for the same
//! capacity at two granularities:
//! * block: the classic MIN over 4 KiB blocks (evict the block used farthest in the future;
//!   a block never used again is not cached), capacity = the data blocks the real allocator
//!   holds at steady state;
//! * bucket: the same capacity in buckets; misses are appended to an open bucket per write
//!   point (as the real allocator does), and when a bucket is needed the one whose *nearest*
//!   next use of any block it holds is farthest away is evicted whole. This is Belady applied
//!   to buckets — a strong reference, not a proven optimum (the exact bucket problem also
//!   chooses placement).
//!
//! Run: `make sim` (writes bench/results/sim.md), or
//! `cargo run --example sim -- [--out FILE] [--quick]`.

use std::collections::{BTreeSet, BinaryHeap, HashMap};
use std::fmt::Write as _;
use std::io;
use std::sync::Arc;
use std::time::Instant;

use bcachefs_lite::alloc::{Allocator, KeyPos, OpenOptions, StepOutcome};
use bcachefs_lite::cache::seq::{Admission, SequentialCutoff};
use bcachefs_lite::device::format::{Geometry, Replacement, Superblock, SECTOR};
use bcachefs_lite::device::CacheDevice;
use bcachefs_lite::index::{Extent, Index};
use parking_lot::Mutex;

const BLOCK: u64 = 4096;
const PAGE: u64 = 4096;

/// How to read the table (the same for every run; the figures are in the table).
const NOTES: &str = "
Reading the table:

- **OPT block vs OPT bucket**: what eviction in whole buckets costs even with perfect knowledge
  of the future. Random 4 KiB reads (the Zipf traces) put hot and cold blocks into the same
  bucket in miss order, so keeping a hot block keeps its cold neighbours; the flatter the skew,
  the more it costs. Sequential traces (scan, loop, recorded) lose nothing: their buckets hold
  runs of one file.
- **OPT bucket vs \"OPT bucket at that\"**: the allocator keeps its free lists and `free_inc`
  stocked and invalidates a batch at a time (as bcache does), so it holds fewer data buckets on
  average than its maximum; OPT at lru's mean occupancy shows how much of the gap is that.
  The rest of lru's gap is recency against knowledge of the future.
- **slru** (every fill on probation, promoted by a hit) is an experiment, not a mount option:
  at bucket granularity it does not beat lru clearly on any trace here, so no fourth
  `replacement=` value was added.
- **loop**: lru and fifo evict exactly the block needed next (0 hits); random keeps some;
  probation keeps the head of the file (the first `probation_after` bytes of each pass are
  normal, the rest on probation) and promotes what a pass hits.
- **recorded** (`tar` + `grep -r` over a 158 MiB tree): `tar` reads file after file, each a
  short run, so stream detection (per file) never puts it on probation; it flushes the crates
  `grep` reads again under every policy. OPT keeps them.
";

/// A sparse in-memory cache device: pages never written read back as zeroes.
struct MemDevice {
    len: u64,
    pages: Mutex<HashMap<u64, Box<[u8]>>>,
}

impl CacheDevice for MemDevice {
    fn pread(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        if off + buf.len() as u64 > self.len {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let pages = self.pages.lock();
        let mut done = 0usize;
        while done < buf.len() {
            let at = off + done as u64;
            let (p, o) = (at / PAGE, (at % PAGE) as usize);
            let n = (PAGE as usize - o).min(buf.len() - done);
            match pages.get(&p) {
                Some(pg) => buf[done..done + n].copy_from_slice(&pg[o..o + n]),
                None => buf[done..done + n].fill(0),
            }
            done += n;
        }
        Ok(())
    }

    fn pwrite(&self, buf: &[u8], off: u64) -> io::Result<()> {
        let mut pages = self.pages.lock();
        let mut done = 0usize;
        while done < buf.len() {
            let at = off + done as u64;
            let (p, o) = (at / PAGE, (at % PAGE) as usize);
            let n = (PAGE as usize - o).min(buf.len() - done);
            let pg = pages
                .entry(p)
                .or_insert_with(|| vec![0u8; PAGE as usize].into_boxed_slice());
            pg[o..o + n].copy_from_slice(&buf[done..done + n]);
            done += n;
        }
        Ok(())
    }

    fn fdatasync(&self) -> io::Result<()> {
        Ok(())
    }

    fn punch_hole(&self, off: u64, len: u64) -> io::Result<()> {
        let mut pages = self.pages.lock();
        let (a, b) = (off.div_ceil(PAGE), (off + len) / PAGE);
        pages.retain(|p, _| *p < a || *p >= b);
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.len)
    }
}

/// One read request: `blocks` blocks of `file` from block `block`, by process `pid`.
#[derive(Clone, Copy, Debug)]
struct Req {
    file: u64,
    block: u64,
    blocks: u32,
    pid: u32,
}

/// The policies simulated with the real allocator.
#[derive(Clone, Copy, PartialEq)]
enum Policy {
    Lru,
    Fifo,
    Random,
    /// lru + streams past 4 MiB cached on probation (the default mount).
    Probation,
    /// Experiment: every fill on probation (SLRU over buckets: a bucket earns the normal
    /// prio only by a hit).
    ProbationAll,
}

impl Policy {
    const ALL: [Policy; 5] = [
        Policy::Lru,
        Policy::Fifo,
        Policy::Random,
        Policy::Probation,
        Policy::ProbationAll,
    ];
    fn name(self) -> &'static str {
        match self {
            Policy::Lru => "lru",
            Policy::Fifo => "fifo",
            Policy::Random => "random",
            Policy::Probation => "lru+probation (default)",
            Policy::ProbationAll => "slru (all fills on probation)",
        }
    }
}

struct Geo {
    nbuckets: u64,
    bucket: u32,
}

impl Geo {
    fn blocks_per_bucket(&self) -> u64 {
        u64::from(self.bucket) / BLOCK
    }
}

fn open_cache(geo: &Geo, rep: Replacement) -> Allocator {
    let b = u64::from(geo.bucket);
    let journal = 1u64 << 20;
    let first = (4096 + journal).div_ceil(b) * b;
    let g = Geometry {
        size: first + geo.nbuckets * b,
        bucket_size: geo.bucket,
        block_size: BLOCK as u32,
        journal_size: Some(journal),
        replacement: rep,
        discard: true,
        ..Geometry::default()
    };
    let sb = Superblock::new_for(&g, [0x5a; 16], 0).expect("geometry");
    let dev = Arc::new(MemDevice {
        len: sb.file_size().expect("size"),
        pages: Mutex::new(HashMap::new()),
    });
    Allocator::format_device(&*dev, &sb).expect("format");
    let a = Allocator::open_device(
        dev,
        OpenOptions {
            start_allocator: false,
            ..Default::default()
        },
    )
    .expect("open");
    let r = a.gc_begin();
    a.gc_finish(r).expect("gc");
    a
}

/// GC as `cache/gc.rs` runs it: drop stale keys, report live sectors and oldest gens.
fn gc(a: &Allocator, index: &Index) {
    let mut report = a.gc_begin();
    index.retain(|_, e| report.is_live(e.ptr.bucket, e.ptr.gen));
    index.for_each_extent(|_, e| {
        report.add_key(e.ptr.bucket, e.ptr.gen, (e.len / SECTOR) as u32, e.dirty);
    });
    a.gc_finish(report).expect("gc finish");
}

/// What the background allocator thread and GC thread would do, run on demand.
fn refill(a: &Allocator, index: &Index) {
    match a.allocator_run_until_idle(64).expect("allocator") {
        StepOutcome::NeedsGc | StepOutcome::WaitingForGc => {
            gc(a, index);
            a.allocator_run_until_idle(64).expect("allocator");
        }
        _ => {}
    }
}

struct Outcome {
    hits: u64,
    accesses: u64,
    /// Mean number of buckets holding data, sampled every 64 requests after the first fill:
    /// the allocator keeps free lists and `free_inc` stocked and invalidates in batches, so
    /// it holds less than its steady-state maximum most of the time.
    mean_data: f64,
}

impl Outcome {
    fn ratio(&self) -> f64 {
        self.hits as f64 / self.accesses.max(1) as f64
    }
}

/// Replays `trace` through the real allocator and index with `policy`.
fn replay(geo: &Geo, policy: Policy, trace: &[Req]) -> Outcome {
    let rep = match policy {
        Policy::Lru | Policy::Probation | Policy::ProbationAll => Replacement::Lru,
        Policy::Fifo => Replacement::Fifo,
        Policy::Random => Replacement::Random,
    };
    let a = open_cache(geo, rep);
    let index = Index::new(BLOCK as u32);
    let probation_after = match policy {
        Policy::Probation => bcachefs_lite::cache::DEFAULT_PROBATION_AFTER,
        Policy::ProbationAll => 1,
        _ => 0,
    };
    let seq = SequentialCutoff::new(0, probation_after);
    let mut out = Outcome {
        hits: 0,
        accesses: 0,
        mean_data: 0.0,
    };
    let (mut samples, mut sum, mut full) = (0u64, 0u64, false);
    for (i, r) in trace.iter().enumerate() {
        if i % 64 == 0 {
            let data = a.mark_counts()[1] as u64;
            full |= a.stats().invalidated > 0;
            if full {
                samples += 1;
                sum += data;
            }
        }
        let (off, len) = (r.block * BLOCK, u64::from(r.blocks) * BLOCK);
        let probation = seq.admit(r.pid, r.file, off, len) == Admission::Probation;
        let mut have: Vec<(u64, u64)> = Vec::new();
        for ext in index.lookup(r.file, off, len) {
            if a.pin_for_read(ext.ptr.bucket, ext.ptr.gen).expect("pin") {
                a.unpin(ext.ptr.bucket).expect("unpin");
                have.push((ext.offset, ext.end()));
            } else {
                index.remove_if_matches(r.file, ext.offset, ext.ptr);
            }
        }
        let hit: u64 = have.iter().map(|(s, e)| (e - s) / BLOCK).sum();
        out.hits += hit;
        out.accesses += u64::from(r.blocks);
        // the gaps, filled as CacheSet::fill does
        let mut at = off;
        let mut gaps = Vec::new();
        for &(s, e) in &have {
            if s > at {
                gaps.push((at, s));
            }
            at = at.max(e);
        }
        if at < off + len {
            gaps.push((at, off + len));
        }
        for (s, e) in gaps {
            let mut pos = s;
            let mut tries = 0;
            while pos < e {
                let key = KeyPos {
                    file: r.file,
                    offset: pos / SECTOR,
                };
                let want = ((e - pos) / SECTOR) as u32;
                let wp = u64::from(r.pid);
                let got = if probation {
                    a.alloc_sectors_probation(key, want, wp, false)
                } else {
                    a.alloc_sectors(key, want, wp, false)
                };
                match got {
                    Ok((ptr, granted)) => {
                        let n = u64::from(granted) * SECTOR;
                        index.insert(
                            r.file,
                            Extent {
                                offset: pos,
                                len: n,
                                ptr,
                                crcs: vec![0u32; (n / BLOCK) as usize].into_boxed_slice(),
                                dirty: false,
                            },
                        );
                        a.key_inserted(ptr).expect("key inserted");
                        pos += n;
                    }
                    Err(bcachefs_lite::Error::NoFreeBucket) if tries < 4 => {
                        tries += 1;
                        refill(&a, &index);
                    }
                    Err(bcachefs_lite::Error::NoFreeBucket) => break,
                    Err(e) => panic!("alloc: {e}"),
                }
            }
        }
    }
    a.check_invariants().expect("allocator invariants");
    out.mean_data = sum as f64 / samples.max(1) as f64;
    out
}

/// The data buckets the real allocator holds at steady state (the rest are its free lists,
/// `free_inc`, the gens checkpoint and open buckets): OPT gets the same capacity.
fn data_capacity(geo: &Geo) -> u64 {
    let a = open_cache(geo, Replacement::Lru);
    let index = Index::new(BLOCK as u32);
    let bpb = geo.blocks_per_bucket();
    let mut max_data = 0;
    for i in 0..geo.nbuckets * bpb * 3 {
        let key = KeyPos {
            file: 1,
            offset: i * BLOCK / SECTOR,
        };
        let (ptr, _) = loop {
            match a.alloc_sectors(key, (BLOCK / SECTOR) as u32, 1, false) {
                Ok(x) => break x,
                Err(_) => refill(&a, &index),
            }
        };
        index.insert(
            1,
            Extent {
                offset: i * BLOCK,
                len: BLOCK,
                ptr,
                crcs: vec![0].into_boxed_slice(),
                dirty: false,
            },
        );
        a.key_inserted(ptr).expect("inserted");
        if i % bpb == 0 {
            max_data = max_data.max(a.mark_counts()[1] as u64);
        }
    }
    max_data
}

/// Flattened block ids and, for each access, the index of the next access to the same
/// block (`usize::MAX`: never again).
fn next_uses(trace: &[Req]) -> (Vec<(u64, u64, u32)>, Vec<usize>) {
    let mut flat = Vec::new();
    for r in trace {
        for i in 0..u64::from(r.blocks) {
            flat.push((r.file, r.block + i, r.pid));
        }
    }
    let mut next = vec![usize::MAX; flat.len()];
    let mut last: HashMap<(u64, u64), usize> = HashMap::new();
    for i in (0..flat.len()).rev() {
        let k = (flat[i].0, flat[i].1);
        if let Some(&j) = last.get(&k) {
            next[i] = j;
        }
        last.insert(k, i);
    }
    (flat, next)
}

/// Belady's MIN over blocks with `cap` blocks.
fn opt_block(flat: &[(u64, u64, u32)], next: &[usize], cap: usize) -> u64 {
    let mut resident: HashMap<(u64, u64), usize> = HashMap::new(); // block -> its next use
    let mut heap: BinaryHeap<(usize, (u64, u64))> = BinaryHeap::new();
    let mut hits = 0;
    for (i, &(f, b, _)) in flat.iter().enumerate() {
        let k = (f, b);
        let nu = next[i];
        if resident.contains_key(&k) {
            hits += 1;
        } else if nu == usize::MAX {
            continue; // never used again: not cached
        } else if resident.len() >= cap {
            // evict the farthest next use, lazily skipping outdated heap entries; the new
            // block itself competes (MIN with bypass)
            loop {
                let &(far, victim) = heap.peek().expect("heap");
                if resident.get(&victim) != Some(&far) {
                    heap.pop();
                    continue;
                }
                if far > nu {
                    heap.pop();
                    resident.remove(&victim);
                }
                break;
            }
            if resident.len() >= cap {
                continue; // the new block is the farthest: bypass
            }
        }
        if nu == usize::MAX {
            resident.remove(&k);
        } else {
            resident.insert(k, nu);
            heap.push((nu, k));
        }
    }
    hits
}

/// Belady applied to buckets (see the module header) with `cap` buckets.
fn opt_bucket(flat: &[(u64, u64, u32)], next: &[usize], cap: usize, bpb: usize) -> u64 {
    // block -> (bucket, its next use); bucket -> set of (next use, block) of live blocks
    let mut where_: HashMap<(u64, u64), (usize, usize)> = HashMap::new();
    let mut buckets: Vec<BTreeSet<(usize, (u64, u64))>> = Vec::new();
    let mut fill: Vec<usize> = Vec::new(); // blocks appended to each bucket
    let mut free: Vec<usize> = Vec::new();
    let mut open: HashMap<u32, usize> = HashMap::new(); // write point -> open bucket
    let mut closed: BTreeSet<(usize, usize)> = BTreeSet::new(); // (nearest next use, bucket)
    let mut live = 0usize;
    let near = |s: &BTreeSet<(usize, (u64, u64))>| s.first().map_or(usize::MAX, |x| x.0);
    let mut hits = 0;
    for (i, &(f, b, pid)) in flat.iter().enumerate() {
        let k = (f, b);
        let nu = next[i];
        if let Some(&(bk, old)) = where_.get(&k) {
            hits += 1;
            let was = near(&buckets[bk]);
            buckets[bk].remove(&(old, k));
            if nu != usize::MAX {
                buckets[bk].insert((nu, k));
                where_.insert(k, (bk, nu));
            } else {
                where_.remove(&k);
            }
            if closed.remove(&(was, bk)) {
                closed.insert((near(&buckets[bk]), bk));
            }
            continue;
        }
        if nu == usize::MAX {
            continue; // never used again
        }
        // append to the write point's open bucket; a new one when it is full
        let ob = match open.get(&pid) {
            Some(&o) if fill[o] < bpb => o,
            prev => {
                if let Some(&o) = prev {
                    closed.insert((near(&buckets[o]), o));
                    open.remove(&pid);
                }
                if live >= cap {
                    // evict the closed bucket whose nearest next use is farthest, unless the
                    // new block's is farther still (then bypass)
                    match closed.last().copied() {
                        Some((far, victim)) if far > nu => {
                            closed.remove(&(far, victim));
                            for &(_, blk) in &buckets[victim] {
                                where_.remove(&blk);
                            }
                            buckets[victim].clear();
                            free.push(victim);
                            live -= 1;
                        }
                        _ => continue,
                    }
                }
                let o = free.pop().unwrap_or_else(|| {
                    buckets.push(BTreeSet::new());
                    fill.push(0);
                    buckets.len() - 1
                });
                fill[o] = 0;
                live += 1;
                open.insert(pid, o);
                o
            }
        };
        buckets[ob].insert((nu, k));
        fill[ob] += 1;
        where_.insert(k, (ob, nu));
    }
    hits
}

/// xorshift64*.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Zipf(s) over `n` items, each rank placed at a random block of file `file`.
struct Zipf {
    cdf: Vec<f64>,
    place: Vec<u64>,
}

impl Zipf {
    fn new(n: usize, s: f64, rng: &mut Rng) -> Zipf {
        let mut cdf = Vec::with_capacity(n);
        let mut sum = 0.0;
        for i in 1..=n {
            sum += 1.0 / (i as f64).powf(s);
            cdf.push(sum);
        }
        for c in &mut cdf {
            *c /= sum;
        }
        let mut place: Vec<u64> = (0..n as u64).collect();
        for i in (1..n).rev() {
            let j = (rng.next() % (i as u64 + 1)) as usize;
            place.swap(i, j);
        }
        Zipf { cdf, place }
    }
    fn sample(&self, rng: &mut Rng) -> u64 {
        let u = rng.unit();
        let i = self.cdf.partition_point(|&c| c < u).min(self.cdf.len() - 1);
        self.place[i]
    }
}

fn zipf_trace(items: usize, s: f64, n: usize, seed: u64) -> Vec<Req> {
    let mut rng = Rng(seed);
    let z = Zipf::new(items, s, &mut rng);
    (0..n)
        .map(|_| Req {
            file: 1,
            block: z.sample(&mut rng),
            blocks: 1,
            pid: 1,
        })
        .collect()
}

/// A hot Zipf set that fits the cache (pid 1), then a sequential scan of 4 x the cache in
/// 128 KiB reads by another process (pid 2) interleaved with it, then the hot set alone.
fn scan_trace(cap_blocks: u64, n: usize, seed: u64) -> Vec<Req> {
    let mut rng = Rng(seed);
    let z = Zipf::new((cap_blocks / 2) as usize, 0.9, &mut rng);
    let hot = |rng: &mut Rng| Req {
        file: 1,
        block: z.sample(rng),
        blocks: 1,
        pid: 1,
    };
    let mut t: Vec<Req> = (0..n / 2).map(|_| hot(&mut rng)).collect();
    let scan_reqs = 4 * cap_blocks / 32;
    for i in 0..scan_reqs {
        t.push(Req {
            file: 2,
            block: i * 32,
            blocks: 32,
            pid: 2,
        });
        for _ in 0..2 {
            t.push(hot(&mut rng));
        }
    }
    t.extend((0..n / 2).map(|_| hot(&mut rng)));
    t
}

/// One process reading a file 10 % larger than the cache, sequentially, `passes` times.
fn loop_trace(cap_blocks: u64, passes: u32) -> Vec<Req> {
    let len = cap_blocks * 11 / 10;
    let mut t = Vec::new();
    for _ in 0..passes {
        for i in 0..len.div_ceil(32) {
            t.push(Req {
                file: 3,
                block: i * 32,
                blocks: 32.min((len - i * 32) as u32),
                pid: 1,
            });
        }
    }
    t
}

/// A trace recorded through the mount with `BCACHEFS_LITE_TRACE` (`FILE_ID OFFSET LEN PID` a line,
/// bytes), as block requests. The file may be gzip'd by name (`.gz`: read through `gzip -dc`).
fn recorded_trace(path: &str) -> io::Result<Vec<Req>> {
    let text = if path.ends_with(".gz") {
        let out = std::process::Command::new("gzip")
            .args(["-dc", path])
            .output()?;
        String::from_utf8_lossy(&out.stdout).into_owned()
    } else {
        std::fs::read_to_string(path)?
    };
    let mut t = Vec::new();
    for line in text.lines() {
        let v: Vec<u64> = line
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        if v.len() != 4 || v[2] == 0 {
            continue;
        }
        let (a, b) = (v[1] / BLOCK, (v[1] + v[2]).div_ceil(BLOCK));
        t.push(Req {
            file: v[0],
            block: a,
            blocks: (b - a) as u32,
            pid: v[3] as u32,
        });
    }
    Ok(t)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let out_path = args
        .iter()
        .position(|a| a == "--out")
        .and_then(|i| args.get(i + 1).cloned());
    let trace_path = args
        .iter()
        .position(|a| a == "--trace")
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| "bench/traces/tar-grep.trace.gz".into());
    let started = Instant::now();
    let geo = Geo {
        nbuckets: 128,
        bucket: 256 << 10,
    };
    let bpb = geo.blocks_per_bucket();
    let cap_buckets = data_capacity(&geo);
    let cap_blocks = cap_buckets * bpb;
    let n = if quick { 60_000 } else { 200_000 };
    let mut traces: Vec<(String, Vec<Req>)> = Vec::new();
    for s in [0.8, 1.0, 1.2] {
        traces.push((
            format!("zipf s={s} over 4x cache"),
            zipf_trace((4 * cap_blocks) as usize, s, n, 0x1234 + (s * 10.0) as u64),
        ));
    }
    traces.push((
        "zipf 0.9 hot set (cache/2) + 4x-cache scan".into(),
        scan_trace(cap_blocks, n, 0x77),
    ));
    traces.push((
        "loop 1.1x cache, 6 passes".into(),
        loop_trace(cap_blocks, if quick { 3 } else { 6 }),
    ));
    match recorded_trace(&trace_path) {
        Ok(t) if !t.is_empty() => traces.push((format!("recorded: {trace_path}"), t)),
        Ok(_) => eprintln!("{trace_path}: empty; skipped"),
        Err(e) => eprintln!("{trace_path}: {e}; skipped"),
    }

    let mut md = String::new();
    let _ = writeln!(
        md,
        "# Trace simulator (`make sim`, bench/sim.rs)\n\n\
         Real allocator, index and stream detection on an in-memory device; {} buckets of {} KiB \
         ({} blocks of 4 KiB each), of which {} hold data at steady state (the rest: free lists, \
         free_inc, gens checkpoint, open buckets). OPT gets the same {} buckets / {} blocks. \
         Hit ratio = block hits / block accesses; in parentheses the ratio to bucket-granular OPT.\n",
        geo.nbuckets,
        geo.bucket >> 10,
        bpb,
        cap_buckets,
        cap_buckets,
        cap_blocks
    );
    let mut head = String::from("| trace | accesses | footprint |");
    let mut rule = String::from("| --- | ---: | ---: |");
    for p in Policy::ALL {
        let _ = write!(head, " {} |", p.name());
        rule.push_str(" ---: |");
    }
    head.push_str(" OPT bucket | OPT block | lru's mean data buckets | OPT bucket at that |");
    rule.push_str(" ---: | ---: | ---: | ---: |");
    let _ = writeln!(md, "{head}\n{rule}");
    for (name, t) in &traces {
        let (flat, next) = next_uses(t);
        let footprint = {
            let mut s: Vec<(u64, u64)> = flat.iter().map(|x| (x.0, x.1)).collect();
            s.sort_unstable();
            s.dedup();
            s.len()
        };
        let total = flat.len() as u64;
        let ob = opt_bucket(&flat, &next, cap_buckets as usize, bpb as usize) as f64 / total as f64;
        let ok = opt_block(&flat, &next, cap_blocks as usize) as f64 / total as f64;
        let mut row = format!("| {name} | {total} | {footprint} |");
        let mut lru_mean = cap_buckets as f64;
        for p in Policy::ALL {
            let o = replay(&geo, p, t);
            if p == Policy::Lru {
                lru_mean = o.mean_data;
            }
            let r = o.ratio();
            let _ = write!(row, " {:.3} ({:.2}) |", r, r / ob.max(1e-9));
        }
        let at_mean =
            opt_bucket(&flat, &next, lru_mean.round() as usize, bpb as usize) as f64 / total as f64;
        let _ = write!(row, " {ob:.3} | {ok:.3} | {lru_mean:.1} | {at_mean:.3} |");
        eprintln!("{row}");
        let _ = writeln!(md, "{row}");
    }
    md.push_str(NOTES);
    let _ = writeln!(
        md,
        "\nTook {:.0} s (debug build, shared CPU).",
        started.elapsed().as_secs_f64()
    );
    match out_path {
        Some(p) => {
            std::fs::write(&p, &md).expect("write results");
            eprintln!("wrote {p}");
        }
        None => print!("{md}"),
    }
}
