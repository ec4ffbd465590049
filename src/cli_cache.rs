//! The `format` and `show-super` subcommands, as library functions the thin `main.rs` calls.
//!
//! Model: each function takes parsed arguments and returns the text to print or a core
//! [`Error`]; `main.rs` turns errors into a one-line message and an exit code (2 for a file that
//! is not a usable cache file, 1 otherwise). Nothing here panics on bad input. No locks; what may
//! block: file I/O.

use std::fmt::Write as _;
use std::path::Path;

use crate::alloc::{read_newest_checkpoint, Allocator};
use crate::device::format::{CacheMode, Geometry, Replacement, Superblock};
use crate::device::FileDevice;
use crate::error::{Error, Result};

pub use crate::options::parse_size;

/// Arguments of `format` (parsed by clap in `main.rs`).
#[derive(Debug, Clone, clap::Args)]
pub struct FormatArgs {
    /// Total size of the cache file (K/M/G/T suffixes).
    #[arg(long, value_parser = parse_size)]
    pub size: u64,
    /// Bucket size.
    #[arg(long, value_parser = parse_size, default_value = "1M")]
    pub bucket_size: u64,
    /// Block size.
    #[arg(long, value_parser = parse_size, default_value = "4K")]
    pub block_size: u64,
    /// Journal size (default: size/128, between 16 blocks and 8M).
    #[arg(long, value_parser = parse_size)]
    pub journal_size: Option<u64>,
    /// Replacement policy: lru, fifo or random.
    #[arg(long, default_value = "lru")]
    pub replacement: Replacement,
    /// Default cache mode: writethrough, writeback, writearound or none.
    #[arg(long, default_value = "writethrough")]
    pub cache_mode: CacheMode,
    /// Identity of the backing tree this cache serves (empty: bind on first mount).
    #[arg(long, default_value = "")]
    pub backing: String,
    /// Do not punch holes for freed buckets.
    #[arg(long)]
    pub no_discard: bool,
    /// Overwrite an existing file.
    #[arg(long)]
    pub force: bool,
}

/// `bcachefs-lite format`: create the cache file; returns the summary to print.
pub fn format(path: &Path, a: &FormatArgs) -> Result<String> {
    let to_u32 = |v: u64, what: &str| {
        u32::try_from(v).map_err(|_| Error::InvalidGeometry(format!("{what} {v} is too large")))
    };
    let g = Geometry {
        size: a.size,
        bucket_size: to_u32(a.bucket_size, "bucket size")?,
        block_size: to_u32(a.block_size, "block size")?,
        journal_size: a.journal_size,
        replacement: a.replacement,
        cache_mode: a.cache_mode,
        discard: !a.no_discard,
        backing: a.backing.clone(),
    };
    let sb = Allocator::format(path, &g, a.force)?;
    Ok(format!(
        "formatted {}: {} buckets of {} bytes, {} byte blocks, {} byte journal, uuid {}\n",
        path.display(),
        sb.nbuckets,
        sb.bucket_size,
        sb.block_size,
        sb.journal_size,
        sb.uuid_string()
    ))
}

/// `bcachefs-lite show-super`: every superblock field plus the newest valid gens checkpoint.
pub fn show_super(path: &Path, json: bool) -> Result<String> {
    let f = std::fs::File::open(path).map_err(|e| Error::io("open cache file", e))?;
    let dev = FileDevice::new(f);
    let (sb, ck) = read_newest_checkpoint(&dev)?;
    Ok(render(
        &sb,
        ck.checkpoint.seq,
        ck.journal_seq,
        ck.skipped,
        json,
    ))
}

fn render(sb: &Superblock, ck_seq: u64, j_seq: u64, skipped: usize, json: bool) -> String {
    let size = sb.file_size().unwrap_or(0);
    let backing = if sb.backing.is_empty() {
        "(unbound)"
    } else {
        sb.backing.as_str()
    };
    if json {
        let v = serde_json::json!({
            "magic": "bcfslite",
            "version": sb.version,
            "uuid": sb.uuid_string(),
            "block_size": sb.block_size,
            "bucket_size": sb.bucket_size,
            "nbuckets": sb.nbuckets,
            "journal_offset": sb.journal_offset,
            "journal_size": sb.journal_size,
            "first_bucket_offset": sb.first_bucket_offset,
            "file_size": size,
            "replacement": sb.replacement.name(),
            "cache_mode": sb.cache_mode.name(),
            "discard": sb.discard,
            "backing": sb.backing,
            "created_unix": sb.created_unix,
            "gens_checkpoint_seq": ck_seq,
            "journal_seq": j_seq,
            "skipped_checkpoints": skipped,
        });
        return format!("{v}\n");
    }
    let mut o = String::new();
    let _ = writeln!(o, "magic                bcfslite");
    let _ = writeln!(o, "version              {}", sb.version);
    let _ = writeln!(o, "uuid                 {}", sb.uuid_string());
    let _ = writeln!(o, "block_size           {}", sb.block_size);
    let _ = writeln!(o, "bucket_size          {}", sb.bucket_size);
    let _ = writeln!(o, "nbuckets             {}", sb.nbuckets);
    let _ = writeln!(o, "journal_offset       {}", sb.journal_offset);
    let _ = writeln!(o, "journal_size         {}", sb.journal_size);
    let _ = writeln!(o, "first_bucket_offset  {}", sb.first_bucket_offset);
    let _ = writeln!(o, "file_size            {size}");
    let _ = writeln!(o, "replacement          {}", sb.replacement.name());
    let _ = writeln!(o, "cache_mode           {}", sb.cache_mode.name());
    let _ = writeln!(
        o,
        "discard              {}",
        if sb.discard { "on" } else { "off" }
    );
    let _ = writeln!(o, "backing              {backing}");
    let _ = writeln!(o, "created_unix         {}", sb.created_unix);
    let _ = writeln!(o, "gens_checkpoint_seq  {ck_seq}");
    let _ = writeln!(o, "journal_seq          {j_seq}");
    if skipped > 0 {
        let _ = writeln!(
            o,
            "skipped_checkpoints  {skipped} (newer checkpoints were invalid)"
        );
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("4K"), Ok(4096));
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert_eq!(parse_size("20G"), Ok(20 << 30));
        assert_eq!(parse_size("2T"), Ok(2 << 40));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert!(parse_size("1.5G").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("G").is_err());
        assert!(parse_size("99999999999T").is_err());
        assert!(parse_size("-1").is_err());
    }
}
