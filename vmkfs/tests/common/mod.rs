//! The one test harness of `vmkfs/tests` (every test file uses it): running the `vmkfs` binary
//! (with standard input, a timeout, extra environment), probing for external tools, sha256 of files and of whole disks, deterministic data,
//! folder listings and copies, and the fixture builders these tests share.
//!
//! Every test file uses a part of it, hence the `dead_code` allowance.

#![allow(dead_code)]

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

mod portable;
pub use portable::*;

pub const KIB: u64 = 1 << 10;
pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;

// ---------------------------------------------------------------------------------------------
// Running the binary
// ---------------------------------------------------------------------------------------------

/// The `vmkfs` binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_vmkfs")
}

/// A finished process: what ran, how it ended, what it printed.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The program and its arguments.
    pub argv: Vec<String>,
    /// Its working directory.
    pub dir: PathBuf,
    /// How it ended.
    pub status: ExitStatus,
    /// Standard output.
    pub stdout: Vec<u8>,
    /// Standard error.
    pub stderr: Vec<u8>,
    /// Killed by us after the timeout.
    pub timed_out: bool,
}

impl Outcome {
    /// The exit code (`None` when a signal ended it).
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
    /// The signal that ended it.
    pub fn signal(&self) -> Option<i32> {
        self.status.signal()
    }
    /// Exit code 0.
    pub fn success(&self) -> bool {
        self.status.success()
    }
    /// Standard output as text.
    pub fn out(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    /// Standard error as text.
    pub fn err(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
    /// Both, for messages that some commands print on standard output (`Failed to clone disk: …`).
    pub fn text(&self) -> String {
        format!("{}{}", self.out(), self.err())
    }
    /// True when the process panicked (Rust's exit code 101 or a panic message).
    pub fn panicked(&self) -> bool {
        self.code() == Some(101) || self.err().contains("panicked")
    }
    /// "exit N", "signal N" or "timed out".
    pub fn how(&self) -> String {
        if self.timed_out {
            "timed out".into()
        } else if let Some(c) = self.code() {
            format!("exit {c}")
        } else {
            format!("signal {}", self.signal().unwrap_or(0))
        }
    }
    /// Everything about the run, for assertion messages (output cut to 4000 bytes each).
    pub fn describe(&self) -> String {
        let cut =
            |s: String| if s.len() > 4000 { format!("{}… ({} bytes)", &s[..floor(&s, 4000)], s.len()) } else { s };
        format!(
            "`{}` in {}: {}\n  stdout: {}\n  stderr: {}",
            self.argv.join(" "),
            self.dir.display(),
            self.how(),
            cut(self.out()).trim_end(),
            cut(self.err()).trim_end()
        )
    }
}

/// The standard output of a run that must have succeeded (panics with everything about it otherwise).
pub fn ok(o: &Outcome) -> String {
    assert!(o.success(), "{}", o.describe());
    o.out()
}

/// Standard output and error of a run that must have exited with `code`.
pub fn fail(o: &Outcome, code: i32) -> String {
    assert_eq!(o.code(), Some(code), "{}", o.describe());
    o.text()
}

fn floor(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// A `vmkfs` command in `dir` (standard input: nothing, unless the caller changes it).
pub fn vmkfs_cmd(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(bin());
    c.args(args).current_dir(dir).stdin(Stdio::null());
    c
}

/// Runs `cmd` to the end, feeding `stdin` (on its own thread, so a full pipe cannot deadlock) and
/// killing it after `timeout`.
pub fn run(mut cmd: Command, stdin: Option<&[u8]>, timeout: Option<Duration>) -> Outcome {
    let argv: Vec<String> =
        std::iter::once(cmd.get_program()).chain(cmd.get_args()).map(|a| a.to_string_lossy().into_owned()).collect();
    let dir = cmd.get_current_dir().map(Path::to_path_buf).unwrap_or_default();
    if stdin.is_some() {
        cmd.stdin(Stdio::piped());
    }
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {argv:?}: {e}"));
    let feeder = stdin.map(|data| {
        let mut pipe = child.stdin.take().expect("piped stdin");
        let data = data.to_vec();
        std::thread::spawn(move || {
            let _ = pipe.write_all(&data);
        })
    });
    let (status, stdout, stderr, timed_out) = wait_with_timeout(&mut child, timeout);
    if let Some(f) = feeder {
        let _ = f.join();
    }
    Outcome { argv, dir, status, stdout, stderr, timed_out }
}

/// Runs `cmd` with its standard output discarded (for whole-disk reads), killing it after `timeout`.
pub fn run_discarding_output(mut cmd: Command, timeout: Duration) -> Outcome {
    let argv: Vec<String> =
        std::iter::once(cmd.get_program()).chain(cmd.get_args()).map(|a| a.to_string_lossy().into_owned()).collect();
    let dir = cmd.get_current_dir().map(Path::to_path_buf).unwrap_or_default();
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {argv:?}: {e}"));
    let (status, stdout, stderr, timed_out) = wait_with_timeout(&mut child, Some(timeout));
    Outcome { argv, dir, status, stdout, stderr, timed_out }
}

/// Waits for `child` (whose stdout and stderr are pipes), collecting both; kills it after `timeout`.
pub fn wait_with_timeout(child: &mut Child, timeout: Option<Duration>) -> (ExitStatus, Vec<u8>, Vec<u8>, bool) {
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut v);
            }
            v
        })
    };
    let out = drain(child.stdout.take().map(|s| Box::new(s) as Box<dyn Read + Send>));
    let err = drain(child.stderr.take().map(|s| Box::new(s) as Box<dyn Read + Send>));
    let start = Instant::now();
    let mut timed_out = false;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for child") {
            break s;
        }
        if timeout.is_some_and(|t| start.elapsed() > t) {
            timed_out = true;
            let _ = child.kill();
            break child.wait().expect("wait for killed child");
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    (status, out.join().unwrap_or_default(), err.join().unwrap_or_default(), timed_out)
}

/// The `vmkfs-backup` binary under test.
pub fn backup_bin() -> &'static str {
    env!("CARGO_BIN_EXE_vmkfs-backup")
}

/// The `vmkfs-restore` binary under test.
pub fn restore_bin() -> &'static str {
    env!("CARGO_BIN_EXE_vmkfs-restore")
}

/// `PROGRAM ARGS` in `dir` (standard input: nothing).
pub fn tool_cmd(program: &str, dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(program);
    c.args(args).current_dir(dir).stdin(Stdio::null());
    c
}

/// Runs `PROGRAM ARGS` in `dir` (killed after ten minutes).
pub fn tool(program: &str, dir: &Path, args: &[&str]) -> Outcome {
    run(tool_cmd(program, dir, args), None, Some(Duration::from_secs(600)))
}

/// Runs `vmkfs ARGS` in `dir`.
pub fn vmkfs(dir: &Path, args: &[&str]) -> Outcome {
    run(vmkfs_cmd(dir, args), None, Some(Duration::from_secs(600)))
}

/// Runs `vmkfs ARGS` in `dir` with `input` on standard input.
pub fn vmkfs_stdin(dir: &Path, args: &[&str], input: &[u8]) -> Outcome {
    run(vmkfs_cmd(dir, args), Some(input), Some(Duration::from_secs(600)))
}

/// Runs `vmkfs ARGS` in `dir`, which must succeed; returns its standard output, trimmed.
pub fn vmkfs_ok(dir: &Path, args: &[&str]) -> String {
    let o = vmkfs(dir, args);
    assert!(o.success(), "{}", o.describe());
    o.out().trim().to_string()
}

/// `vmkfs --write-at OFF DISK` with `data`, which must succeed.
pub fn write_at(dir: &Path, disk: &str, off: u64, data: &[u8]) {
    let o = vmkfs_stdin(dir, &["--write-at", &off.to_string(), disk], data);
    assert!(o.success(), "{}", o.describe());
}

/// `vmkfs --read-at OFF --length LEN DISK`, which must succeed.
pub fn read_at(dir: &Path, disk: &str, off: u64, len: u64) -> Vec<u8> {
    let o = vmkfs(dir, &["--read-at", &off.to_string(), "--length", &len.to_string(), disk]);
    assert!(o.success(), "{}", o.describe());
    assert_eq!(o.stdout.len() as u64, len, "{}", o.describe());
    o.stdout
}

/// The `--info --json` of a disk, which must succeed.
pub fn info_json(dir: &Path, disk: &str) -> serde_json::Value {
    let o = vmkfs(dir, &["--info", "--json", disk]);
    assert!(o.success(), "{}", o.describe());
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("--info --json of {disk}: {e}: {}", o.out()))
}

/// A disk's CID (8 hex digits) from `--info --json`.
pub fn cid_of(dir: &Path, disk: &str) -> String {
    info_json(dir, disk)["cid"].as_str().expect("cid in --info --json").to_string()
}

/// The content of a whole disk: the sha256 of what `vmkfs --read-at 0 DISK` streams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskDigest {
    /// sha256 of every byte, hex.
    pub sha256: String,
}

/// True when hashing goes to `sha256sum`: in debug builds of the tests (whose own sha256 runs at
/// about 16 MB/s) when it is installed. Optimized builds hash in-process (SHA-NI where present).
fn external_sha256() -> bool {
    cfg!(debug_assertions) && have_tool("sha256sum")
}

/// Streams `vmkfs [EXTRA] --read-at 0 DISK` into sha256 (see [`external_sha256`]; the bytes are
/// never held in memory). `Err` holds the failed run (its stdout is left empty).
pub fn disk_digest(dir: &Path, disk: &str, extra: &[&str]) -> Result<DiskDigest, Outcome> {
    let args = [extra, &["--read-at", "0", disk]].concat();
    let mut cmd = vmkfs_cmd(dir, &args);
    let argv: Vec<String> = std::iter::once(bin().to_string()).chain(args.iter().map(|a| a.to_string())).collect();
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("start vmkfs --read-at");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut err_pipe = child.stderr.take().expect("piped stderr");
    let err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err_pipe.read_to_end(&mut v);
        v
    });
    let sha256 = if external_sha256() {
        let o = Command::new("sha256sum").stdin(Stdio::from(stdout)).output().expect("run sha256sum");
        String::from_utf8_lossy(&o.stdout).split_whitespace().next().unwrap_or_default().to_string()
    } else {
        let mut h = Sha256::new();
        std::io::copy(&mut { stdout }, &mut HashWriter(&mut h)).expect("read vmkfs --read-at output");
        hex(&h.finalize())
    };
    let status = child.wait().expect("wait for vmkfs --read-at");
    let stderr = err.join().unwrap_or_default();
    if status.success() {
        Ok(DiskDigest { sha256 })
    } else {
        Err(Outcome { argv, dir: dir.into(), status, stdout: Vec::new(), stderr, timed_out: false })
    }
}

/// sha256 of everything `r` yields, hex, read in pieces (a pipe, a mounted image).
pub fn sha256_reader(r: &mut impl Read) -> String {
    let mut h = Sha256::new();
    std::io::copy(r, &mut HashWriter(&mut h)).expect("read what is hashed");
    hex(&h.finalize())
}

/// A `Write` that feeds a hasher.
struct HashWriter<'a>(&'a mut Sha256);

impl Write for HashWriter<'_> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.update(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `(key, fileName)` of the disks the `.vmx` at `vmx` names (keys in lower case: `scsi0:1`), as
/// the library's VM model reads them ([`vmkfs::vm::vmx::Vmx::disks`]).
pub fn vmx_disks(vmx: &Path) -> std::collections::BTreeMap<String, String> {
    let text = std::fs::read_to_string(vmx).unwrap_or_else(|e| panic!("{}: {e}", vmx.display()));
    let parsed = vmkfs::vm::vmx::Vmx::parse(&text, vmx).unwrap_or_else(|e| panic!("{e}"));
    parsed.disks().into_iter().map(|d| (d.key, d.file_name)).collect()
}

// ---------------------------------------------------------------------------------------------
// Tools
// ---------------------------------------------------------------------------------------------

/// True when an executable `name` is on `PATH` (or at `/usr/sbin`, `/sbin`).
pub fn have_tool(name: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")]).any(|d| {
        let p = d.join(name);
        std::fs::metadata(&p)
            .is_ok_and(|m| m.is_file() && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0)
    })
}

/// Prints the `SKIP:` line tests use when a tool they need is missing.
pub fn skip(what: &str) {
    println!("SKIP: {what}");
    eprintln!("SKIP: {what}");
}

/// True when `qemu-img` is installed; otherwise prints the `SKIP:` line (the qemu checks of the
/// calling test are skipped).
pub fn have_qemu() -> bool {
    let ok = have_tool("qemu-img");
    if !ok {
        skip("qemu-img is not installed (Debian: qemu-utils): skipping the qemu checks");
    }
    ok
}

/// `qemu-img ARGS` in `dir`.
pub fn qemu_img(dir: &Path, args: &[&str]) -> Outcome {
    let mut c = Command::new("qemu-img");
    c.args(args).current_dir(dir).stdin(Stdio::null());
    run(c, None, Some(Duration::from_secs(300)))
}

// ---------------------------------------------------------------------------------------------
// Hashes and data
// ---------------------------------------------------------------------------------------------

/// Lower-case hex.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// sha256 of bytes, hex.
pub fn sha256_hex(b: &[u8]) -> String {
    hex(&Sha256::digest(b))
}

/// sha256 of files' bytes, hex (one `sha256sum` for all of them, see [`external_sha256`]); a
/// missing or unreadable file gives an `unreadable: …` string.
pub fn sha256_files(paths: &[PathBuf]) -> Vec<String> {
    let unreadable = |p: &Path| std::fs::metadata(p).err().map(|e| format!("unreadable: {e}"));
    let present: Vec<&PathBuf> = paths.iter().filter(|p| unreadable(p).is_none()).collect();
    let mut sums = std::collections::HashMap::new();
    if external_sha256() && !present.is_empty() {
        let o = Command::new("sha256sum").arg("-b").arg("--").args(&present).output().expect("run sha256sum");
        // One line per file, in order: "HASH *PATH".
        for (p, line) in present.iter().zip(String::from_utf8_lossy(&o.stdout).lines()) {
            sums.insert((*p).clone(), line.split_whitespace().next().unwrap_or_default().to_string());
        }
    } else {
        for p in present {
            let mut h = Sha256::new();
            let r = File::open(p).and_then(|mut f| std::io::copy(&mut f, &mut HashWriter(&mut h)));
            sums.insert(p.clone(), r.map(|_| hex(&h.finalize())).unwrap_or_else(|e| format!("unreadable: {e}")));
        }
    }
    paths
        .iter()
        .map(|p| unreadable(p).or_else(|| sums.get(p).cloned()).unwrap_or_else(|| "unreadable".into()))
        .collect()
}

/// sha256 of one file's bytes, hex.
pub fn sha256_file(path: &Path) -> String {
    sha256_files(&[path.to_path_buf()]).remove(0)
}

/// Deterministic data: each 8-byte word is a hash of its byte offset and `seed`, so data written
/// at one offset never equals data for another, and a misplaced block is always noticed. `offset`
/// and `len` must be multiples of 8.
pub fn pattern(offset: u64, len: usize, seed: u64) -> Vec<u8> {
    assert!(offset.is_multiple_of(8) && len.is_multiple_of(8));
    let mut v = vec![0u8; len];
    for (i, c) in v.chunks_exact_mut(8).enumerate() {
        let mut z = (offset / 8 + i as u64) ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        c.copy_from_slice(&z.to_le_bytes());
    }
    v
}

/// `len` incompressible bytes: bits 24–31 of the [`XorShift`] stream from `seed | 1`.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = XorShift(seed | 1);
    (0..len).map(|_| (x.next_u64() >> 24) as u8).collect()
}

/// How [`mixed_image`] cuts and fills a disk image.
#[derive(Debug, Clone, Copy)]
pub struct Mix {
    /// The [`XorShift`] state the image is drawn from.
    pub state: u64,
    /// Runs are 1 to `run_kib` KiB long, plus 0 to `edge - 1` bytes (unaligned edges).
    pub run_kib: u64,
    /// See `run_kib`.
    pub edge: u64,
    /// A run is one of `kinds` kinds, drawn uniformly: the first `random` kinds are random bytes,
    /// the next one `text` repeated, the rest zeros (holes or explicit zeros, by the format).
    pub kinds: u64,
    /// See `kinds`.
    pub random: u64,
    /// See `kinds`.
    pub text: &'static [u8],
}

/// A disk image like a real one, `len` bytes with data in the first `data_len`: runs of random
/// bytes (incompressible), text and zeros as `mix` says.
pub fn mixed_image(len: usize, data_len: usize, mix: &Mix) -> Vec<u8> {
    let mut data = vec![0u8; len];
    let mut x = XorShift(mix.state);
    let mut pos = 0usize;
    while pos < data_len {
        let run = ((x.next_u64() % mix.run_kib) as usize + 1) * 1024 + (x.next_u64() % mix.edge) as usize;
        let end = (pos + run).min(data_len);
        let kind = x.next_u64() % mix.kinds;
        if kind < mix.random {
            data[pos..end].iter_mut().for_each(|b| *b = x.next_u64() as u8);
        } else if kind == mix.random {
            let t = mix.text;
            data[pos..end].iter_mut().enumerate().for_each(|(i, b)| *b = t[i % t.len()]);
        }
        pos = end;
    }
    data
}

/// Fills `buf` with the SplitMix64 stream of `seed` ([`Rng`]), 8 little-endian bytes per value.
pub fn fill(buf: &mut [u8], seed: u64) {
    let mut r = Rng::new(seed);
    for c in buf.chunks_mut(8) {
        c.copy_from_slice(&r.next_u64().to_le_bytes()[..c.len()]);
    }
}

// ---------------------------------------------------------------------------------------------
// Folders
// ---------------------------------------------------------------------------------------------

/// The names in `dir` itself (not below it), sorted.
pub fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Every entry under `dir` (files, folders, links), as sorted paths relative to it; folders are
/// listed with a trailing `/` and their content after them.
pub fn listing(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, rel: &Path, out: &mut Vec<String>) {
        let Ok(rd) = std::fs::read_dir(base.join(rel)) else { return };
        for e in rd.flatten() {
            let r = rel.join(e.file_name());
            let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
            out.push(format!("{}{}", r.display(), if is_dir { "/" } else { "" }));
            if is_dir {
                walk(base, &r, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, Path::new(""), &mut out);
    out.sort();
    out
}

/// `listing` with sizes, for failure reports.
pub fn listing_with_sizes(dir: &Path) -> String {
    listing(dir)
        .iter()
        .map(|n| match std::fs::symlink_metadata(dir.join(n)) {
            Ok(m) if m.is_file() => format!("{n} ({} bytes)", m.len()),
            _ => n.clone(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Copies the content of `src` into the existing folder `dst`, keeping holes (`cp -a --sparse=always`).
pub fn copy_dir(src: &Path, dst: &Path) {
    let o = Command::new("cp")
        .arg("-a")
        .arg("--sparse=always")
        .arg(format!("{}/.", src.display()))
        .arg(dst)
        .output()
        .expect("run cp");
    assert!(o.status.success(), "cp {} {}: {}", src.display(), dst.display(), String::from_utf8_lossy(&o.stderr));
}

/// sha256 of every file (recursively) under `dir`, with its relative path.
pub fn hash_tree(dir: &Path) -> Vec<(String, String)> {
    let names: Vec<String> = listing(dir).into_iter().filter(|n| !n.ends_with('/')).collect();
    let sums = sha256_files(&names.iter().map(|n| dir.join(n)).collect::<Vec<_>>());
    names.into_iter().zip(sums).collect()
}

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

/// Creates `disk` (`vmkfs -c`) of `cap` bytes in `format`.
pub fn create_disk(dir: &Path, disk: &str, format: &str, cap: u64) {
    vmkfs_ok(dir, &["-c", &cap.to_string(), "-d", format, disk]);
}

/// Writes `pattern(off, len, seed)` into `disk` at `off`; returns it.
pub fn write_pattern(dir: &Path, disk: &str, off: u64, len: usize, seed: u64) -> Vec<u8> {
    let data = pattern(off, len, seed);
    write_at(dir, disk, off, &data);
    data
}

/// A disk with a few MiB of patterned data: 3 MiB from 1 MiB and 64 KiB at `cap - 1 MiB` (for
/// disks of 4 MiB or more), and 256 KiB of written zeros inside the data (which `-K` can punch).
pub fn disk_with_data(dir: &Path, disk: &str, format: &str, cap: u64, seed: u64) {
    create_disk(dir, disk, format, cap);
    write_pattern(dir, disk, MIB, 3 * MIB as usize, seed);
    write_pattern(dir, disk, cap - MIB, 64 * KIB as usize, seed);
    write_at(dir, disk, 2 * MIB, &vec![0u8; 256 * KIB as usize]);
}

/// `vmkfs --snapshot DISK` (with `--legacy-redo`); returns the new link's path as printed.
pub fn snapshot(dir: &Path, disk: &str, legacy: bool) -> String {
    if legacy {
        vmkfs_ok(dir, &["--snapshot", "--legacy-redo", disk])
    } else {
        vmkfs_ok(dir, &["--snapshot", disk])
    }
}

/// Replaces the `CID=` line of a text descriptor file (a replica that kept its source's CID).
pub fn set_descriptor_cid(path: &Path, cid: &str) {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let out: Vec<String> = text
        .lines()
        .map(|l| if l.trim_start().to_ascii_lowercase().starts_with("cid=") { format!("CID={cid}") } else { l.into() })
        .collect();
    std::fs::write(path, out.join("\n") + "\n").unwrap();
}

/// Fields of a hosted sparse (`KDMV`) header, in the file's units (sectors).
#[derive(Debug, Clone, Copy)]
pub struct Kdmv {
    pub version: u32,
    pub flags: u32,
    pub capacity: u64,
    pub grain: u64,
    pub desc_offset: u64,
    pub desc_size: u64,
    pub gtes_per_gt: u32,
    pub rgd_offset: u64,
    pub gd_offset: u64,
    pub overhead: u64,
}

/// Byte offsets of the header fields (the layout of the format's `SparseExtentHeader`).
pub mod kdmv_field {
    pub const MAGIC: usize = 0;
    pub const VERSION: usize = 4;
    pub const FLAGS: usize = 8;
    pub const CAPACITY: usize = 12;
    pub const GRAIN: usize = 20;
    pub const DESC_OFFSET: usize = 28;
    pub const DESC_SIZE: usize = 36;
    pub const GTES_PER_GT: usize = 44;
    pub const RGD_OFFSET: usize = 48;
    pub const GD_OFFSET: usize = 56;
    pub const OVERHEAD: usize = 64;
    pub const UNCLEAN: usize = 72;
    pub const COMPRESS: usize = 77;
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// Parses the header at the start of `bytes` (`None` without the `KDMV` magic).
pub fn kdmv(bytes: &[u8]) -> Option<Kdmv> {
    use kdmv_field as k;
    if bytes.len() < 512 || &bytes[..4] != b"KDMV" {
        return None;
    }
    Some(Kdmv {
        version: le_u32(bytes, k::VERSION),
        flags: le_u32(bytes, k::FLAGS),
        capacity: le_u64(bytes, k::CAPACITY),
        grain: le_u64(bytes, k::GRAIN),
        desc_offset: le_u64(bytes, k::DESC_OFFSET),
        desc_size: le_u64(bytes, k::DESC_SIZE),
        gtes_per_gt: le_u32(bytes, k::GTES_PER_GT),
        rgd_offset: le_u64(bytes, k::RGD_OFFSET),
        gd_offset: le_u64(bytes, k::GD_OFFSET),
        overhead: le_u64(bytes, k::OVERHEAD),
    })
}

/// Zeroes the first non-zero entry of the first primary grain table of a hosted sparse file
/// (leaving the redundant copy intact); returns the entry's byte offset and old value.
pub fn zero_primary_gte(path: &Path) -> (u64, u32) {
    let f = std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
    let mut head = [0u8; 512];
    f.read_exact_at(&mut head, 0).unwrap();
    let h = kdmv(&head).unwrap_or_else(|| panic!("{} is not a hosted sparse file", path.display()));
    let mut gde = [0u8; 4];
    f.read_exact_at(&mut gde, h.gd_offset * 512).unwrap();
    let gt = u32::from_le_bytes(gde) as u64 * 512;
    let mut table = vec![0u8; h.gtes_per_gt as usize * 4];
    f.read_exact_at(&mut table, gt).unwrap();
    let i = (0..h.gtes_per_gt as usize)
        .find(|&i| le_u32(&table, i * 4) > 1)
        .unwrap_or_else(|| panic!("{}: the first grain table has no allocated grain", path.display()));
    let at = gt + i as u64 * 4;
    f.write_all_at(&[0; 4], at).unwrap();
    f.sync_all().unwrap();
    (at, le_u32(&table, i * 4))
}

// ---------------------------------------------------------------------------------------------
// Running cases on worker threads
// ---------------------------------------------------------------------------------------------

/// `f` over `items` on `threads` worker threads (items are taken in order as workers free up);
/// results in the order of `items`. `progress` is called after each item with (done, total).
pub fn parallel_map<T: Sync, R: Send>(
    items: &[T],
    threads: usize,
    f: impl Fn(&T) -> R + Sync,
    progress: impl Fn(usize, usize) + Sync,
) -> Vec<R> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<R>>> = Mutex::new((0..items.len()).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= items.len() {
                    break;
                }
                let r = f(&items[i]);
                results.lock().unwrap()[i] = Some(r);
                progress(done.fetch_add(1, Ordering::SeqCst) + 1, items.len());
            });
        }
    });
    results.into_inner().unwrap().into_iter().map(|r| r.expect("every item ran")).collect()
}

/// An environment variable parsed as a number, or `default`.
pub fn env_number(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v.trim().parse().unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

/// The cargo target folder (`target/`), from the binary's path (`target/<profile>/vmkfs`).
pub fn target_dir() -> PathBuf {
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(t);
    }
    Path::new(bin()).parent().and_then(Path::parent).map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("target"))
}

// ---------------------------------------------------------------------------------------------
// Counting I/O
// ---------------------------------------------------------------------------------------------

/// What a [`Counting`] storage saw.
#[derive(Debug, Default)]
pub struct IoCounts {
    /// `read_exact_at` calls.
    pub reads: std::sync::atomic::AtomicU64,
    /// Bytes those calls read.
    pub read_bytes: std::sync::atomic::AtomicU64,
    /// `data_runs` calls (`SEEK_DATA`/`SEEK_HOLE` walks).
    pub seeks: std::sync::atomic::AtomicU64,
}

impl IoCounts {
    /// `(reads, bytes read, data-run calls)` so far.
    pub fn get(&self) -> (u64, u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.reads.load(Relaxed), self.read_bytes.load(Relaxed), self.seeks.load(Relaxed))
    }
}

/// The host file system, counting every read and data-run query of every file it opens (the
/// metadata a walk reads: directories, grain tables, headers, seeks over flat files).
#[derive(Debug, Default)]
pub struct Counting {
    /// The counts.
    pub counts: std::sync::Arc<IoCounts>,
}

impl Counting {
    /// A counting storage and the handle to read its counts.
    pub fn storage() -> (std::sync::Arc<dyn vmkfs::vmdk::Storage>, std::sync::Arc<IoCounts>) {
        let c = Counting::default();
        let counts = c.counts.clone();
        (std::sync::Arc::new(c), counts)
    }

    fn wrap(&self, b: std::sync::Arc<dyn vmkfs::vmdk::Backing>) -> std::sync::Arc<dyn vmkfs::vmdk::Backing> {
        std::sync::Arc::new(CountingFile { inner: b, counts: self.counts.clone() })
    }
}

#[derive(Debug)]
struct CountingFile {
    inner: std::sync::Arc<dyn vmkfs::vmdk::Backing>,
    counts: std::sync::Arc<IoCounts>,
}

impl vmkfs::vmdk::ReadAt for CountingFile {
    type Error = vmkfs::vmdk::Error;
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> vmkfs::vmdk::Result<()> {
        use std::sync::atomic::Ordering::Relaxed;
        self.counts.reads.fetch_add(1, Relaxed);
        self.counts.read_bytes.fetch_add(buf.len() as u64, Relaxed);
        self.inner.read_exact_at(buf, offset)
    }
}

impl vmkfs::vmdk::Backing for CountingFile {
    fn path(&self) -> &Path {
        self.inner.path()
    }
    fn len(&self) -> vmkfs::vmdk::Result<u64> {
        self.inner.len()
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> vmkfs::vmdk::Result<()> {
        self.inner.write_all_at(buf, offset)
    }
    fn set_len(&self, len: u64) -> vmkfs::vmdk::Result<()> {
        self.inner.set_len(len)
    }
    fn sync(&self) -> vmkfs::vmdk::Result<()> {
        self.inner.sync()
    }
    fn data_runs(&self, offset: u64, len: u64) -> vmkfs::vmdk::Result<Vec<(u64, u64)>> {
        self.counts.seeks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.inner.data_runs(offset, len)
    }
    fn allocate(&self, offset: u64, len: u64) -> vmkfs::vmdk::Result<()> {
        self.inner.allocate(offset, len)
    }
    fn punch_hole(&self, offset: u64, len: u64) -> vmkfs::vmdk::Result<()> {
        self.inner.punch_hole(offset, len)
    }
    fn zero_range(&self, offset: u64, len: u64) -> vmkfs::vmdk::Result<()> {
        self.inner.zero_range(offset, len)
    }
    fn start_writeback(&self, offset: u64, len: u64) {
        self.inner.start_writeback(offset, len)
    }
    fn identity(&self) -> Option<(u64, u64)> {
        self.inner.identity()
    }
}

impl vmkfs::vmdk::Storage for Counting {
    fn open(&self, path: &Path, write: bool) -> vmkfs::vmdk::Result<std::sync::Arc<dyn vmkfs::vmdk::Backing>> {
        Ok(self.wrap(vmkfs::vmdk::HostStorage.open(path, write)?))
    }
    fn create_new(&self, path: &Path) -> vmkfs::vmdk::Result<std::sync::Arc<dyn vmkfs::vmdk::Backing>> {
        Ok(self.wrap(vmkfs::vmdk::HostStorage.create_new(path)?))
    }
    fn exists(&self, path: &Path) -> bool {
        vmkfs::vmdk::HostStorage.exists(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> vmkfs::vmdk::Result<()> {
        vmkfs::vmdk::HostStorage.rename(from, to)
    }
    fn remove(&self, path: &Path) -> vmkfs::vmdk::Result<()> {
        vmkfs::vmdk::HostStorage.remove(path)
    }
    fn sync_dir(&self, dir: &Path) -> vmkfs::vmdk::Result<()> {
        vmkfs::vmdk::HostStorage.sync_dir(dir)
    }
    fn open_locked(
        &self,
        path: &Path,
        lock: vmkfs::vmdk::storage::LockMode,
        wait: Duration,
    ) -> vmkfs::vmdk::Result<std::sync::Arc<dyn vmkfs::vmdk::Backing>> {
        Ok(self.wrap(vmkfs::vmdk::HostStorage.open_locked(path, lock, wait)?))
    }
    fn open_beneath(
        &self,
        dir: &Path,
        rel: &str,
        write: bool,
        descriptor: &Path,
    ) -> vmkfs::vmdk::Result<std::sync::Arc<dyn vmkfs::vmdk::Backing>> {
        Ok(self.wrap(vmkfs::vmdk::HostStorage.open_beneath(dir, rel, write, descriptor)?))
    }
    fn rename_noreplace(&self, from: &Path, to: &Path) -> vmkfs::vmdk::Result<()> {
        vmkfs::vmdk::HostStorage.rename_noreplace(from, to)
    }
    fn list_dir(&self, dir: &Path) -> Vec<String> {
        vmkfs::vmdk::HostStorage.list_dir(dir)
    }
    fn is_dir(&self, path: &Path) -> bool {
        vmkfs::vmdk::HostStorage.is_dir(path)
    }
    fn real_path(&self, path: &Path) -> PathBuf {
        vmkfs::vmdk::HostStorage.real_path(path)
    }
    fn is_writable(&self) -> bool {
        true
    }
}
