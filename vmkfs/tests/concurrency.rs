//! Concurrency between `vmkfs` processes (issue 10, "one lock protocol"): a command takes an
//! exclusive lock on every link it changes and a shared lock on every link it reads through, for
//! its whole duration. A command that meets a lock exits 5 with `locked by process PID` (and the
//! holder's command line) on standard error, or waits for it with `--wait SECONDS`; a VMware lock
//! folder (`NAME.vmdk.lck`) means `in use by VMware (lock folder NAME.vmdk.lck)`; a link with
//! children is read-only (exit 5 naming the child); no acknowledged write is ever lost.
//!
//! Real processes, and no sleeping as synchronization: a lock is held by a `vmkfs --write-at`
//! whose standard input the test holds open (once the test has pushed more than one 1 MiB read
//! buffer plus the pipe's capacity into it, the writer has opened the disk and written its first
//! MiB), by a clone reading a raw image from a pipe the test holds, or by a commit whose standard
//! output is a 4 KiB pipe the test does not read (its `--json` progress lines fill the pipe half-way
//! through the copy and it stops there, holding its locks, until the test drains it). Only the
//! `--wait` cases poll, to show the waiting command is still waiting before the holder finishes.

mod common;

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Child, ChildStdin, Stdio};
use std::time::{Duration, Instant};

use common::*;

const CAP: u64 = 16 * MIB;

// ---------------------------------------------------------------------------------------------
// Lock holders
// ---------------------------------------------------------------------------------------------

/// Bytes to push into a pipe so that the reader at the other end has read more than `buffer`
/// bytes: `buffer` plus whatever the pipe itself holds, plus a page.
fn past_one_buffer(pipe: &impl AsRawFd, buffer: usize) -> usize {
    // SAFETY: F_GETPIPE_SZ only reads the capacity of a pipe we own.
    let cap = unsafe { libc::fcntl(pipe.as_raw_fd(), libc::F_GETPIPE_SZ) };
    assert!(cap > 0, "F_GETPIPE_SZ: {}", std::io::Error::last_os_error());
    buffer + cap as usize + 4096
}

/// A process whose standard input the test feeds: a `vmkfs --write-at` (or `-i -`) that holds
/// its locks while the test keeps the pipe open.
struct Feeder {
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    data: Vec<u8>,
    sent: usize,
    pid: u32,
}

impl Feeder {
    /// Starts `vmkfs ARGS` and pushes `data` into it until it has consumed more than its first
    /// 1 MiB read (so it has opened its disks and written that MiB). `data` must be larger.
    fn start(dir: &Path, args: &[&str], data: Vec<u8>) -> Feeder {
        let mut c = vmkfs_cmd(dir, args);
        c.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = c.spawn().expect("start vmkfs");
        let mut stdin = child.stdin.take().unwrap();
        let first = past_one_buffer(&stdin, 1 << 20);
        assert!(data.len() > first, "feed {} bytes, more than {first}", data.len());
        if let Err(e) = stdin.write_all(&data[..first]) {
            let out = Self::collect(child);
            panic!("`vmkfs {}` stopped reading its input ({e}): {}", args.join(" "), out.describe());
        }
        Feeder { pid: child.id(), child: Some(child), stdin: Some(stdin), data, sent: first }
    }

    /// Sends the rest, closes the pipe and waits for the process.
    fn finish(mut self) -> Outcome {
        let mut stdin = self.stdin.take().unwrap();
        let _ = stdin.write_all(&self.data[self.sent..]);
        drop(stdin);
        Self::collect(self.child.take().unwrap())
    }

    fn collect(mut child: Child) -> Outcome {
        let (status, stdout, stderr, timed_out) = wait_with_timeout(&mut child, Some(Duration::from_secs(120)));
        Outcome { argv: vec!["vmkfs (fed)".into()], dir: Default::default(), status, stdout, stderr, timed_out }
    }
}

impl Drop for Feeder {
    fn drop(&mut self) {
        drop(self.stdin.take());
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
    }
}

/// `vmkfs --write-at OFF DISK` holding its locks; `data` (4 MiB) goes to `off`.
fn writer(dir: &Path, disk: &str, off: u64, data: Vec<u8>) -> Feeder {
    Feeder::start(dir, &["--write-at", &off.to_string(), disk], data)
}

/// A process stopped half-way on a full standard-output pipe (4 KiB) that the test does not read.
struct Stalled {
    child: Child,
    reader: Option<std::io::PipeReader>,
    pid: u32,
}

impl Stalled {
    /// Starts `vmkfs ARGS` and waits until its output pipe is full.
    fn start(dir: &Path, args: &[&str]) -> Stalled {
        let (reader, writer) = std::io::pipe().unwrap();
        // SAFETY: F_SETPIPE_SZ on a pipe we own; 4096 is the smallest capacity Linux allows.
        let set = unsafe { libc::fcntl(reader.as_raw_fd(), libc::F_SETPIPE_SZ, 4096) };
        assert!(set >= 4096, "F_SETPIPE_SZ: {}", std::io::Error::last_os_error());
        let mut c = vmkfs_cmd(dir, args);
        c.stdout(writer).stderr(Stdio::piped());
        let mut child = c.spawn().expect("start vmkfs");
        drop(c); // our copy of the pipe's write end
        let start = Instant::now();
        loop {
            let mut queued: libc::c_int = 0;
            // SAFETY: FIONREAD writes the number of queued bytes into `queued`.
            unsafe { libc::ioctl(reader.as_raw_fd(), libc::FIONREAD, &mut queued) };
            if queued as usize > set as usize - 200 {
                break;
            }
            if let Some(s) = child.try_wait().unwrap() {
                let mut out = Vec::new();
                let mut reader = reader;
                let _ = reader.read_to_end(&mut out);
                panic!(
                    "`vmkfs {}` finished ({s}) before filling its output pipe; make its work larger: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out)
                );
            }
            assert!(start.elapsed() < Duration::from_secs(60), "`vmkfs {}` never filled its output", args.join(" "));
            std::thread::sleep(Duration::from_millis(5));
        }
        Stalled { pid: child.id(), child, reader: Some(reader) }
    }

    /// Drains its output and waits for it.
    fn finish(mut self) -> Outcome {
        let mut reader = self.reader.take().unwrap();
        let out = std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = reader.read_to_end(&mut v);
            v
        });
        let mut err = Vec::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_end(&mut err);
        }
        let status = self.child.wait().unwrap();
        Outcome {
            argv: vec!["vmkfs (stalled)".into()],
            dir: Default::default(),
            status,
            stdout: out.join().unwrap(),
            stderr: err,
            timed_out: false,
        }
    }
}

impl Drop for Stalled {
    fn drop(&mut self) {
        drop(self.reader.take());
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------------------------

/// Problems found by one test, reported together (a refused command that was not refused and the
/// writes it lost are both worth knowing).
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.0.push(what());
        }
    }
    fn assert_none(self) {
        assert!(self.0.is_empty(), "{} problem(s):\n- {}", self.0.len(), self.0.join("\n- "));
    }
}

/// `o` met a lock: exit 5, and `locked by process PID` with the holder's command line (each of
/// `holder` appears) in its message (standard error; both streams for clones, which print
/// `Failed to clone disk: …` on standard output as vmkfstools does).
fn check_locked_by(p: &mut Problems, o: &Outcome, pid: u32, holder: &[&str]) {
    let msg = if o.argv.iter().any(|a| a == "-i") { o.text() } else { o.err() };
    let mut wrong = Vec::new();
    if o.code() != Some(5) {
        wrong.push("exit 5".to_string());
    }
    if !msg.contains(&format!("locked by process {pid}")) {
        wrong.push(format!("`locked by process {pid}`"));
    }
    let missing: Vec<&&str> = holder.iter().filter(|h| !msg.contains(**h)).collect();
    if !missing.is_empty() {
        wrong.push(format!("the holder's command line (with {missing:?})"));
    }
    p.check(wrong.is_empty(), || {
        format!("meeting the lock of process {pid}, expected {}: {}", wrong.join(", "), o.describe())
    });
}

/// What `disk` reads at `off` must be `want` (an acknowledged write).
fn check_reads(p: &mut Problems, dir: &Path, disk: &str, off: u64, want: &[u8], what: &str) {
    let o = vmkfs(dir, &["--read-at", &off.to_string(), "--length", &want.len().to_string(), disk]);
    if !o.success() {
        p.0.push(format!("{what}: {disk} is unreadable: {}", o.describe()));
    } else if o.stdout != want {
        let i = o.stdout.iter().zip(want).position(|(a, b)| a != b).unwrap_or(0);
        p.0.push(format!("{what}: {disk} differs at byte {} from what was acknowledged (lost write)", off + i as u64));
    }
}

fn data(off: u64, seed: u64) -> Vec<u8> {
    pattern(off, 4 * MIB as usize, seed)
}

/// A thin base `vm.vmdk` with data and an ESX snapshot `vm-000001.vmdk` on it.
fn chain(dir: &Path) {
    disk_with_data(dir, "vm.vmdk", "thin", CAP, 1);
    assert_eq!(snapshot(dir, "vm.vmdk", false), "vm-000001.vmdk");
}

// ---------------------------------------------------------------------------------------------
// A writer against every other command
// ---------------------------------------------------------------------------------------------

#[test]
fn writer_vs_writer() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Hosted sparse: two processes allocating grains at once would hand out the same offsets.
    disk_with_data(d, "h.vmdk", "monosparse", CAP, 1);
    let mine = data(0, 2);
    let w = writer(d, "h.vmdk", 0, mine.clone());
    let pid = w.pid;
    let other = vmkfs_stdin(d, &["--write-at", "8m", "h.vmdk"], &pattern(8 * MIB, MIB as usize, 3));
    let first = w.finish();
    assert!(first.success(), "the first writer: {}", first.describe());
    let mut p = Problems::default();
    check_locked_by(&mut p, &other, pid, &["--write-at", "h.vmdk"]);
    check_reads(&mut p, d, "h.vmdk", 0, &mine, "the first writer's data");
    check_reads(&mut p, d, "h.vmdk", 8 * MIB, &vec![0u8; MIB as usize], "the refused writer wrote nothing");
    let c = vmkfs(d, &["-x", "check", "h.vmdk"]);
    p.check(c.success(), || format!("-x check after both writers: {}", c.describe()));
    p.assert_none();
}

/// Runs `args` while a writer holds `disk` (4 MiB at 0), expects `args` to exit 5 naming the
/// writer, and the writer's data to be where `read_from` reads once both are done.
/// When `args` ran anyway and `read_from` is gone, `moved_to` is where the data may have gone.
fn refused_while_writing(setup: fn(&Path), disk: &str, args: &[&str], read_from: &str, moved_to: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    setup(d);
    let before = hash_tree(d);
    let mine = data(0, 7);
    let w = writer(d, disk, 0, mine.clone());
    let pid = w.pid;
    let other = vmkfs(d, args);
    let first = w.finish();
    assert!(first.success(), "the writer: {}", first.describe());
    let mut p = Problems::default();
    check_locked_by(&mut p, &other, pid, &["--write-at", disk]);
    let names = listing(d);
    if d.join(read_from).exists() {
        check_reads(&mut p, d, read_from, 0, &mine, "the writer's data");
    } else {
        p.0.push(format!("`vmkfs {}` ran under the writer: {read_from} is gone ({names:?})", args.join(" ")));
        match moved_to {
            Some(m) if d.join(m).exists() => check_reads(&mut p, d, m, 0, &mine, "the writer's data"),
            _ => p.0.push("the writer's acknowledged data is lost with it".into()),
        }
    }
    let before: Vec<String> = before.into_iter().map(|(n, _)| n).collect();
    p.check(names == before, || {
        format!("the refused `vmkfs {}` must not add or remove files: {before:?} became {names:?}", args.join(" "))
    });
    p.assert_none();
}

#[test]
fn writer_vs_commit() {
    refused_while_writing(chain, "vm-000001.vmdk", &["-m", "vm-000001.vmdk"], "vm-000001.vmdk", Some("vm.vmdk"));
}

#[test]
fn writer_vs_discard() {
    refused_while_writing(chain, "vm-000001.vmdk", &["--discard", "vm-000001.vmdk"], "vm-000001.vmdk", None);
}

#[test]
fn writer_vs_snapshot() {
    refused_while_writing(
        |d| disk_with_data(d, "vm.vmdk", "thin", CAP, 1),
        "vm.vmdk",
        &["--snapshot", "vm.vmdk"],
        "vm.vmdk",
        None,
    );
}

#[test]
fn writer_vs_delete() {
    refused_while_writing(
        |d| disk_with_data(d, "vm.vmdk", "thin", CAP, 1),
        "vm.vmdk",
        &["-U", "vm.vmdk"],
        "vm.vmdk",
        None,
    );
}

#[test]
fn writer_vs_rename() {
    refused_while_writing(
        |d| disk_with_data(d, "vm.vmdk", "thin", CAP, 1),
        "vm.vmdk",
        &["-E", "vm.vmdk", "new.vmdk"],
        "vm.vmdk",
        Some("new.vmdk"),
    );
}

// ---------------------------------------------------------------------------------------------
// Waiting
// ---------------------------------------------------------------------------------------------

/// Starts `args` while a writer holds its disk; it must still be waiting 300 ms later; then the
/// writer finishes and `args` must succeed. Returns the writer's data.
fn waits_for_writer(d: &Path, disk: &str, args: &[&str], input: Option<Vec<u8>>) -> (Vec<u8>, Outcome) {
    let mine = data(0, 9);
    let w = writer(d, disk, 0, mine.clone());
    let mut c = vmkfs_cmd(d, args);
    c.stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() }).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut second = c.spawn().unwrap();
    if let Some(input) = input {
        let mut s = second.stdin.take().unwrap();
        std::thread::spawn(move || {
            let _ = s.write_all(&input);
        });
    }
    let until = Instant::now() + Duration::from_millis(300);
    while Instant::now() < until {
        if second.try_wait().unwrap().is_some() {
            let (status, out, err, _) = wait_with_timeout(&mut second, None);
            panic!(
                "`vmkfs {}` did not wait for the writer: {status}\n{}{}",
                args.join(" "),
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(&err)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let first = w.finish();
    assert!(first.success(), "the writer: {}", first.describe());
    let (status, stdout, stderr, timed_out) = wait_with_timeout(&mut second, Some(Duration::from_secs(60)));
    let o = Outcome {
        argv: args.iter().map(|s| s.to_string()).collect(),
        dir: d.into(),
        status,
        stdout,
        stderr,
        timed_out,
    };
    assert!(o.success(), "after the writer finished, the waiting command must succeed: {}", o.describe());
    (mine, o)
}

#[test]
fn wait_lets_a_second_writer_in_after_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    disk_with_data(d, "h.vmdk", "monosparse", CAP, 1);
    let theirs = pattern(8 * MIB, MIB as usize, 3);
    let (mine, _) =
        waits_for_writer(d, "h.vmdk", &["--wait", "10", "--write-at", "8m", "h.vmdk"], Some(theirs.clone()));
    let mut p = Problems::default();
    check_reads(&mut p, d, "h.vmdk", 0, &mine, "the first writer's data");
    check_reads(&mut p, d, "h.vmdk", 8 * MIB, &theirs, "the second writer's data");
    p.assert_none();
}

#[test]
fn wait_lets_a_commit_run_after_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    chain(d);
    let (mine, _) = waits_for_writer(d, "vm-000001.vmdk", &["--wait", "10", "-m", "vm-000001.vmdk"], None);
    let mut p = Problems::default();
    p.check(!d.join("vm-000001.vmdk").exists(), || "the commit removes the link".into());
    check_reads(&mut p, d, "vm.vmdk", 0, &mine, "the writer's data, committed into the parent");
    p.assert_none();
}

// ---------------------------------------------------------------------------------------------
// Two clones to one destination, two commits of one link
// ---------------------------------------------------------------------------------------------

#[test]
fn second_clone_to_a_destination_being_created_is_locked_out() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    disk_with_data(d, "src.vmdk", "thin", CAP, 4);
    let raw = read_at(d, "src.vmdk", 0, CAP);
    let want = sha256_hex(&raw);
    // The first clone reads the source's bytes from a pipe we hold open.
    let first = Feeder::start(d, &["-i", "-", "-d", "thin", "--size", &CAP.to_string(), "out.vmdk"], raw);
    let pid = first.pid;
    let second = vmkfs(d, &["-i", "src.vmdk", "-d", "thin", "out.vmdk"]);
    let first = first.finish();
    let mut p = Problems::default();
    p.check(first.success(), || format!("the first clone must finish: {}", first.describe()));
    check_locked_by(&mut p, &second, pid, &["-i", "out.vmdk"]);
    // Once it is done, a third clone finds the destination.
    let third = vmkfs(d, &["-i", "src.vmdk", "-d", "thin", "out.vmdk"]);
    p.check(third.code() == Some(2) && third.text().contains("already exists"), || {
        format!("a clone onto the finished destination: exit 2 `already exists`: {}", third.describe())
    });
    let got = disk_digest(d, "out.vmdk", &[]).map(|g| g.sha256).map_err(|o| o.describe());
    p.check(got.as_ref().ok() == Some(&want), || format!("the result must be the source: {got:?}"));
    let names = listing(d);
    p.check(names == ["out-flat.vmdk", "out.vmdk", "src-flat.vmdk", "src.vmdk"], || format!("files left: {names:?}"));
    p.assert_none();
}

#[test]
fn racing_clones_to_one_destination() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Eager-zeroed: every byte is written, so the two clones overlap in time.
    disk_with_data(d, "src.vmdk", "thin", 64 * MIB, 5);
    let want = disk_digest(d, "src.vmdk", &[]).unwrap();
    for round in 0..5 {
        let spawn = || {
            let mut c = vmkfs_cmd(d, &["-i", "src.vmdk", "-d", "eagerzeroedthick", "out.vmdk"]);
            c.stdout(Stdio::piped()).stderr(Stdio::piped());
            c.spawn().unwrap()
        };
        let (mut a, mut b) = (spawn(), spawn());
        let pids = [a.id(), b.id()];
        let outcomes: Vec<Outcome> = [&mut a, &mut b]
            .into_iter()
            .map(|c| {
                let (status, stdout, stderr, timed_out) = wait_with_timeout(c, Some(Duration::from_secs(120)));
                Outcome { argv: vec!["-i".into()], dir: d.into(), status, stdout, stderr, timed_out }
            })
            .collect();
        let mut p = Problems::default();
        let winners = outcomes.iter().filter(|o| o.success()).count();
        p.check(winners == 1, || {
            format!(
                "round {round}: exactly one clone may succeed, {winners} did:\n{}\n{}",
                outcomes[0].describe(),
                outcomes[1].describe()
            )
        });
        for (i, o) in outcomes.iter().enumerate() {
            if !o.success() {
                match o.code() {
                    Some(5) => check_locked_by(&mut p, o, pids[1 - i], &["out.vmdk"]),
                    Some(2) => p.check(o.text().contains("already exists"), || o.describe()),
                    _ => p.0.push(format!("round {round}: the losing clone must exit 5 or 2: {}", o.describe())),
                }
            }
        }
        let got = disk_digest(d, "out.vmdk", &[]).map_err(|o| o.describe());
        p.check(got.as_ref().ok() == Some(&want), || format!("round {round}: the result must be the source: {got:?}"));
        let names = listing(d);
        p.check(names == ["out-flat.vmdk", "out.vmdk", "src-flat.vmdk", "src.vmdk"], || {
            format!("round {round}: files left: {names:?}")
        });
        p.assert_none();
        vmkfs_ok(d, &["-U", "out.vmdk"]);
    }
}

#[test]
fn second_commit_of_a_link_being_committed_is_locked_out() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    chain(d);
    write_pattern(d, "vm-000001.vmdk", 0, 8 * MIB as usize, 12);
    let want = disk_digest(d, "vm-000001.vmdk", &[]).unwrap();
    // 64 KiB chunks: about a hundred --json progress lines, which fill a 4 KiB pipe half-way.
    let first = Stalled::start(d, &["--chunk-kib", "64", "--json", "-m", "vm-000001.vmdk"]);
    let pid = first.pid;
    let second = vmkfs(d, &["-m", "vm-000001.vmdk"]);
    let first = first.finish();
    let mut p = Problems::default();
    p.check(first.success(), || format!("the first commit must finish: {}", first.describe()));
    check_locked_by(&mut p, &second, pid, &["-m", "vm-000001.vmdk"]);
    let names = listing(d);
    p.check(names == ["vm-flat.vmdk", "vm.vmdk"], || format!("files left: {names:?}"));
    let got = disk_digest(d, "vm.vmdk", &[]).map_err(|o| o.describe());
    p.check(got.as_ref().ok() == Some(&want), || format!("the parent must read what the chain read: {got:?}"));
    let c = vmkfs(d, &["-x", "check", "vm.vmdk"]);
    p.check(c.success(), || format!("-x check of the parent: {}", c.describe()));
    p.assert_none();
}

// ---------------------------------------------------------------------------------------------
// VMware's lock folder, and links with children
// ---------------------------------------------------------------------------------------------

#[test]
fn vmware_lock_folder_refuses_changes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    disk_with_data(d, "vm.vmdk", "thin", CAP, 1);
    std::fs::create_dir(d.join("vm.vmdk.lck")).unwrap();
    std::fs::write(d.join("vm.vmdk.lck/M12345.lck"), b"a VMware lock").unwrap();
    let before = hash_tree(d);
    let pristine = tempfile::tempdir().unwrap();
    copy_dir(d, pristine.path());
    let mut p = Problems::default();
    for args in [
        &["--write-at", "0", "vm.vmdk"][..],
        &["-U", "vm.vmdk"],
        &["-w", "vm.vmdk"],
        &["-K", "vm.vmdk"],
        &["-X", "32m", "vm.vmdk"],
        &["-j", "vm.vmdk"],
        &["--snapshot", "vm.vmdk"],
        &["-E", "vm.vmdk", "new.vmdk"],
    ] {
        let o = vmkfs_stdin(d, args, &[7u8; 4096]);
        p.check(o.code() == Some(5) && o.err().contains("in use by VMware (lock folder vm.vmdk.lck)"), || {
            format!("exit 5 `in use by VMware (lock folder vm.vmdk.lck)` expected: {}", o.describe())
        });
        let now = hash_tree(d);
        p.check(now == before, || format!("`vmkfs {}` changed files", args.join(" ")));
        if now != before {
            // Start the next command from the same state.
            std::fs::remove_dir_all(d).unwrap();
            std::fs::create_dir(d).unwrap();
            copy_dir(pristine.path(), d);
        }
    }
    p.assert_none();
}

/// Every command that changes a link must refuse a link that has a child, naming the child.
fn parent_is_read_only(format: &str, commands: &[&[&str]]) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    disk_with_data(d, "vm.vmdk", format, CAP, 1);
    assert_eq!(snapshot(d, "vm.vmdk", false), "vm-000001.vmdk");
    let before = hash_tree(d);
    let pristine = tempfile::tempdir().unwrap();
    copy_dir(d, pristine.path());
    let mut p = Problems::default();
    for args in commands {
        let o = vmkfs_stdin(d, args, &[7u8; 4096]);
        p.check(o.code() == Some(5) && o.err().contains("vm-000001.vmdk"), || {
            format!("a link with children is read-only: exit 5 (busy) naming the child expected: {}", o.describe())
        });
        let now = hash_tree(d);
        if now != before {
            let chain = vmkfs(d, &["--chain", "vm-000001.vmdk"]);
            p.0.push(format!("`vmkfs {}` changed files; the chain now says: {}", args.join(" "), chain.out().trim()));
            std::fs::remove_dir_all(d).unwrap();
            std::fs::create_dir(d).unwrap();
            copy_dir(pristine.path(), d);
        }
    }
    p.assert_none();
}

#[test]
fn a_thin_parent_is_read_only() {
    parent_is_read_only(
        "thin",
        &[
            &["--write-at", "0", "vm.vmdk"],
            &["-U", "vm.vmdk"],
            &["-X", "32m", "vm.vmdk"],
            &["-K", "vm.vmdk"],
            &["-w", "vm.vmdk"],
            &["-j", "vm.vmdk"],
        ],
    );
}

#[test]
fn a_zeroedthick_parent_is_read_only() {
    parent_is_read_only("zeroedthick", &[&["-k", "vm.vmdk"], &["--write-at", "1m", "vm.vmdk"]]);
}
