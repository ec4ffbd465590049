//! The `bcachefs-lite` command line. Parsing and dispatch only; the work is in
//! the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use bcachefs_lite::daemon::{self, MountRequest};
use bcachefs_lite::options::MountOptions;

#[derive(Parser)]
#[command(
    name = "bcachefs-lite",
    version,
    about = "A FUSE caching filesystem for slow directories"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Mount BACKING at MOUNTPOINT
    Mount(MountArgs),
}

#[derive(Args)]
struct MountArgs {
    /// The slow directory to serve
    backing: PathBuf,
    /// Where to mount it
    mountpoint: PathBuf,
    /// Comma-separated mount options: allow_other, default_permissions, ro,
    /// attr_timeout=SECS, entry_timeout=SECS, fsname=NAME, dev, suid, noexec, noatime
    #[arg(short = 'o', value_name = "OPT,...")]
    options: Vec<String>,
    /// Stay in the foreground; unmount cleanly on SIGINT/SIGTERM
    #[arg(short, long)]
    foreground: bool,
    /// FUSE worker threads (default: one per core, at least 2)
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// Write the daemon's log here instead of stderr (level: BCACHEFS_LITE_LOG, default warn)
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
    let mut req = MountRequest {
        backing: args.backing,
        mountpoint: args.mountpoint,
        options,
        foreground: args.foreground,
        threads: args.threads.unwrap_or_else(daemon::default_threads),
        log_file: args.log_file,
    };
    let result = daemon::validate(&mut req).and_then(|()| daemon::run(req));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bcachefs-lite: {}", e.message);
            ExitCode::from(e.exit_code as u8)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Mount(args) => mount(args),
    }
}
