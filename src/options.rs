//! Mount options: the `-o a,b=c` list of `bcachefs-lite mount` (and later of
//! `mount -t fuse.bcachefs-lite`).
//!
//! Parsing is pure: it turns a comma-separated string into [`MountOptions`] or an
//! [`OptionError`] that names the offending option. Nothing here touches the system.

use std::fmt;
use std::time::Duration;

use crate::device::format::{CacheMode, Replacement};

/// Everything `-o` can set. Defaults are what a user gets without options.
#[derive(Debug, Clone, PartialEq)]
pub struct MountOptions {
    pub allow_other: bool,
    pub default_permissions: bool,
    pub read_only: bool,
    /// How long the kernel may trust attributes it got from us.
    pub attr_timeout: Duration,
    /// How long the kernel may trust a name -> inode lookup.
    pub entry_timeout: Duration,
    /// Name shown as the source in /proc/mounts; defaults to the backing path.
    pub fsname: Option<String>,
    /// Honour device files (`dev`) and setuid bits (`suid`); off by default, as for
    /// every FUSE mount.
    pub dev: bool,
    pub suid: bool,
    pub noexec: bool,
    pub noatime: bool,
    /// The cache file (`cache=`); no cache: a plain passthrough.
    pub cache: Option<std::path::PathBuf>,
    /// Size for a cache file that does not exist yet (`cache_size=`).
    pub cache_size: Option<u64>,
    pub replacement: Option<Replacement>,
    /// `sequential_cutoff=` (default 0 = off): bcache's bypass of a stream past it.
    pub sequential_cutoff: u64,
    /// `probation_after=` (default 4 MiB, 0 = off): a stream past it is cached on probation.
    pub probation_after: u64,
    /// `readahead=` (default 0: the kernel's own readahead is enough).
    pub readahead: u64,
    /// `kernel_readahead=` (default 1 MiB, 0 = the kernel's default): the mount's
    /// readahead window in the kernel (its bdi's `read_ahead_kb`), set after the mount.
    pub kernel_readahead: u64,
    /// `discard` / `nodiscard`; None keeps what the cache file says.
    pub discard: Option<bool>,
    pub reformat: bool,
    /// `pin_limit=SIZE`: most bytes `warm --pin` may pin (default: a quarter of the cache).
    pub pin_limit: Option<u64>,
    /// `metrics=ADDR`: serve Prometheus metrics over HTTP on this address.
    pub metrics: Option<std::net::SocketAddr>,
    /// Names of the options the `-o` list set (`nodiscard` counts as `discard`), so
    /// `bcachefs-lite get` can say a value came from a mount option.
    pub given: std::collections::BTreeSet<String>,
    /// `coherence=shared|exclusive`: who else may change the backing (metadata cache).
    pub coherence: crate::meta::Coherence,
    /// `metadata_ttl=` (shared mode: how long metadata is trusted before a stat).
    pub metadata_ttl: Duration,
    /// `metadata_cache_size=` (bytes; 0 turns the metadata cache off).
    pub metadata_cache_size: u64,
    /// `metadata_checkpoint_interval=` (seconds between snapshots of a changed metadata
    /// cache into the cache file; 0: only at a clean unmount).
    pub metadata_checkpoint_interval: Duration,
    /// `cache_mode=`; None: the cache file's default (its superblock), itself writethrough
    /// unless formatted otherwise.
    pub cache_mode: Option<CacheMode>,
    // ---- writeback (issue 13) ----
    /// `noflush_on_unmount`: a clean unmount keeps dirty data for the next mount.
    pub noflush_on_unmount: bool,
    /// `drop_dirty`: mount even when the cache holds dirty data that cannot be written back,
    /// dropping it (loud; that data is lost).
    pub drop_dirty: bool,
    /// `writeback_delay=SECONDS` (default 30): a file is written back once idle this long
    /// (while the dirty share is below `writeback_percent`).
    pub writeback_delay: Duration,
    /// `writeback_percent=N` (default 10): above this share of the cache dirty, writeback
    /// runs at once.
    pub writeback_percent: u8,
    // offline mode (issue 16)
    /// `offline=auto|never`: go offline when the backing is unreachable (default auto).
    pub offline: crate::offline::Policy,
    /// `backing_timeout=` (seconds; 0: backing calls inline, no hang detection). None: the
    /// default, 10 s on a network or FUSE backing, calls inline on a local filesystem.
    pub backing_timeout: Option<Duration>,
    /// `offline_probe_interval=` (seconds between stats of the backing root while offline).
    pub offline_probe_interval: Duration,
    /// `open_requests`: keep the kernel's OPEN and RELEASE requests in exclusive mode
    /// (by default it opens files without asking the daemon there: see `no_open`).
    pub open_requests: bool,
    /// `kernel_write_cache`: negotiate FUSE_WRITEBACK_CACHE (the kernel's page cache holds
    /// writes and sends them in pages later; it then trusts its own size and mtime).
    pub kernel_write_cache: bool,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            allow_other: false,
            default_permissions: false,
            read_only: false,
            attr_timeout: Duration::from_secs(1),
            entry_timeout: Duration::from_secs(1),
            fsname: None,
            dev: false,
            suid: false,
            noexec: false,
            noatime: false,
            cache: None,
            cache_size: None,
            replacement: None,
            sequential_cutoff: 0,
            probation_after: crate::cache::DEFAULT_PROBATION_AFTER,
            readahead: 0,
            kernel_readahead: DEFAULT_KERNEL_READAHEAD,
            discard: None,
            reformat: false,
            metrics: None,
            pin_limit: None,
            given: Default::default(),
            coherence: crate::meta::Coherence::Shared,
            metadata_ttl: crate::meta::DEFAULT_TTL,
            metadata_cache_size: crate::meta::DEFAULT_BUDGET,
            metadata_checkpoint_interval: crate::meta::DEFAULT_CHECKPOINT_INTERVAL,
            cache_mode: None,
            noflush_on_unmount: false,
            drop_dirty: false,
            writeback_delay: crate::cache::writeback::DEFAULT_WRITEBACK_DELAY,
            writeback_percent: crate::cache::writeback::DEFAULT_WRITEBACK_PERCENT,
            offline: crate::offline::Policy::Auto,
            backing_timeout: None,
            offline_probe_interval: crate::offline::DEFAULT_PROBE_INTERVAL,
            open_requests: false,
            kernel_write_cache: false,
        }
    }
}

/// Default `kernel_readahead=`: one full FUSE request (`max_pages` 256). The kernel's own
/// default for a FUSE mount is 128 KiB, so a sequential read arrived as 128 KiB requests
/// with at most one or two in flight; a window of 1 MiB makes them 1 MiB (measured in
/// docs/DESIGN.md, "Threads and kernel settings"). Larger windows also mean larger mmap
/// read-around on a page fault, from a slow backing on a cold read.
pub const DEFAULT_KERNEL_READAHEAD: u64 = 1 << 20;

/// Largest `kernel_readahead=`.
pub const MAX_KERNEL_READAHEAD: u64 = 64 << 20;

/// A `-o` list that cannot be used, with the option it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OptionError {
    Unknown(String),
    MissingValue(String),
    UnexpectedValue(String),
    BadValue {
        option: String,
        value: String,
        why: &'static str,
    },
}

impl fmt::Display for OptionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OptionError::Unknown(o) => write!(f, "unknown mount option '{o}'"),
            OptionError::MissingValue(o) => write!(f, "mount option '{o}' needs a value ({o}=...)"),
            OptionError::UnexpectedValue(o) => write!(f, "mount option '{o}' takes no value"),
            OptionError::BadValue { option, value, why } => {
                write!(f, "mount option '{option}={value}': {why}")
            }
        }
    }
}

impl std::error::Error for OptionError {}

/// Options mount(8) and fstab pass along that mean nothing to the daemon itself.
const IGNORED: &[&str] = &[
    "rw", "defaults", "auto", "noauto", "nofail", "_netdev", "user", "nouser", "users", "comment",
];

/// Prefixes of option names that are accepted and ignored (`x-systemd.*`, `x-gvfs-*`).
pub const IGNORED_PREFIXES: &[&str] = &["x-"];

/// Every option name [`MountOptions::apply`] accepts, ignored ones included (but not
/// the [`IGNORED_PREFIXES`] families). The man page must document each of them:
/// `tests/packaging.rs` compares this list, and the names in `apply_one`'s match
/// arms, with `docs/bcachefs-lite.8`. Add a new option here when you add its arm.
pub const KNOWN_OPTIONS: &[&str] = &[
    "allow_other",
    "default_permissions",
    "ro",
    "dev",
    "nodev",
    "suid",
    "nosuid",
    "exec",
    "noexec",
    "atime",
    "relatime",
    "noatime",
    "attr_timeout",
    "entry_timeout",
    "fsname",
    "cache",
    "cache_size",
    "replacement",
    "sequential_cutoff",
    "probation_after",
    "readahead",
    "kernel_readahead",
    "discard",
    "nodiscard",
    "reformat",
    "metrics",
    "pin_limit",
    "coherence",
    "metadata_ttl",
    "metadata_cache_size",
    "metadata_checkpoint_interval",
    "cache_mode",
    "noflush_on_unmount",
    "drop_dirty",
    "writeback_delay",
    "writeback_percent",
    "offline",
    "backing_timeout",
    "offline_probe_interval",
    "open_requests",
    "kernel_write_cache",
    "rw",
    "defaults",
    "auto",
    "noauto",
    "nofail",
    "_netdev",
    "user",
    "nouser",
    "users",
    "comment",
];

impl MountOptions {
    /// Applies a comma-separated option list on top of `self`. Empty items are skipped.
    pub fn apply(&mut self, list: &str) -> Result<(), OptionError> {
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (name, value) = match item.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (item, None),
            };
            self.apply_one(name, value)?;
        }
        Ok(())
    }

    fn apply_one(&mut self, name: &str, value: Option<&str>) -> Result<(), OptionError> {
        let flag = |v: Option<&str>| match v {
            None => Ok(true),
            Some(_) => Err(OptionError::UnexpectedValue(name.to_string())),
        };
        match name {
            "allow_other" => self.allow_other = flag(value)?,
            "default_permissions" => self.default_permissions = flag(value)?,
            "ro" => self.read_only = flag(value)?,
            "dev" => self.dev = flag(value)?,
            "nodev" => self.dev = !flag(value)?,
            "suid" => self.suid = flag(value)?,
            "nosuid" => self.suid = !flag(value)?,
            "exec" => self.noexec = !flag(value)?,
            "noexec" => self.noexec = flag(value)?,
            "atime" | "relatime" => self.noatime = !flag(value)?,
            "noatime" => self.noatime = flag(value)?,
            "attr_timeout" => self.attr_timeout = parse_seconds(name, value)?,
            "entry_timeout" => self.entry_timeout = parse_seconds(name, value)?,
            "cache" => match value {
                Some(v) if !v.is_empty() => self.cache = Some(v.into()),
                _ => return Err(OptionError::MissingValue(name.to_string())),
            },
            "cache_size" => self.cache_size = Some(parse_bytes(name, value)?),
            "sequential_cutoff" => self.sequential_cutoff = parse_bytes(name, value)?,
            "probation_after" => self.probation_after = parse_bytes(name, value)?,
            "readahead" => {
                let bytes = parse_bytes(name, value)?;
                if bytes > crate::cache::MAX_READAHEAD {
                    return Err(OptionError::BadValue {
                        option: name.to_string(),
                        value: value.unwrap_or("").to_string(),
                        why: "at most 64M",
                    });
                }
                self.readahead = bytes;
            }
            "kernel_readahead" => {
                let bytes = parse_bytes(name, value)?;
                if bytes > MAX_KERNEL_READAHEAD {
                    return Err(OptionError::BadValue {
                        option: name.to_string(),
                        value: value.unwrap_or("").to_string(),
                        why: "at most 64M",
                    });
                }
                self.kernel_readahead = bytes;
            }
            "replacement" => {
                let v = value.ok_or_else(|| OptionError::MissingValue(name.to_string()))?;
                self.replacement = Some(v.parse().map_err(|_| OptionError::BadValue {
                    option: name.to_string(),
                    value: v.to_string(),
                    why: "must be lru, fifo or random",
                })?);
            }
            "cache_mode" => {
                let v = value.ok_or_else(|| OptionError::MissingValue(name.to_string()))?;
                self.cache_mode = Some(v.parse().map_err(|_| OptionError::BadValue {
                    option: name.to_string(),
                    value: v.to_string(),
                    why: "must be writethrough, writeback, writearound or none",
                })?);
            }
            "noflush_on_unmount" => self.noflush_on_unmount = flag(value)?,
            "drop_dirty" => self.drop_dirty = flag(value)?,
            "open_requests" => self.open_requests = flag(value)?,
            "kernel_write_cache" => self.kernel_write_cache = flag(value)?,
            "writeback_delay" => self.writeback_delay = parse_seconds(name, value)?,
            "writeback_percent" => {
                let v = value.ok_or_else(|| OptionError::MissingValue(name.to_string()))?;
                self.writeback_percent = match v.parse::<u8>() {
                    Ok(p) if p <= 100 => p,
                    _ => {
                        return Err(OptionError::BadValue {
                            option: name.to_string(),
                            value: v.to_string(),
                            why: "must be a percentage, 0 to 100",
                        })
                    }
                };
            }
            "discard" => self.discard = Some(flag(value)?),
            "nodiscard" => self.discard = Some(!flag(value)?),
            "reformat" => self.reformat = flag(value)?,
            "pin_limit" => self.pin_limit = Some(parse_bytes(name, value)?),
            "metrics" => {
                let v = value.ok_or_else(|| OptionError::MissingValue(name.to_string()))?;
                self.metrics =
                    Some(
                        crate::metrics::parse_addr(v).map_err(|_| OptionError::BadValue {
                            option: name.to_string(),
                            value: v.to_string(),
                            why: "not an address (e.g. 127.0.0.1:9477, or a port)",
                        })?,
                    );
            }
            "coherence" => {
                let v = value.ok_or_else(|| OptionError::MissingValue(name.to_string()))?;
                self.coherence = v.parse().map_err(|_| OptionError::BadValue {
                    option: name.to_string(),
                    value: v.to_string(),
                    why: "must be shared or exclusive",
                })?;
            }
            "metadata_ttl" => self.metadata_ttl = parse_seconds(name, value)?,
            "offline" => {
                let v = value.ok_or_else(|| OptionError::MissingValue(name.to_string()))?;
                self.offline = v.parse().map_err(|_| OptionError::BadValue {
                    option: name.to_string(),
                    value: v.to_string(),
                    why: "must be auto or never",
                })?;
            }
            "backing_timeout" => self.backing_timeout = Some(parse_seconds(name, value)?),
            "offline_probe_interval" => {
                let d = parse_seconds(name, value)?;
                if d < Duration::from_millis(10) {
                    return Err(OptionError::BadValue {
                        option: name.to_string(),
                        value: value.unwrap_or("").to_string(),
                        why: "at least 0.01 (seconds)",
                    });
                }
                self.offline_probe_interval = d;
            }
            "metadata_cache_size" => self.metadata_cache_size = parse_bytes(name, value)?,
            "metadata_checkpoint_interval" => {
                self.metadata_checkpoint_interval = parse_seconds(name, value)?
            }
            "fsname" => match value {
                Some(v) if !v.is_empty() => self.fsname = Some(v.to_string()),
                _ => return Err(OptionError::MissingValue(name.to_string())),
            },
            n if IGNORED.contains(&n) || IGNORED_PREFIXES.iter().any(|p| n.starts_with(p)) => {
                return Ok(());
            }
            _ => return Err(OptionError::Unknown(name.to_string())),
        }
        self.given
            .insert(if name == "nodiscard" { "discard" } else { name }.to_string());
        Ok(())
    }
}

/// A size with an optional K/M/G/T suffix (powers of 1024).
/// Parse a size with an optional K/M/G/T suffix (powers of 1024; a trailing `B`/`iB` is
/// accepted): `4096`, `4K`, `1M`, `20G`, `1.5G` is refused (whole numbers only).
pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (num, shift) = match t.chars().last() {
        Some('k' | 'K') => (&t[..t.len() - 1], 10),
        Some('m' | 'M') => (&t[..t.len() - 1], 20),
        Some('g' | 'G') => (&t[..t.len() - 1], 30),
        Some('t' | 'T') => (&t[..t.len() - 1], 40),
        _ => (t, 0),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("bad size {s:?} (use e.g. 4096, 4K, 1M, 20G)"))?;
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

fn parse_bytes(name: &str, value: Option<&str>) -> Result<u64, OptionError> {
    let value = value.ok_or_else(|| OptionError::MissingValue(name.to_string()))?;
    parse_size(value).map_err(|_| OptionError::BadValue {
        option: name.to_string(),
        value: value.to_string(),
        why: "not a size (e.g. 512K, 4M, 20G)",
    })
}

/// Seconds as an integer or decimal (`0`, `1`, `0.5`, `3600`).
pub fn parse_seconds(name: &str, value: Option<&str>) -> Result<Duration, OptionError> {
    let value = value.ok_or_else(|| OptionError::MissingValue(name.to_string()))?;
    let bad = |why| OptionError::BadValue {
        option: name.to_string(),
        value: value.to_string(),
        why,
    };
    let secs: f64 = value.parse().map_err(|_| bad("not a number of seconds"))?;
    if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
        return Err(bad("must be between 0 and 1e9 seconds"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<MountOptions, OptionError> {
        let mut o = MountOptions::default();
        o.apply(s).map(|_| o)
    }

    #[test]
    fn parses_every_option() {
        let o =
            parse("allow_other,default_permissions,ro,attr_timeout=2.5,entry_timeout=0,fsname=x")
                .unwrap();
        assert!(o.allow_other && o.default_permissions && o.read_only);
        assert_eq!(o.attr_timeout, Duration::from_millis(2500));
        assert_eq!(o.entry_timeout, Duration::ZERO);
        assert_eq!(o.fsname.as_deref(), Some("x"));
    }

    #[test]
    fn defaults_are_one_second_ttls_and_no_sharing() {
        let o = parse("").unwrap();
        assert!(o.given.is_empty());
        let o2 = parse("nodiscard,readahead=1M").unwrap();
        let given: Vec<&str> = o2.given.iter().map(String::as_str).collect();
        assert_eq!(given, ["discard", "readahead"]);
        assert_eq!(o, MountOptions::default());
        assert_eq!(o.attr_timeout, Duration::from_secs(1));
        assert!(!o.allow_other);
    }

    #[test]
    fn readahead_is_bounded() {
        assert_eq!(parse("readahead=64M").unwrap().readahead, 64 << 20);
        // above 2 TiB a cast once truncated it to 0 bytes; anything past 64M is refused
        for big in [
            "readahead=65M",
            "readahead=3T",
            "readahead=18446744073709551615",
        ] {
            let e = parse(big).unwrap_err().to_string();
            assert!(e.contains("at most 64M"), "{big}: {e}");
        }
    }

    #[test]
    fn kernel_readahead_defaults_to_one_request_and_is_bounded() {
        assert_eq!(parse("").unwrap().kernel_readahead, 1 << 20);
        assert_eq!(parse("kernel_readahead=0").unwrap().kernel_readahead, 0);
        assert_eq!(
            parse("kernel_readahead=8M").unwrap().kernel_readahead,
            8 << 20
        );
        let e = parse("kernel_readahead=65M").unwrap_err().to_string();
        assert!(e.contains("at most 64M"), "{e}");
        assert!(parse("kernel_readahead").is_err());
    }

    #[test]
    fn unknown_option_is_named() {
        let e = parse("ro,bogus=1").unwrap_err();
        assert_eq!(e, OptionError::Unknown("bogus".into()));
        assert!(e.to_string().contains("'bogus'"));
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(matches!(
            parse("attr_timeout"),
            Err(OptionError::MissingValue(_))
        ));
        assert!(matches!(
            parse("attr_timeout=-1"),
            Err(OptionError::BadValue { .. })
        ));
        assert!(matches!(
            parse("entry_timeout=abc"),
            Err(OptionError::BadValue { .. })
        ));
        assert!(matches!(
            parse("ro=1"),
            Err(OptionError::UnexpectedValue(_))
        ));
        assert!(matches!(
            parse("fsname="),
            Err(OptionError::MissingValue(_))
        ));
    }

    #[test]
    fn cache_options() {
        let o = parse("cache=/ssd/a.cache,cache_size=20G,replacement=fifo,sequential_cutoff=0,readahead=128K,nodiscard,reformat").unwrap();
        assert_eq!(
            o.cache.as_deref(),
            Some(std::path::Path::new("/ssd/a.cache"))
        );
        assert_eq!(o.cache_size, Some(20 << 30));
        assert_eq!(o.replacement, Some(Replacement::Fifo));
        assert_eq!((o.sequential_cutoff, o.readahead), (0, 128 << 10));
        assert_eq!(o.discard, Some(false));
        assert!(o.reformat);
        let d = MountOptions::default();
        assert_eq!((d.sequential_cutoff, d.probation_after), (0, 4 << 20));
        let o = parse("sequential_cutoff=4M,probation_after=0").unwrap();
        assert_eq!((o.sequential_cutoff, o.probation_after), (4 << 20, 0));
        assert!(matches!(
            parse("replacement=mru"),
            Err(OptionError::BadValue { .. })
        ));
        assert!(matches!(
            parse("cache_size=lots"),
            Err(OptionError::BadValue { .. })
        ));
        assert!(matches!(parse("cache="), Err(OptionError::MissingValue(_))));
    }

    #[test]
    fn cache_mode_option() {
        assert_eq!(MountOptions::default().cache_mode, None);
        for (v, m) in [
            ("writethrough", CacheMode::Writethrough),
            ("writeback", CacheMode::Writeback),
            ("writearound", CacheMode::Writearound),
            ("none", CacheMode::None),
        ] {
            assert_eq!(
                parse(&format!("cache_mode={v}")).unwrap().cache_mode,
                Some(m)
            );
        }
        assert!(matches!(
            parse("cache_mode=fast"),
            Err(OptionError::BadValue { .. })
        ));
        assert!(matches!(
            parse("cache_mode"),
            Err(OptionError::MissingValue(_))
        ));
    }

    #[test]
    fn fstab_noise_is_ignored() {
        let o = parse("rw,noauto,_netdev,x-systemd.requires-mounts-for=/srv,nofail").unwrap();
        assert_eq!(o, MountOptions::default());
        let o = parse("defaults,comment=systemd.automount,users,x-gvfs-show").unwrap();
        assert_eq!(o, MountOptions::default());
    }

    #[test]
    fn metadata_options() {
        let o = parse("coherence=exclusive,metadata_ttl=0.5,metadata_cache_size=1M").unwrap();
        assert_eq!(o.coherence, crate::meta::Coherence::Exclusive);
        assert_eq!(o.metadata_ttl, Duration::from_millis(500));
        assert_eq!(o.metadata_cache_size, 1 << 20);
        assert_eq!(
            MountOptions::default().coherence,
            crate::meta::Coherence::Shared
        );
        assert_eq!(MountOptions::default().metadata_ttl, Duration::from_secs(3));
        assert!(matches!(
            parse("coherence=sometimes"),
            Err(OptionError::BadValue { .. })
        ));
    }

    #[test]
    fn offline_options() {
        let d = MountOptions::default();
        assert_eq!(d.offline, crate::offline::Policy::Auto);
        assert_eq!(d.backing_timeout, None);
        assert_eq!(d.offline_probe_interval, Duration::from_secs(5));
        let o = parse("offline=never,backing_timeout=0.5,offline_probe_interval=2").unwrap();
        assert_eq!(o.offline, crate::offline::Policy::Never);
        assert_eq!(o.backing_timeout, Some(Duration::from_millis(500)));
        assert_eq!(o.offline_probe_interval, Duration::from_secs(2));
        assert!(matches!(
            parse("offline=sometimes"),
            Err(OptionError::BadValue { .. })
        ));
        assert!(matches!(
            parse("offline_probe_interval=0"),
            Err(OptionError::BadValue { .. })
        ));
    }

    #[test]
    fn every_known_option_is_accepted() {
        for name in KNOWN_OPTIONS {
            let mut o = MountOptions::default();
            match o.apply(name) {
                Ok(()) => {}
                // options that need a value are known too: try a plausible one
                Err(OptionError::MissingValue(_)) => {
                    let mut o = MountOptions::default();
                    let ok = ["1", "x", "1M", "lru", "shared", "none", "auto"]
                        .iter()
                        .any(|v| o.apply(&format!("{name}={v}")).is_ok());
                    assert!(ok, "{name}= accepts none of 1, x, 1M, lru, shared, none");
                }
                Err(e) => panic!("KNOWN_OPTIONS lists '{name}' but apply refuses it: {e}"),
            }
        }
        for prefix in IGNORED_PREFIXES {
            let item = format!("{prefix}anything=1");
            assert_eq!(parse(&item), Ok(MountOptions::default()), "{item}");
        }
    }
}
