//! File-level access: `--mount DIR [--writable] DISK` (the logic is `vmkfs::mount`).

use std::path::{Path, PathBuf};

use clap::Args;
use vmkfs::error::{exit, Result};
use vmkfs::mount::{serve, MountOptions};
use vmkfs::Disk;

use crate::{open_options, rw_options, target, Cli};

/// Mount options.
#[derive(Args, Debug)]
pub struct MountArgs {
    /// Expose TARGET (a disk or the top of a chain; with --volume, a disk inside the volume) as one
    /// raw image file, TARGET's name with .img, in a FUSE mount on DIR, until SIGINT or SIGTERM
    /// (or an unmount). Read-only unless --writable.
    #[arg(long = "mount", value_name = "DIR")]
    pub mount: Option<PathBuf>,
}

/// How many mount operations the command line selects.
pub fn selected(cli: &Cli) -> usize {
    cli.mount.mount.is_some() as usize
}

/// Runs `--mount`; `None` when it is not selected.
pub fn run(cli: &Cli) -> Option<i32> {
    let dir = cli.mount.mount.as_deref()?;
    Some(run_mount(cli, dir).unwrap_or_else(|e| crate::report_error(cli, &e)))
}

fn announce(image: &Path) {
    crate::out::line(format_args!("Mounted: {}", image.display()));
}

fn run_mount(cli: &Cli, dir: &Path) -> Result<i32> {
    let path = target(cli)?;
    let writable = cli.nbd.writable;
    let disk = Disk::open_with(path, &if writable { rw_options(cli) } else { open_options(cli) })?;
    let stop = crate::disk::install_interrupt_handler();
    let on_io_error: vmkfs::mount::IoErrorSink = std::sync::Arc::new(|m| eprintln!("vmkfs: {m}"));
    let opts = MountOptions { writable, name: None, on_mounted: Some(announce), on_io_error: Some(on_io_error) };
    serve(disk, dir, &opts, stop)?;
    Ok(exit::OK)
}
