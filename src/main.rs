//! The `bcachefs-lite` command: parses arguments and dispatches into the library.
//!
//! Exit codes: 0 success; 1 an operation failed (I/O, refused options); 2 the file is not a
//! usable cache file (bad magic, version, checksum, truncated, no valid checkpoint) or the
//! command line is malformed.

use std::path::PathBuf;
use std::process::ExitCode;

use bcachefs_lite::cli_cache::{self, parse_size, FormatArgs};
use bcachefs_lite::device::format::{CacheMode, Replacement};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "bcachefs-lite",
    version,
    about = "A FUSE caching filesystem with a bcache-style allocator"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a cache file.
    Format {
        /// Path of the cache file to create.
        cache_file: PathBuf,
        /// Total size of the cache file (K/M/G/T suffixes).
        #[arg(long, value_parser = parse_size)]
        size: u64,
        /// Bucket size.
        #[arg(long, value_parser = parse_size, default_value = "1M")]
        bucket_size: u64,
        /// Block size.
        #[arg(long, value_parser = parse_size, default_value = "4K")]
        block_size: u64,
        /// Journal size (default: size/128, between 16 blocks and 8M).
        #[arg(long, value_parser = parse_size)]
        journal_size: Option<u64>,
        /// Replacement policy: lru, fifo or random.
        #[arg(long, default_value = "lru")]
        replacement: Replacement,
        /// Default cache mode: writethrough, writeback, writearound or none.
        #[arg(long, default_value = "writethrough")]
        cache_mode: CacheMode,
        /// Identity of the backing tree this cache serves (empty: bind on first mount).
        #[arg(long, default_value = "")]
        backing: String,
        /// Do not punch holes for freed buckets.
        #[arg(long)]
        no_discard: bool,
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Print the superblock of a cache file.
    ShowSuper {
        cache_file: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let res = match cli.cmd {
        Cmd::Format {
            cache_file,
            size,
            bucket_size,
            block_size,
            journal_size,
            replacement,
            cache_mode,
            backing,
            no_discard,
            force,
        } => cli_cache::format(
            &cache_file,
            &FormatArgs {
                size,
                bucket_size,
                block_size,
                journal_size,
                replacement,
                cache_mode,
                discard: !no_discard,
                backing,
                force,
            },
        ),
        Cmd::ShowSuper { cache_file, json } => cli_cache::show_super(&cache_file, json),
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
