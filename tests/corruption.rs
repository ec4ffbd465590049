//! Whole-file corruption: random bytes flipped anywhere in a cache file that was in use
//! (superblock, journal ring, checkpoints, data), then mount. The mount either recovers and
//! serves only correct bytes, or refuses with a clear message; the daemon never panics.
//! Each round prints its seed; `BCL_CORRUPT_SEED=S BCL_CORRUPT_ROUNDS=1` replays one, and
//! `BCL_CORRUPT_ROUNDS=N` runs more (`make torture` runs 100).

#[macro_use]
mod common;

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{backing_and_cache, knob, pattern, seed_knob, Mount, Rng, BIN};

const FILES: usize = 12;

/// What mounting a corrupted copy came to.
enum Outcome {
    Mounted(std::process::Child),
    Refused(String),
}

fn try_mount(backing: &Path, mnt: &Path, cache: &Path, log: &Path) -> Outcome {
    let mut child = Command::new(BIN)
        .args([
            "mount",
            backing.to_str().unwrap(),
            mnt.to_str().unwrap(),
            "-f",
            "-o",
        ])
        .arg(format!("cache={}", cache.display()))
        .stdin(Stdio::null())
        .stderr(fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if common::is_mounted(mnt) {
            return Outcome::Mounted(child);
        }
        if let Some(status) = child.try_wait().unwrap() {
            let err = fs::read_to_string(log).unwrap();
            assert_ne!(status.code(), Some(101), "the daemon panicked:\n{err}");
            assert!(!err.contains("panicked"), "the daemon panicked:\n{err}");
            return Outcome::Refused(err);
        }
        assert!(
            Instant::now() < deadline,
            "neither mounted nor refused in 30 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_cache_file_with_random_bytes_flipped_recovers_or_refuses_and_never_serves_wrong_bytes() {
    require_fuse!();
    let rounds = knob("BCL_CORRUPT_ROUNDS", 12);
    let first_seed = seed_knob("BCL_CORRUPT_SEED");
    // A cache in use: files read (filled), some rewritten (keys dropped and refilled), a
    // remount (index checkpoint, gens checkpoints).
    let (dir, backing, cache) = backing_and_cache("bcl-corrupt");
    for i in 0..FILES {
        fs::write(
            backing.join(format!("f{i}")),
            pattern(20_000 + i * 9_000, i as u64),
        )
        .unwrap();
    }
    let opts = format!(
        "cache={},cache_size=16M,sequential_cutoff=0",
        cache.display()
    );
    let m = Mount::over(dir, backing.clone(), &opts, &[]);
    for i in 0..FILES {
        fs::read(m.m(&format!("f{i}"))).unwrap();
    }
    for i in (0..FILES).step_by(3) {
        fs::write(m.m(&format!("f{i}")), pattern(30_000, 100 + i as u64)).unwrap();
        fs::read(m.m(&format!("f{i}"))).unwrap();
    }
    let (status, dir) = m.unmount_keep();
    assert!(status.success());
    let m = Mount::over(dir, backing.clone(), &opts, &[]);
    let hits_before = common::stat_u64(&m.mnt, "cache_hits");
    common::drop_caches();
    for i in 0..FILES {
        fs::read(m.m(&format!("f{i}"))).unwrap();
    }
    assert!(
        common::stat_u64(&m.mnt, "cache_hits") > hits_before,
        "the cache serves"
    );
    let (_, dir) = m.unmount_keep();
    let pristine = fs::read(&cache).unwrap();
    let mnt = dir.path().join("mnt");
    let copy = dir.path().join("corrupt.cache");
    let log = dir.path().join("daemon.log");
    let (mut mounted, mut refused) = (0, 0);
    for round in 0..rounds {
        let seed = first_seed.wrapping_add(round);
        eprintln!("round {round}: BCL_CORRUPT_SEED={seed} BCL_CORRUPT_ROUNDS=1");
        let mut rng = Rng(seed);
        let mut bytes = pristine.clone();
        // a few bytes anywhere, and a few in the first 1 MiB (superblock, journal), where
        // one byte matters most; every fourth round one in the superblock itself
        if round % 4 == 3 {
            let at = rng.below(4096) as usize;
            bytes[at] ^= 1 << rng.below(8);
        }
        let flips = 1 + rng.below(16);
        for k in 0..flips {
            let span = if k % 2 == 0 {
                bytes.len()
            } else {
                bytes.len().min(1 << 20)
            };
            let at = rng.below(span as u64) as usize;
            bytes[at] ^= 1 << rng.below(8);
        }
        fs::write(&copy, &bytes).unwrap();
        fs::set_permissions(&copy, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        match try_mount(&backing, &mnt, &copy, &log) {
            Outcome::Refused(err) => {
                refused += 1;
                eprintln!("  refused: {}", err.trim());
                assert!(!err.contains("chmod 600"), "the copy is private");
                let lines: Vec<_> = err.lines().filter(|l| !l.trim().is_empty()).collect();
                assert!(
                    !lines.is_empty() && lines.len() <= 3,
                    "round {round}: a refusal says why in a line or two:\n{err}"
                );
            }
            Outcome::Mounted(mut child) => {
                mounted += 1;
                common::drop_caches();
                for i in 0..FILES {
                    let name = format!("f{i}");
                    assert_eq!(
                        fs::read(mnt.join(&name)).unwrap(),
                        fs::read(backing.join(&name)).unwrap(),
                        "round {round} (seed {seed}): {name} served wrong bytes"
                    );
                }
                common::umount(&mnt);
                let status = common::wait_timeout(&mut child, Duration::from_secs(20))
                    .expect("the daemon exits after unmount");
                let err = fs::read_to_string(&log).unwrap();
                assert!(!err.contains("panicked"), "round {round}: panic:\n{err}");
                assert!(status.success(), "round {round}: exit {status}:\n{err}");
            }
        }
    }
    eprintln!("{rounds} rounds: {mounted} recovered and served correct bytes, {refused} refused");
}
