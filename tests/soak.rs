//! Soak (issue 14, item 5): fio with verify through a mount whose cache is 1/8 of the working
//! set, while the backing is rewritten from outside now and then; zero verify errors, every
//! outside rewrite seen at the next open, and the daemon's RSS and open descriptors bounded
//! (sampled from /proc every few seconds, printed as a table at the end).
//!
//! `BCL_SOAK_SECONDS` (15 in `make test`, `SOAK_SECONDS` = 120 in `make soak`). fio must be
//! installed (`make deps` installs it); as root without fio this fails, it does not skip.
//!
//! Working set: 4 fio jobs (2 random, 2 sequential, reads and writes mixed, `verify=crc32c`
//! with `verify_backlog`, so written blocks are read back and checked all along) on 16 MiB
//! files each, plus 8 files of 256 KiB under `ext/` that fio never touches: every ~2 s a thread
//! reads one of them through the mount (caching it), rewrites it directly in the backing, and
//! reads every one through the mount again, which must return the backing's bytes. The cache
//! is 8 MiB.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{knob, pattern, Mount};

const EXT_FILES: u64 = 8;
const EXT_LEN: usize = 256 << 10;

/// (VmRSS in KiB, open descriptors) of `pid`.
fn sample(pid: u32) -> (u64, usize) {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let fds = fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0);
    (rss, fds)
}

fn fio_job(dir: &Path, seconds: u64) -> String {
    format!(
        "[global]\n\
         directory={}\n\
         size=16m\n\
         ioengine=psync\n\
         bsrange=4k-64k\n\
         verify=crc32c\n\
         verify_backlog=64\n\
         verify_fatal=1\n\
         verify_state_save=0\n\
         time_based\n\
         runtime={seconds}\n\
         [rand]\n\
         rw=randrw\n\
         numjobs=2\n\
         [seq]\n\
         rw=rw\n\
         numjobs=2\n",
        dir.display()
    )
}

#[test]
fn soak_fio_verify_with_outside_rewrites_and_bounded_rss_and_descriptors() {
    require_fuse!();
    let fio = Command::new("fio").arg("--version").output();
    assert!(
        fio.map(|o| o.status.success()).unwrap_or(false),
        "fio is not installed: `make deps` installs it (apt-get install fio)"
    );
    let seconds = knob("BCL_SOAK_SECONDS", 15);
    let (dir, backing, cache) = common::backing_and_cache("bcl-soak");
    fs::create_dir(backing.join("fio")).unwrap();
    fs::create_dir(backing.join("ext")).unwrap();
    for i in 0..EXT_FILES {
        fs::write(backing.join(format!("ext/e{i}")), pattern(EXT_LEN, i)).unwrap();
    }
    let m = Mount::over(
        dir,
        backing.clone(),
        &format!("cache={},cache_size=8M", cache.display()),
        &[],
    );
    let pid = m.pid();
    let job = m.dir.path().join("soak.fio");
    fs::write(&job, fio_job(&m.m("fio"), seconds)).unwrap();

    let done = Arc::new(AtomicBool::new(false));
    // outside rewrites, each checked through the mount at the next open
    let rewriter = {
        let (done, backing, mnt) = (done.clone(), backing.clone(), m.mnt.clone());
        std::thread::spawn(move || {
            let mut gen = vec![0u64; EXT_FILES as usize];
            let (mut rewrites, mut checked) = (0u64, 0u64);
            let mut n = 0u64;
            while !done.load(Ordering::Acquire) {
                let i = (n % EXT_FILES) as usize;
                n += 1;
                // cached just before the rewrite (fio churns the small cache all the time)
                let _ = fs::read(mnt.join(format!("ext/e{i}"))).unwrap();
                gen[i] += 1;
                let want = pattern(EXT_LEN, (gen[i] << 8) | i as u64);
                fs::write(backing.join(format!("ext/e{i}")), &want).unwrap();
                rewrites += 1;
                // the new bytes at the next open, and the untouched files as they were
                for (j, &g) in gen.iter().enumerate() {
                    let expect = if g == 0 {
                        pattern(EXT_LEN, j as u64)
                    } else {
                        pattern(EXT_LEN, (g << 8) | j as u64)
                    };
                    let got = fs::read(mnt.join(format!("ext/e{j}"))).unwrap();
                    assert!(
                        got == expect,
                        "ext/e{j} (generation {g}) read through the mount differs from the backing"
                    );
                    checked += got.len() as u64;
                }
                std::thread::sleep(Duration::from_secs(2));
            }
            (rewrites, checked)
        })
    };
    // the sampler
    let sampler = {
        let done = done.clone();
        std::thread::spawn(move || {
            let start = Instant::now();
            let mut rows = Vec::new();
            while !done.load(Ordering::Acquire) {
                let (rss, fds) = sample(pid);
                rows.push((start.elapsed().as_secs(), rss, fds));
                let until = Instant::now() + Duration::from_secs(3);
                while Instant::now() < until && !done.load(Ordering::Acquire) {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            rows.push((start.elapsed().as_secs(), sample(pid).0, sample(pid).1));
            rows
        })
    };
    let out = Command::new("fio")
        .current_dir(m.dir.path())
        .arg(&job)
        .args(["--output-format=json"])
        .output()
        .expect("run fio");
    done.store(true, Ordering::Release);
    let (rewrites, checked) = rewriter.join().expect("the outside-rewrite checker failed");
    let rows = sampler.join().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "fio failed (verify error?): {stderr}\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let json: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("fio json: {e}: {stderr}"));
    let (mut read, mut written) = (0u64, 0u64);
    for j in json["jobs"].as_array().unwrap() {
        assert_eq!(j["error"], 0, "fio job {} reports an error", j["jobname"]);
        read += j["read"]["io_bytes"].as_u64().unwrap();
        written += j["write"]["io_bytes"].as_u64().unwrap();
    }
    let stats = common::stats(&m.mnt);
    println!("soak: {seconds} s, fio read {read} B (verify reads included), wrote {written} B, 0 verify errors");
    println!("soak: {rewrites} outside rewrites, {checked} B checked through the mount");
    println!(
        "soak: cache state {}, hits {}, misses {}, buckets {}, invalidated {}, io_errors {}",
        stats["state"],
        stats["cache_hits"],
        stats["cache_misses"],
        stats["buckets_total"],
        stats["buckets_invalidated"],
        stats["io_errors"]
    );
    println!("{:>6} {:>10} {:>6}", "t (s)", "RSS (KiB)", "fds");
    for (t, rss, fds) in &rows {
        println!("{t:>6} {rss:>10} {fds:>6}");
    }
    assert_eq!(stats["state"], "active", "{stats}");
    assert!(read > 0 && written > 0);
    assert!(rewrites >= 1 && checked > 0);
    // bounds: a leak grows with time; the first sample is taken just after mount
    let max_rss = rows.iter().map(|r| r.1).max().unwrap();
    let max_fds = rows.iter().map(|r| r.2).max().unwrap();
    let (first_fds, last_fds) = (rows[0].2, rows.last().unwrap().2);
    assert!(max_rss < 256 << 10, "daemon RSS reached {max_rss} KiB");
    assert!(max_fds < 256, "daemon descriptors reached {max_fds}");
    assert!(
        last_fds <= first_fds + 16,
        "descriptors grew from {first_fds} to {last_fds} after fio closed its files"
    );
    if rows.len() >= 6 {
        let third = rows.len() / 3;
        let early = rows[third..2 * third].iter().map(|r| r.1).max().unwrap();
        let late = rows[2 * third..].iter().map(|r| r.1).max().unwrap();
        assert!(
            late <= early + early / 2 + (16 << 10),
            "RSS keeps growing: {early} KiB in the middle third, {late} KiB in the last"
        );
    }
}
