//! The `bcachefs-lite` command: parses arguments and dispatches into the library.
//!
//! Exit codes: 0 success; 1 an operation failed or options were refused; 2 the file
//! is not a usable cache file (bad magic, version, checksum, truncated, no valid
//! checkpoint) or the command line is malformed; 32 a mount failed (as mount(8)).

use std::path::PathBuf;
use std::process::ExitCode;

use bcachefs_lite::cli_cache::{self, parse_size, FormatArgs};
use bcachefs_lite::daemon::{self, MountRequest};
use bcachefs_lite::options::MountOptions;
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "bcachefs-lite",
    version,
    about = "A FUSE caching filesystem for slow directories, with a bcache-style cache file"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Mount BACKING at MOUNTPOINT.
    Mount(MountArgs),
    /// Create a cache file.
    Format {
        /// Path of the cache file to create.
        cache_file: PathBuf,
        #[command(flatten)]
        args: FormatArgs,
    },
    /// Show the live statistics of the cache mounted at MOUNTPOINT.
    Stats {
        mountpoint: PathBuf,
        /// Print JSON.
        #[arg(long, conflicts_with_all = ["prometheus", "watch"])]
        json: bool,
        /// Print the Prometheus text exposition format.
        #[arg(long, conflicts_with = "watch")]
        prometheus: bool,
        /// A refreshing view: hit ratio, rates, buckets by state (Ctrl-C ends it).
        #[arg(long)]
        watch: bool,
        /// Seconds between refreshes of --watch.
        #[arg(long, value_name = "SECS", default_value_t = 1.0, requires = "watch")]
        interval: f64,
        /// Stop --watch after N frames.
        #[arg(long, value_name = "N", requires = "watch")]
        count: Option<u64>,
    },
    /// Change runtime settings of the live mount at MOUNTPOINT (all or nothing).
    ///
    /// Settings: sequential_cutoff=SIZE, readahead=SIZE, replacement=lru|fifo|random,
    /// discard=on|off, attr_timeout=SECS, entry_timeout=SECS. replacement and discard are
    /// written into the cache file; the others last until unmount.
    Set {
        mountpoint: PathBuf,
        /// KEY=VALUE pairs.
        #[arg(required = true, value_name = "KEY=VALUE")]
        settings: Vec<String>,
    },
    /// Show runtime settings of the mount at MOUNTPOINT, and where each came from
    /// (default, cache file, mount option, set).
    Get {
        mountpoint: PathBuf,
        /// Settings to show (default: all).
        #[arg(value_name = "KEY")]
        keys: Vec<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run garbage collection (and moving GC) on the mount at MOUNTPOINT now, and wait.
    Gc { mountpoint: PathBuf },
    /// Write every dirty byte of the mount at MOUNTPOINT back to the backing now (writeback),
    /// with a progress bar of the dirty bytes left; returns when nothing is dirty.
    Flush {
        mountpoint: PathBuf,
        /// Give up (exit status 1, the data stays dirty) after SECS seconds.
        #[arg(long, value_name = "SECS")]
        timeout: Option<f64>,
    },
    /// Drop the cached data of PATHs (files or trees inside the mount; default: all).
    Drop {
        mountpoint: PathBuf,
        /// Files or directories inside the mount.
        paths: Vec<PathBuf>,
    },
    /// Read files or trees inside a mount into its cache, with a progress bar and a summary;
    /// what is cached already is not read from the backing again.
    Warm {
        /// Files or directories inside a bcachefs-lite mount.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Parallel requests.
        #[arg(long, short = 'j', value_name = "N", default_value_t = 4)]
        jobs: usize,
        /// Pin the data against eviction (bounded by the mount's pin_limit; kept across
        /// remounts; `unpin` releases it).
        #[arg(long)]
        pin: bool,
        /// Print the summary as JSON (no progress bar).
        #[arg(long)]
        json: bool,
    },
    /// Release the pins `warm --pin` set on files or trees inside a mount.
    Unpin {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Check a cache file that is not mounted: superblock, journal, gens and index
    /// checkpoints, every key against the design's invariants, every block's crc32c.
    ///
    /// Exit status as fsck(8): 0 clean, 1 errors corrected, 4 errors left uncorrected,
    /// 8 operational error (mounted, not a cache file), 16 usage error.
    Fsck {
        cache_file: PathBuf,
        /// Drop every key an error names and rewrite the checkpoints.
        #[arg(long)]
        repair: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the superblock of a cache file.
    ShowSuper {
        cache_file: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct MountArgs {
    /// The slow directory to serve.
    backing: PathBuf,
    /// Where to mount it.
    mountpoint: PathBuf,
    /// Comma-separated mount options: allow_other, default_permissions, ro,
    /// attr_timeout=SECS, entry_timeout=SECS, fsname=NAME, dev, suid, noexec, noatime;
    /// cache=FILE, cache_size=SIZE, replacement=lru|fifo|random, sequential_cutoff=SIZE,
    /// probation_after=SIZE, readahead=SIZE, discard, nodiscard, reformat,
    /// cache_mode=writethrough|writearound|none, metrics=ADDR, pin_limit=SIZE.
    #[arg(short = 'o', value_name = "OPT,...")]
    options: Vec<String>,
    /// The cache file (same as -o cache=FILE).
    #[arg(long, value_name = "FILE")]
    cache: Option<PathBuf>,
    /// Size of a new cache file (same as -o cache_size=SIZE).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    cache_size: Option<u64>,
    /// Stay in the foreground; unmount cleanly on SIGINT/SIGTERM.
    #[arg(short, long)]
    foreground: bool,
    /// FUSE worker threads (default: one per core, at least 2).
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// Write the daemon's log here (level: BCACHEFS_LITE_LOG, default warn).
    #[arg(long, value_name = "FILE")]
    log_file: Option<PathBuf>,
}

fn mount(args: MountArgs) -> ExitCode {
    let mut options = MountOptions::default();
    for list in &args.options {
        if let Err(e) = options.apply(list) {
            eprintln!("bcachefs-lite: {e}");
            return ExitCode::from(daemon::EXIT_USAGE as u8);
        }
    }
    if args.cache.is_some() {
        options.cache = args.cache;
    }
    if args.cache_size.is_some() {
        options.cache_size = args.cache_size;
    }
    let mut req = MountRequest {
        backing: args.backing,
        mountpoint: args.mountpoint,
        options,
        foreground: args.foreground,
        threads: args.threads.unwrap_or_else(daemon::default_threads),
        log_file: args.log_file,
    };
    match daemon::validate(&mut req).and_then(|()| daemon::run(req)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bcachefs-lite: {}", e.message);
            ExitCode::from(e.exit_code as u8)
        }
    }
}

/// How `stats` prints.
enum StatsView {
    Text,
    Json,
    Prometheus,
    Watch { interval: f64, count: Option<u64> },
}

fn stats(mountpoint: &std::path::Path, view: StatsView) -> ExitCode {
    use bcachefs_lite::{control, metrics};
    let mountpoint = canonical(mountpoint);
    let fetch = || control::request(&mountpoint, "stats").map(|r| r["stats"].clone());
    let result = match view {
        StatsView::Text => fetch().map(|s| print!("{}", control::stats_text(&s))),
        StatsView::Json => fetch().map(|s| print!("{}", control::stats_json(&s))),
        StatsView::Prometheus => fetch().map(|s| print!("{}", metrics::prometheus_text(&s))),
        StatsView::Watch { interval, count } => (|| {
            use std::io::Write;
            let interval = std::time::Duration::from_secs_f64(interval.clamp(0.05, 3600.0));
            let mut prev: Option<(serde_json::Value, std::time::Instant)> = None;
            let mut frames = 0u64;
            loop {
                let now = fetch()?;
                let at = std::time::Instant::now();
                let secs = prev
                    .as_ref()
                    .map_or(0.0, |(_, t)| at.duration_since(*t).as_secs_f64());
                let frame = metrics::watch_frame(
                    &mountpoint.to_string_lossy(),
                    &now,
                    prev.as_ref().map(|(p, _)| p),
                    secs,
                );
                // home, clear, frame: a refreshing view in any terminal
                print!("\x1b[H\x1b[2J{frame}");
                std::io::stdout().flush()?;
                prev = Some((now, at));
                frames += 1;
                if count.is_some_and(|c| frames >= c) {
                    return Ok(());
                }
                std::thread::sleep(interval);
            }
        })(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bcachefs-lite: {e}");
            ExitCode::from(1)
        }
    }
}

fn canonical(p: &std::path::Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

/// `get` and `set` print one setting a line: name, value, origin.
fn print_knobs(reply: &serde_json::Value, json: bool) {
    let list = reply["knobs"].as_array().cloned().unwrap_or_default();
    if json {
        let mut s = serde_json::to_string_pretty(&list).unwrap_or_default();
        s.push('\n');
        print!("{s}");
        return;
    }
    for k in list {
        println!(
            "{:<20} {:<10} ({})",
            k["name"].as_str().unwrap_or(""),
            k["text"].as_str().unwrap_or(""),
            k["origin"].as_str().unwrap_or("")
        );
    }
}

/// The control commands that talk to a live mount: set, get, gc, drop.
fn control(cmd: Cmd) -> ExitCode {
    use bcachefs_lite::control::request_args;
    let result = match cmd {
        Cmd::Set {
            mountpoint,
            settings,
        } => request_args(&canonical(&mountpoint), "set", settings).map(|r| print_knobs(&r, false)),
        Cmd::Get {
            mountpoint,
            keys,
            json,
        } => request_args(&canonical(&mountpoint), "get", keys).map(|r| print_knobs(&r, json)),
        Cmd::Gc { mountpoint } => {
            request_args(&canonical(&mountpoint), "gc", Vec::new()).map(|r| {
                println!(
                    "gc done: {} stale keys dropped, {} bytes compacted, {} buckets unused",
                    r["stale_keys_dropped"], r["moved_bytes"], r["buckets_unused"]
                )
            })
        }
        Cmd::Drop { mountpoint, paths } => {
            let mnt = canonical(&mountpoint);
            let mut rels = Vec::new();
            for p in &paths {
                // the path as the mount sees it, relative to the mount point
                let full = canonical(p);
                match full.strip_prefix(&mnt) {
                    Ok(rel) if rel.as_os_str().is_empty() => rels.push(".".to_string()),
                    Ok(rel) => rels.push(rel.to_string_lossy().into_owned()),
                    Err(_) => {
                        eprintln!(
                            "bcachefs-lite: {} is not inside the mount {}",
                            p.display(),
                            mnt.display()
                        );
                        return ExitCode::from(1);
                    }
                }
            }
            request_args(&mnt, "drop", rels).map(|r| {
                println!(
                    "dropped {} bytes of cached data from {} files",
                    r["bytes"], r["files"]
                )
            })
        }
        _ => unreachable!("not a control command"),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bcachefs-lite: {e}");
            ExitCode::from(1)
        }
    }
}

/// `bcachefs-lite flush`: asks the daemon to write everything back, then follows
/// `dirty_data` in its stats with a progress bar until it is 0.
fn flush(mnt: &std::path::Path, timeout: Option<f64>) -> ExitCode {
    use bcachefs_lite::control::request;
    let start = std::time::Instant::now();
    let first = match request(mnt, "flush") {
        Ok(r) => r["dirty_data"].as_u64().unwrap_or(0),
        Err(e) => {
            eprintln!("bcachefs-lite: {e}");
            return ExitCode::from(1);
        }
    };
    let bar = progress_bar(
        false,
        first,
        "flushing {wide_bar} {bytes}/{total_bytes} written back, {msg}",
    );
    let mut total = first;
    let mut errors0 = None;
    loop {
        let s = match request(mnt, "stats") {
            Ok(r) => r["stats"].clone(),
            Err(e) => {
                bar.abandon();
                eprintln!("bcachefs-lite: {e}");
                return ExitCode::from(1);
            }
        };
        let left = s["dirty_data"].as_u64().unwrap_or(0);
        let errors = s["writeback_errors"].as_u64().unwrap_or(0);
        let errors0 = *errors0.get_or_insert(errors);
        total = total.max(left);
        bar.set_length(total);
        bar.set_position(total - left);
        bar.set_message(format!(
            "{} left{}",
            indicatif::HumanBytes(left),
            if errors > errors0 {
                format!(", {} backing errors (retrying)", errors - errors0)
            } else {
                String::new()
            }
        ));
        if left == 0 {
            bar.finish_and_clear();
            println!(
                "flushed: {} written back in {:.1} s, nothing dirty",
                indicatif::HumanBytes(total),
                start.elapsed().as_secs_f64()
            );
            return ExitCode::SUCCESS;
        }
        if timeout.is_some_and(|t| start.elapsed().as_secs_f64() >= t) {
            bar.abandon();
            eprintln!(
                "bcachefs-lite: flush timed out with {} still dirty ({} writeback errors)",
                indicatif::HumanBytes(left),
                errors - errors0
            );
            return ExitCode::from(1);
        }
        // ask again: the daemon's urgency ends with a pass that found nothing dirty
        let _ = request(mnt, "flush");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// A byte progress bar of `len` with `template` (hidden with `--json`: scripts read stdout).
fn progress_bar(json: bool, len: u64, template: &str) -> indicatif::ProgressBar {
    if json {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template(template)
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

fn warm(paths: &[PathBuf], jobs: usize, pin: bool, json: bool) -> ExitCode {
    let bar = progress_bar(
        json,
        0,
        "warming {msg:>13} {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
    );
    let result = bcachefs_lite::warm::warm(paths, jobs.clamp(1, 64), pin, &bar);
    bar.finish_and_clear();
    match result {
        Ok(s) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default());
            } else {
                for e in &s.errors {
                    eprintln!("bcachefs-lite warm: {e}");
                }
                let mib = |b: u64| b as f64 / f64::from(1 << 20);
                println!(
                    "warmed {} files, {:.1} MiB in {:.1} s ({:.1} MiB/s): {:.1} MiB read from \
                     the backing, {:.1} MiB already cached",
                    s.files,
                    mib(s.bytes),
                    s.seconds,
                    mib(s.bytes) / s.seconds.max(0.001),
                    mib(s.read_bytes),
                    mib(s.hit_bytes)
                );
            }
            ExitCode::from(u8::from(!s.errors.is_empty()))
        }
        Err(e) => {
            eprintln!("bcachefs-lite warm: {e}");
            ExitCode::from(1)
        }
    }
}

fn fsck(path: &std::path::Path, repair: bool, json: bool) -> ExitCode {
    use bcachefs_lite::fsck;
    let bar = progress_bar(
        json,
        0,
        "checking blocks {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
    );
    let progress = |done: u64, total: u64| {
        bar.set_length(total);
        bar.set_position(done);
    };
    let result = if repair {
        fsck::repair(path, &progress).map(|r| {
            let code = if r.after.errors() > 0 {
                fsck::EXIT_UNCORRECTED
            } else if r.before.errors() > 0 {
                fsck::EXIT_CORRECTED
            } else {
                fsck::EXIT_CLEAN
            };
            let text = format!(
                "{}repair: dropped {} key(s), checkpoints rewritten; checked again:\n{}",
                fsck::report_text(&r.before),
                r.keys_dropped,
                fsck::report_text(&r.after)
            );
            (
                serde_json::json!({"repair": r, "exit_code": code}),
                text,
                code,
            )
        })
    } else {
        fsck::check(path, &progress).map(|r| {
            let code = if r.errors() > 0 {
                fsck::EXIT_UNCORRECTED
            } else {
                fsck::EXIT_CLEAN
            };
            let text = fsck::report_text(&r);
            (
                serde_json::json!({"report": r, "exit_code": code}),
                text,
                code,
            )
        })
    };
    bar.finish_and_clear();
    match result {
        Ok((value, text, code)) => {
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&value).unwrap_or_default()
                );
            } else {
                print!("{text}");
            }
            ExitCode::from(code)
        }
        Err(e) => {
            eprintln!("bcachefs-lite fsck: {e}");
            ExitCode::from(fsck::EXIT_OPERATIONAL)
        }
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // fsck(8): a usage error exits 16; every other command as clap does (2)
            let is_fsck = std::env::args().nth(1).as_deref() == Some("fsck");
            let code = e.exit_code();
            let _ = e.print();
            let code = if is_fsck && code == 2 {
                i32::from(bcachefs_lite::fsck::EXIT_USAGE)
            } else {
                code
            };
            return ExitCode::from(code as u8);
        }
    };
    let res = match cli.cmd {
        Cmd::Mount(args) => return mount(args),
        Cmd::Format { cache_file, args } => cli_cache::format(&cache_file, &args),
        Cmd::ShowSuper { cache_file, json } => cli_cache::show_super(&cache_file, json),
        Cmd::Warm {
            paths,
            jobs,
            pin,
            json,
        } => return warm(&paths, jobs, pin, json),
        Cmd::Unpin { paths } => {
            return match bcachefs_lite::warm::unpin(&paths) {
                Ok(n) => {
                    println!("unpinned {n} buckets");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("bcachefs-lite unpin: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Cmd::Fsck {
            cache_file,
            repair,
            json,
        } => return fsck(&cache_file, repair, json),
        Cmd::Stats {
            mountpoint,
            json,
            prometheus,
            watch,
            interval,
            count,
        } => {
            let view = if watch {
                StatsView::Watch { interval, count }
            } else if prometheus {
                StatsView::Prometheus
            } else if json {
                StatsView::Json
            } else {
                StatsView::Text
            };
            return stats(&mountpoint, view);
        }
        Cmd::Flush {
            mountpoint,
            timeout,
        } => return flush(&canonical(&mountpoint), timeout),
        c @ (Cmd::Set { .. } | Cmd::Get { .. } | Cmd::Gc { .. } | Cmd::Drop { .. }) => {
            return control(c)
        }
    };
    match res {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bcachefs-lite: {e}");
            ExitCode::from(if e.is_bad_cache_file() { 2 } else { 1 })
        }
    }
}
