//! Metrics: the stats in Prometheus' text exposition format (`stats --prometheus`, and the
//! daemon's optional HTTP endpoint `-o metrics=127.0.0.1:PORT`), and the refreshing terminal
//! view of `stats --watch`.
//!
//! # Model
//!
//! Both render the stats JSON object the control socket returns ([`crate::control::stats_value`]),
//! so the client and the daemon print the same thing. [`METRICS`] maps each figure to a metric
//! name, type and help following Prometheus' conventions: a `bcachefs_lite_` prefix, base units
//! (bytes, seconds), `_total` on counters, one metric with a `state` label for the buckets.
//! Every numeric figure of `stats` must be listed in [`METRICS`] or [`NOT_EXPORTED`] (a test
//! checks it), so a new figure is exported on purpose, not by accident.
//!
//! # Threads and what may block
//!
//! The HTTP endpoint is one thread with a `std::net::TcpListener` (loopback unless the address
//! says otherwise); each connection is answered on it with a 5 s read timeout, HTTP/1.0,
//! `Connection: close`. It holds no lock of the cache across socket I/O.

use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use crate::cache::CacheSet;
use crate::fs::inode::FdCache;

/// Counter or gauge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

/// One exported metric: the stats figure it comes from, and how it is exposed. Metrics that
/// share a `name` are one family, told apart by a label (`label`: name and value).
pub struct Metric {
    pub figure: &'static str,
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
    pub label: Option<(&'static str, &'static str)>,
}

const fn m(figure: &'static str, name: &'static str, kind: Kind, help: &'static str) -> Metric {
    Metric {
        figure,
        name,
        kind,
        help,
        label: None,
    }
}

/// Buckets by what they hold (the states partition the cache file).
const fn bucket(figure: &'static str, state: &'static str) -> Metric {
    Metric {
        figure,
        name: "bcachefs_lite_buckets",
        kind: Kind::Gauge,
        help: "Buckets of the cache file by what they hold",
        label: Some(("state", state)),
    }
}

/// Buckets on the allocator's lists (a bucket there is also counted by its state).
const fn list(figure: &'static str, list: &'static str) -> Metric {
    Metric {
        figure,
        name: "bcachefs_lite_bucket_lists",
        kind: Kind::Gauge,
        help: "Buckets on the allocator's free, free_inc and open lists",
        label: Some(("list", list)),
    }
}

use Kind::{Counter, Gauge};

/// Every exported figure, in output order.
pub const METRICS: &[Metric] = &[
    m(
        "cache_hits",
        "bcachefs_lite_cache_hits_total",
        Counter,
        "Reads served entirely from the cache",
    ),
    m(
        "cache_misses",
        "bcachefs_lite_cache_misses_total",
        Counter,
        "Reads that needed the backing",
    ),
    m(
        "cache_bypass_hits",
        "bcachefs_lite_cache_bypass_hits_total",
        Counter,
        "Hits of reads past the sequential cutoff",
    ),
    m(
        "cache_bypass_misses",
        "bcachefs_lite_cache_bypass_misses_total",
        Counter,
        "Misses of reads past the sequential cutoff (not cached)",
    ),
    m(
        "bypassed",
        "bcachefs_lite_bypassed_bytes_total",
        Counter,
        "Bytes read past the sequential cutoff",
    ),
    m(
        "cache_miss_collisions",
        "bcachefs_lite_cache_miss_collisions_total",
        Counter,
        "Fills thrown away because a change raced with them",
    ),
    m(
        "cache_readaheads",
        "bcachefs_lite_readahead_bytes_total",
        Counter,
        "Bytes read ahead after misses",
    ),
    m(
        "cache_read_races",
        "bcachefs_lite_cache_read_races_total",
        Counter,
        "Keys that went stale between lookup and read",
    ),
    m(
        "checksum_errors",
        "bcachefs_lite_checksum_errors_total",
        Counter,
        "Cached extents whose crc32c did not match",
    ),
    m(
        "stale_pointers",
        "bcachefs_lite_stale_pointers_total",
        Counter,
        "Pointers found stale (bucket reused)",
    ),
    m(
        "bytes_hit",
        "bcachefs_lite_hit_bytes_total",
        Counter,
        "Bytes served from the cache",
    ),
    m(
        "bytes_missed",
        "bcachefs_lite_missed_bytes_total",
        Counter,
        "Bytes read from the backing on misses",
    ),
    m(
        "bytes_filled",
        "bcachefs_lite_filled_bytes_total",
        Counter,
        "Bytes written into the cache file",
    ),
    m(
        "fills_skipped",
        "bcachefs_lite_fills_skipped_total",
        Counter,
        "Fills skipped for want of a free bucket",
    ),
    m(
        "invalidations",
        "bcachefs_lite_invalidations_total",
        Counter,
        "Files whose cached data was dropped after an outside change",
    ),
    m(
        "buckets_total",
        "bcachefs_lite_bucket_count",
        Gauge,
        "Buckets in the cache file",
    ),
    bucket("buckets_unused", "unused"),
    bucket("buckets_data", "data"),
    bucket("buckets_dirty", "dirty"),
    // writeback (issue 13)
    m(
        "dirty_data",
        "bcachefs_lite_dirty_bytes",
        Gauge,
        "Bytes written to the cache not yet written back to the backing",
    ),
    m(
        "dirty_files",
        "bcachefs_lite_dirty_files",
        Gauge,
        "Files holding dirty data",
    ),
    m(
        "writeback_rate",
        "bcachefs_lite_writeback_rate_bytes",
        Gauge,
        "Bytes per second written back over the last second",
    ),
    m(
        "writeback_rate_target",
        "bcachefs_lite_writeback_rate_target_bytes",
        Gauge,
        "Bytes per second the writeback rate controller allows now",
    ),
    m(
        "writeback_running",
        "bcachefs_lite_writeback_running",
        Gauge,
        "1 while a writeback pass runs",
    ),
    m(
        "writeback_errors",
        "bcachefs_lite_writeback_errors_total",
        Counter,
        "Writebacks of a file that failed (retried with backoff; the data stays dirty)",
    ),
    m(
        "writeback_conflicts",
        "bcachefs_lite_writeback_conflicts_total",
        Counter,
        "Files with dirty data changed outside the mount (the other version kept as NAME.conflict-TIME)",
    ),
    m(
        "writeback_bytes",
        "bcachefs_lite_writeback_bytes_total",
        Counter,
        "Bytes written back to the backing",
    ),
    bucket("buckets_metadata", "metadata"),
    list("buckets_free", "free"),
    list("buckets_free_inc", "free_inc"),
    list("buckets_open", "open"),
    m(
        "buckets_invalidated",
        "bcachefs_lite_buckets_invalidated_total",
        Counter,
        "Buckets invalidated (evictions)",
    ),
    m(
        "gens_checkpoints",
        "bcachefs_lite_gens_checkpoints_total",
        Counter,
        "Gens checkpoints written",
    ),
    m(
        "discards",
        "bcachefs_lite_discards_total",
        Counter,
        "Buckets punched out of the cache file",
    ),
    m(
        "journal_entries",
        "bcachefs_lite_journal_entries_total",
        Counter,
        "Journal entries written",
    ),
    m(
        "index_checkpoints",
        "bcachefs_lite_index_checkpoints_total",
        Counter,
        "Index checkpoints written",
    ),
    m(
        "metadata_checkpoints",
        "bcachefs_lite_metadata_checkpoints_total",
        Counter,
        "Metadata cache checkpoints written (periodic and at unmount)",
    ),
    m(
        "gc_runs",
        "bcachefs_lite_gc_runs_total",
        Counter,
        "Garbage collection runs",
    ),
    m(
        "gc_stale_keys_dropped",
        "bcachefs_lite_gc_stale_keys_dropped_total",
        Counter,
        "Stale keys GC dropped",
    ),
    m(
        "index_files",
        "bcachefs_lite_index_files",
        Gauge,
        "Files with cached data",
    ),
    m(
        "index_extents",
        "bcachefs_lite_index_extents",
        Gauge,
        "Extents in the key index",
    ),
    m(
        "cached_bytes",
        "bcachefs_lite_cached_bytes",
        Gauge,
        "Bytes of file data cached",
    ),
    m(
        "index_memory_bytes",
        "bcachefs_lite_index_memory_bytes",
        Gauge,
        "Estimated memory of the key index",
    ),
    m(
        "io_errors",
        "bcachefs_lite_io_errors_total",
        Counter,
        "Failed reads, writes or fsyncs of the cache file",
    ),
    m(
        "uncacheable_files",
        "bcachefs_lite_uncacheable_files_total",
        Counter,
        "Files served from the backing only (no file id)",
    ),
    m(
        "open_file_states",
        "bcachefs_lite_open_file_states",
        Gauge,
        "Files whose cache state is held",
    ),
    m(
        "sequential_cutoff",
        "bcachefs_lite_sequential_cutoff_bytes",
        Gauge,
        "Sequential cutoff in force (0: off)",
    ),
    m(
        "probation_bytes_filled",
        "bcachefs_lite_probation_filled_bytes_total",
        Counter,
        "Bytes filled on probation (streams past probation_after)",
    ),
    m(
        "probation_buckets",
        "bcachefs_lite_probation_buckets_opened_total",
        Counter,
        "Buckets opened at probation prio (streaming fills)",
    ),
    m(
        "probation_promotions",
        "bcachefs_lite_probation_promotions_total",
        Counter,
        "Probation buckets promoted by a hit",
    ),
    m(
        "evicted_never_hit",
        "bcachefs_lite_evicted_never_hit_total",
        Counter,
        "Buckets evicted without a hit since they were filled",
    ),
    m(
        "evicted_probation",
        "bcachefs_lite_evicted_probation_total",
        Counter,
        "Buckets evicted while on probation",
    ),
    m(
        "probation_after",
        "bcachefs_lite_probation_after_bytes",
        Gauge,
        "probation_after in force (0: off)",
    ),
    m(
        "pinned_bytes",
        "bcachefs_lite_pinned_bytes",
        Gauge,
        "Bytes in buckets pinned by warm --pin",
    ),
    m(
        "pin_limit",
        "bcachefs_lite_pin_limit_bytes",
        Gauge,
        "Most bytes warm --pin may pin",
    ),
    m(
        "inodes_known",
        "bcachefs_lite_inodes_known",
        Gauge,
        "Inodes the kernel knows",
    ),
    m(
        "inodes_without_handle",
        "bcachefs_lite_inodes_without_handle",
        Gauge,
        "Inodes holding a descriptor (no file handle)",
    ),
    m(
        "inode_fds_cached",
        "bcachefs_lite_inode_fds_cached",
        Gauge,
        "Inode descriptors in the descriptor cache",
    ),
    m(
        "inode_fd_cache_capacity",
        "bcachefs_lite_inode_fd_cache_capacity",
        Gauge,
        "Capacity of the descriptor cache",
    ),
    m(
        "inode_fd_reopens",
        "bcachefs_lite_inode_fd_reopens_total",
        Counter,
        "Inode descriptors reopened from a file handle",
    ),
    m(
        "inode_fd_evictions",
        "bcachefs_lite_inode_fd_evictions_total",
        Counter,
        "Inode descriptors evicted",
    ),
    m(
        "inode_fd_stale",
        "bcachefs_lite_inode_fd_stale_total",
        Counter,
        "File handles found stale",
    ),
    m(
        "descriptors_open",
        "bcachefs_lite_descriptors_open",
        Gauge,
        "Descriptors the daemon holds",
    ),
    m(
        "descriptor_limit",
        "bcachefs_lite_descriptor_limit",
        Gauge,
        "The daemon's RLIMIT_NOFILE soft limit",
    ),
    m(
        "metadata_hits",
        "bcachefs_lite_metadata_hits_total",
        Counter,
        "Metadata requests answered from the metadata cache",
    ),
    m(
        "metadata_misses",
        "bcachefs_lite_metadata_misses_total",
        Counter,
        "Metadata requests the metadata cache could not answer",
    ),
    m(
        "metadata_revalidations",
        "bcachefs_lite_metadata_revalidations_total",
        Counter,
        "Expired metadata entries checked with one stat",
    ),
    m(
        "metadata_outside_changes",
        "bcachefs_lite_metadata_outside_changes_total",
        Counter,
        "Changes made outside the mount that the metadata cache noticed",
    ),
    m(
        "metadata_evictions",
        "bcachefs_lite_metadata_evictions_total",
        Counter,
        "Metadata entries evicted to stay within the budget",
    ),
    m(
        "metadata_sweep_checks",
        "bcachefs_lite_metadata_sweep_checks_total",
        Counter,
        "Directories checked by the exclusive-mode sweep",
    ),
    m(
        "metadata_entries",
        "bcachefs_lite_metadata_entries",
        Gauge,
        "Inodes and directories in the metadata cache",
    ),
    m(
        "metadata_inodes",
        "bcachefs_lite_metadata_inodes",
        Gauge,
        "Inodes in the metadata cache",
    ),
    m(
        "metadata_dirs",
        "bcachefs_lite_metadata_dirs",
        Gauge,
        "Directories in the metadata cache",
    ),
    m(
        "metadata_bytes",
        "bcachefs_lite_metadata_bytes",
        Gauge,
        "Memory the metadata cache uses",
    ),
    m(
        "metadata_budget_bytes",
        "bcachefs_lite_metadata_budget_bytes",
        Gauge,
        "The metadata cache's memory budget",
    ),
    m(
        "backing_metadata_calls",
        "bcachefs_lite_backing_metadata_calls_total",
        Counter,
        "Metadata syscalls made on the backing for requests",
    ),
    m(
        "flush_requests",
        "bcachefs_lite_flush_requests_total",
        Counter,
        "FLUSH requests served (a read-only open gets none)",
    ),
    m(
        "open_requests",
        "bcachefs_lite_open_requests_total",
        Counter,
        "OPEN and OPENDIR requests that reached the daemon (exclusive mode: at most one of each)",
    ),
    m(
        "implicit_handles",
        "bcachefs_lite_implicit_handles",
        Gauge,
        "Backing descriptors the daemon holds for files opened without an OPEN (no_open)",
    ),
    // offline mode (issue 16)
    m(
        "offline",
        "bcachefs_lite_offline",
        Gauge,
        "1 while the backing is unreachable and the mount serves from its caches",
    ),
    m(
        "offline_transitions",
        "bcachefs_lite_offline_transitions_total",
        Counter,
        "Switches from online to offline",
    ),
    m(
        "offline_served",
        "bcachefs_lite_offline_served_total",
        Counter,
        "Requests answered from the caches while offline",
    ),
    m(
        "offline_refused",
        "bcachefs_lite_offline_refused_total",
        Counter,
        "Requests refused while offline (not cached, or a write)",
    ),
    m(
        "offline_probes",
        "bcachefs_lite_offline_probes_total",
        Counter,
        "Stats of the backing root made while offline",
    ),
    m(
        "backing_calls_timed_out",
        "bcachefs_lite_backing_calls_timed_out_total",
        Counter,
        "Backing calls abandoned after backing_timeout",
    ),
    m(
        "backing_calls_hung",
        "bcachefs_lite_backing_calls_hung",
        Gauge,
        "Abandoned backing calls that have not returned yet",
    ),
    m(
        "backing_helper_threads",
        "bcachefs_lite_backing_helper_threads",
        Gauge,
        "Helper threads that make bounded backing calls",
    ),
];

/// Numeric figures of `stats` deliberately not exported: ratios and windows Prometheus
/// computes itself from the counters.
/// `metadata_ttl_ms`, `backing_timeout_ms` and `offline_probe_interval_ms` are settings,
/// shown by `get` (in seconds); `backing_network_fs` is a fact of the mount. `fills_pending`
/// is a momentary gauge for tests (fills of replies not yet written), meaningless when
/// scraped.
pub const NOT_EXPORTED: &[&str] = &[
    "cache_hit_ratio",
    "metadata_ttl_ms",
    "fills_pending",
    "backing_timeout_ms",
    "offline_probe_interval_ms",
    "backing_network_fs",
];

fn escape_label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The stats object in the text exposition format (version 0.0.4).
pub fn prometheus_text(stats: &serde_json::Value) -> String {
    let mut out = String::new();
    let mut last_family = "";
    for metric in METRICS {
        let Some(v) = stats.get(metric.figure).and_then(|v| v.as_f64()) else {
            continue;
        };
        if metric.name != last_family {
            let kind = match metric.kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
            };
            let _ = writeln!(out, "# HELP {} {}", metric.name, metric.help);
            let _ = writeln!(out, "# TYPE {} {kind}", metric.name);
            last_family = metric.name;
        }
        match metric.label {
            Some((label, value)) => {
                let _ = writeln!(
                    out,
                    "{}{{{label}=\"{}\"}} {v}",
                    metric.name,
                    escape_label(value)
                );
            }
            None => {
                let _ = writeln!(out, "{} {v}", metric.name);
            }
        }
    }
    let active = stats.get("state").and_then(|s| s.as_str()) == Some("active");
    let _ = writeln!(
        out,
        "# HELP bcachefs_lite_cache_active Whether caching is on (0: stopped after an error)"
    );
    let _ = writeln!(out, "# TYPE bcachefs_lite_cache_active gauge");
    let cache_file = stats
        .get("cache_file")
        .and_then(|s| s.as_str())
        .unwrap_or("");
    let _ = writeln!(
        out,
        "bcachefs_lite_cache_active{{cache_file=\"{}\"}} {}",
        escape_label(cache_file),
        u8::from(active)
    );
    out
}

/// What the endpoint serves: the live stats of one mount.
pub struct Source {
    pub cache: Arc<CacheSet>,
    pub inodes: Option<Arc<FdCache>>,
    pub meta: Option<Arc<crate::meta::MetaCache>>,
}

/// Serves `GET /metrics` on `addr` from its own thread for the life of the daemon.
pub fn serve_http(addr: SocketAddr, source: Source) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let bound = listener.local_addr()?;
    std::thread::Builder::new()
        .name("bcl-metrics".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                if let Err(e) = answer_http(stream, &source) {
                    tracing::debug!("metrics request: {e}");
                }
            }
        })?;
    Ok(bound)
}

fn answer_http(stream: TcpStream, source: &Source) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(&stream).take(16 << 10);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    // the headers, up to the blank line
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
    }
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, ctype, body) = match (method, path.split('?').next().unwrap_or("")) {
        ("GET", "/metrics") | ("GET", "/") => {
            let stats = crate::control::stats_value(
                &source.cache,
                source.inodes.as_deref(),
                source.meta.as_deref(),
            );
            (
                "200 OK",
                "text/plain; version=0.0.4; charset=utf-8",
                prometheus_text(&stats),
            )
        }
        ("GET", _) => ("404 Not Found", "text/plain", "try /metrics\n".to_string()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n".to_string(),
        ),
    };
    let mut w = &stream;
    write!(
        w,
        "HTTP/1.0 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    w.flush()
}

/// Parses `metrics=ADDR`: `PORT` alone or `:PORT` means 127.0.0.1:PORT.
pub fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    let full = if let Ok(port) = s.trim_start_matches(':').parse::<u16>() {
        format!("127.0.0.1:{port}")
    } else {
        s.to_string()
    };
    full.parse()
        .map_err(|_| format!("{s:?}: not an address (e.g. 127.0.0.1:9477)"))
}

/// One frame of `stats --watch`: hit ratio, rates since the previous frame (`prev`, taken
/// `secs` before), buckets by state.
pub fn watch_frame(
    mountpoint: &str,
    now: &serde_json::Value,
    prev: Option<&serde_json::Value>,
    secs: f64,
) -> String {
    let n = |v: &serde_json::Value, k: &str| v.get(k).and_then(|x| x.as_u64()).unwrap_or(0);
    let rate = |k: &str| match prev {
        Some(p) if secs > 0.0 => n(now, k).saturating_sub(n(p, k)) as f64 / secs,
        _ => 0.0,
    };
    let mut o = String::new();
    let state = now.get("state").and_then(|s| s.as_str()).unwrap_or("?");
    let _ = writeln!(o, "bcachefs-lite  {mountpoint}  [{state}]");
    if let Some(why) = now.get("failure").and_then(|s| s.as_str()) {
        let _ = writeln!(o, "  caching stopped: {why}");
    }
    let _ = writeln!(o);
    let (h, m) = (n(now, "cache_hits"), n(now, "cache_misses"));
    let ratio = |w: &str| {
        now.get(w)
            .and_then(|x| x.get("cache_hit_ratio"))
            .and_then(|x| x.as_u64())
            .unwrap_or(0)
    };
    let _ = writeln!(
        o,
        "hit ratio   {:>3}% total   {:>3}% 5 min   {:>3}% hour   ({h} hits, {m} misses)",
        ratio("total"),
        ratio("five_minute"),
        ratio("hour"),
    );
    let (hr, mr) = (rate("cache_hits"), rate("cache_misses"));
    let interval_ratio = if hr + mr > 0.0 {
        format!("{:.0}%", hr * 100.0 / (hr + mr))
    } else {
        "-".into()
    };
    let _ = writeln!(
        o,
        "reads/s     {hr:>9.1} hits   {mr:>9.1} misses   ({interval_ratio} now)"
    );
    let _ = writeln!(
        o,
        "throughput  {:>9} hit   {:>9} missed   {:>9} filled   {:>9} bypassed",
        human_rate(rate("bytes_hit")),
        human_rate(rate("bytes_missed")),
        human_rate(rate("bytes_filled")),
        human_rate(rate("bypassed")),
    );
    let _ = writeln!(
        o,
        "cached      {:>9} in {} files, {} extents",
        human(n(now, "cached_bytes") as f64),
        n(now, "index_files"),
        n(now, "index_extents")
    );
    let _ = writeln!(o);
    let total = n(now, "buckets_total").max(1);
    let _ = writeln!(o, "buckets     {total} total");
    for (label, key) in [
        ("data", "buckets_data"),
        ("dirty", "buckets_dirty"),
        ("metadata", "buckets_metadata"),
        ("unused", "buckets_unused"),
        ("free", "buckets_free"),
        ("free_inc", "buckets_free_inc"),
        ("open", "buckets_open"),
    ] {
        let v = n(now, key);
        let width = 40;
        let fill = ((v as f64 / total as f64) * width as f64).round() as usize;
        let _ = writeln!(
            o,
            "  {label:<9} {v:>8}  {:<width$}|",
            "#".repeat(fill.min(width))
        );
    }
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "evictions {}   gc runs {}   checksum errors {}   stale pointers {}   io errors {}",
        n(now, "buckets_invalidated"),
        n(now, "gc_runs"),
        n(now, "checksum_errors"),
        n(now, "stale_pointers"),
        n(now, "io_errors"),
    );
    o
}

fn human(b: f64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < units.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{v:.0} {}", units[i])
    } else {
        format!("{v:.1} {}", units[i])
    }
}

fn human_rate(b: f64) -> String {
    format!("{}/s", human(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_conventions() {
        for m in METRICS {
            assert!(m.name.starts_with("bcachefs_lite_"), "{}", m.name);
            assert!(
                m.name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                "{}",
                m.name
            );
            match m.kind {
                Kind::Counter => assert!(m.name.ends_with("_total"), "{}", m.name),
                Kind::Gauge => assert!(!m.name.ends_with("_total"), "{}", m.name),
            }
        }
    }

    #[test]
    fn buckets_are_one_family_with_a_state_label() {
        let stats = serde_json::json!({
            "buckets_free": 3, "buckets_data": 5, "buckets_unused": 1, "state": "active"
        });
        let text = prometheus_text(&stats);
        assert_eq!(
            text.matches("# TYPE bcachefs_lite_buckets gauge").count(),
            1
        );
        assert!(
            text.contains("bcachefs_lite_bucket_lists{list=\"free\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("bcachefs_lite_buckets{state=\"unused\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("bcachefs_lite_buckets{state=\"data\"} 5\n"),
            "{text}"
        );
        assert!(text.contains("bcachefs_lite_cache_active{cache_file=\"\"} 1\n"));
    }

    #[test]
    fn addresses_default_to_loopback() {
        assert_eq!(parse_addr("9477").unwrap().to_string(), "127.0.0.1:9477");
        assert_eq!(parse_addr(":9477").unwrap().to_string(), "127.0.0.1:9477");
        assert_eq!(parse_addr("0.0.0.0:80").unwrap().to_string(), "0.0.0.0:80");
        assert!(parse_addr("localhost:x").is_err());
    }
}
