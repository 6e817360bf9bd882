//! What `vmkfs-backup` and `vmkfs-restore` share: the datastore options, the volume, and printing
//! the library's events as text lines or JSON (everything through the `vmkfs` output helper).

use std::path::PathBuf;

use std::process::ExitCode;

use clap::{Args, Parser};
use vmkfs::error::{exit, Error, Result};
use vmkfs::vm::place::Datastores;
use vmkfs::vm::{Event, Reporter};
use vmkfs::vmfs::Volume;

use crate::out;

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

/// Prints events: `DISK: what` lines (progress every 10 %), or JSON lines with `--json`.
pub struct Printer {
    json: bool,
    last: Option<(String, u64)>,
}

impl Printer {
    /// A printer for these options.
    pub fn new(w: &Where) -> Printer {
        Printer { json: w.json, last: None }
    }

    /// The final report (JSON: `{"event": "done", ...}`), or `text` lines.
    pub fn done(&self, report: &impl serde::Serialize, text: &[String]) {
        if self.json {
            let mut v = serde_json::to_value(report).unwrap_or_default();
            if let Some(m) = v.as_object_mut() {
                m.insert("event".into(), "done".into());
            }
            out::line(v);
        } else {
            for l in text {
                out::line(l);
            }
        }
    }

    /// Reports `e` (on standard error, as every vmkfs command does), returning its exit code.
    pub fn error(&self, prog: &str, e: &Error) -> i32 {
        if self.json {
            out::err_line(serde_json::json!({"event": "error", "message": e.to_string(), "exit": e.exit_code()}));
        } else {
            out::err_line(format!("{prog}: {e}"));
        }
        e.exit_code()
    }
}

impl Reporter for Printer {
    fn event(&mut self, e: Event) {
        if let Event::Progress { disk, done, total } = &e {
            // A line each time the percentage changes (by 10 in text).
            let pct = (done.saturating_mul(100)).checked_div(*total).unwrap_or(100).min(100);
            let pct = if self.json { pct } else { pct / 10 * 10 };
            if self.last.as_ref() == Some(&(disk.clone(), pct)) {
                return;
            }
            self.last = Some((disk.clone(), pct));
            if !self.json {
                out::line(format!("{disk}: Clone: {pct}% done."));
                return;
            }
        }
        if self.json {
            out::line(serde_json::to_value(&e).unwrap_or_default());
            return;
        }
        match e {
            Event::Step { disk: Some(d), what } => out::line(format!("{d}: {what}")),
            Event::Step { disk: None, what } => out::line(what),
            Event::Note { disk: Some(d), what } => out::line(format!("{d}: note: {what}")),
            Event::Note { disk: None, what } => out::line(format!("note: {what}")),
            Event::Progress { .. } => {}
        }
    }
}

/// Parses the command line and runs `run` with a printer, reporting its error as `tool`; the
/// process's exit code (2 for a usage error, 0 after `--help`).
pub fn main<C: Parser>(
    tool: &str,
    place: impl Fn(&C) -> &Where,
    run: impl Fn(&C, &mut Printer) -> Result<i32>,
) -> ExitCode {
    let cli = match C::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { exit::USAGE } else { exit::OK };
            let _ = e.print();
            return ExitCode::from(code as u8);
        }
    };
    let mut p = Printer::new(place(&cli));
    let code = match run(&cli, &mut p) {
        Ok(c) => c,
        Err(e) => p.error(tool, &e),
    };
    ExitCode::from(out::finish(code) as u8)
}

/// Where the repository's password comes from: `--password-file`, else the environment restic
/// reads (`RESTIC_PASSWORD_FILE`, `RESTIC_PASSWORD`).
pub fn restic_password(file: Option<&std::path::Path>) -> vmkfs::repo::repo::PasswordSources {
    vmkfs::repo::repo::PasswordSources {
        file: file.map(std::path::Path::to_path_buf),
        env_file: std::env::var_os("RESTIC_PASSWORD_FILE"),
        env_password: std::env::var_os("RESTIC_PASSWORD"),
    }
}
