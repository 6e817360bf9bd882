//! Kill-point harness (issue 10, "trustworthy mutations"): every operation that changes disks is
//! killed with SIGKILL at each call of each state-changing system call, and what it leaves must be
//! a whole state, never a mix.
//!
//! How: `strace -f -qq -e trace=SYSCALL -e inject=SYSCALL:signal=KILL:when=N -o /dev/null vmkfs
//! ARGS`. strace counts injections per syscall and per tracee (thread), so the counting pass
//! (`strace -f -e trace=<all of them> -o FILE`, one run of the operation uninterrupted on a copy)
//! counts per thread too: M is the largest count any one thread reached, and N runs over 1..=M
//! (40 evenly spread points when M > 40; `VMKFS_KILLPOINTS_MAX`). Both passes run with
//! `--threads 1` (one copy-engine worker besides the main thread, so each thread's sequence of
//! calls is the same in every run) and `--chunk-kib 256` (more write calls, so more kill
//! points inside a data phase).
//!
//! After each kill, on a fresh copy of the fixture (fixtures are built once with `vmkfs` itself and
//! copied per run with `cp --sparse=always`):
//! - every source file is byte-for-byte unchanged (sha256);
//! - the **state vector** (per disk involved: absent, the sha256 of `vmkfs --read-at 0 DISK`, or
//!   "refused with re-run advice": exit 5 and `re-run` in the message) equals the whole
//!   pre-operation vector or the whole post-operation vector, or every disk is refused with re-run
//!   advice (allowed only for operations with a data phase to redo: `-m`, `--apply`, `-w`,
//!   `-x repair`); the 2 GiB split destinations are compared with `vmkfs --compare` against their
//!   source instead of being read through a pipe (a 2 GiB flat read costs seconds per run);
//! - `vmkfs -x check` on every existing disk is clean (or gives what it gave before the operation,
//!   for `-x repair`'s damaged fixture; or exits 1 with `re-run` in the re-run state);
//! - running the same command again completes: exit 0 and the post vector, or, when the kill left
//!   the post state already, exactly what the same command does on the uninterrupted result
//!   (`already exists` for creations, the same refusal for a commit whose link is gone);
//! - after that rerun the folder holds exactly what the uninterrupted operation left (no
//!   `.vmkfs` temporary, intent or lock names, no half-moved extents), and `-x check` is clean.
//!
//! Knobs: `VMKFS_KILLPOINTS_MAX` (points per operation and syscall, default 40),
//! `VMKFS_KILLPOINTS_THREADS` (default 2), `VMKFS_KILLPOINTS_OPS` (comma-separated substrings of
//! operation names to run, e.g. `clone-thin,commit`). A full report goes to
//! `target/killpoints-report.txt`. Skips (printing `SKIP:`) when strace is not installed.

mod common;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// The system calls killed at, one at a time.
const SYSCALLS: [&str; 11] = [
    "unlink",
    "unlinkat",
    "rename",
    "renameat",
    "renameat2",
    "fsync",
    "fdatasync",
    "pwrite64",
    "write",
    "ftruncate",
    "fallocate",
];

/// The engine options of every `vmkfs` run of the harness (see the module comment).
const HARNESS_ARGS: [&str; 4] = ["--threads", "1", "--chunk-kib", "256"];

/// Longest any single run may take.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------------------------
// Operations
// ---------------------------------------------------------------------------------------------

/// What re-running a command that already completed does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rerun {
    /// Idempotent (`-K`, `-w`, `-x repair`, `--apply`): exit 0 and nothing changes, always.
    Idempotent,
    /// A creation (`-i`, `--snapshot`, `--export-delta`): `already exists` (exit 2), or for a
    /// snapshot a new sibling, exactly as on the uninterrupted result.
    Create,
    /// Done once (`-m`, `--discard`, `-U`, `-E`, `-X`): whatever the command does on the
    /// uninterrupted result (it refuses: the link is gone, the size is reached).
    Once,
}

/// What the uninterrupted operation must leave on one disk (a sanity check of the post vector).
#[derive(Debug, Clone)]
enum Expect {
    Absent,
    /// The content disk `i` of the pre vector had.
    PreOf(usize),
    /// Known content.
    Digest(DiskDigest),
}

/// A disk whose state is observed.
#[derive(Debug, Clone)]
struct Disk {
    path: String,
    /// Compare with this disk (which must read as `digest`) instead of reading the whole disk.
    reference: Option<(String, DiskDigest)>,
}

fn disk(path: &str) -> Disk {
    Disk { path: path.into(), reference: None }
}

#[derive(Debug, Clone)]
struct Op {
    name: String,
    fixture: PathBuf,
    args: Vec<String>,
    disks: Vec<Disk>,
    /// Files that must stay byte-for-byte unchanged.
    sources: Vec<String>,
    rerun: Rerun,
    /// The operation copies data and may leave its disks refused with re-run advice.
    data_phase: bool,
    expect: Vec<Expect>,
}

impl Op {
    fn command(&self) -> String {
        format!("vmkfs {}", self.args.join(" "))
    }
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

const CAP: u64 = 8 * MIB;
/// Two extents of a split disk: 2047 MiB and 1 MiB.
const SPLIT_CAP: u64 = 2 * GIB;

fn digest(dir: &Path, disk: &str) -> DiskDigest {
    disk_digest(dir, disk, &HARNESS_ARGS).unwrap_or_else(|o| panic!("fixture {disk} unreadable: {}", o.describe()))
}

fn zeros_digest(len: u64) -> DiskDigest {
    DiskDigest { sha256: sha256_hex(&vec![0u8; len as usize]) }
}

/// The content of `disk` followed by `extra` zero bytes (what a grown disk reads).
fn grown_digest(dir: &Path, disk: &str, extra: u64) -> DiskDigest {
    let cap = info_json(dir, disk)["capacity"].as_u64().unwrap();
    let mut v = read_at(dir, disk, 0, cap);
    v.resize((cap + extra) as usize, 0);
    DiskDigest { sha256: sha256_hex(&v) }
}

fn fixture(root: &Path, name: &str, build: impl FnOnce(&Path)) -> PathBuf {
    let d = root.join(name);
    std::fs::create_dir_all(&d).unwrap();
    build(&d);
    d
}

/// Builds every fixture under `root` and returns the operations.
/// The folders the operations start from, and what they hold.
#[derive(Clone)]
struct Fixtures {
    thin: PathBuf,
    mono: PathBuf,
    big: PathBuf,
    snap1: PathBuf,
    snap2: PathBuf,
    split_flat: PathBuf,
    split_sparse: PathBuf,
    apply: PathBuf,
    repair: PathBuf,
    repair_good: DiskDigest,
    thin_content: DiskDigest,
    big_content: DiskDigest,
    snap1_top: DiskDigest,
    apply_top: DiskDigest,
    thin_files: Vec<String>,
}

/// Builds every fixture under `root`.
fn fixtures(root: &Path) -> Fixtures {
    let thin = fixture(root, "thin", |d| disk_with_data(d, "vm.vmdk", "thin", CAP, 1));
    let mono = fixture(root, "mono", |d| disk_with_data(d, "host.vmdk", "monosparse", CAP, 2));
    // A 2 GiB monosparse source: data at the start and across the split boundary (2047 MiB).
    let big = fixture(root, "big", |d| {
        create_disk(d, "big.vmdk", "monosparse", SPLIT_CAP);
        write_pattern(d, "big.vmdk", MIB, MIB as usize, 3);
        write_pattern(d, "big.vmdk", 2047 * MIB - 512 * KIB, MIB as usize, 3);
    });
    // A thin base with one ESX snapshot holding data over part of the base's.
    let snap1_build = |d: &Path| {
        disk_with_data(d, "vm.vmdk", "thin", CAP, 4);
        let s = snapshot(d, "vm.vmdk", false);
        assert_eq!(s, "vm-000001.vmdk");
        write_pattern(d, &s, 3 * MIB + 512 * KIB, 2 * MIB as usize, 5);
    };
    let snap1 = fixture(root, "snap1", snap1_build);
    let snap2 = fixture(root, "snap2", |d| {
        snap1_build(d);
        let s = snapshot(d, "vm-000001.vmdk", false);
        assert_eq!(s, "vm-000002.vmdk");
        write_pattern(d, &s, 4 * MIB, MIB as usize, 6);
    });
    let split_flat = fixture(root, "split-flat", |d| disk_with_data(d, "sf.vmdk", "2gbflat", CAP, 7));
    let split_sparse = fixture(root, "split-sparse", |d| disk_with_data(d, "ss.vmdk", "2gbsparse", CAP, 8));
    // README "Snapshots and backups": a snapshot, a full copy of the base (which keeps the base's
    // CID, as the full copy will once issue 10 lands: set here by hand), writes, an incremental.
    let apply = fixture(root, "apply", |d| {
        disk_with_data(d, "vm.vmdk", "thin", CAP, 9);
        let s = snapshot(d, "vm.vmdk", false);
        std::fs::create_dir(d.join("backup")).unwrap();
        vmkfs_ok(d, &["-i", "vm.vmdk", "-d", "2gbsparse", "backup/full.vmdk"]);
        set_descriptor_cid(&d.join("backup/full.vmdk"), &cid_of(d, "vm.vmdk"));
        write_pattern(d, &s, 5 * MIB, MIB as usize, 10);
        write_at(d, &s, MIB + 4096, &vec![0u8; 8192]); // zeros over base data travel too
        vmkfs_ok(d, &["--export-delta", "inc1.vmdk", "--since", "vm.vmdk", &s]);
    });
    // A hosted sparse disk whose first primary grain-table entry is zeroed (the redundant copy
    // keeps the good pointer): repair must restore it.
    let mut repair_good = None;
    let repair = fixture(root, "repair", |d| {
        disk_with_data(d, "host.vmdk", "monosparse", CAP, 11);
        repair_good = Some(digest(d, "host.vmdk"));
        zero_primary_gte(&d.join("host.vmdk"));
    });

    let thin_content = digest(&thin, "vm.vmdk");
    let big_content = digest(&big, "big.vmdk");
    let snap1_top = digest(&snap1, "vm-000001.vmdk");
    let apply_top = digest(&apply, "vm-000001.vmdk");
    let thin_files = strs(&["vm.vmdk", "vm-flat.vmdk"]);

    Fixtures {
        thin,
        mono,
        big,
        snap1,
        snap2,
        split_flat,
        split_sparse,
        apply,
        repair,
        repair_good: repair_good.expect("repair fixture built"),
        thin_content,
        big_content,
        snap1_top,
        apply_top,
        thin_files,
    }
}

/// Builds every fixture under `root` and returns the operations.
fn operations(root: &Path) -> Vec<Op> {
    let f = fixtures(root);
    let mut ops = clone_ops(&f);
    chain_ops(&f, &mut ops);
    disk_ops(&f, &mut ops);
    ops
}

/// `-i` into every format.
fn clone_ops(f: &Fixtures) -> Vec<Op> {
    let Fixtures { thin, big, thin_content, big_content, thin_files, .. } = f.clone();
    let mut ops = Vec::new();
    for fmt in
        ["zeroedthick", "eagerzeroedthick", "thin", "monosparse", "2gbsparse", "monoflat", "2gbflat", "streamoptimized"]
    {
        let split = fmt.starts_with("2gb");
        let (fixture, src, sources, content) = if split {
            (big.clone(), "big.vmdk", strs(&["big.vmdk"]), big_content.clone())
        } else {
            (thin.clone(), "vm.vmdk", thin_files.clone(), thin_content.clone())
        };
        let reference = split.then(|| (src.to_string(), content.clone()));
        ops.push(Op {
            name: format!("clone-{fmt}"),
            fixture,
            args: strs(&["-i", src, "-d", fmt, "out.vmdk"]),
            disks: vec![Disk { path: "out.vmdk".into(), reference }],
            sources,
            rerun: Rerun::Create,
            data_phase: false,
            expect: vec![Expect::Digest(content)],
        });
    }
    ops
}

/// Commit, discard, snapshots and delta export.
fn chain_ops(f: &Fixtures, ops: &mut Vec<Op>) {
    let Fixtures { thin, mono, snap1, snap2, snap1_top, thin_files, .. } = f.clone();
    ops.push(Op {
        name: "commit".into(),
        fixture: snap1.clone(),
        args: strs(&["-m", "vm-000001.vmdk"]),
        disks: vec![disk("vm.vmdk"), disk("vm-000001.vmdk")],
        sources: vec![],
        rerun: Rerun::Once,
        data_phase: true,
        expect: vec![Expect::PreOf(1), Expect::Absent],
    });
    ops.push(Op {
        name: "commit-under-child".into(),
        fixture: snap2.clone(),
        args: strs(&["-m", "vm-000001.vmdk"]),
        disks: vec![disk("vm.vmdk"), disk("vm-000001.vmdk"), disk("vm-000002.vmdk")],
        sources: vec![],
        rerun: Rerun::Once,
        data_phase: true,
        expect: vec![Expect::PreOf(1), Expect::Absent, Expect::PreOf(2)],
    });
    ops.push(Op {
        name: "discard".into(),
        fixture: snap1.clone(),
        args: strs(&["--discard", "vm-000001.vmdk"]),
        disks: vec![disk("vm.vmdk"), disk("vm-000001.vmdk")],
        sources: thin_files.clone(),
        rerun: Rerun::Once,
        data_phase: false,
        expect: vec![Expect::PreOf(0), Expect::Absent],
    });
    for (name, fixture, args, parent, child, sources) in [
        ("snapshot-esx", &thin, strs(&["--snapshot", "vm.vmdk"]), "vm.vmdk", "vm-000001.vmdk", thin_files.clone()),
        (
            "snapshot-hosted",
            &mono,
            strs(&["--snapshot", "host.vmdk"]),
            "host.vmdk",
            "host-000001.vmdk",
            strs(&["host.vmdk"]),
        ),
        (
            "snapshot-legacy-redo",
            &thin,
            strs(&["--snapshot", "--legacy-redo", "vm.vmdk"]),
            "vm.vmdk",
            "vm.vmdk.REDO",
            thin_files.clone(),
        ),
    ] {
        ops.push(Op {
            name: name.into(),
            fixture: fixture.clone(),
            args,
            disks: vec![disk(parent), disk(child)],
            sources,
            rerun: Rerun::Create,
            data_phase: false,
            expect: vec![Expect::PreOf(0), Expect::PreOf(0)],
        });
    }
    ops.push(Op {
        name: "export-delta".into(),
        fixture: snap1.clone(),
        args: strs(&["--export-delta", "inc.vmdk", "--since", "vm.vmdk", "vm-000001.vmdk"]),
        disks: vec![disk("inc.vmdk")],
        sources: strs(&["vm.vmdk", "vm-flat.vmdk", "vm-000001.vmdk", "vm-000001-delta.vmdk"]),
        rerun: Rerun::Create,
        data_phase: false,
        expect: vec![Expect::Digest(snap1_top)],
    });
}

/// Rename, delete, extend, punch, zero, apply and repair.
fn disk_ops(f: &Fixtures, ops: &mut Vec<Op>) {
    let Fixtures { thin, mono, snap1, split_flat, split_sparse, apply, repair, repair_good, apply_top, .. } = f.clone();
    ops.push(Op {
        name: "rename-esx-with-child".into(),
        fixture: snap1.clone(),
        args: strs(&["-E", "vm.vmdk", "new.vmdk"]),
        disks: vec![disk("vm.vmdk"), disk("new.vmdk"), disk("vm-000001.vmdk")],
        sources: vec![],
        rerun: Rerun::Once,
        data_phase: false,
        expect: vec![Expect::Absent, Expect::PreOf(0), Expect::PreOf(2)],
    });
    ops.push(Op {
        name: "rename-monosparse".into(),
        fixture: mono.clone(),
        args: strs(&["-E", "host.vmdk", "renamed.vmdk"]),
        disks: vec![disk("host.vmdk"), disk("renamed.vmdk")],
        sources: vec![],
        rerun: Rerun::Once,
        data_phase: false,
        expect: vec![Expect::Absent, Expect::PreOf(0)],
    });
    ops.push(Op {
        name: "delete".into(),
        fixture: thin.clone(),
        args: strs(&["-U", "vm.vmdk"]),
        disks: vec![disk("vm.vmdk")],
        sources: vec![],
        rerun: Rerun::Once,
        data_phase: false,
        expect: vec![Expect::Absent],
    });
    for (name, fixture, d) in [
        ("extend-thin", &thin, "vm.vmdk"),
        ("extend-2gbflat", &split_flat, "sf.vmdk"),
        ("extend-2gbsparse", &split_sparse, "ss.vmdk"),
    ] {
        let grown = if name == "extend-thin" { 4 * MIB } else { 8 * MIB };
        ops.push(Op {
            name: name.into(),
            fixture: fixture.clone(),
            args: strs(&["-X", &(CAP + grown).to_string(), d]),
            disks: vec![disk(d)],
            sources: vec![],
            rerun: Rerun::Once,
            data_phase: false,
            expect: vec![Expect::Digest(grown_digest(fixture, d, grown))],
        });
    }
    ops.push(Op {
        name: "punch-zero".into(),
        fixture: thin.clone(),
        args: strs(&["-K", "vm.vmdk"]),
        disks: vec![disk("vm.vmdk")],
        sources: vec![],
        rerun: Rerun::Idempotent,
        data_phase: false,
        expect: vec![Expect::PreOf(0)],
    });
    ops.push(Op {
        name: "write-zeros".into(),
        fixture: thin.clone(),
        args: strs(&["-w", "vm.vmdk"]),
        disks: vec![disk("vm.vmdk")],
        sources: vec![],
        rerun: Rerun::Idempotent,
        data_phase: true,
        expect: vec![Expect::Digest(zeros_digest(CAP))],
    });
    ops.push(Op {
        name: "apply".into(),
        fixture: apply.clone(),
        args: strs(&["--apply", "inc1.vmdk", "backup/full.vmdk"]),
        disks: vec![disk("backup/full.vmdk")],
        sources: strs(&["inc1.vmdk", "inc1-delta.vmdk"]),
        rerun: Rerun::Idempotent,
        data_phase: true,
        expect: vec![Expect::Digest(apply_top)],
    });
    ops.push(Op {
        name: "repair".into(),
        fixture: repair,
        args: strs(&["-x", "repair", "host.vmdk"]),
        disks: vec![disk("host.vmdk")],
        sources: vec![],
        rerun: Rerun::Idempotent,
        data_phase: true,
        expect: vec![Expect::Digest(repair_good)],
    });
}

// ---------------------------------------------------------------------------------------------
// Observing a folder
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
enum DiskState {
    Absent,
    Content(DiskDigest),
    /// Exit 5 with `re-run` advice.
    Refused,
    /// Anything else: unreadable, or (with a reference) different from it.
    Broken(String),
}

impl std::fmt::Display for DiskState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DiskState::Absent => write!(f, "absent"),
            DiskState::Content(d) => write!(f, "sha256 {}…", &d.sha256[..12.min(d.sha256.len())]),
            DiskState::Refused => write!(f, "refused (re-run)"),
            DiskState::Broken(why) => write!(f, "BROKEN: {why}"),
        }
    }
}

fn vm(dir: &Path, args: &[&str]) -> Outcome {
    let c = vmkfs_cmd(dir, &[&HARNESS_ARGS[..], args].concat());
    run(c, None, Some(RUN_TIMEOUT))
}

fn refused_with_rerun(o: &Outcome) -> bool {
    o.code() == Some(5) && o.text().contains("re-run")
}

/// The state of one disk as vmkfs sees it. The first command after a kill finishes (or undoes) the
/// interrupted operation, so a disk present before that command may be gone after it: absent then.
fn disk_state(dir: &Path, d: &Disk) -> DiskState {
    let gone = || std::fs::symlink_metadata(dir.join(&d.path)).is_err();
    if gone() {
        return DiskState::Absent;
    }
    let s = disk_state_of_present(dir, d);
    if matches!(s, DiskState::Broken(_)) && gone() {
        return DiskState::Absent;
    }
    s
}

fn disk_state_of_present(dir: &Path, d: &Disk) -> DiskState {
    if let Some((reference, content)) = &d.reference {
        let o = vm(dir, &["--compare", &d.path, reference]);
        return match o.code() {
            Some(0) => DiskState::Content(content.clone()),
            _ if refused_with_rerun(&o) => DiskState::Refused,
            Some(1) => DiskState::Broken(format!("differs from {reference}: {}", gist(&o.text()))),
            _ => DiskState::Broken(format!("--compare {}: {}", o.how(), gist(&o.text()))),
        };
    }
    match disk_digest(dir, &d.path, &HARNESS_ARGS) {
        Ok(g) => DiskState::Content(g),
        Err(o) if refused_with_rerun(&o) => DiskState::Refused,
        Err(o) => DiskState::Broken(format!("--read-at 0: {}: {}", o.how(), gist(&o.err()))),
    }
}

fn state_vector(dir: &Path, op: &Op) -> Vec<DiskState> {
    op.disks.iter().map(|d| disk_state(dir, d)).collect()
}

fn show_vector(op: &Op, v: &[DiskState]) -> String {
    op.disks.iter().zip(v).map(|(d, s)| format!("{} = {s}", d.path)).collect::<Vec<_>>().join("; ")
}

/// The vector with each disk's value named by the state it matches (`pre`, `post`, …).
fn label_vector(p: &Prepared, v: &[DiskState]) -> String {
    let label = |i: usize, s: &DiskState| match s {
        DiskState::Refused | DiskState::Broken(_) => s.to_string(),
        _ if *s == p.pre[i] && *s == p.post[i] => format!("{s} (pre = post)"),
        _ if *s == p.pre[i] => format!("pre ({s})"),
        _ if *s == p.post[i] => format!("post ({s})"),
        _ => format!("neither: {s}"),
    };
    p.op.disks
        .iter()
        .zip(v)
        .enumerate()
        .map(|(i, (d, s))| format!("{} {}", d.path, label(i, s)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The line of a command's output that says what went wrong (else its last line).
fn gist(text: &str) -> String {
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    lines
        .iter()
        .find(|l| l.starts_with("vmkfs:") || l.starts_with("Failed") || l.contains("error") || l.contains("re-run"))
        .or(lines.last())
        .map(|l| l.to_string())
        .unwrap_or_default()
}

/// `-x check` of one disk: (exit code, output).
fn check(dir: &Path, d: &Disk) -> (Option<i32>, String) {
    let o = vm(dir, &["-x", "check", &d.path]);
    (o.code(), o.text())
}

fn source_hashes(dir: &Path, op: &Op) -> Vec<(String, String)> {
    let sums = sha256_files(&op.sources.iter().map(|s| dir.join(s)).collect::<Vec<_>>());
    op.sources.iter().cloned().zip(sums).collect()
}

/// Names of temporary, intent or lock files (hidden `.vmkfs` names).
fn vmkfs_leftovers(listing: &[String]) -> Vec<String> {
    listing.iter().filter(|n| n.contains(".vmkfs")).cloned().collect()
}

// ---------------------------------------------------------------------------------------------
// Preparing an operation: pre vector, counting pass, post vector, rerun on the result
// ---------------------------------------------------------------------------------------------

struct Prepared {
    op: Op,
    pre: Vec<DiskState>,
    pre_check: Vec<Option<i32>>,
    post: Vec<DiskState>,
    post_listing: Vec<String>,
    sources: Vec<(String, String)>,
    /// Re-running the command on the uninterrupted result: exit code, vector, listing.
    again: (Option<i32>, Vec<DiskState>, Vec<String>),
    /// Calls per syscall (the most any one thread made).
    counts: BTreeMap<&'static str, u64>,
    /// Problems of the uninterrupted operation itself.
    problems: Vec<String>,
    /// The uninterrupted operation exited 0.
    ran: bool,
    prep_time: Duration,
}

/// Runs `vmkfs ARGS` under strace tracing every syscall of [`SYSCALLS`]; returns the outcome and
/// the per-syscall maximum over threads of the number of calls.
fn counting_run(dir: &Path, op: &Op, trace_file: &Path) -> (Outcome, BTreeMap<&'static str, u64>) {
    let mut c = Command::new("strace");
    c.args(["-f", "-qq", "-e", &format!("trace={}", SYSCALLS.join(",")), "-o"])
        .arg(trace_file)
        .arg(bin())
        .args(HARNESS_ARGS)
        .args(&op.args)
        .current_dir(dir)
        .stdin(std::process::Stdio::null());
    let o = run(c, None, Some(RUN_TIMEOUT));
    let text = std::fs::read_to_string(trace_file).unwrap_or_default();
    let mut per_thread: BTreeMap<(&'static str, &str), u64> = BTreeMap::new();
    for line in text.lines() {
        let Some((tid, rest)) = line.split_once(' ') else { continue };
        let rest = rest.trim_start();
        let Some(name) = rest.split('(').next() else { continue };
        if let Some(sc) = SYSCALLS.iter().find(|s| **s == name) {
            *per_thread.entry((sc, tid)).or_default() += 1;
        }
    }
    let mut counts = BTreeMap::new();
    for ((sc, _), n) in per_thread {
        let m = counts.entry(sc).or_insert(0);
        *m = (*m).max(n);
    }
    (o, counts)
}

fn prepare(op: &Op, scratch: &Path) -> Prepared {
    let started = Instant::now();
    let mut problems = Vec::new();
    let a = tempfile::tempdir_in(scratch).unwrap();
    copy_dir(&op.fixture, a.path());
    let pre = state_vector(a.path(), op);
    for (d, s) in op.disks.iter().zip(&pre) {
        assert!(matches!(s, DiskState::Absent | DiskState::Content(_)), "fixture of {}: {} is {s}", op.name, d.path);
    }
    let pre_check: Vec<Option<i32>> = op
        .disks
        .iter()
        .zip(&pre)
        .map(|(d, s)| if *s == DiskState::Absent { None } else { check(a.path(), d).0 })
        .collect();
    let sources = source_hashes(a.path(), op);
    let trace = scratch.join(format!("{}.trace", op.name));
    let (o, counts) = counting_run(a.path(), op, &trace);
    let _ = std::fs::remove_file(&trace);
    if !o.success() {
        problems.push(format!("the uninterrupted operation failed: {}", o.describe()));
    }
    let post = state_vector(a.path(), op);
    let post_listing = listing(a.path());
    if source_hashes(a.path(), op) != sources {
        problems.push("the uninterrupted operation changed a source file".into());
    }
    let left = vmkfs_leftovers(&post_listing);
    if !left.is_empty() {
        problems.push(format!("the uninterrupted operation left {left:?}"));
    }
    for (i, (e, got)) in op.expect.iter().zip(&post).enumerate() {
        let want = match e {
            Expect::Absent => DiskState::Absent,
            Expect::PreOf(j) => pre[*j].clone(),
            Expect::Digest(g) => DiskState::Content(g.clone()),
        };
        if *got != want {
            problems.push(format!("the uninterrupted operation left {} = {got}, expected {want}", op.disks[i].path));
        }
    }
    for (d, s) in op.disks.iter().zip(&post) {
        if *s != DiskState::Absent {
            let (code, text) = check(a.path(), d);
            if code != Some(0) {
                problems.push(format!("after the uninterrupted operation, -x check {}: exit {code:?}: {text}", d.path));
            }
        }
    }
    // The same command once more, on a copy of the result.
    let b = tempfile::tempdir_in(scratch).unwrap();
    copy_dir(a.path(), b.path());
    let r = vm(b.path(), &op.args.iter().map(String::as_str).collect::<Vec<_>>());
    let again = (r.code(), state_vector(b.path(), op), listing(b.path()));
    match op.rerun {
        Rerun::Idempotent if !(r.success() && again.1 == post && again.2 == post_listing) => problems.push(format!(
            "running `{}` again on its own result must exit 0 and change nothing: {}",
            op.command(),
            r.describe()
        )),
        Rerun::Create if !(r.success() || (r.code() == Some(2) && r.text().contains("already exists"))) => problems
            .push(format!(
                "running the creation `{}` again must exit 0 or 2 `already exists`: {}",
                op.command(),
                r.describe()
            )),
        _ if r.panicked() || r.signal().is_some() => {
            problems.push(format!("running `{}` again on its own result crashed: {}", op.command(), r.describe()))
        }
        _ => {}
    }
    Prepared {
        op: op.clone(),
        pre,
        pre_check,
        post,
        post_listing,
        sources,
        again,
        counts,
        problems,
        ran: o.success(),
        prep_time: started.elapsed(),
    }
}

// ---------------------------------------------------------------------------------------------
// One kill point
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Pre,
    Post,
    Rerun,
    Mixed,
}

struct CaseResult {
    op: usize,
    syscall: &'static str,
    n: u64,
    class: Class,
    /// The process was not killed (this run made fewer calls than the counting run).
    completed: bool,
    problems: Vec<String>,
    details: String,
}

fn classify(p: &Prepared, v: &[DiskState]) -> Class {
    if v == p.post.as_slice() {
        Class::Post
    } else if v == p.pre.as_slice() {
        Class::Pre
    } else if v.iter().all(|s| *s == DiskState::Refused) {
        Class::Rerun
    } else {
        Class::Mixed
    }
}

fn killed_run(dir: &Path, op: &Op, syscall: &str, n: u64) -> Outcome {
    let mut c = Command::new("strace");
    c.args([
        "-f",
        "-qq",
        "-e",
        &format!("trace={syscall}"),
        "-e",
        &format!("inject={syscall}:signal=KILL:when={n}"),
        "-o",
        "/dev/null",
    ])
    .arg(bin())
    .args(HARNESS_ARGS)
    .args(&op.args)
    .current_dir(dir)
    .stdin(std::process::Stdio::null());
    run(c, None, Some(RUN_TIMEOUT))
}

fn run_case(preps: &[Prepared], (i, syscall, n): (usize, &'static str, u64), scratch: &Path) -> CaseResult {
    let p = &preps[i];
    let op = &p.op;
    let dir = tempfile::tempdir_in(scratch).unwrap();
    let d = dir.path();
    copy_dir(&op.fixture, d);
    let mut problems = Vec::new();
    let mut details = String::new();

    let k = killed_run(d, op, syscall, n);
    let completed = k.signal() != Some(9);
    let _ = writeln!(details, "killed run: {}", k.describe());
    if k.timed_out {
        problems.push("the killed run timed out".into());
    } else if completed && !k.success() {
        problems.push(format!("not killed (fewer calls than counted), yet it failed: {}", k.how()));
    }
    let _ = writeln!(details, "folder after the kill: {}", listing_with_sizes(d));

    // Sources, state vector, checks.
    if source_hashes(d, op) != p.sources {
        problems.push("a source file changed".into());
    }
    let v = state_vector(d, op);
    let class = classify(p, &v);
    let _ = writeln!(details, "state after the kill: {}", show_vector(op, &v));
    match class {
        Class::Mixed => problems.push(format!("mixed state after the kill: {}", label_vector(p, &v))),
        Class::Rerun if !op.data_phase => {
            problems.push("disks refused with re-run advice, but this operation has no data phase to redo".into())
        }
        _ => {}
    }
    for (j, (disk, s)) in op.disks.iter().zip(&v).enumerate() {
        if *s == DiskState::Absent {
            continue;
        }
        let (code, text) = check(d, disk);
        let ok = match class {
            Class::Pre => code == p.pre_check[j],
            Class::Post => code == Some(0),
            Class::Rerun => code == Some(1) && text.contains("re-run"),
            Class::Mixed => code == Some(0),
        };
        if !ok {
            problems.push(format!(
                "-x check {} after the kill: exit {code:?}: {}",
                disk.path,
                text.lines().next().unwrap_or("")
            ));
            let _ = writeln!(details, "-x check {}: {code:?}\n{text}", disk.path);
        }
    }

    // The rerun.
    let args: Vec<&str> = op.args.iter().map(String::as_str).collect();
    let r = vm(d, &args);
    let _ = writeln!(details, "rerun: {}", r.describe());
    let after = state_vector(d, op);
    let names = listing(d);
    let _ = writeln!(details, "state after the rerun: {}", show_vector(op, &after));
    let _ = writeln!(details, "folder after the rerun: {}", listing_with_sizes(d));
    let (want_code, want_vector, want_listing) = if class == Class::Post && op.rerun != Rerun::Idempotent {
        (p.again.0, &p.again.1, &p.again.2)
    } else {
        (Some(0), &p.post, &p.post_listing)
    };
    if r.code() != want_code {
        problems.push(format!(
            "rerun exited {} (expected {}): {}",
            r.how(),
            want_code.map(|c| format!("exit {c}")).unwrap_or_default(),
            gist(&r.text())
        ));
    }
    if after != *want_vector {
        problems.push(format!("after the rerun: {}", label_vector(p, &after)));
    }
    if names != *want_listing {
        let extra: Vec<&String> = names.iter().filter(|n| !want_listing.contains(n)).collect();
        let missing: Vec<&String> = want_listing.iter().filter(|n| !names.contains(n)).collect();
        problems.push(format!("folder after the rerun: extra {extra:?}, missing {missing:?}"));
    } else if !vmkfs_leftovers(&names).is_empty() {
        problems.push(format!("leftovers after the rerun: {:?}", vmkfs_leftovers(&names)));
    }
    if source_hashes(d, op) != p.sources {
        problems.push("a source file changed (after the rerun)".into());
    }
    for (disk, s) in op.disks.iter().zip(&after) {
        if *s != DiskState::Absent && !matches!(s, DiskState::Broken(_)) {
            let (code, text) = check(d, disk);
            if code != Some(0) {
                problems.push(format!(
                    "-x check {} after the rerun: exit {code:?}: {}",
                    disk.path,
                    text.lines().next().unwrap_or("")
                ));
            }
        }
    }
    CaseResult { op: i, syscall, n, class, completed, problems, details }
}

/// Kill points for a syscall reached `m` times: all of them, or `max` spread evenly (first and
/// last included).
fn points(m: u64, max: u64) -> Vec<u64> {
    let max = max.max(1);
    if m <= max {
        return (1..=m).collect();
    }
    if max == 1 {
        return vec![1];
    }
    let mut v: Vec<u64> = (0..max).map(|i| 1 + i * (m - 1) / (max - 1)).collect();
    v.dedup();
    v
}

// ---------------------------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------------------------

#[test]
fn kill_at_every_state_changing_syscall() {
    if !have_tool("strace") {
        skip("strace is not installed (Debian: apt-get install strace): the kill-point harness needs it");
        return;
    }
    let started = Instant::now();
    let max = env_number("VMKFS_KILLPOINTS_MAX", 40);
    let threads = env_number("VMKFS_KILLPOINTS_THREADS", 2) as usize;
    let filter: Vec<String> = std::env::var("VMKFS_KILLPOINTS_OPS")
        .map(|v| v.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect())
        .unwrap_or_default();
    let root = tempfile::tempdir().unwrap();
    let scratch = root.path().join("runs");
    std::fs::create_dir(&scratch).unwrap();
    let ops: Vec<Op> = operations(&root.path().join("fixtures"))
        .into_iter()
        .filter(|o| filter.is_empty() || filter.iter().any(|f| o.name.contains(f.as_str())))
        .collect();
    println!("kill points: {} operations, up to {max} points per syscall, {threads} threads", ops.len());

    let preps = parallel_map(&ops, threads, |op| prepare(op, &scratch), |_, _| {});
    println!("prepared in {:.1}s", started.elapsed().as_secs_f64());
    let mut cases = Vec::new();
    for (i, p) in preps.iter().enumerate() {
        if !p.ran {
            continue; // the uninterrupted operation failed: there is no post state to check against
        }
        for (sc, m) in &p.counts {
            for n in points(*m, max) {
                cases.push((i, *sc, n));
            }
        }
    }
    println!("{} kill points", cases.len());
    let last = std::sync::Mutex::new(Instant::now());
    let results = parallel_map(
        &cases,
        threads,
        |c| run_case(&preps, *c, &scratch),
        |done, total| {
            let mut l = last.lock().unwrap();
            if l.elapsed() > Duration::from_secs(15) || done == total {
                *l = Instant::now();
                println!("  {done}/{total} kill points at {:.0}s", started.elapsed().as_secs_f64());
            }
        },
    );
    let elapsed = started.elapsed();

    // Summary matrix.
    let mut summary = String::new();
    let _ = writeln!(
        summary,
        "\n{:<24} {:<10} {:>5} {:>6} {:>5} {:>5} {:>6} {:>5} {:>6}",
        "operation", "syscall", "M", "tried", "pre", "post", "re-run", "done", "FAILED"
    );
    for (i, p) in preps.iter().enumerate() {
        for (sc, m) in &p.counts {
            let rs: Vec<&CaseResult> = results.iter().filter(|r| r.op == i && r.syscall == *sc).collect();
            let count = |c: Class| rs.iter().filter(|r| r.class == c).count();
            let _ = writeln!(
                summary,
                "{:<24} {:<10} {:>5} {:>6} {:>5} {:>5} {:>6} {:>5} {:>6}",
                p.op.name,
                sc,
                m,
                rs.len(),
                count(Class::Pre),
                count(Class::Post),
                count(Class::Rerun),
                rs.iter().filter(|r| r.completed).count(),
                rs.iter().filter(|r| !r.problems.is_empty()).count()
            );
        }
        let _ = writeln!(summary, "{:<24} (prepared in {:.1}s)", "", p.prep_time.as_secs_f64());
    }
    let failed: Vec<&CaseResult> = results.iter().filter(|r| !r.problems.is_empty()).collect();
    let _ = writeln!(
        summary,
        "{} kill points, {} failed; {} operations with problems when not interrupted; {:.0}s",
        results.len(),
        failed.len(),
        preps.iter().filter(|p| !p.problems.is_empty()).count(),
        elapsed.as_secs_f64()
    );
    println!("{summary}");

    // Failures: one line each, then the details.
    let mut report = String::new();
    for p in preps.iter().filter(|p| !p.problems.is_empty()) {
        let _ = writeln!(report, "[{}] `{}` uninterrupted:", p.op.name, p.op.command());
        for q in &p.problems {
            let _ = writeln!(report, "    - {q}");
        }
    }
    for r in &failed {
        let p = &preps[r.op];
        let _ = writeln!(report, "[{}] {} #{} ({:?}): {}", p.op.name, r.syscall, r.n, r.class, r.problems.join(" | "));
    }
    let mut full = format!("{summary}\n{report}\n");
    for r in &failed {
        let p = &preps[r.op];
        let _ =
            writeln!(full, "==== [{}] `{}` killed at {} #{}\n{}", p.op.name, p.op.command(), r.syscall, r.n, r.details);
    }
    let report_path = target_dir().join("killpoints-report.txt");
    let _ = std::fs::write(&report_path, &full);
    if !report.is_empty() {
        let detail: String = failed
            .iter()
            .take(8)
            .map(|r| format!("==== [{}] killed at {} #{}\n{}", preps[r.op].op.name, r.syscall, r.n, r.details))
            .collect();
        panic!(
            "kill-point failures (full report with every run's stderr and folder listings: {}):\n{report}\nfirst details:\n{detail}",
            report_path.display()
        );
    }
}
