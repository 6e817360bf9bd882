//! Lists the blocks changed since a snapshot: the ranges an incremental backup copies.
//!
//! ```sh
//! cargo run --example changed_blocks -- vm-000002.vmdk vm-000001.vmdk   # since vm-000001.vmdk
//! cargo run --example changed_blocks -- vm-000002.vmdk                  # since the base
//! ```

use std::io::Write;
use std::path::Path;

use vmkfs::Disk;

/// Prints `OFFSET LENGTH` for each changed range of the chain topped by `top` above the link
/// `since` (`None`: the base), then the total; returns the ranges.
pub fn run(top: &str, since: Option<&str>, out: &mut dyn Write) -> vmkfs::Result<Vec<(u64, u64)>> {
    let disk = Disk::open(top)?;
    let changes = disk.changed_since(since.map(Path::new))?;
    let io = |e| vmkfs::Error::Io { path: "<output>".into(), source: e };
    let ranges: Vec<(u64, u64)> = changes.ranges().collect();
    for (offset, len) in &ranges {
        writeln!(out, "{offset} {len}").map_err(io)?;
    }
    writeln!(out, "changed {} bytes in {} ranges", changes.changed_bytes(), ranges.len()).map_err(io)?;
    Ok(ranges)
}

#[allow(dead_code)]
fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(top) = args.first() else {
        eprintln!("usage: changed_blocks TOP [SINCE]");
        std::process::exit(2);
    };
    if let Err(e) = run(top, args.get(1).map(|s| s.as_str()), &mut std::io::stdout().lock()) {
        eprintln!("changed_blocks: {e}");
        std::process::exit(1);
    }
}
