//! The settings that make a warm sequential read fast (issue 12), mounted for real: the
//! kernel's readahead window of the mount (`kernel_readahead=`, 1 MiB by default) is set, so
//! a sequential read reaches the daemon in 1 MiB requests (`max_pages` 256); with
//! `kernel_readahead=0` the kernel's 128 KiB window stays and no request is larger, which
//! shows the test can fail. Request sizes come from the daemon's read trace
//! (`BCACHEFS_LITE_TRACE`).

mod common;

use std::fs;
use std::path::Path;

use common::{backing_and_cache, drop_caches, pattern, Daemon, Mount};

/// The bdi readahead window of the FUSE mount at `mnt`, in KiB.
fn read_ahead_kb(mnt: &Path) -> u64 {
    let k = bcachefs_lite::daemon::KernelReadahead::of_mount(mnt).expect("the mount's bdi");
    k.get().expect("read_ahead_kb") / 1024
}

/// Mounts with a read trace, reads a 16 MiB file once with 1 MiB reads, and returns the
/// request sizes the daemon saw.
fn request_sizes(options: &str) -> (Vec<u64>, u64) {
    let (dir, backing, cache) = backing_and_cache("bcl-readspeed");
    let data = pattern(16 << 20, 7);
    fs::write(backing.join("f"), &data).unwrap();
    let trace = dir.path().join("trace");
    let daemon = Daemon {
        env: vec![(
            "BCACHEFS_LITE_TRACE".into(),
            trace.to_string_lossy().into_owned(),
        )],
        ..Daemon::default()
    };
    let mut opts = format!("cache={},cache_size=64M", cache.display());
    if !options.is_empty() {
        opts = format!("{opts},{options}");
    }
    let m = Mount::spawn(dir, backing, &opts, &[], &daemon);
    drop_caches();
    let read = common::sh_ok(
        &format!("dd if={} of=/dev/null bs=1M 2>&1", m.m("f").display()),
        &m.mnt,
    );
    assert!(read.contains("16777216 bytes"), "{read}");
    // read after a request was answered: the daemon sets the window after the INIT
    // handshake and before it serves anything, but the mount is visible before both
    let window = read_ahead_kb(&m.mnt);
    assert_eq!(fs::read(m.m("f")).unwrap(), data);
    // the trace is buffered until the daemon closes it
    let (status, dir) = m.unmount_keep();
    assert!(status.success());
    let text = fs::read_to_string(dir.path().join("trace")).unwrap();
    let sizes = text
        .lines()
        .filter_map(|l| l.split(' ').nth(2)?.parse().ok())
        .collect();
    (sizes, window)
}

#[test]
fn sequential_reads_reach_the_daemon_in_one_mib_requests() {
    let (sizes, window) = request_sizes("");
    assert_eq!(window, 1024, "default kernel_readahead");
    let big = sizes.iter().filter(|&&s| s == 1 << 20).count();
    // a few smaller ones at the start (the first window) are fine; most are full
    assert!(
        big * 2 >= sizes.len() && big >= 8,
        "{big} of {} requests are 1 MiB: {sizes:?}",
        sizes.len()
    );

    // the kernel's default window: no request above 128 KiB
    let (sizes, window) = request_sizes("kernel_readahead=0");
    assert_eq!(
        window, 128,
        "kernel_readahead=0 leaves the kernel's default"
    );
    assert!(
        sizes.iter().all(|&s| s <= 128 << 10),
        "kernel_readahead=0: {sizes:?}"
    );

    let (_, window) = request_sizes("kernel_readahead=4M");
    assert_eq!(window, 4096);
}

/// A small file's open-read-close costs OPEN, READ, FLUSH and RELEASE; a read-only open is
/// answered with FOPEN_NOFLUSH, so its close sends no FLUSH (nothing can be pending on a
/// reader), while a writable handle's close still does (its backing close may report a write
/// error). Counted by the daemon (`flush_requests`).
#[test]
fn a_read_only_close_sends_no_flush_and_a_writable_one_does() {
    let (dir, backing, cache) = backing_and_cache("bcl-noflush");
    for i in 0..20 {
        fs::write(backing.join(format!("f{i}")), pattern(5000, i)).unwrap();
    }
    let m = Mount::over(
        dir,
        backing,
        &format!("cache={},cache_size=64M", cache.display()),
        &[],
    );
    let flushes = || common::stat_u64(&m.mnt, "flush_requests");
    let before = flushes();
    for i in 0..20 {
        assert_eq!(fs::read(m.m(&format!("f{i}"))).unwrap(), pattern(5000, i));
    }
    assert_eq!(flushes(), before, "read-only closes sent FLUSH");
    for i in 0..5 {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .open(m.m(&format!("f{i}")))
            .unwrap();
        std::io::Write::write_all(&mut f, b"x").unwrap();
    }
    assert_eq!(flushes(), before + 5, "writable closes must still flush");
    m.unmount();
}
