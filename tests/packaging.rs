//! Installing and mounting the way users do: `make install` into a temporary
//! prefix, the mount(8) helper, `mount -t fuse.bcachefs-lite`, fstab files with
//! `mount -T`, the Debian package (`make deb`, `dpkg -i`, `dpkg -r`), and the man
//! pages against the options the CLI really accepts.
//!
//! Tests that need the helper in /sbin (mount(8) looks nowhere else) or install the
//! package take a lock (in this process and across processes), put only their own
//! files there and remove them afterwards, also when an assertion fails. They skip
//! when a bcachefs-lite helper or package they did not install is already present.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use bcachefs_lite::options::{MountOptions, IGNORED_PREFIXES, KNOWN_OPTIONS};
use common::{is_mounted, sh, umount_lazy, BIN};

const HELPER: &str = "mount.fuse.bcachefs-lite";
const SBIN_HELPER: &str = "/sbin/mount.fuse.bcachefs-lite";

/// Options the man page documents ahead of the code (none now).
const PENDING_CACHE_OPTIONS: &[&str] = &[];

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn run(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn run_ok(cmd: &mut Command) -> String {
    let desc = format!("{cmd:?}");
    let (code, out, err) = run(cmd);
    assert_eq!(code, 0, "{desc} failed:\n{out}\n{err}");
    out
}

fn make(args: &[&str]) -> Command {
    let mut cmd = Command::new("make");
    cmd.arg("--no-print-directory")
        .args(args)
        .current_dir(repo());
    cmd
}

/// Lazily unmounts, on drop, the mount points this test mounted.
struct Unmount(Vec<PathBuf>);
impl Drop for Unmount {
    fn drop(&mut self) {
        for p in &self.0 {
            if is_mounted(p) {
                umount_lazy(p);
            }
        }
    }
}

/// Serialises the tests that change /sbin or the package database, in this
/// process (a mutex) and across processes (flock on a file in /run/lock or /tmp).
struct SystemLock {
    _guard: std::sync::MutexGuard<'static, ()>,
    _file: fs::File,
}

fn system_lock() -> SystemLock {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let dir = if Path::new("/run/lock").is_dir() {
        "/run/lock"
    } else {
        "/tmp"
    };
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(format!("{dir}/bcachefs-lite-packaging-test.lock"))
        .unwrap();
    use std::os::fd::AsRawFd;
    // SAFETY: flock takes plain integers; `file` keeps the descriptor open.
    assert_eq!(unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) }, 0);
    SystemLock {
        _guard: guard,
        _file: file,
    }
}

/// A fresh temporary directory with `b` (backing, holding `hello`) and `m`.
fn tree() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix("bcl-pkg")
        .tempdir()
        .unwrap();
    let (b, m) = (dir.path().join("b"), dir.path().join("m"));
    fs::create_dir(&b).unwrap();
    fs::create_dir(&m).unwrap();
    fs::write(b.join("hello"), b"world").unwrap();
    (dir, b, m)
}

/// Cache options to add to a mount once the read cache accepts them.
fn cache_opts(dir: &Path) -> String {
    if KNOWN_OPTIONS.contains(&"cache") {
        format!(",cache={},cache_size=64M", dir.join("user.cache").display())
    } else {
        String::new()
    }
}

fn proc_mounts_line(m: &Path) -> String {
    let want = format!(" {} ", m.display());
    fs::read_to_string("/proc/mounts")
        .unwrap()
        .lines()
        .find(|l| l.contains(&want))
        .unwrap_or_else(|| panic!("{} not in /proc/mounts", m.display()))
        .to_string()
}

/// Asserts a failed mount: non-zero exit, one line on stderr naming `what`.
fn assert_refused(code: i32, err: &str, what: &str) {
    assert_ne!(code, 0, "should fail: {err}");
    assert!(err.contains(what), "expected '{what}' in: {err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
}

fn files_under(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                todo.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

// --- man pages ---------------------------------------------------------------

fn man_source(name: &str) -> String {
    fs::read_to_string(repo().join("docs").join(name)).unwrap()
}

#[test]
fn man_pages_render_without_warnings() {
    for page in ["bcachefs-lite.8", "mount.fuse.bcachefs-lite.8"] {
        let path = repo().join("docs").join(page);
        let (code, out, err) = run(Command::new("man")
            .arg("--warnings")
            .arg("-l")
            .arg(&path)
            .env("MANWIDTH", "80")
            .env("MANPAGER", "cat")
            .env("PAGER", "cat"));
        assert_eq!(code, 0, "man -l {page}: {err}");
        assert!(err.trim().is_empty(), "warnings from {page}:\n{err}");
        for word in [
            "NAME",
            "SYNOPSIS",
            "DESCRIPTION",
            "SEE ALSO",
            "fuse.bcachefs-lite",
        ] {
            assert!(out.contains(word), "{page} lacks {word}:\n{out}");
        }
    }
}

/// Option names documented as `.TP` items in the MOUNT OPTIONS section: the
/// name before `=`, several per item (`.BR dev ", " nodev`), `x-*` as a prefix.
fn documented_options(page: &str) -> Vec<String> {
    let text = page.replace("\\-", "-");
    let section: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with(".SH MOUNT OPTIONS"))
        .skip(1)
        .take_while(|l| !l.starts_with(".SH "))
        .collect();
    let mut names = Vec::new();
    for pair in section.windows(2) {
        if pair[0] != ".TP" {
            continue;
        }
        let item = pair[1].split_once(' ').map(|(_, rest)| rest).unwrap_or("");
        for token in item
            .replace('"', " ")
            .split(|c: char| c.is_whitespace() || c == ',')
            .filter(|t| !t.is_empty())
        {
            let (name, has_value) = match token.split_once('=') {
                Some((n, _)) => (n, true),
                None => (token, false),
            };
            names.push(name.to_string());
            if has_value {
                break; // the rest of the line is the value (`lru | fifo | random`)
            }
        }
    }
    names
}

/// The option names `apply_one` matches in src/options.rs, and those in `IGNORED`.
fn option_names_in_source() -> Vec<String> {
    let src = fs::read_to_string(repo().join("src/options.rs")).unwrap();
    let literals = |s: &str| -> Vec<String> {
        s.split('"')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect()
    };
    let start = src.find("fn apply_one").expect("apply_one in options.rs");
    let body = &src[start..];
    let body = &body[..body.find("\n    }\n").unwrap_or(body.len())];
    let mut names: Vec<String> = body
        .lines()
        .filter(|l| l.trim_start().starts_with('"') && l.contains("=>"))
        .flat_map(|l| literals(l.split("=>").next().unwrap()))
        .collect();
    let ignored = src.find("const IGNORED: &[&str]").expect("IGNORED");
    let list = &src[ignored..];
    names.extend(literals(&list[..list.find("];").unwrap()]));
    names
}

fn accepted(name: &str) -> bool {
    std::iter::once(name.to_string())
        .chain(
            ["1", "x", "1M", "lru", "writethrough", "shared", "auto"]
                .iter()
                .map(|v| format!("{name}={v}")),
        )
        .any(|item| MountOptions::default().apply(&item).is_ok())
}

#[test]
fn man_page_documents_every_option_and_command_the_cli_accepts() {
    let page = man_source("bcachefs-lite.8");
    let documented = documented_options(&page);
    assert!(documented.len() > 20, "parsed too few: {documented:?}");

    // every option the parser accepts is documented ...
    for name in KNOWN_OPTIONS {
        assert!(
            documented.iter().any(|d| d == name),
            "option '{name}' (KNOWN_OPTIONS) is missing from docs/bcachefs-lite.8"
        );
    }
    for prefix in IGNORED_PREFIXES {
        assert!(
            documented.contains(&format!("{prefix}*")),
            "'{prefix}*' is missing from docs/bcachefs-lite.8"
        );
    }
    // ... including any arm someone added to apply_one without listing it
    let in_source = option_names_in_source();
    for name in ["fsname", "atime", "relatime", "rw", "_netdev"] {
        assert!(in_source.iter().any(|n| n == name), "parser: {in_source:?}");
    }
    for name in in_source {
        assert!(
            KNOWN_OPTIONS.contains(&name.as_str()),
            "apply_one accepts '{name}' but KNOWN_OPTIONS in src/options.rs does not list it"
        );
    }
    // and nothing is documented that the CLI refuses, except the cache's options
    // while the cache is not merged
    for name in &documented {
        if name.ends_with('*') {
            continue;
        }
        assert!(
            accepted(name) || PENDING_CACHE_OPTIONS.contains(&name.as_str()),
            "docs/bcachefs-lite.8 documents '{name}' but `mount -o {name}` is refused"
        );
    }

    // every subcommand and every long flag of `--help`
    let flat = page.replace("\\-", "-");
    let (_, help, _) = run(Command::new(BIN).arg("--help"));
    let commands: Vec<String> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .filter(|c| c != "help")
        .collect();
    assert!(commands.contains(&"mount".to_string()), "{help}");
    for cmd in commands.iter().map(String::as_str).chain(["stats"]) {
        assert!(
            flat.lines().any(|l| l.starts_with(&format!(".SS {cmd}"))),
            "subcommand '{cmd}' has no .SS section in docs/bcachefs-lite.8"
        );
        if cmd == "stats" && !commands.iter().any(|c| c == "stats") {
            continue;
        }
        let (_, sub_help, _) = run(Command::new(BIN).args([cmd, "--help"]));
        for word in sub_help.split(|c: char| !(c.is_alphanumeric() || c == '-')) {
            if word.starts_with("--") && word != "--help" && word != "--version" {
                assert!(
                    flat.contains(word),
                    "`{cmd} {word}` is missing from docs/bcachefs-lite.8"
                );
            }
        }
    }
    // the option names `mount --help` mentions are real options
    let (_, mount_help, _) = run(Command::new(BIN).args(["mount", "--help"]));
    for name in [
        "allow_other",
        "default_permissions",
        "attr_timeout",
        "fsname",
    ] {
        assert!(mount_help.contains(name), "{mount_help}");
    }
}

// --- make install into a temporary prefix, the helper run as mount(8) does -----

#[test]
fn install_into_a_prefix_then_mount_through_the_helper_as_mount8_calls_it() {
    require_fuse!();
    let (dir, b, m) = tree();
    let _unmount = Unmount(vec![m.clone()]);
    let prefix = dir.path().join("prefix");
    let prefix_arg = format!("PREFIX={}", prefix.display());
    let binary_arg = format!("BINARY={BIN}");
    run_ok(&mut make(&[
        "install",
        &prefix_arg,
        "MOUNT_HELPER_DIR=",
        &binary_arg,
    ]));
    let helper = prefix.join("sbin").join(HELPER);
    for f in [
        prefix.join("bin/bcachefs-lite"),
        helper.clone(),
        prefix.join("share/man/man8/bcachefs-lite.8"),
        prefix.join("share/man/man8/mount.fuse.bcachefs-lite.8"),
        prefix.join("lib/systemd/system/bcachefs-lite@.service"),
        prefix.join("share/doc/bcachefs-lite/ADMIN.md"),
    ] {
        assert!(f.is_file(), "{} not installed", f.display());
    }
    // the helper and the unit run the installed binary, not one on PATH
    let installed_bin = prefix.join("bin/bcachefs-lite");
    let script = fs::read_to_string(&helper).unwrap();
    assert!(script.contains(&installed_bin.display().to_string()));
    let unit =
        fs::read_to_string(prefix.join("lib/systemd/system/bcachefs-lite@.service")).unwrap();
    assert!(unit.contains(&format!("ExecStart={} mount", installed_bin.display())));
    assert_eq!(
        fs::metadata(&helper).unwrap().permissions().mode() & 0o777,
        0o755
    );

    // exactly what mount(8) passes for an fstab line with noise in it
    let opts = format!(
        "rw,fsname=bcl-prefix-test,_netdev,nofail,user,noauto{}",
        cache_opts(dir.path())
    );
    let (code, out, err) = run(Command::new(&helper)
        .arg(&b)
        .arg(&m)
        .args(["-n", "-o", &opts])
        .env_remove("BCACHEFS_LITE_BIN"));
    assert_eq!(code, 0, "{out}{err}");
    assert!(is_mounted(&m), "live when the helper returns");
    assert_eq!(fs::read(m.join("hello")).unwrap(), b"world");
    assert!(proc_mounts_line(&m).starts_with("bcl-prefix-test "));
    run_ok(Command::new("umount").arg(&m));
    assert!(!is_mounted(&m));

    // -f (fake) and -v do not mount; wrong options and arguments: mount(8)'s codes
    let (code, _, err) = run(Command::new(&helper).arg(&b).arg(&m).args(["-fv"]));
    assert_eq!(code, 0);
    assert!(err.contains(&installed_bin.display().to_string()), "{err}");
    assert!(!is_mounted(&m));
    let (code, _, err) = run(Command::new(&helper)
        .arg(&b)
        .arg(&m)
        .args(["-o", "rw,frobnicate=3"]));
    assert_refused(code, &err, "'frobnicate'");
    assert_eq!(code, 1);
    let (code, _, err) = run(Command::new(&helper).arg(&b));
    assert_eq!(code, 1, "{err}");
    let (code, _, err) = run(Command::new(&helper).arg(&b).arg("/nonexistent/bcl"));
    assert_eq!(code, 1, "{err}");
    assert!(!is_mounted(&m));

    run_ok(&mut make(&["uninstall", &prefix_arg, "MOUNT_HELPER_DIR="]));
    let left = files_under(&prefix);
    assert!(left.is_empty(), "left after uninstall: {left:?}");
}

#[test]
fn install_with_destdir_links_the_helper_from_sbin_and_uninstall_removes_it() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("dest");
    let dest_arg = format!("DESTDIR={}", dest.display());
    let binary_arg = format!("BINARY={BIN}");
    run_ok(&mut make(&["install", &dest_arg, &binary_arg]));
    let link = dest.join("sbin").join(HELPER);
    assert_eq!(
        fs::read_link(&link).unwrap(),
        Path::new("/usr/local/sbin").join(HELPER),
        "mount(8) looks in /sbin: the helper is linked from there"
    );
    let helper = fs::read_to_string(dest.join("usr/local/sbin").join(HELPER)).unwrap();
    assert!(helper.contains("BIN=\"${BCACHEFS_LITE_BIN:-/usr/local/bin/bcachefs-lite}\""));
    assert!(dest.join("usr/local/bin/bcachefs-lite").is_file());
    run_ok(&mut make(&["uninstall", &dest_arg]));
    let left = files_under(&dest);
    assert!(left.is_empty(), "left after uninstall: {left:?}");
}

// --- mount(8) with the helper in /sbin -----------------------------------------

/// The helper linked into /sbin for the duration of a test; removed on drop
/// only if it is still our link.
struct SbinHelper {
    target: PathBuf,
}

impl SbinHelper {
    /// None when /sbin already has a helper we did not put there.
    fn install(target: &Path) -> Option<SbinHelper> {
        if fs::symlink_metadata(SBIN_HELPER).is_ok() {
            eprintln!("skipped: {SBIN_HELPER} exists and is not ours");
            return None;
        }
        std::os::unix::fs::symlink(target, SBIN_HELPER).unwrap();
        Some(SbinHelper {
            target: target.to_path_buf(),
        })
    }
}

impl Drop for SbinHelper {
    fn drop(&mut self) {
        if fs::read_link(SBIN_HELPER).ok().as_deref() == Some(self.target.as_path()) {
            let _ = fs::remove_file(SBIN_HELPER);
        }
    }
}

#[test]
fn mount_t_and_fstab_files_use_the_helper_in_sbin() {
    require_fuse!();
    let _lock = system_lock();
    let (dir, b, m) = tree();
    let m2 = dir.path().join("m2");
    fs::create_dir(&m2).unwrap();
    let _unmount = Unmount(vec![m.clone(), m2.clone()]);
    let prefix = dir.path().join("prefix");
    run_ok(&mut make(&[
        "install",
        &format!("PREFIX={}", prefix.display()),
        "MOUNT_HELPER_DIR=",
        &format!("BINARY={BIN}"),
    ]));
    let Some(_sbin) = SbinHelper::install(&prefix.join("sbin").join(HELPER)) else {
        return;
    };

    // mount -t ... -o ..., read through it, umount
    let opts = format!("allow_other,fsname=bcl-mount-t{}", cache_opts(dir.path()));
    let (code, out, err) = run(Command::new("mount")
        .args(["-t", "fuse.bcachefs-lite"])
        .arg(&b)
        .arg(&m)
        .args(["-o", &opts]));
    assert_eq!(code, 0, "mount -t: {out}{err}");
    assert!(is_mounted(&m), "live when mount(8) returns");
    assert_eq!(fs::read(m.join("hello")).unwrap(), b"world");
    fs::write(m.join("new"), b"through the mount").unwrap();
    assert_eq!(fs::read(b.join("new")).unwrap(), b"through the mount");
    let line = proc_mounts_line(&m);
    assert!(line.starts_with("bcl-mount-t "), "{line}");
    assert!(line.contains(" fuse.bcachefs-lite "), "{line}");
    assert!(line.contains("allow_other"), "{line}");
    run_ok(Command::new("umount").arg(&m));
    assert!(!is_mounted(&m));

    // a wrong option: mount(8) fails, with one line naming it
    let (code, _, err) = run(Command::new("mount")
        .args(["-t", "fuse.bcachefs-lite"])
        .arg(&b)
        .arg(&m)
        .args(["-o", "ro,cache_sise=1G"]));
    assert_refused(code, &err, "'cache_sise'");
    let (code, _, err) = run(Command::new("mount")
        .args(["-t", "fuse.bcachefs-lite"])
        .arg(&b)
        .arg(&m)
        .args(["-o", "attr_timeout=soon"]));
    assert_refused(code, &err, "attr_timeout=soon");
    assert!(!is_mounted(&m));

    // mount -T FSTAB MOUNTPOINT: options from the file take effect
    let fstab = dir.path().join("fstab");
    fs::write(
        &fstab,
        format!(
            "# test fstab\n\
             {b} {m} fuse.bcachefs-lite noauto,_netdev,nofail,x-systemd.requires-mounts-for=/,ro,fsname=bcl-fstab-ro{c},sequential_cutoff=123K 0 0\n\
             {b} {m2} fuse.bcachefs-lite defaults,_netdev,fsname=bcl-fstab-auto 0 0\n",
            b = b.display(),
            m = m.display(),
            m2 = m2.display(),
            c = cache_opts(dir.path()),
        ),
    )
    .unwrap();
    let (code, out, err) = run(Command::new("mount").arg("-T").arg(&fstab).arg(&m));
    assert_eq!(code, 0, "mount -T: {out}{err}");
    assert!(is_mounted(&m));
    let line = proc_mounts_line(&m);
    assert!(line.starts_with("bcl-fstab-ro "), "{line}");
    assert!(
        line.split(' ')
            .nth(3)
            .unwrap()
            .split(',')
            .any(|o| o == "ro"),
        "{line}"
    );
    assert_eq!(fs::read(m.join("hello")).unwrap(), b"world");
    let e = fs::write(m.join("hello"), b"x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS));
    assert!(!is_mounted(&m2), "only the named entry");
    // the cache options from the fstab line reached the daemon: stats says so
    let (code, stats, err) = run(Command::new(BIN).args(["stats", "--json"]).arg(&m));
    assert_eq!(code, 0, "stats: {err}");
    assert!(stats.contains("\"sequential_cutoff\": 125952"), "{stats}");
    assert!(stats.contains("user.cache"), "{stats}");

    // mount -a -T FSTAB: the entry without noauto is mounted, the mounted one kept
    let (code, out, err) = run(Command::new("mount").arg("-a").arg("-T").arg(&fstab));
    assert_eq!(code, 0, "mount -a -T: {out}{err}");
    assert!(is_mounted(&m2));
    assert!(proc_mounts_line(&m2).starts_with("bcl-fstab-auto "));
    assert_eq!(fs::read(m2.join("hello")).unwrap(), b"world");
    // again: the fsname= entry does not match its source, so mount(8) asks the
    // helper, which refuses to stack a second mount
    let (code, _, err) = run(Command::new("mount").arg("-a").arg("-T").arg(&fstab));
    assert_eq!(code, 32, "{err}");
    assert!(err.contains("already mounted"), "{err}");
    let count = |p: &Path| {
        let want = format!(" {} ", p.display());
        let mounts = fs::read_to_string("/proc/mounts").unwrap();
        mounts.lines().filter(|l| l.contains(&want)).count()
    };
    assert_eq!((count(&m), count(&m2)), (1, 1), "no stacked mounts");
    run_ok(Command::new("umount").arg(&m2));
    run_ok(Command::new("umount").arg(&m));
    assert!(!is_mounted(&m) && !is_mounted(&m2));
}

// --- the Debian package ----------------------------------------------------------

fn dpkg_installed(pkg: &str) -> bool {
    let (code, out, _) = run(Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]));
    code == 0 && out.contains("ok installed")
}

/// dpkg with a wait for its lock (other engineers may run apt at the same time).
fn dpkg(args: &[&str]) -> (i32, String, String) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(180);
    loop {
        let (code, out, err) = run(Command::new("dpkg").args(args));
        if code != 0 && err.contains("lock") && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_secs(2));
            continue;
        }
        return (code, out, err);
    }
}

/// Removes the package on drop if this test installed it and it is still there.
struct Package;
impl Drop for Package {
    fn drop(&mut self) {
        if dpkg_installed("bcachefs-lite") {
            let _ = dpkg(&["-r", "bcachefs-lite"]);
        }
    }
}

#[test]
fn deb_installs_mounts_through_the_installed_helper_and_removes_cleanly() {
    require_fuse!();
    let _lock = system_lock();
    if dpkg_installed("bcachefs-lite") || fs::symlink_metadata(SBIN_HELPER).is_ok() {
        eprintln!("skipped: bcachefs-lite is already installed on this machine");
        return;
    }
    assert!(
        dpkg_installed("fuse3"),
        "the package depends on fuse3: run `make deps`"
    );
    let (dir, b, m) = tree();
    let _unmount = Unmount(vec![m.clone()]);
    let debdir = dir.path().join("deb");
    // the test's own debug build: no release build here
    run_ok(&mut make(&[
        "deb",
        &format!("BINARY={BIN}"),
        &format!("DEBDIR={}", debdir.display()),
    ]));
    let deb = fs::read_dir(&debdir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .expect("a .deb in DEBDIR");
    let info = run_ok(Command::new("dpkg-deb").arg("-f").arg(&deb));
    assert!(info.contains("Package: bcachefs-lite"), "{info}");
    assert!(info.contains("Depends: fuse3"), "{info}");

    let _package = Package;
    let (code, out, err) = dpkg(&["-i", deb.to_str().unwrap()]);
    assert_eq!(code, 0, "dpkg -i: {out}{err}");
    let listed: Vec<PathBuf> = run_ok(Command::new("dpkg").args(["-L", "bcachefs-lite"]))
        .lines()
        .map(PathBuf::from)
        .filter(|p| !p.is_dir())
        .collect();
    for want in [
        "/usr/bin/bcachefs-lite",
        SBIN_HELPER,
        "/usr/share/man/man8/bcachefs-lite.8.gz",
        "/usr/share/man/man8/mount.fuse.bcachefs-lite.8.gz",
        "/lib/systemd/system/bcachefs-lite@.service",
        "/usr/share/doc/bcachefs-lite/copyright",
        "/usr/share/doc/bcachefs-lite/ADMIN.md",
    ] {
        assert!(
            listed.iter().any(|p| p == Path::new(want)),
            "{want} not in package: {listed:?}"
        );
        assert!(Path::new(want).exists(), "{want} not installed");
    }
    let version = run_ok(Command::new("/usr/bin/bcachefs-lite").arg("--version"));
    assert!(version.starts_with("bcachefs-lite "), "{version}");
    let (code, page, _) = run(Command::new("man")
        .args(["-P", "cat", "8", "bcachefs-lite"])
        .env("MANWIDTH", "80"));
    assert_eq!(code, 0, "man 8 bcachefs-lite after install");
    assert!(page.contains("MOUNT OPTIONS"));

    // the template unit is valid and finds the installed binary and man pages
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok()
    {
        let units = dir.path().join("units");
        fs::create_dir(&units).unwrap();
        let instance = units.join("bcachefs-lite@test.service");
        std::os::unix::fs::symlink("/lib/systemd/system/bcachefs-lite@.service", &instance)
            .unwrap();
        let (code, out, err) = run(Command::new("systemd-analyze")
            .arg("verify")
            .arg(&instance)
            .env("SYSTEMD_LOG_LEVEL", "notice"));
        assert_eq!(code, 0, "systemd-analyze verify: {out}{err}");
        assert!(
            !err.contains("bcachefs-lite"),
            "systemd-analyze verify complains:\n{err}"
        );
    }

    // mount(8) finds the packaged helper, which runs the packaged binary
    // the mount creates the user's cache file (cache_opts); removing the package keeps it
    let user_cache = dir.path().join("user.cache");
    let opts = format!("fsname=bcl-deb{}", cache_opts(dir.path()));
    let (code, out, err) = run(Command::new("mount")
        .args(["-t", "fuse.bcachefs-lite"])
        .arg(&b)
        .arg(&m)
        .args(["-o", &opts]));
    assert_eq!(code, 0, "mount -t with the package: {out}{err}");
    assert!(is_mounted(&m));
    assert_eq!(fs::read(m.join("hello")).unwrap(), b"world");
    let daemon_exe = daemon_exe_for(&m);
    assert_eq!(
        daemon_exe.as_deref(),
        Some(Path::new("/usr/bin/bcachefs-lite"))
    );
    run_ok(Command::new("umount").arg(&m));
    assert!(!is_mounted(&m));

    let (code, out, err) = dpkg(&["-r", "bcachefs-lite"]);
    assert_eq!(code, 0, "dpkg -r: {out}{err}");
    assert!(!dpkg_installed("bcachefs-lite"));
    let left: Vec<&PathBuf> = listed
        .iter()
        .filter(|p| fs::symlink_metadata(p).is_ok())
        .collect();
    assert!(left.is_empty(), "left after dpkg -r: {left:?}");
    assert!(!Path::new("/usr/share/doc/bcachefs-lite").exists());
    assert!(user_cache.exists(), "the user's cache file stays");
}

/// The executable of the daemon serving `m` (a process whose command line names it).
fn daemon_exe_for(m: &Path) -> Option<PathBuf> {
    let needle = m.to_string_lossy().into_owned();
    for entry in fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        let cmd = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd);
        if cmd.contains(&needle) && cmd.contains("mount") {
            return fs::read_link(format!("/proc/{pid}/exe")).ok();
        }
    }
    None
}

#[test]
fn helper_script_is_posix_sh() {
    let helper = repo().join("mount-helper").join(HELPER);
    let (code, _, err) = sh(
        &format!(
            "sh -n '{}' && head -n 1 '{}'",
            helper.display(),
            helper.display()
        ),
        repo(),
    );
    assert_eq!(code, 0, "{err}");
    if Path::new("/bin/dash").exists() {
        let (code, _, err) = run(Command::new("dash").arg("-n").arg(&helper));
        assert_eq!(code, 0, "dash -n: {err}");
    }
    assert!(fs::read_to_string(&helper)
        .unwrap()
        .starts_with("#!/bin/sh\n"));
}
