//! `vmkfs`: the vmkfstools-style command. Parses flags, calls the library, prints.
//!
//! Options are grouped by subject, one module each (`disk.rs`: create, clone, inspect and change
//! disks); `main.rs` holds the options every operation shares and the dispatch.

mod disk;
mod mount;
mod nbd;
mod out;
mod progress;
mod rdm;
mod redo;
mod stream;
mod verbose;
mod vmfs;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{ArgAction, Args, Parser};
use vmkfs::error::{exit, Error, Result};
use vmkfs::vmdk::OpenOptions;

/// A userspace vmkfstools for VMDK disks.
#[derive(Parser, Debug)]
#[command(name = "vmkfs", version, about, disable_help_flag = true)]
pub struct Cli {
    #[command(flatten)]
    pub disk: disk::DiskArgs,
    #[command(flatten)]
    pub redo: redo::RedoArgs,
    #[command(flatten)]
    pub rdm: rdm::RdmArgs,
    #[command(flatten)]
    pub vmfs: vmfs::VmfsArgs,
    #[command(flatten)]
    pub stream: stream::StreamArgs,
    #[command(flatten)]
    pub nbd: nbd::NbdArgs,
    #[command(flatten)]
    pub mount: mount::MountArgs,
    #[command(flatten)]
    pub common: Common,
}

/// Options shared by every operation.
#[derive(Args, Debug)]
pub struct Common {
    /// Disk format: zeroedthick (default), eagerzeroedthick, thin, thick, 2gbsparse, monosparse, monoflat, 2gbflat,
    /// streamoptimized; for -e - also raw (plain bytes);
    /// for -i also rdm:DEV, rdmp:DEV, raw:DEV (clone onto a device).
    #[arg(short = 'd', long = "diskformat", value_name = "FMT")]
    pub format: Option<String>,
    /// Adapter type: ide, buslogic, lsilogic (default), lsisas, pvscsi.
    #[arg(short = 'a', long = "adaptertype", value_name = "ADAPTER")]
    pub adapter: Option<String>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    /// Allow replacing an existing destination.
    #[arg(long)]
    pub force: bool,
    /// Allow extent paths outside the disk's folder.
    #[arg(long = "allow-outside-paths")]
    pub allow_outside: bool,
    /// Wait up to SECONDS for a disk another process has locked, instead of failing at once.
    #[arg(long = "wait", value_name = "SECONDS")]
    pub wait: Option<f64>,
    /// More detail on standard error: 1 the chain and what a copy read and wrote, 2 also the
    /// engine settings and bytes per link, 3 also every allocation run.
    #[arg(short = 'v', long = "verbose", value_name = "N")]
    pub verbose: Option<u32>,
    /// Copy-engine reader threads (for test harnesses: repeatable runs).
    #[arg(long = "threads", value_name = "N", hide = true, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub threads: Option<u32>,
    /// Copy-engine chunk size in KiB, rounded up to a power of two (for test harnesses).
    #[arg(long = "chunk-kib", value_name = "N", hide = true, value_parser = clap::value_parser!(u32).range(4..=65536))]
    pub chunk_kib: Option<u32>,
    /// Copy-engine direct I/O: auto (past the page cache for large copies into flat files and
    /// devices), on or off (for benchmarks comparing them).
    #[arg(long = "direct-io", value_name = "WHEN", hide = true, value_parser = ["auto", "on", "off"])]
    pub direct_io: Option<String>,
    /// The restic repository's password file, for `-i restic:…` and `--apply restic:…` (else
    /// RESTIC_PASSWORD_FILE, else RESTIC_PASSWORD).
    #[arg(long = "password-file", value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// Print help.
    #[arg(long = "help", action = ArgAction::Help)]
    pub help: Option<bool>,
    /// The disk operated on.
    #[arg(value_name = "TARGET")]
    pub target: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { exit::USAGE } else { exit::OK };
            let _ = e.print();
            return ExitCode::from(code as u8);
        }
    };
    // Each subject module counts the operations it sees selected; exactly one must be.
    let selected = disk::selected(&cli)
        + redo::selected(&cli)
        + rdm::selected(&cli)
        + vmfs::selected(&cli)
        + stream::selected(&cli)
        + nbd::selected(&cli)
        + mount::selected(&cli);
    if selected != 1 {
        out::err_line("vmkfs: give exactly one operation (for example -i, -c, --info); see --help");
        return ExitCode::from(exit::USAGE as u8);
    }
    if cli.nbd.writable && cli.nbd.serve_nbd.is_none() && cli.mount.mount.is_none() {
        out::err_line("vmkfs: --writable goes with --serve-nbd or --mount");
        return ExitCode::from(exit::USAGE as u8);
    }
    vmkfs::engine::set_tuning(vmkfs::engine::Tuning {
        threads: cli.common.threads.map(|t| t as usize),
        chunk: cli.common.chunk_kib.map(|k| u64::from(k) << 10),
        direct: cli.common.direct_io.as_deref().map(|w| match w {
            "on" => vmkfs::engine::DirectIo::On,
            "off" => vmkfs::engine::DirectIo::Off,
            _ => vmkfs::engine::DirectIo::Auto,
        }),
    });
    if cli.common.password_file.is_some() && !reads_a_repository(&cli) {
        out::err_line("vmkfs: --password-file goes with -i restic:… or --apply restic:…");
        return ExitCode::from(exit::USAGE as u8);
    }
    if let Err(e) = check_disk_names(&cli) {
        return ExitCode::from(report_error(&cli, &e) as u8);
    }
    let code = stream::run(&cli)
        .or_else(|| disk::run(&cli))
        .or_else(|| redo::run(&cli))
        .or_else(|| rdm::run(&cli))
        .or_else(|| vmfs::run(&cli))
        .or_else(|| nbd::run(&cli))
        .or_else(|| mount::run(&cli))
        .unwrap_or(exit::USAGE);
    ExitCode::from(out::finish(code) as u8)
}

/// Refuses, before any I/O, a disk argument that names no disk file: `.`, `..`, `/`, a path
/// ending in `/`, or (on the host) a directory. `-` (standard input or output) passes where a
/// pipe is allowed; `-P`'s target is a list of devices.
fn check_disk_names(cli: &Cli) -> Result<()> {
    let mut names: Vec<&Path> = Vec::new();
    if !cli.vmfs.queryfs {
        names.extend(cli.common.target.as_deref());
    }
    let (d, r, s) = (&cli.disk, &cli.redo, &cli.stream);
    names.extend(d.clone.as_deref().filter(|p| *p != Path::new("-")));
    names.extend(s.export_file.as_deref().filter(|p| *p != Path::new("-")));
    names.extend(d.rename.as_deref());
    names.extend(d.compare.as_deref());
    names.extend(r.since.as_deref());
    names.extend(r.export_delta.as_deref());
    names.extend(r.apply.as_deref());
    let on_host = cli.vmfs.volume.is_empty();
    for p in names {
        let dir_like = p.file_name().is_none() || p.as_os_str().as_encoded_bytes().ends_with(b"/");
        if dir_like || (on_host && p.is_dir()) {
            return Err(Error::Usage(format!("{}: a directory, not a disk file name", p.display())));
        }
    }
    Ok(())
}

/// True when `-i` or `--apply` names a restic repository (`restic:…`).
fn reads_a_repository(cli: &Cli) -> bool {
    [cli.disk.clone.as_deref(), cli.redo.apply.as_deref()]
        .into_iter()
        .flatten()
        .any(|p| vmkfs::repo::location::parse_location(&p.to_string_lossy()).is_some())
}

/// The restic repository's password: `--password-file`, else RESTIC_PASSWORD_FILE, else
/// RESTIC_PASSWORD ([`vmkfs::repo::repo::password`]).
pub fn password(cli: &Cli) -> Result<Vec<u8>> {
    vmkfs::repo::repo::password(&vmkfs::repo::repo::PasswordSources {
        file: cli.common.password_file.clone(),
        env_file: std::env::var_os("RESTIC_PASSWORD_FILE"),
        env_password: std::env::var_os("RESTIC_PASSWORD"),
    })
}

/// The target path (the last positional argument).
pub fn target(cli: &Cli) -> Result<&Path> {
    cli.common.target.as_deref().ok_or_else(|| Error::Usage("missing the target disk path".into()))
}

/// How to open disks read-only.
pub fn open_options(cli: &Cli) -> OpenOptions {
    let storage = vmfs::storage(cli).unwrap_or_else(|| OpenOptions::read().storage);
    let mut o = OpenOptions { allow_outside: cli.common.allow_outside, storage, ..OpenOptions::read() };
    if let Some(w) = cli.common.wait.filter(|w| w.is_finite() && *w >= 0.0) {
        o.wait = std::time::Duration::from_secs_f64(w.min(1e6));
    }
    o
}

/// How to open disks for writing.
pub fn rw_options(cli: &Cli) -> OpenOptions {
    OpenOptions { write: true, ..open_options(cli) }
}

/// Prints an error on standard error the way every operation does (`vmkfs: REASON`, or one JSON
/// object with `--json`), returning its exit code.
pub fn report_error(cli: &Cli, e: &Error) -> i32 {
    report(cli, e, |m| format!("vmkfs: {m}"))
}

/// Prints the error of a clone, import or export in vmkfstools' words, `Failed to clone disk:
/// REASON.` (or one JSON object with `--json`), on standard error, returning its exit code.
pub fn report_clone_error(cli: &Cli, e: &Error) -> i32 {
    report(cli, e, |m| format!("Failed to clone disk: {}.", m.trim_end_matches('.')))
}

fn report(cli: &Cli, e: &Error, words: impl FnOnce(&str) -> String) -> i32 {
    if e.is_broken_pipe() {
        // The reader of the data on standard output went away: the transfer did not complete,
        // and there is no one to tell.
        return exit::IO;
    }
    if cli.common.json {
        out::err_line(serde_json::json!({"event": "error", "message": e.to_string(), "exit": e.exit_code()}));
    } else {
        out::err_line(words(&e.to_string()));
    }
    e.exit_code()
}

/// A byte count for people.
pub fn human(n: u64) -> String {
    const U: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let (v, i) = in_units_of_1024(n);
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

/// `n` as a value below 1024 and the power of 1024 it is in (0 to 5).
pub fn in_units_of_1024(n: u64) -> (f64, usize) {
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < 5 {
        v /= 1024.0;
        i += 1;
    }
    (v, i)
}

#[cfg(test)]
mod tests {
    /// The option table is consistent (unique names, valid `requires`), whatever the build.
    #[test]
    fn command_line_definition_is_valid() {
        <super::Cli as clap::CommandFactory>::command().debug_assert();
    }
}
