//! `vmkfs-backup`: back up a whole VM (vcbMounter, offline), or `--verify` a backup. Parses,
//! calls `vmkfs::vm::backup` / `vmkfs::vm::verify`, prints.

#[path = "../process/mod.rs"]
mod process;
#[path = "../vm_shared/mod.rs"]
mod shared;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use vmkfs::error::{Error, Result};
use vmkfs::report::Reporter;
use vmkfs::vm::backup::{backup, BackupOptions, RepoDest};
use vmkfs::vm::{folder_location, verify};
use vmkfs::vmdk::DiskFormat;

/// Back up a virtual machine (its disks, configuration, NVRAM and logs) into a new folder, or
/// verify a backup.
#[derive(Parser, Debug)]
#[command(name = "vmkfs-backup", version)]
struct Cli {
    /// The VM: its .vmx, its folder, or name:DISPLAYNAME (searched in the datastores).
    #[arg(short = 'a', value_name = "VM", required_unless_present = "verify")]
    vm: Option<String>,
    /// The backup folder to create (its parent must exist); also file:///path; or restic:PATH, a
    /// restic repository (one snapshot per backup; password from --password-file,
    /// RESTIC_PASSWORD_FILE or RESTIC_PASSWORD).
    #[arg(short = 'r', value_name = "DEST", required_unless_present = "verify")]
    dest: Option<String>,
    /// 1: monolithic sparse disks; 0 (default): 2gbsparse, as VCB.
    #[arg(short = 'M', value_name = "0|1", value_parser = ["0", "1"])]
    monolithic: Option<String>,
    /// Format of the exported disks (any vmkfs -d format, streamoptimized included).
    #[arg(short = 'd', value_name = "FMT")]
    format: Option<String>,
    /// An incremental pass: the changes since the backup PREV (into a repository: `latest` or a
    /// snapshot ID; the snapshot written is still a whole restore point).
    #[arg(long, value_name = "PREV")]
    since: Option<PathBuf>,
    /// With --since FULL: a differential pass (every change since that full backup).
    #[arg(long, requires = "since")]
    differential: bool,
    /// Keep each disk's snapshot as its change-tracking link (the .vmx then names it), so the next
    /// pass exports only what changed without reading the disk.
    #[arg(long = "keep-tracking")]
    keep_tracking: bool,
    /// Check the backup DIR (and the backups it builds on): every SHA-256, every disk, the catalogs.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["vm", "dest", "since"])]
    verify: Option<String>,
    /// With -r restic:PATH: create the repository first.
    #[arg(long)]
    init: bool,
    /// The repository's password file (else RESTIC_PASSWORD_FILE, RESTIC_PASSWORD).
    #[arg(long = "password-file", value_name = "FILE")]
    password_file: Option<PathBuf>,
    #[command(flatten)]
    place: shared::Where,
}

fn main() -> ExitCode {
    shared::main("vmkfs-backup", |c: &Cli| &c.place, run)
}

fn format_of(cli: &Cli) -> Result<DiskFormat> {
    match (&cli.format, cli.monolithic.as_deref()) {
        (Some(f), _) => DiskFormat::parse(f).ok_or_else(|| Error::Usage(format!("-d {f:?}: not a disk format"))),
        (None, Some("1")) => Ok(DiskFormat::MonoSparse),
        _ => Ok(DiskFormat::TwoGbSparse),
    }
}

fn run(cli: &Cli, p: &mut Reporter) -> Result<i32> {
    if let Some(dir) = &cli.verify {
        let rep = verify::verify(&folder_location(dir)?, p)?;
        let mut text: Vec<String> = rep.findings.clone();
        text.push(if rep.findings.is_empty() {
            format!("Backup verified: {} backup(s), every file and disk as the catalogs say.", rep.backups.len())
        } else {
            format!("Backup damaged: {} problem(s).", rep.findings.len())
        });
        p.done(&rep, &text);
        return Ok(if rep.findings.is_empty() { process::OK } else { process::NEGATIVE });
    }
    let given = cli.dest.as_deref().unwrap_or_default();
    let restic = vmkfs::repo::location::parse_location(given);
    if cli.init && restic.is_none() {
        return Err(Error::Usage("--init needs -r restic:PATH".into()));
    }
    let repo = match &restic {
        Some(l) if l.snapshot.is_some() => {
            return Err(Error::Usage(format!("-r {given:?}: a backup writes a new snapshot; give restic:PATH")))
        }
        Some(_) if cli.differential => {
            return Err(Error::Usage("--differential: every snapshot of a repository is whole; leave it out".into()))
        }
        Some(_) => Some(RepoDest {
            password: vmkfs::repo::repo::password(&process::restic_password(cli.password_file.as_deref()))?,
            init: cli.init,
        }),
        None => None,
    };
    let opts = BackupOptions {
        vm: cli.vm.clone().unwrap_or_default(),
        dest: match &restic {
            Some(l) => l.path.clone(),
            None => folder_location(given)?,
        },
        repo,
        format: format_of(cli)?,
        since: match &restic {
            Some(_) => cli.since.clone(),
            None => cli.since.as_deref().map(|s| folder_location(&s.to_string_lossy())).transpose()?,
        },
        differential: cli.differential,
        keep_tracking: cli.keep_tracking,
        datastores: cli.place.datastores()?,
        command: std::iter::once("vmkfs-backup".to_string()).chain(std::env::args().skip(1)).collect(),
    };
    let rep = backup(&opts, p)?;
    let mut text = vec![format!(
        "Backup {} ({}, {} disk(s), {} file(s)){}.",
        rep.dest.display(),
        rep.kind,
        rep.disks.len(),
        rep.files,
        if rep.finished_interrupted {
            ": an interrupted run had written it; its source steps are now finished"
        } else {
            ""
        }
    )];
    text.extend(rep.skipped.iter().map(|s| format!("{}: not backed up: {}", s.disk, s.why)));
    p.done(&rep, &text);
    Ok(process::OK)
}
