//! `vmkfs-restore`: restore a whole VM from a backup (vcbRestore, offline). Parses, calls
//! `vmkfs::vm::restore`, prints; asks on the terminal with `-b prompt`.

#[path = "../process/mod.rs"]
mod process;
#[path = "../vm_shared/mod.rs"]
mod shared;

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use vmkfs::error::{Error, Result};
use vmkfs::report::Reporter;
use vmkfs::vm::folder_location;
use vmkfs::vm::restore::{restore, Answer, Ask, Policy, RestoreOptions};
use vmkfs::vmdk::DiskFormat;

/// Restore a virtual machine from a backup folder (and the backups it builds on) to the places its
/// catalog names.
#[derive(Parser, Debug)]
#[command(name = "vmkfs-restore", version)]
struct Cli {
    /// The backup folder (also file:///path), or restic:PATH[@SNAPSHOT] (a restic repository;
    /// default the newest VM snapshot; password from --password-file, RESTIC_PASSWORD_FILE or
    /// RESTIC_PASSWORD).
    #[arg(short = 's', value_name = "SRC")]
    src: String,
    /// An edited copy of the backup's catalog: restores to the places it names instead.
    #[arg(short = 'a', value_name = "CATALOG")]
    catalog: Option<PathBuf>,
    /// Existing files: prompt (ask on the terminal), overwrite, keep, abort. Default: prompt on a
    /// terminal, else abort.
    #[arg(short = 'b', value_name = "POLICY", value_parser = ["prompt", "overwrite", "keep", "abort"])]
    policy: Option<String>,
    /// Format of the restored disks (default: the ESX type recorded, else thin).
    #[arg(short = 'd', value_name = "FMT")]
    format: Option<String>,
    /// The repository's password file (else RESTIC_PASSWORD_FILE, RESTIC_PASSWORD).
    #[arg(long = "password-file", value_name = "FILE")]
    password_file: Option<PathBuf>,
    #[command(flatten)]
    place: shared::Where,
}

/// Asks on the terminal (the question on standard error, the answer from standard input).
struct Terminal;

impl Ask for Terminal {
    fn ask(&mut self, target: &Path, what: &str) -> Result<Answer> {
        let stdin = std::io::stdin();
        loop {
            {
                let mut err = std::io::stderr().lock();
                let _ = write!(
                    err,
                    "{} exists ({what}). [o]verwrite, [k]eep, [a]bort, [O]verwrite all, [K]eep all? ",
                    target.display()
                );
                let _ = err.flush();
            }
            let mut line = String::new();
            let n = stdin.lock().read_line(&mut line).map_err(|e| Error::Io { path: "<stdin>".into(), source: e })?;
            if n == 0 {
                return Ok(Answer::Abort);
            }
            match line.trim() {
                "o" | "overwrite" => return Ok(Answer::Overwrite),
                "k" | "keep" => return Ok(Answer::Keep),
                "a" | "abort" | "" => return Ok(Answer::Abort),
                "O" => return Ok(Answer::OverwriteAll),
                "K" => return Ok(Answer::KeepAll),
                other => {
                    let _ = writeln!(std::io::stderr(), "{other:?}: answer o, k, a, O or K");
                }
            }
        }
    }
}

fn main() -> ExitCode {
    shared::main("vmkfs-restore", |c: &Cli| &c.place, run)
}

fn run(cli: &Cli, p: &mut Reporter) -> Result<i32> {
    let tty = std::io::stdin().is_terminal();
    let policy = match cli.policy.as_deref().and_then(Policy::parse) {
        Some(Policy::Prompt) if !tty => {
            return Err(Error::Usage(
                "-b prompt needs a terminal on standard input (give -b overwrite, keep or abort)".into(),
            ))
        }
        Some(p) => p,
        None if tty => Policy::Prompt,
        None => Policy::Abort,
    };
    let format = cli
        .format
        .as_deref()
        .map(|f| DiskFormat::parse(f).ok_or_else(|| Error::Usage(format!("-d {f:?}: not a disk format"))))
        .transpose()?;
    let restic = vmkfs::repo::location::parse_location(&cli.src);
    if restic.as_ref().is_some_and(|l| l.file.is_some()) {
        return Err(Error::Usage(format!("-s {:?}: restic:PATH[@SNAPSHOT] names a VM snapshot, not a file", cli.src)));
    }
    let repo = match &restic {
        Some(l) => Some((
            vmkfs::repo::repo::password(&process::restic_password(cli.password_file.as_deref()))?,
            l.snapshot.clone().unwrap_or_else(|| "latest".into()),
        )),
        None => None,
    };
    let opts = RestoreOptions {
        src: match &restic {
            Some(l) => l.path.clone(),
            None => folder_location(&cli.src)?,
        },
        repo,
        catalog: cli.catalog.clone(),
        policy,
        format,
        datastores: cli.place.datastores()?,
        scratch: std::env::temp_dir(),
    };
    let rep = restore(&opts, &mut Terminal, p)?;
    let mut text = vec![format!(
        "Restored {} from {} backup(s): {} disk(s), {} file(s) written, {} kept.",
        rep.vmx.display(),
        rep.backups.len(),
        rep.disks.len(),
        rep.written.len(),
        rep.kept.len()
    )];
    text.extend(rep.skipped.iter().map(|(d, why)| format!("{d}: not in the backup: {why}")));
    p.done(&rep, &text);
    Ok(process::OK)
}
