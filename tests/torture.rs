//! Crash torture: a supervisor runs a mixed workload through the mount from several
//! threads (each its own FUSE caller and write point) together with changes made directly in
//! the backing, SIGKILLs the daemon at a random moment, remounts, and checks that the mount
//! serves exactly the backing (names and every byte, from the backing and then from the
//! cache), that `stats` is consistent and that `show-super` reads the cache file.
//!
//! The workload: reads, writes, fsyncs, renames (also over another file), truncates,
//! fallocate (allocate, punch, zero), mmap writes with msync, hard links, and pwrite /
//! truncate / replace directly in the backing, in writethrough, writearound and writeback by
//! turns (after a writeback round the remount flushes first, then checks).
//! Each round prints the seed that replays it
//! (`BCL_TORTURE_SEED=S BCL_TORTURE_ROUNDS=1`); `BCL_TORTURE_ROUNDS` (default 10, 100 in
//! `make torture`) sets the rounds.

#[macro_use]
mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{backing_and_cache, knob, pattern, seed_knob, Mount, Rng, BIN};

const FILES: u64 = 16;
const MAX_LEN: u64 = 1 << 20;
/// Files only the mmap operation touches (never truncated, renamed or changed outside).
const MMAP_FILES: u64 = 3;

/// One operation through the mount (`root` = the mount) or, for `outside`, in the backing.
fn one_op(rng: &mut Rng, root: &Path, outside: bool, buf: &mut [u8]) -> std::io::Result<()> {
    let name = |rng: &mut Rng| root.join(format!("f{}", rng.below(FILES)));
    let p = name(rng);
    let op = rng.below(if outside { 3 } else { 20 });
    match (outside, op) {
        (true, 0) => {
            let f = fs::OpenOptions::new().write(true).open(&p)?;
            f.write_all_at(
                &pattern(1 + rng.below(32 << 10) as usize, rng.next()),
                rng.below(MAX_LEN),
            )?;
        }
        (true, 1) => fs::OpenOptions::new()
            .write(true)
            .open(&p)?
            .set_len(rng.below(MAX_LEN))?,
        (true, _) => {
            // replaced by rename-over, as editors and rsync do
            let tmp = root.join(format!(".new{}", rng.next()));
            fs::write(&tmp, pattern(rng.below(MAX_LEN / 4) as usize, rng.next()))?;
            fs::rename(&tmp, &p)?;
        }
        (false, 0..=7) => {
            let f = fs::File::open(&p)?;
            let len = f.metadata()?.len().max(1);
            let n = 1 + rng.below(buf.len() as u64) as usize;
            let _ = f.read_at(&mut buf[..n], rng.below(len))?;
        }
        (false, 8..=10) => {
            let f = fs::OpenOptions::new().write(true).open(&p)?;
            let data = pattern(1 + rng.below(64 << 10) as usize, rng.next());
            f.write_all_at(&data, rng.below(MAX_LEN))?;
            if rng.below(3) == 0 {
                f.sync_data()?;
            }
        }
        (false, 11) => fs::OpenOptions::new()
            .write(true)
            .open(&p)?
            .set_len(rng.below(MAX_LEN))?,
        (false, 12) => {
            let f = fs::OpenOptions::new().write(true).open(&p)?;
            let modes = [
                0,
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                libc::FALLOC_FL_ZERO_RANGE,
                libc::FALLOC_FL_KEEP_SIZE,
            ];
            let mode = modes[rng.below(4) as usize];
            let (off, len) = (rng.below(MAX_LEN) as i64, 1 + rng.below(128 << 10) as i64);
            // SAFETY: a plain syscall on a descriptor we own.
            let rc = unsafe { libc::fallocate(f.as_raw_fd(), mode, off, len) };
            if rc != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        (false, 13) => {
            // mmap writes + msync in a child process: a page fault on a FUSE mapping whose
            // daemon the supervisor just killed is SIGBUS, which ends the child, not the
            // test. Only files nobody truncates (m*) are mapped: a mapping faults with
            // SIGBUS on any filesystem when another writer shrinks the file under it.
            let p = root.join(format!("m{}", rng.below(MMAP_FILES)));
            let (start, n, byte) = (rng.below(200 << 10), 1 + rng.below(8192), rng.next() as u8);
            let script = "import mmap, sys\n\
                f = open(sys.argv[1], 'r+b')\n\
                m = mmap.mmap(f.fileno(), 0)\n\
                s, n = int(sys.argv[2]), int(sys.argv[3])\n\
                m[s:s + n] = bytes([int(sys.argv[4])]) * n\n\
                m.flush()\n";
            let status = Command::new("/usr/bin/python3")
                .args(["-c", script])
                .arg(&p)
                .args([start.to_string(), n.to_string(), byte.to_string()])
                .stderr(std::process::Stdio::null())
                .status()?;
            if !status.success() {
                return Err(std::io::Error::other(format!("mmap writer: {status}")));
            }
        }
        (false, 14) => {
            let tmp = root.join(format!("t{}", rng.below(FILES)));
            fs::rename(&p, &tmp)?;
            fs::rename(&tmp, name(rng))?; // back under some name, maybe over another file
        }
        (false, 15) => {
            let link = root.join(format!("l{}", rng.below(4)));
            let _ = fs::remove_file(&link);
            fs::hard_link(&p, &link)?;
        }
        (false, 16) => {
            let link = root.join(format!("l{}", rng.below(4)));
            let f = fs::OpenOptions::new().write(true).open(&link)?;
            f.write_all_at(b"through a hard link", rng.below(MAX_LEN / 2))?;
        }
        (false, 17) => {
            let f = fs::OpenOptions::new().append(true).open(&p)?;
            std::io::Write::write_all(&mut &f, &pattern(1 + rng.below(4096) as usize, rng.next()))?;
        }
        (false, _) => fs::File::open(&p)?.sync_all()?,
    }
    Ok(())
}

/// Runs operations until the daemon is gone (through the mount) or `stop` is set (the
/// outside writer, which never sees the crash).
/// Returns how many operations succeeded.
fn worker(
    root: PathBuf,
    outside: bool,
    seed: u64,
    stop: Arc<AtomicBool>,
    through_mount: Arc<AtomicU64>,
) -> u64 {
    let mut rng = Rng(seed);
    let mut buf = vec![0u8; 256 << 10];
    let mut done = 0;
    while !stop.load(Ordering::Relaxed) {
        let r = one_op(&mut rng, &root, outside, &mut buf);
        done += u64::from(r.is_ok());
        if r.is_ok() && !outside {
            through_mount.fetch_add(1, Ordering::Relaxed);
        }
        if let Err(e) = r {
            match e.raw_os_error() {
                Some(libc::ENOTCONN) | Some(libc::ECONNABORTED) => return done, // the daemon died
                _ => {} // ENOENT after a rename, EFBIG, ...: the workload goes on
            }
        }
        if outside {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    done
}

/// Every regular file of `dir` (names starting with a dot are temporaries).
fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        if e.file_type().unwrap().is_file() && !name.starts_with('.') {
            out.insert(name, fs::read(e.path()).unwrap());
        }
    }
    out
}

fn assert_mount_is_backing(m: &Mount, when: &str) {
    let (through, truth) = (tree(&m.mnt), tree(&m.backing));
    assert_eq!(
        through.keys().collect::<Vec<_>>(),
        truth.keys().collect::<Vec<_>>(),
        "names differ {when}"
    );
    for (name, bytes) in &truth {
        let got = &through[name];
        if got != bytes {
            let at = got.iter().zip(bytes).position(|(a, b)| a != b);
            panic!(
                "{name} differs from the backing {when}: {} vs {} bytes, first difference at {at:?}",
                got.len(),
                bytes.len()
            );
        }
    }
}

fn assert_stats_consistent(m: &Mount, when: &str) {
    let s = common::stats(&m.mnt);
    let n = |k: &str| s[k].as_u64().unwrap_or_else(|| panic!("{k} in {s}"));
    assert_eq!(s["state"], "active", "{when}: {s}");
    // `buckets_unused` counts every bucket without data, the free lists and free_inc
    // included (alloc::mark_counts), so those lists fit inside it, and the marks add up
    let lists = n("buckets_free") + n("buckets_free_inc");
    assert!(
        lists <= n("buckets_unused"),
        "{when}: bucket lists exceed the unused buckets: {s}"
    );
    let marks =
        n("buckets_unused") + n("buckets_data") + n("buckets_dirty") + n("buckets_metadata");
    assert_eq!(
        marks,
        n("buckets_total"),
        "{when}: marks do not add up: {s}"
    );
    assert!(
        n("buckets_data") + n("buckets_metadata") <= n("buckets_total"),
        "{when}: {s}"
    );
    assert!(n("cached_bytes") <= n("buckets_total") << 20, "{when}: {s}");
    assert_eq!(
        n("checksum_errors"),
        0,
        "{when}: a cached block failed its crc: {s}"
    );
}

#[test]
fn sigkill_at_random_moments_of_a_mixed_workload_never_serves_a_wrong_byte() {
    require_fuse!();
    let rounds = knob("BCL_TORTURE_ROUNDS", 10);
    let first_seed = seed_knob("BCL_TORTURE_SEED");
    let (mut dir, backing, cache) = backing_and_cache("bcl-torture");
    let opts = format!(
        "cache={},cache_size=24M,sequential_cutoff=0",
        cache.display()
    );
    for i in 0..MMAP_FILES {
        fs::write(backing.join(format!("m{i}")), pattern(256 << 10, 1000 + i)).unwrap();
    }
    for round in 0..rounds {
        let seed = first_seed.wrapping_add(round * 0x1_0000_0001);
        eprintln!("round {round}: BCL_TORTURE_SEED={seed} BCL_TORTURE_ROUNDS=1");
        let mut rng = Rng(seed);
        for i in 0..FILES {
            let p = backing.join(format!("f{i}"));
            if !p.exists() {
                fs::write(&p, pattern(rng.below(MAX_LEN) as usize, rng.next())).unwrap();
            }
        }
        // the workload runs in each cache mode in turn (none leaves the cache file alone,
        // so it has nothing to crash); the check runs in writethrough, reading the cache.
        // Writeback: the dirty data the crash left is replayed, written back (a flush first),
        // and then the mount must equal the backing too (an outside write to a file with
        // dirty data loses to the mount's bytes)
        let mode = ["writethrough", "writearound", "writeback"][round as usize % 3];
        eprintln!("  cache_mode={mode}");
        let m = Mount::over(
            dir,
            backing.clone(),
            &format!("{opts},cache_mode={mode},writeback_delay=0.1"),
            &[],
        );
        let stop = Arc::new(AtomicBool::new(false));
        let ops = Arc::new(AtomicU64::new(0));
        let mut workers: Vec<_> = (0..3)
            .map(|w| {
                let (mnt, s, stop) = (m.mnt.clone(), seed ^ ((w + 1) * 0x9e37), stop.clone());
                let ops = ops.clone();
                std::thread::spawn(move || worker(mnt, false, s, stop, ops))
            })
            .collect();
        let (b, s, st, o) = (backing.clone(), seed ^ 0xb5, stop.clone(), ops.clone());
        workers.push(std::thread::spawn(move || worker(b, true, s, st, o)));
        std::thread::sleep(Duration::from_millis(200 + rng.below(1500)));
        // a loaded machine may have run little so far: the kill waits for 20 operations
        let until = std::time::Instant::now() + Duration::from_secs(60);
        while ops.load(Ordering::Relaxed) < 20 && std::time::Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
        let d = m.crash();
        stop.store(true, Ordering::Relaxed);
        let done: Vec<u64> = workers.into_iter().map(|w| w.join().unwrap()).collect();
        eprintln!("  operations done before the kill (3 through the mount, 1 outside): {done:?}");
        assert!(
            done[..3].iter().sum::<u64>() >= 20,
            "the workload ran: {done:?}"
        );
        let m = Mount::over(d, backing.clone(), &opts, &[]);
        if mode == "writeback" {
            let _ = common::stats(&m.mnt); // waits for the control socket
            let out = Command::new(BIN).arg("flush").arg(&m.mnt).output().unwrap();
            assert!(
                out.status.success(),
                "flush after crash {round}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            common::drop_caches();
        }
        assert_mount_is_backing(&m, &format!("after crash {round} (seed {seed})"));
        common::drop_caches();
        assert_mount_is_backing(
            &m,
            &format!("after crash {round}, from the cache (seed {seed})"),
        );
        assert_stats_consistent(&m, &format!("round {round}"));
        let (status, d) = m.unmount_keep();
        assert!(status.success(), "round {round}: clean unmount");
        let out = Command::new(BIN)
            .args(["show-super", cache.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "show-super: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        dir = d;
    }
}
