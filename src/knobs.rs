//! Runtime knobs: the settings `bcachefs-lite set` and `get` change and show on a live mount
//! (bcache's sysfs files).
//!
//! # Model
//!
//! [`KNOBS`] is the one table of knobs. Each row names a knob and gives four plain
//! functions: `parse` (validates a value, no side effects), `get` (the value in force),
//! `set` (applies a parsed value to the live mount) and `base` (where the value comes from
//! when neither a mount option nor `set` gave it: the built-in default or the cache file).
//! Adding a knob is adding a row (and, for a new kind of target, a field of [`Targets`]).
//!
//! [`Knobs`] is the table bound to one mount: the targets the setters act on, and where
//! each value came from ([`Origin`]): default, cache file, mount option, or set.
//!
//! # Invariants
//!
//! * A `set` of several `KEY=VALUE` pairs is all or nothing: every pair is parsed and
//!   validated before anything is applied, and if a setter fails (an I/O error writing the
//!   superblock) the pairs already applied are set back to their old values.
//! * A knob marked `persistent` is written into the cache file by its setter (it survives a
//!   remount, as the mount option of the same name does); the others last until unmount.
//! * Every change is logged (info level) with the old and the new value.
//!
//! # Locks
//!
//! One mutex serialises `set` calls and guards the origins; setters take their target's own
//! locks (the allocator's step lock for `replacement` and `discard`) under it. May block:
//! `replacement` and `discard` write and fdatasync the superblock.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use crate::cache::{CacheSet, MAX_READAHEAD};
use crate::device::format::{CacheMode, Replacement};
use crate::fs::Ttls;
use crate::options::{parse_seconds, parse_size};

/// What the setters act on: the parts of one mount that own a knob's value.
pub struct Targets {
    pub cache: Arc<CacheSet>,
    pub ttls: Arc<Ttls>,
    /// The metadata cache (None with `metadata_cache_size=0`).
    pub meta: Option<Arc<crate::meta::MetaCache>>,
}

/// Where the value in force came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Default,
    CacheFile,
    MountOption,
    Set,
}

impl Origin {
    pub fn name(self) -> &'static str {
        match self {
            Origin::Default => "default",
            Origin::CacheFile => "cache file",
            Origin::MountOption => "mount option",
            Origin::Set => "set",
        }
    }
}

/// A knob's value, typed.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Bytes(u64),
    Seconds(Duration),
    Bool(bool),
    Replacement(Replacement),
    CacheMode(CacheMode),
    /// A share of the cache, 0..=100.
    Percent(u8),
}

impl Value {
    /// The value in JSON (`get --json`): bytes and booleans as such, seconds as a number.
    pub fn json(&self) -> serde_json::Value {
        match self {
            Value::Bytes(b) => (*b).into(),
            Value::Seconds(d) => d.as_secs_f64().into(),
            Value::Bool(b) => (*b).into(),
            Value::Replacement(r) => r.name().into(),
            Value::CacheMode(m) => m.name().into(),
            Value::Percent(p) => (*p).into(),
        }
    }
}

/// Sizes as `set` would take them back: the largest exact K/M/G suffix, else bytes.
impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Bytes(0) => write!(f, "0"),
            Value::Bytes(b) => {
                for (shift, suffix) in [(40, "T"), (30, "G"), (20, "M"), (10, "K")] {
                    if b % (1u64 << shift) == 0 {
                        return write!(f, "{}{suffix}", b >> shift);
                    }
                }
                write!(f, "{b}")
            }
            Value::Seconds(d) => write!(f, "{}", d.as_secs_f64()),
            Value::Bool(b) => write!(f, "{}", if *b { "on" } else { "off" }),
            Value::Replacement(r) => write!(f, "{}", r.name()),
            Value::CacheMode(m) => write!(f, "{}", m.name()),
            Value::Percent(p) => write!(f, "{p}"),
        }
    }
}

/// One row of [`KNOBS`].
pub struct Knob {
    pub name: &'static str,
    /// One line for `get` and the docs.
    pub help: &'static str,
    /// Written into the cache file by `set` (survives a remount).
    pub persistent: bool,
    /// Validates a value; no side effects.
    pub parse: fn(&str) -> Result<Value, String>,
    /// The value in force.
    pub get: fn(&Targets) -> Value,
    /// Applies a value `parse` accepted.
    pub set: fn(&Targets, &Value) -> Result<(), String>,
    /// Where the value comes from when no mount option and no `set` gave it.
    pub base: Origin,
}

fn bytes(v: &str) -> Result<Value, String> {
    parse_size(v).map(Value::Bytes)
}

fn readahead(v: &str) -> Result<Value, String> {
    let b = parse_size(v)?;
    if b > MAX_READAHEAD {
        return Err(format!("{v:?}: at most 64M"));
    }
    Ok(Value::Bytes(b))
}

fn seconds(v: &str) -> Result<Value, String> {
    parse_seconds("", Some(v))
        .map(Value::Seconds)
        .map_err(|_| format!("{v:?}: not a number of seconds between 0 and 1e9"))
}

fn on_off(v: &str) -> Result<Value, String> {
    match v {
        "on" | "1" | "true" | "yes" => Ok(Value::Bool(true)),
        "off" | "0" | "false" | "no" => Ok(Value::Bool(false)),
        _ => Err(format!("{v:?}: must be on or off")),
    }
}

fn replacement(v: &str) -> Result<Value, String> {
    v.parse()
        .map(Value::Replacement)
        .map_err(|_| format!("{v:?}: must be lru, fifo or random"))
}

fn cache_mode(v: &str) -> Result<Value, String> {
    v.parse::<CacheMode>()
        .map(Value::CacheMode)
        .map_err(|e| format!("{v:?}: {e}"))
}

fn percent(v: &str) -> Result<Value, String> {
    match v.trim_end_matches('%').parse::<u8>() {
        Ok(p) if p <= 100 => Ok(Value::Percent(p)),
        _ => Err(format!("{v:?}: must be a percentage, 0 to 100")),
    }
}

fn want_bytes(v: &Value) -> Result<u64, String> {
    match v {
        Value::Bytes(b) => Ok(*b),
        other => Err(format!("expected a size, got {other}")),
    }
}

fn want_seconds(v: &Value) -> Result<Duration, String> {
    match v {
        Value::Seconds(d) => Ok(*d),
        other => Err(format!("expected seconds, got {other}")),
    }
}

/// Every runtime knob. Keep in step with docs/bcachefs-lite.8 ("RUNTIME SETTINGS";
/// `tests/knobs.rs` checks the man page names each one).
pub const KNOBS: &[Knob] = &[
    Knob {
        name: "sequential_cutoff",
        help: "a process streaming more than this bypasses the cache (0: never)",
        persistent: false,
        parse: bytes,
        get: |t| Value::Bytes(t.cache.sequential_cutoff()),
        set: |t, v| {
            t.cache.set_sequential_cutoff(want_bytes(v)?);
            Ok(())
        },
        base: Origin::Default,
    },
    Knob {
        name: "probation_after",
        help: "a process streaming more than this is cached on probation, evicted first (0: off)",
        persistent: false,
        parse: bytes,
        get: |t| Value::Bytes(t.cache.probation_after()),
        set: |t, v| {
            t.cache.set_probation_after(want_bytes(v)?);
            Ok(())
        },
        base: Origin::Default,
    },
    Knob {
        name: "cache_mode",
        help: "how writes use the cache: writethrough, writeback, writearound or none (leaving writeback flushes first)",
        persistent: false,
        parse: cache_mode,
        get: |t| Value::CacheMode(t.cache.cache_mode()),
        set: |t, v| match v {
            Value::CacheMode(m) => t
                .cache
                .set_cache_mode(*m)
                .map(|_| ())
                .map_err(|e| e.to_string()),
            other => Err(format!("expected a cache mode, got {other}")),
        },
        base: Origin::CacheFile,
    },
    // ---- writeback (issue 13) ----
    Knob {
        name: "writeback_delay",
        help: "writeback: a file is written back once idle this long (below writeback_percent)",
        persistent: false,
        parse: seconds,
        get: |t| {
            Value::Seconds(Duration::from_millis(
                t.cache.writeback().delay_ms.load(Ordering::Relaxed),
            ))
        },
        set: |t, v| {
            let d = want_seconds(v)?;
            t.cache
                .writeback()
                .delay_ms
                .store(d.as_millis().min(u128::from(u64::MAX)) as u64, Ordering::Relaxed);
            Ok(())
        },
        base: Origin::Default,
    },
    Knob {
        name: "writeback_percent",
        help: "writeback: above this share of the cache dirty, write back at once",
        persistent: false,
        parse: percent,
        get: |t| Value::Percent(t.cache.writeback().percent.load(Ordering::Relaxed)),
        set: |t, v| match v {
            Value::Percent(p) => {
                t.cache.writeback().percent.store(*p, Ordering::Relaxed);
                t.cache.writeback().kick();
                Ok(())
            }
            other => Err(format!("expected a percentage, got {other}")),
        },
        base: Origin::Default,
    },
    Knob {
        name: "readahead",
        help: "extra bytes read from the backing after a miss, and cached (at most 64M)",
        persistent: false,
        parse: readahead,
        get: |t| Value::Bytes(t.cache.readahead()),
        set: |t, v| {
            t.cache.set_readahead(want_bytes(v)?);
            Ok(())
        },
        base: Origin::Default,
    },
    Knob {
        name: "replacement",
        help: "which buckets the allocator invalidates first: lru, fifo or random",
        persistent: true,
        parse: replacement,
        get: |t| Value::Replacement(t.cache.alloc().replacement()),
        set: |t, v| match v {
            Value::Replacement(r) => t
                .cache
                .alloc()
                .set_policy(Some(*r), None)
                .map_err(|e| e.to_string()),
            other => Err(format!("expected lru, fifo or random, got {other}")),
        },
        base: Origin::CacheFile,
    },
    Knob {
        name: "discard",
        help: "punch freed buckets out of the cache file (on/off)",
        persistent: true,
        parse: on_off,
        get: |t| Value::Bool(t.cache.alloc().discard()),
        set: |t, v| match v {
            Value::Bool(d) => t
                .cache
                .alloc()
                .set_policy(None, Some(*d))
                .map_err(|e| e.to_string()),
            other => Err(format!("expected on or off, got {other}")),
        },
        base: Origin::CacheFile,
    },
    Knob {
        name: "pin_limit",
        help: "most bytes warm --pin may pin (what is pinned stays pinned when lowered)",
        persistent: false,
        parse: bytes,
        get: |t| Value::Bytes(t.cache.pin_limit()),
        set: |t, v| {
            t.cache.set_pin_limit(want_bytes(v)?);
            Ok(())
        },
        base: Origin::Default,
    },
    Knob {
        name: "attr_timeout",
        help: "seconds the kernel may trust attributes (replies from now on); also how \
               often reads re-check an open file against the backing",
        persistent: false,
        parse: seconds,
        get: |t| Value::Seconds(t.ttls.attr()),
        set: |t, v| {
            let d = want_seconds(v)?;
            t.ttls.set_attr(d);
            t.cache.set_revalidate_interval(d);
            Ok(())
        },
        base: Origin::Default,
    },
    Knob {
        name: "metadata_ttl",
        help: "seconds cached metadata is trusted before one stat revalidates it (shared \
               coherence; also for entries already cached)",
        persistent: false,
        parse: seconds,
        get: |t| Value::Seconds(t.meta.as_ref().map_or(Duration::ZERO, |m| m.ttl())),
        set: |t, v| {
            let d = want_seconds(v)?;
            match &t.meta {
                Some(m) => {
                    m.set_ttl(d);
                    Ok(())
                }
                None => Err("this mount has no metadata cache (metadata_cache_size=0)".into()),
            }
        },
        base: Origin::Default,
    },
    Knob {
        name: "entry_timeout",
        help: "seconds the kernel may trust a name lookup (replies from now on)",
        persistent: false,
        parse: seconds,
        get: |t| Value::Seconds(t.ttls.entry()),
        set: |t, v| {
            t.ttls.set_entry(want_seconds(v)?);
            Ok(())
        },
        base: Origin::Default,
    },
    // offline mode (issue 16): the daemon's one `crate::offline::Offline`
    Knob {
        name: "offline",
        help: "true: serve from the caches only, read-only, until set false (e.g. before \
               unplugging); false: back online now (auto detection goes on either way)",
        persistent: false,
        parse: on_off,
        get: |_| Value::Bool(crate::offline::is_offline()),
        set: |_, v| match v {
            Value::Bool(b) => offline_state()?.force(*b),
            other => Err(format!("expected true or false, got {other}")),
        },
        base: Origin::Default,
    },
    Knob {
        name: "backing_timeout",
        help: "seconds a backing call may take before the mount goes offline (0: calls \
               made inline, hangs not detected; the default on a local backing, 10 on a \
               network or FUSE one)",
        persistent: false,
        parse: seconds,
        get: |_| {
            Value::Seconds(crate::offline::get().map_or(Duration::ZERO, |o| o.backing_timeout()))
        },
        set: |_, v| {
            offline_state()?.set_backing_timeout(want_seconds(v)?);
            Ok(())
        },
        base: Origin::Default,
    },
    Knob {
        name: "offline_probe_interval",
        help: "seconds between stats of the backing root while offline",
        persistent: false,
        parse: |v| match seconds(v)? {
            Value::Seconds(d) if d < Duration::from_millis(10) => {
                Err(format!("{v:?}: at least 0.01 seconds"))
            }
            ok => Ok(ok),
        },
        get: |_| {
            Value::Seconds(crate::offline::get().map_or(Duration::ZERO, |o| o.probe_interval()))
        },
        set: |_, v| {
            offline_state()?.set_probe_interval(want_seconds(v)?);
            Ok(())
        },
        base: Origin::Default,
    },
];

/// The daemon's offline state (a mount without one: no cache, or it could not start).
fn offline_state() -> Result<&'static Arc<crate::offline::Offline>, String> {
    crate::offline::get().ok_or_else(|| "this mount has no offline mode".to_string())
}

/// The knob called `name`.
pub fn knob(name: &str) -> Option<&'static Knob> {
    KNOBS.iter().find(|k| k.name == name)
}

fn unknown(name: &str) -> String {
    let names: Vec<&str> = KNOBS.iter().map(|k| k.name).collect();
    format!("unknown setting '{name}' (known: {})", names.join(", "))
}

/// One knob as `get` shows it.
#[derive(Clone)]
pub struct Shown {
    pub knob: &'static Knob,
    pub value: Value,
    pub origin: Origin,
}

impl Shown {
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "name": self.knob.name,
            "value": self.value.json(),
            "text": self.value.to_string(),
            "origin": self.origin.name(),
            "persistent": self.knob.persistent,
            "help": self.knob.help,
        })
    }
}

/// The knob table bound to one mount.
pub struct Knobs {
    targets: Targets,
    /// Knobs whose origin is not their row's `base`; also serialises `set`.
    origins: Mutex<HashMap<&'static str, Origin>>,
}

impl Knobs {
    /// `given`: the mount options the `-o` list set ([`crate::options::MountOptions::given`]).
    pub fn new(targets: Targets, given: &BTreeSet<String>) -> Knobs {
        let origins = KNOBS
            .iter()
            .filter(|k| given.contains(k.name))
            .map(|k| (k.name, Origin::MountOption))
            .collect();
        Knobs {
            targets,
            origins: Mutex::new(origins),
        }
    }

    fn show(&self, k: &'static Knob, origins: &HashMap<&'static str, Origin>) -> Shown {
        Shown {
            knob: k,
            value: (k.get)(&self.targets),
            origin: origins.get(k.name).copied().unwrap_or(k.base),
        }
    }

    /// The knobs `names` (all of them when empty), in table order for an empty list.
    pub fn get(&self, names: &[String]) -> Result<Vec<Shown>, String> {
        let origins = self.origins.lock();
        if names.is_empty() {
            return Ok(KNOBS.iter().map(|k| self.show(k, &origins)).collect());
        }
        names
            .iter()
            .map(|n| {
                knob(n)
                    .map(|k| self.show(k, &origins))
                    .ok_or_else(|| unknown(n))
            })
            .collect()
    }

    /// Applies `KEY=VALUE` pairs, all or nothing (module header). Returns the knobs as
    /// they are now.
    pub fn set(&self, pairs: &[String]) -> Result<Vec<Shown>, String> {
        if pairs.is_empty() {
            return Err("nothing to set: give KEY=VALUE".into());
        }
        let mut parsed = Vec::new();
        for pair in pairs {
            let (name, value) = pair
                .split_once('=')
                .ok_or_else(|| format!("'{pair}': expected KEY=VALUE"))?;
            let k = knob(name.trim()).ok_or_else(|| unknown(name.trim()))?;
            let v = (k.parse)(value.trim()).map_err(|e| format!("{}: {e}", k.name))?;
            parsed.push((k, v));
        }
        let mut origins = self.origins.lock();
        let mut done: Vec<(&'static Knob, Value)> = Vec::new();
        for (k, v) in &parsed {
            let old = (k.get)(&self.targets);
            if let Err(e) = (k.set)(&self.targets, v) {
                for (k, old) in done.iter().rev() {
                    if let Err(e) = (k.set)(&self.targets, old) {
                        tracing::error!(knob = k.name, "cannot set back {old}: {e}");
                    }
                }
                return Err(format!("{}: {e}; nothing was changed", k.name));
            }
            done.push((k, old));
        }
        for ((k, v), (_, old)) in parsed.iter().zip(&done) {
            tracing::info!(knob = k.name, old = %old, new = %v, "setting changed");
            origins.insert(k.name, Origin::Set);
        }
        Ok(parsed.iter().map(|(k, _)| self.show(k, &origins)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_print_as_set_takes_them() {
        for (text, parse) in [
            ("4M", bytes as fn(&str) -> Result<Value, String>),
            ("0", bytes),
            ("4097", bytes),
            ("3G", bytes),
            ("0.5", seconds),
            ("on", on_off),
            ("off", on_off),
            ("fifo", replacement),
        ] {
            let v = parse(text).unwrap();
            assert_eq!(v.to_string(), text);
            assert_eq!(parse(&v.to_string()).unwrap(), v);
        }
        assert!(readahead("65M").is_err());
        assert!(seconds("-1").is_err());
        assert!(on_off("maybe").is_err());
        assert!(replacement("mru").is_err());
    }

    #[test]
    fn names_are_unique() {
        let names: BTreeSet<&str> = KNOBS.iter().map(|k| k.name).collect();
        assert_eq!(names.len(), KNOBS.len());
    }
}
