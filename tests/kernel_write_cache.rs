//! `-o kernel_write_cache` (FUSE_WRITEBACK_CACHE), mounted for real: small writes stay in
//! the kernel's page cache until a close, fsync or the kernel's own writeback sends them as
//! pages; the mtime the kernel gave them reaches the backing (in writeback mode with the
//! dirty data, without writing it back at close); a writer who does not own the file can
//! close it. The differential tester runs it too (`fsx_kernel_write_cache`,
//! `fsx_writeback_kernel_write_cache`).

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::process::Command;

use common::{pattern, Mount};

fn mtime_ns(m: &fs::Metadata) -> i128 {
    i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec())
}

/// A mount with `kernel_write_cache` and the `extra` options; `prepare` gets the backing
/// directory before the mount (files to start with).
fn mount(prefix: &str, extra: &str, prepare: impl FnOnce(&std::path::Path)) -> Mount {
    let (dir, backing, cache) = common::backing_and_cache(prefix);
    prepare(&backing);
    let opts = format!(
        "cache={},cache_size=64M,kernel_write_cache{extra}",
        cache.display()
    );
    Mount::over(dir, backing, &opts, &[])
}

/// Creates `path` and writes `data` into it 4 KiB at a time; the file stays open.
fn write_in_pages(path: &std::path::Path, data: &[u8]) -> fs::File {
    let mut f = fs::File::create(path).unwrap();
    for chunk in data.chunks(4096) {
        f.write_all(chunk).unwrap();
    }
    f
}

#[test]
fn small_writes_wait_in_the_page_cache_until_the_close() {
    require_fuse!();
    let m = mount("bcl-kwc", "", |_| {});
    let data = pattern(1 << 20, 7);
    let f = write_in_pages(&m.m("f"), &data);
    assert_eq!(
        fs::metadata(m.m("f")).unwrap().len(),
        1 << 20,
        "size through the mount"
    );
    assert!(
        fs::metadata(m.b("f")).unwrap().len() < 1 << 20,
        "every write reached the backing at once: no kernel write cache"
    );
    let reported = mtime_ns(&fs::metadata(m.m("f")).unwrap());
    // the kernel sends its mtime at fsync (at a close or its own inode writeback too, but
    // that one may come later)
    f.sync_all().unwrap();
    assert!(
        fs::read(m.b("f")).unwrap() == data,
        "the backing after the fsync"
    );
    assert_eq!(
        mtime_ns(&fs::metadata(m.b("f")).unwrap()),
        reported,
        "the backing's mtime after the fsync is not the one the mount reported"
    );
    drop(f);
}

#[test]
fn a_writer_who_does_not_own_the_file_can_close_it() {
    require_fuse!();
    let m = mount(
        "bcl-kwc-other",
        ",allow_other,default_permissions",
        |backing| {
            // nobody (uid 65534) must reach the mount point, and may write root's file
            let top = backing.parent().unwrap();
            fs::set_permissions(top, fs::Permissions::from_mode(0o755)).unwrap();
            fs::write(backing.join("shared"), b"").unwrap();
            fs::set_permissions(backing.join("shared"), fs::Permissions::from_mode(0o666)).unwrap();
        },
    );
    // nobody writes root's file; dd fails when its close does
    let out = Command::new("dd")
        .args([
            "if=/dev/zero",
            "bs=4096",
            "count=3",
            "conv=notrunc",
            "status=none",
        ])
        .arg(format!("of={}", m.m("shared").display()))
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the writer's close failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(fs::metadata(m.b("shared")).unwrap().len(), 3 * 4096);
}

#[test]
fn writeback_keeps_the_kernels_mtime_with_the_dirty_data() {
    require_fuse!();
    let m = mount(
        "bcl-kwc-wb",
        ",cache_mode=writeback,writeback_delay=3600",
        |_| {},
    );
    let data = pattern(256 << 10, 8);
    let f = write_in_pages(&m.m("w"), &data);
    let reported = mtime_ns(&fs::metadata(m.m("w")).unwrap());
    f.sync_all().unwrap();
    drop(f);
    // the fsync sent the pages and the kernel's mtime: both wait in the cache
    assert_eq!(
        common::stat_u64(&m.mnt, "dirty_data"),
        256 << 10,
        "the fsync or the close wrote the dirty data back"
    );
    assert_eq!(
        fs::metadata(m.b("w")).unwrap().len(),
        0,
        "the backing has the data"
    );
    assert!(
        fs::read(m.m("w")).unwrap() == data,
        "read back through the mount"
    );
    common::flush(&m.mnt);
    assert!(
        fs::read(m.b("w")).unwrap() == data,
        "the backing after the flush"
    );
    assert_eq!(
        mtime_ns(&fs::metadata(m.b("w")).unwrap()),
        reported,
        "the backing's mtime after the flush is not the one the mount reported"
    );
}
