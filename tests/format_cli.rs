//! Bad-input tests for `format` and `show-super`, run through the built binary: truncated file,
//! wrong magic, flipped bits in the superblock and in a gens checkpoint, a newer version,
//! impossible options, refusing to overwrite.

use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output};

fn bin(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bcachefs-lite"))
        .args(args)
        .output()
        .unwrap()
}

fn stderr_line(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).trim().to_string()
}

fn format_small(p: &Path) {
    let o = bin(&[
        "format",
        p.to_str().unwrap(),
        "--size",
        "80M",
        "--backing",
        "/srv/home/alice",
    ]);
    assert!(o.status.success(), "{}", stderr_line(&o));
}

/// show-super must exit 2 with exactly one line on stderr and never panic.
fn assert_bad(p: &Path, expect: &str) {
    let o = bin(&["show-super", p.to_str().unwrap()]);
    let err = stderr_line(&o);
    assert_eq!(o.status.code(), Some(2), "stderr: {err}");
    assert_eq!(err.lines().count(), 1, "not one line: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains(expect), "expected {expect:?} in {err:?}");
}

fn flip(p: &Path, off: u64, mask: u8) {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(p)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, off).unwrap();
    b[0] ^= mask;
    f.write_all_at(&b, off).unwrap();
}

#[test]
fn format_creates_a_sparse_0600_file_and_show_super_prints_every_field() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("c.cache");
    let o = bin(&[
        "format",
        p.to_str().unwrap(),
        "--size",
        "1G",
        "--bucket-size",
        "512K",
        "--block-size",
        "4K",
        "--journal-size",
        "1M",
        "--replacement",
        "fifo",
        "--no-discard",
    ]);
    assert!(o.status.success(), "{}", stderr_line(&o));
    let m = std::fs::metadata(&p).unwrap();
    assert_eq!(m.permissions().mode() & 0o777, 0o600);
    assert!(m.len() <= 1 << 30 && m.len() > (1 << 30) - (2 << 20));
    assert!(
        m.blocks() * 512 < 1 << 20,
        "not sparse: {} blocks",
        m.blocks()
    );
    let o = bin(&["show-super", p.to_str().unwrap()]);
    assert!(o.status.success());
    let out = String::from_utf8(o.stdout).unwrap();
    for field in [
        "version              1",
        "bucket_size          524288",
        "block_size           4096",
        "journal_size         1048576",
        "replacement          fifo",
        "discard              off",
        "backing              (unbound)",
        "cache_mode           writethrough",
        "gens_checkpoint_seq  1",
    ] {
        assert!(out.contains(field), "missing {field:?} in\n{out}");
    }
    let o = bin(&["show-super", p.to_str().unwrap(), "--json"]);
    assert!(o.status.success());
    let j = String::from_utf8(o.stdout).unwrap();
    assert!(j.starts_with('{') && j.trim_end().ends_with('}'));
    assert!(j.contains("\"nbuckets\":2045"), "{j}");
    assert!(j.contains("\"replacement\":\"fifo\""));
    assert!(j.contains("\"discard\":false"));
    assert!(j.contains("\"backing\":\"\""));
}

#[test]
fn format_refuses_to_overwrite_without_force() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("c.cache");
    format_small(&p);
    let o = bin(&["format", p.to_str().unwrap(), "--size", "80M"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr_line(&o).contains("already a bcachefs-lite cache file"));
    let other = d.path().join("notes.txt");
    std::fs::write(&other, b"precious").unwrap();
    let o = bin(&["format", other.to_str().unwrap(), "--size", "80M"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr_line(&o).contains("not empty"));
    assert_eq!(std::fs::read(&other).unwrap(), b"precious");
    let o = bin(&["format", p.to_str().unwrap(), "--size", "80M", "--force"]);
    assert!(o.status.success(), "{}", stderr_line(&o));
    // An empty file is fine without --force.
    let empty = d.path().join("empty");
    std::fs::write(&empty, b"").unwrap();
    assert!(bin(&["format", empty.to_str().unwrap(), "--size", "80M"])
        .status
        .success());
}

#[test]
fn format_refuses_impossible_options_saying_what_to_change() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("c.cache");
    let ps = p.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["--size", "10M"], "--size"),
        (&["--size", "1G", "--bucket-size", "12K"], "--bucket-size"),
        (
            &["--size", "1G", "--bucket-size", "4K", "--block-size", "8K"],
            "--bucket-size",
        ),
        (&["--size", "1G", "--block-size", "3000"], "--block-size"),
        (
            &["--size", "1G", "--journal-size", "1000"],
            "--journal-size",
        ),
        (&["--size", "70M", "--journal-size", "64M"], "--size"),
    ];
    for (args, hint) in cases {
        let mut a = vec!["format", ps];
        a.extend_from_slice(args);
        let o = bin(&a);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr_line(&o));
        assert!(
            stderr_line(&o).contains(hint),
            "{args:?}: {}",
            stderr_line(&o)
        );
        assert!(!p.exists(), "{args:?} created the file");
    }
    // Malformed values are usage errors (clap exits 2).
    for args in [
        &["--size", "12X"][..],
        &["--size", "1G", "--replacement", "mru"],
    ] {
        let mut a = vec!["format", ps];
        a.extend_from_slice(args);
        assert_eq!(bin(&a).status.code(), Some(2), "{args:?}");
    }
}

#[test]
fn show_super_rejects_a_file_that_is_not_a_cache_file() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("x");
    std::fs::write(&p, vec![0x55u8; 8192]).unwrap();
    assert_bad(&p, "not a bcachefs-lite cache file");
    std::fs::write(&p, b"").unwrap();
    assert_bad(&p, "not a bcachefs-lite cache file");
}

#[test]
fn show_super_rejects_truncated_files() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("c.cache");
    format_small(&p);
    let full = std::fs::metadata(&p).unwrap().len();
    for len in [full - 1, 1 << 20, 4095, 100] {
        let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        f.set_len(len).unwrap();
        assert_bad(&p, "truncated");
    }
    std::fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(5)
        .unwrap();
    assert_bad(&p, "not a bcachefs-lite cache file");
}

#[test]
fn show_super_rejects_flipped_bits_in_the_superblock() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("c.cache");
    format_small(&p);
    // magic, version, crc, geometry, backing, padding
    for (off, expect) in [
        (0u64, "not a bcachefs-lite cache file"),
        (9, "version"),
        (13, "checksum"),
        (40, "checksum"),
        (90, "checksum"),
        (4000, "checksum"),
    ] {
        flip(&p, off, 0x04);
        assert_bad(&p, expect);
        flip(&p, off, 0x04);
        assert!(bin(&["show-super", p.to_str().unwrap()]).status.success());
    }
}

#[test]
fn show_super_reports_a_newer_format_version() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("c.cache");
    format_small(&p);
    let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
    f.write_all_at(&2u32.to_le_bytes(), 8).unwrap();
    assert_bad(&p, "version 2 is not supported");
}

#[test]
fn show_super_rejects_flipped_bits_in_the_only_gens_checkpoint() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("c.cache");
    format_small(&p);
    let o = bin(&["show-super", p.to_str().unwrap(), "--json"]);
    let j = String::from_utf8(o.stdout).unwrap();
    let first: u64 = j
        .split("\"first_bucket_offset\":")
        .nth(1)
        .unwrap()
        .split(',')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    // header byte, an entry byte
    for off in [first + 20, first + 64 + 30] {
        flip(&p, off, 0x01);
        assert_bad(&p, "no valid gens checkpoint");
        flip(&p, off, 0x01);
    }
    // A flipped bit in the journal entry naming it has the same effect.
    flip(&p, 4096 + 40, 0x01);
    assert_bad(&p, "no valid gens checkpoint");
}
