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
    /// cache_mode=writethrough|writearound|none.
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

fn stats(mountpoint: &std::path::Path, json: bool) -> ExitCode {
    let mountpoint = std::fs::canonicalize(mountpoint).unwrap_or_else(|_| mountpoint.to_path_buf());
    match bcachefs_lite::control::request(&mountpoint, "stats") {
        Ok(reply) => {
            let stats = &reply["stats"];
            if json {
                print!("{}", bcachefs_lite::control::stats_json(stats));
            } else {
                print!("{}", bcachefs_lite::control::stats_text(stats));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bcachefs-lite: {e}");
            ExitCode::from(1)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let res = match cli.cmd {
        Cmd::Mount(args) => return mount(args),
        Cmd::Format { cache_file, args } => cli_cache::format(&cache_file, &args),
        Cmd::ShowSuper { cache_file, json } => cli_cache::show_super(&cache_file, json),
        Cmd::Stats { mountpoint, json } => return stats(&mountpoint, json),
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
