//! Clones a disk or chain into another format with a progress bar (indicatif), the way a
//! migration tool embeds `vmkfs::clone`.
//!
//! ```sh
//! cargo run --release --example clone_progress -- src.vmdk dst.vmdk thin
//! ```

use std::sync::atomic::AtomicBool;

use indicatif::{ProgressBar, ProgressStyle};
use vmkfs::DiskFormat;

/// Clones `src` to `dst` in `format`, drawing a bar on standard error (hidden when it is not a
/// terminal). Setting `cancel` stops the clone and leaves no destination. Returns the progress
/// reports seen, `(done, total)` each.
pub fn run(src: &str, dst: &str, format: DiskFormat, cancel: Option<&AtomicBool>) -> vmkfs::Result<Vec<(u64, u64)>> {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
            .expect("a valid template"),
    );
    let mut seen = Vec::new();
    let report = vmkfs::clone(
        src,
        dst,
        format,
        |done, total| {
            bar.set_length(total);
            bar.set_position(done);
            seen.push((done, total));
        },
        cancel,
    );
    bar.finish_and_clear();
    let report = report?;
    eprintln!("{} -> {} ({} bytes of data read)", src, report.path.display(), report.stats.read);
    Ok(seen)
}

#[allow(dead_code)]
fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(src), Some(dst)) = (args.first(), args.get(1)) else {
        eprintln!("usage: clone_progress SRC DST [FORMAT]");
        std::process::exit(2);
    };
    let Some(format) = DiskFormat::parse(args.get(2).map_or("thin", |s| s.as_str())) else {
        eprintln!("clone_progress: unknown format {}", args[2]);
        std::process::exit(2);
    };
    if let Err(e) = run(src, dst, format, None) {
        eprintln!("clone_progress: {e}");
        std::process::exit(1);
    }
}
