//! What `vmkfs-backup` and `vmkfs-restore` share: the datastore options, the volume, and the
//! frame of their `main` (the library's events and reports print through [`Reporter`]).

use std::path::PathBuf;

use std::process::ExitCode;

use clap::{Args, Parser};
use vmkfs::error::Result;
use vmkfs::report::{Reporter, Wording};
use vmkfs::vm::place::Datastores;
use vmkfs::vmfs::Volume;

use crate::process;

/// Options for finding the VM's files.
#[derive(Args, Debug)]
pub struct Where {
    /// Resolve the VM path inside the VMFS volume on LUN (image files or devices; all devices of
    /// a spanned volume, comma-separated); its label is a datastore name. Read-only.
    #[arg(long = "volume", value_name = "LUN[,LUN...]", value_delimiter = ',')]
    pub volume: Vec<PathBuf>,
    /// A datastore: `[NAME] path` resolves to DIR/path (repeatable).
    #[arg(long = "datastore", value_name = "NAME=DIR")]
    pub datastore: Vec<String>,
    /// Machine-readable output: one JSON object per line.
    #[arg(long)]
    pub json: bool,
}

impl Where {
    /// The datastores (and the volume) these options name.
    pub fn datastores(&self) -> Result<Datastores> {
        let vol = if self.volume.is_empty() { None } else { Some(Volume::open(&self.volume)?) };
        Datastores::new(&self.datastore, vol)
    }
}

/// Parses the command line and runs `run` with a reporter, reporting its error as `tool`; the
/// process's exit code (2 for a usage error, 0 after `--help`).
pub fn main<C: Parser>(
    tool: &str,
    place: impl Fn(&C) -> &Where,
    run: impl Fn(&C, &mut Reporter) -> Result<i32>,
) -> ExitCode {
    let cli = match C::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { process::USAGE } else { process::OK };
            let _ = e.print();
            return ExitCode::from(code as u8);
        }
    };
    let mut rep = Reporter::new(process::sinks(), place(&cli).json, None);
    let code = match run(&cli, &mut rep) {
        Ok(c) => c,
        Err(e) => {
            let code = process::of_error(&e);
            rep.error(&e, Wording::Tool(tool), code);
            code
        }
    };
    process::finish(&rep, code)
}
