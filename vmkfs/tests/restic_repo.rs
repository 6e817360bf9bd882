//! Backups into restic repositories (issue 14), checked with Debian's `restic` as the independent
//! oracle (every test skips with a message when it is missing).
//!
//! - `cycle_three_disks`: a VM with three disks (ESX thin, hosted 2gbsparse under a snapshot link,
//!   monosparse): a full backup (`--init --keep-tracking`), 1 % of the blocks changed, a second
//!   backup (`--since latest`, from the tracking links): `restic snapshots --json` lists both,
//!   `restic check --read-data` passes, `restic dump` of every disk of both snapshots has the
//!   SHA-256 the disk had at that point, the second adds ≤ 3 % to the repository and read only the
//!   changed blocks, and `vmkfs-restore` of each snapshot brings that point's VM back.
//! - `two_vms_from_one_template`: two VMs copied from one, changed 1 % each, in one repository
//!   store ≤ 1.1 × one VM's data.
//! - `thin_1tib_disk`: a 1 TiB thin disk holding 100 MiB: a repository under 120 MiB, restic
//!   agrees on the file size and checks it; a restore of it reads as the disk.
//! - `restic_stdin_snapshot_clones_with_vmkfs`: `restic backup --stdin` of a raw image, cloned out
//!   with `vmkfs -i restic:…` to thin and streamOptimized, reads as the image.
//! - `damage_and_passwords`: a wrong password and a damaged pack are errors naming the keys folder
//!   and the pack; a restore that needs the pack writes nothing.
//! - `kill_9_during_backup`: backups killed at several points leave a repository `restic check`
//!   accepts, and the re-run completes with a snapshot that dumps as the disks.
//! - `two_backups_at_once`: two VMs backed up into one repository at the same time, then one VM
//!   twice at once: every run succeeds or fails cleanly, `restic check --read-data` passes and
//!   every snapshot dumps as its disks were.
//! - `replica_follows_snapshots`: `vmkfs -i restic:…@S1` into thin, 2gbsparse and zeroedthick
//!   replicas (which record the point), 1 % of the blocks changed (one of them to zeros), a
//!   second backup, `vmkfs --apply restic:…@S2`: `qemu-img compare` with the source, and the
//!   `--json` report says only the changed blocks were written; again: nothing to do; back to S1:
//!   the older point; a replica written since, a disk that records no point (refused, then
//!   `--force`), another capacity, a replica with a child, the password options.
//! - `kill_9_during_apply`: an apply killed (strace) at points of every state-changing system call
//!   leaves a replica that reads as before or after, or is refused naming the re-run, and the
//!   re-run finishes it.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use sha2::{Digest, Sha256};

const PASSWORD: &str = "correct horse battery staple";
const DISK_CAP: u64 = 64 * MIB;

fn have_restic() -> bool {
    if have_tool("restic") {
        return true;
    }
    skip("restic is not installed (apt-get install restic)");
    false
}

fn with_password(mut c: Command) -> Command {
    c.env("RESTIC_PASSWORD", PASSWORD).env_remove("RESTIC_PASSWORD_FILE").env_remove("RESTIC_REPOSITORY");
    c
}

/// `restic -r REPO ARGS`, which must succeed; its standard output.
fn restic(repo: &Path, args: &[&str]) -> Vec<u8> {
    let mut a = vec!["-r", repo.to_str().unwrap(), "--no-cache"];
    a.extend_from_slice(args);
    let o = run(with_password(tool_cmd("restic", Path::new("/"), &a)), None, Some(Duration::from_secs(600)));
    assert!(o.success(), "{}", o.describe());
    o.stdout
}

/// SHA-256 of `restic dump SNAP FILE`, streamed.
fn restic_dump_sha(repo: &Path, snap: &str, file: &str) -> String {
    let mut c = with_password(tool_cmd(
        "restic",
        Path::new("/"),
        &["-r", repo.to_str().unwrap(), "--no-cache", "dump", snap, file],
    ));
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c.spawn().expect("start restic dump");
    let mut out = child.stdout.take().unwrap();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = std::io::Read::read(&mut out, &mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    assert!(child.wait().unwrap().success(), "restic dump {snap} {file}");
    hex(&h.finalize())
}

fn snapshots(repo: &Path) -> Vec<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_slice(&restic(repo, &["snapshots", "--json"])).unwrap();
    let mut s = v.as_array().unwrap().clone();
    s.sort_by_key(|x| x["time"].as_str().unwrap().to_string());
    s
}

fn du(p: &Path) -> u64 {
    let mut n = 0;
    for e in std::fs::read_dir(p).unwrap() {
        let e = e.unwrap();
        let m = e.metadata().unwrap();
        n += if m.is_dir() { du(&e.path()) } else { m.len() };
    }
    n
}

fn backup(dir: &Path, args: &[&str]) -> Outcome {
    let mut c = Command::new(backup_bin());
    c.args(args).current_dir(dir).stdin(Stdio::null());
    run(with_password(c), None, Some(Duration::from_secs(900)))
}

fn backup_ok(dir: &Path, args: &[&str]) -> (String, Duration) {
    let t = Instant::now();
    let o = backup(dir, args);
    assert!(o.success(), "{}", o.describe());
    (o.out(), t.elapsed())
}

fn restore(dir: &Path, args: &[&str]) -> Outcome {
    let mut c = Command::new(restore_bin());
    c.args(args).current_dir(dir).stdin(Stdio::null());
    run(with_password(c), None, Some(Duration::from_secs(900)))
}

/// A VM `vm/` with three disks: `scsi0:0` thin, `scsi0:1` 2gbsparse under a snapshot link,
/// `scsi0:2` monosparse, each 64 MiB holding about 50 MiB.
struct Vm {
    root: tempfile::TempDir,
}

const KEYS: [&str; 3] = ["scsi0:0", "scsi0:1", "scsi0:2"];

impl Vm {
    fn new(name: &str) -> Vm {
        let root = tempfile::tempdir().unwrap();
        let d = root.path().join("vm");
        std::fs::create_dir(&d).unwrap();
        create_disk(&d, "os.vmdk", "thin", DISK_CAP);
        write_pattern(&d, "os.vmdk", 0, 52 * MIB as usize, 1);
        create_disk(&d, "data.vmdk", "2gbsparse", DISK_CAP);
        write_pattern(&d, "data.vmdk", 4 * MIB, 44 * MIB as usize, 2);
        assert_eq!(snapshot(&d, "data.vmdk", false), "data-000001.vmdk");
        write_pattern(&d, "data-000001.vmdk", 50 * MIB, 6 * MIB as usize, 3);
        create_disk(&d, "logs.vmdk", "monosparse", DISK_CAP);
        write_pattern(&d, "logs.vmdk", 10 * MIB, 50 * MIB as usize, 4);
        let vmx = format!(
            "displayName = \"{name}\"\nuuid.bios = \"56 4d 00 11 22 33 44 55-66 77 88 99 aa bb cc dd\"\nnvram = \"vm.nvram\"\nscsi0.present = \"TRUE\"\nscsi0:0.present = \"TRUE\"\nscsi0:0.fileName = \"os.vmdk\"\nscsi0:1.present = \"TRUE\"\nscsi0:1.fileName = \"data-000001.vmdk\"\nscsi0:2.present = \"TRUE\"\nscsi0:2.fileName = \"logs.vmdk\"\n"
        );
        std::fs::write(d.join("vm.vmx"), vmx).unwrap();
        std::fs::write(d.join("vm.nvram"), pattern(0, 8192, 6)).unwrap();
        std::fs::write(d.join("vmware.log"), "Dec 01 00:00:00.000: vmx| Log\n").unwrap();
        Vm { root }
    }
    fn dir(&self) -> PathBuf {
        self.root.path().join("vm")
    }
    /// The repository beside the VM folder, and how the commands name it (`restic:PATH`).
    fn repo(&self) -> (PathBuf, String) {
        let repo = self.root.path().join("repo");
        let spec = format!("restic:{}", repo.display());
        (repo, spec)
    }
    /// A VM `name` whose first backup created its repository; `None` (after saying why) without
    /// restic.
    fn backed_up(name: &str) -> Option<(Vm, PathBuf, String)> {
        if !have_restic() {
            return None;
        }
        let vm = Vm::new(name);
        let (repo, r) = vm.repo();
        backup_ok(vm.root.path(), &["-a", "vm/vm.vmx", "-r", &r, "--init"]);
        Some((vm, repo, r))
    }
    fn top(&self, key: &str) -> String {
        Vm::top_of(&self.dir(), key)
    }
    fn digests(&self) -> Vec<String> {
        KEYS.iter().map(|k| disk_digest(&self.dir(), &self.top(k), &[]).unwrap().sha256).collect()
    }
    /// Changes one 1 MiB block of the first two disks (2 of 192 blocks, 1 %).
    fn change(&self, seed: u64) {
        let d = self.dir();
        write_pattern(&d, &self.top("scsi0:0"), 7 * MIB + 4096, 64 * KIB as usize, 100 + seed);
        write_pattern(&d, &self.top("scsi0:1"), 30 * MIB, 128 * KIB as usize, 200 + seed);
    }
}

/// The raw file names of the disks in a snapshot of the VM.
fn raw_names(repo: &Path, snap: &str, folder: &str) -> Vec<String> {
    let out = String::from_utf8(restic(repo, &["ls", snap])).unwrap();
    let mut names: Vec<String> = out.lines().filter(|l| l.ends_with(".raw")).map(|l| l.trim().to_string()).collect();
    names.sort();
    assert_eq!(names.len(), 3, "{out}");
    assert!(names.iter().all(|n| n.starts_with(&format!("/{folder}/"))), "{names:?}");
    names
}

#[test]
fn cycle_three_disks() {
    if !have_restic() {
        return;
    }
    let vm = Vm::new("web01");
    let (repo, r) = vm.repo();
    let before1 = vm.digests();
    let (_, t1) = backup_ok(vm.root.path(), &["-a", "vm/vm.vmx", "-r", &r, "--init", "--keep-tracking"]);
    let size1 = du(&repo);
    vm.change(1);
    let before2 = vm.digests();
    assert_ne!(before1, before2);
    let (out2, t2) = backup_ok(vm.root.path(), &["-a", "vm/vm.vmx", "-r", &r, "--since", "latest", "--keep-tracking"]);
    let size2 = du(&repo);
    println!("first backup {t1:?}, repository {size1} bytes; second {t2:?}, +{} bytes", size2 - size1);
    // Only the changed blocks were read: 1 MiB on each changed disk, none on the third.
    assert!(out2.contains("scsi0:2: 0 bytes read"), "{out2}");
    assert!(out2.contains("scsi0:0: 1048576 bytes read"), "{out2}");
    assert!(size2 - size1 <= size1 * 3 / 100, "the second backup added {} bytes to {size1}", size2 - size1);

    let snaps = snapshots(&repo);
    assert_eq!(snaps.len(), 2);
    for s in &snaps {
        let tags: Vec<&str> = s["tags"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
        assert!(tags.contains(&"vmkfs") && tags.contains(&"web01"), "{tags:?}");
        assert_eq!(s["paths"][0], "/web01");
    }
    let out = String::from_utf8(restic(&repo, &["check", "--read-data"])).unwrap();
    assert!(out.contains("no errors were found"), "{out}");
    for (s, want) in snaps.iter().zip([&before1, &before2]) {
        let id = s["short_id"].as_str().unwrap();
        let got: Vec<String> = raw_names(&repo, id, "web01").iter().map(|n| restic_dump_sha(&repo, id, n)).collect();
        // Sorted names: scsi0-0-os, scsi0-1-data, scsi0-2-logs: the key order.
        assert_eq!(&got, want, "snapshot {id}");
    }

    // Each point restores (into the VM's own place, which is first moved away).
    for (s, want) in snaps.iter().zip([&before1, &before2]) {
        let id = s["short_id"].as_str().unwrap();
        let aside = vm.root.path().join(format!("before-{id}"));
        std::fs::rename(vm.dir(), &aside).unwrap();
        std::fs::create_dir(vm.dir()).unwrap();
        let o = restore(vm.root.path(), &["-s", &format!("{r}@{id}"), "-b", "abort"]);
        assert!(o.success(), "{}", o.describe());
        let got: Vec<String> = KEYS.iter().map(|k| disk_digest(&vm.dir(), &vm.top(k), &[]).unwrap().sha256).collect();
        assert_eq!(&got, want, "restore of {id}");
        assert_eq!(std::fs::read(vm.dir().join("vm.nvram")).unwrap(), pattern(0, 8192, 6));
        std::fs::remove_dir_all(vm.dir()).unwrap();
        std::fs::rename(&aside, vm.dir()).unwrap();
    }
}

#[test]
fn two_vms_from_one_template() {
    if !have_restic() {
        return;
    }
    let a = Vm::new("vm-a");
    let b = Vm::new("vm-b");
    a.change(1);
    b.change(2);
    let solo = a.root.path().join("solo");
    backup_ok(a.root.path(), &["-a", "vm/vm.vmx", "-r", &format!("restic:{}", solo.display()), "--init"]);
    let one = du(&solo);
    let shared = a.root.path().join("shared");
    let r = format!("restic:{}", shared.display());
    backup_ok(a.root.path(), &["-a", "vm/vm.vmx", "-r", &r, "--init"]);
    backup_ok(b.root.path(), &["-a", "vm/vm.vmx", "-r", &r]);
    let both = du(&shared);
    println!("one VM: {one} bytes; both: {both} bytes ({:.3}×)", both as f64 / one as f64);
    assert!(both * 10 <= one * 11, "two VMs from one template store {both} bytes, one VM {one}");
    assert_eq!(snapshots(&shared).len(), 2);
    let out = String::from_utf8(restic(&shared, &["check", "--read-data"])).unwrap();
    assert!(out.contains("no errors were found"), "{out}");
    let names = raw_names(&shared, "latest", "vm-b");
    assert_eq!(restic_dump_sha(&shared, "latest", &names[1]), b.digests()[1]);
}

#[test]
fn thin_1tib_disk() {
    if !have_restic() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let d = root.path().join("vm");
    std::fs::create_dir(&d).unwrap();
    let cap = 1u64 << 40;
    create_disk(&d, "big.vmdk", "thin", cap);
    // 100 MiB in ten pieces spread over the disk.
    for i in 0..10u64 {
        write_pattern(&d, "big.vmdk", i * 100 * GIB + 3 * MIB, 10 * MIB as usize, 7 + i);
    }
    std::fs::write(
        d.join("vm.vmx"),
        "displayName = \"big\"\nscsi0:0.present = \"TRUE\"\nscsi0:0.fileName = \"big.vmdk\"\n",
    )
    .unwrap();
    let repo = root.path().join("repo");
    let (_, t) = backup_ok(root.path(), &["-a", "vm/vm.vmx", "-r", &format!("restic:{}", repo.display()), "--init"]);
    let size = du(&repo);
    println!("1 TiB thin disk with 100 MiB: backup {t:?}, repository {size} bytes");
    assert!(size < 120 * MIB, "repository of {size} bytes");
    let out = String::from_utf8(restic(&repo, &["check", "--read-data"])).unwrap();
    assert!(out.contains("no errors were found"), "{out}");
    let ls = String::from_utf8(restic(&repo, &["ls", "--json", "latest"])).unwrap();
    let node = ls
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["name"].as_str().is_some_and(|n| n.ends_with(".raw")));
    assert_eq!(node.unwrap()["size"].as_u64(), Some(cap));
    // Cloned back out through the allocation map: only the data is read.
    let t = Instant::now();
    let src = format!("restic:{}@latest:/big/scsi0-0-big.raw", repo.display());
    let o = run(with_password(vmkfs_cmd(root.path(), &["-i", &src, "-d", "thin", "back.vmdk"])), None, None);
    assert!(o.success(), "{}", o.describe());
    println!("clone back out: {:?}", t.elapsed());
    for i in 0..10u64 {
        assert_eq!(
            read_at(root.path(), "back.vmdk", i * 100 * GIB + 3 * MIB, 10 * MIB),
            pattern(i * 100 * GIB + 3 * MIB, 10 * MIB as usize, 7 + i)
        );
    }
}

#[test]
fn restic_stdin_snapshot_clones_with_vmkfs() {
    if !have_restic() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let repo = root.path().join("repo");
    restic(&repo, &["init"]);
    let mut img = pattern(0, 6 * MIB as usize, 9);
    img.extend(vec![0u8; 24 * MIB as usize]);
    img.extend(pattern(30 * MIB, 2 * MIB as usize, 10));
    let want = sha256_hex(&img);
    let mut c = with_password(tool_cmd(
        "restic",
        Path::new("/"),
        &["-r", repo.to_str().unwrap(), "--no-cache", "backup", "--stdin", "--stdin-filename", "disk.raw"],
    ));
    c.stdin(Stdio::piped());
    let o = run(c, Some(&img), Some(Duration::from_secs(300)));
    assert!(o.success(), "{}", o.describe());
    for fmt in ["thin", "streamoptimized", "2gbsparse"] {
        let dst = format!("from-restic-{fmt}.vmdk");
        let mut c =
            vmkfs_cmd(root.path(), &["-i", &format!("restic:{}@latest:/disk.raw", repo.display()), "-d", fmt, &dst]);
        c.env("RESTIC_PASSWORD", PASSWORD);
        let o = run(c, None, Some(Duration::from_secs(300)));
        assert!(o.success(), "{}", o.describe());
        assert_eq!(disk_digest(root.path(), &dst, &[]).unwrap().sha256, want, "{fmt}");
    }
}

#[test]
fn damage_and_passwords() {
    let Some((vm, repo, r)) = Vm::backed_up("web01") else {
        return;
    };
    // A wrong password, through each way of giving one.
    let pwfile = vm.root.path().join("pw");
    std::fs::write(&pwfile, "wrong\n").unwrap();
    let mut c = Command::new(restore_bin());
    c.args(["-s", &r, "--password-file", pwfile.to_str().unwrap(), "-b", "abort"]).current_dir(vm.root.path());
    let o = run(c, None, Some(Duration::from_secs(300)));
    assert!(!o.success() && o.err().contains("wrong password") && o.err().contains("keys"), "{}", o.describe());
    std::fs::write(&pwfile, format!("{PASSWORD}\n")).unwrap();
    let mut c = Command::new(backup_bin());
    c.args(["-a", "vm/vm.vmx", "-r", &r]).current_dir(vm.root.path()).env("RESTIC_PASSWORD_FILE", &pwfile);
    let o = run(c, None, Some(Duration::from_secs(300)));
    assert!(o.success(), "{}", o.describe());
    assert_eq!(snapshots(&repo).len(), 2);

    // Damage one byte of the largest data pack: restic and vmkfs both name it; nothing is restored.
    let mut packs: Vec<PathBuf> = Vec::new();
    for d in std::fs::read_dir(repo.join("data")).unwrap() {
        for f in std::fs::read_dir(d.unwrap().path()).unwrap() {
            packs.push(f.unwrap().path());
        }
    }
    packs.sort_by_key(|p| std::fs::metadata(p).unwrap().len());
    let victim = packs.last().unwrap().clone();
    let mut bytes = std::fs::read(&victim).unwrap();
    bytes[1000] ^= 0x55;
    let mut perm = std::fs::metadata(&victim).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perm.set_readonly(false);
    std::fs::set_permissions(&victim, perm).unwrap();
    std::fs::write(&victim, &bytes).unwrap();
    let aside = vm.root.path().join("aside");
    std::fs::rename(vm.dir(), &aside).unwrap();
    std::fs::create_dir(vm.dir()).unwrap();
    let o = restore(vm.root.path(), &["-s", &r, "-b", "abort"]);
    let name = victim.file_name().unwrap().to_str().unwrap().to_string();
    assert!(!o.success() && o.err().contains(&name), "{}", o.describe());
    assert_eq!(listing(&vm.dir()), Vec::<String>::new(), "a failed restore left files");
    let a = ["-r", repo.to_str().unwrap(), "--no-cache", "check", "--read-data"];
    let o = run(with_password(tool_cmd("restic", Path::new("/"), &a)), None, Some(Duration::from_secs(300)));
    assert!(!o.success() && o.text().contains(&name[..8]), "{}", o.describe());
}

#[test]
fn kill_9_during_backup() {
    let Some((vm, repo, r)) = Vm::backed_up("web01") else {
        return;
    };
    let want = vm.digests();
    let (_, full) = backup_ok(vm.root.path(), &["-a", "vm/vm.vmx", "-r", &r]);
    let mut rng = Rng::new(env_number("VMKFS_KILL_SEED", 14));
    for trial in 0..5 {
        // Fresh data each trial, so the packs are new.
        vm.change(10 + trial);
        let want = vm.digests();
        let delay = Duration::from_micros(rng.below(full.as_micros() as u64 + 1));
        let mut c = with_password(Command::new(backup_bin()));
        c.args(["-a", "vm/vm.vmx", "-r", &r]).current_dir(vm.root.path()).stdout(Stdio::null()).stderr(Stdio::null());
        let mut child = c.spawn().unwrap();
        std::thread::sleep(delay);
        let _ = child.kill();
        let _ = child.wait();
        // restic 0.14's check refuses any lock, even a dead process's: `restic unlock` removes
        // the killed run's lock as stale (same host, no such process), as an admin would.
        restic(&repo, &["unlock"]);
        let out = String::from_utf8(restic(&repo, &["check"])).unwrap();
        assert!(out.contains("no errors were found"), "trial {trial} (killed after {delay:?}): {out}");
        backup_ok(vm.root.path(), &["-a", "vm/vm.vmx", "-r", &r]);
        let names = raw_names(&repo, "latest", "web01");
        let got: Vec<String> = names.iter().map(|n| restic_dump_sha(&repo, "latest", n)).collect();
        assert_eq!(got, want, "trial {trial}");
    }
    assert_ne!(want, vm.digests());
    let out = String::from_utf8(restic(&repo, &["check", "--read-data"])).unwrap();
    assert!(out.contains("no errors were found"), "{out}");
}

/// Backups running at once: each must succeed or fail with the lock message and no panic.
fn at_once(runs: Vec<(PathBuf, Vec<String>)>) -> Vec<Outcome> {
    let handles: Vec<_> = runs
        .into_iter()
        .map(|(dir, args)| {
            std::thread::spawn(move || {
                let a: Vec<&str> = args.iter().map(String::as_str).collect();
                backup(&dir, &a)
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

fn succeeded_or_refused_cleanly(o: &Outcome) -> bool {
    o.success() || (!o.panicked() && o.code().is_some() && o.err().to_lowercase().contains("lock"))
}

#[test]
fn two_backups_at_once() {
    if !have_restic() {
        return;
    }
    let a = Vm::new("vm-a");
    let b = Vm::new("vm-b");
    b.change(3);
    let (repo, r) = a.repo();
    backup_ok(a.root.path(), &["-a", "vm/vm.vmx", "-r", &r, "--init"]);
    let args = |dir: &Path| (dir.to_path_buf(), vec!["-a".into(), "vm/vm.vmx".into(), "-r".into(), r.clone()]);
    // Two VMs at once: restic's lock is non-exclusive for backups and packs are immutable, so
    // both succeed.
    let outs = at_once(vec![args(a.root.path()), args(b.root.path())]);
    for o in &outs {
        assert!(o.success(), "{}", o.describe());
    }
    // One VM twice at once: the disks' locks decide; each run succeeds or fails cleanly.
    a.change(4);
    let outs = at_once(vec![args(a.root.path()), args(a.root.path())]);
    assert!(outs.iter().any(Outcome::success), "neither run succeeded: {}", outs[0].describe());
    for o in &outs {
        assert!(succeeded_or_refused_cleanly(o), "{}", o.describe());
    }
    restic(&repo, &["unlock"]);
    let out = String::from_utf8(restic(&repo, &["check", "--read-data"])).unwrap();
    assert!(out.contains("no errors were found"), "{out}");
    let snaps = snapshots(&repo);
    assert_eq!(snaps.len(), 3 + outs.iter().filter(|o| o.success()).count());
    // Every snapshot dumps as whole disks; the newest of each VM as the VM is now.
    for s in &snaps {
        let id = s["short_id"].as_str().unwrap();
        let folder = s["paths"][0].as_str().unwrap().trim_start_matches('/').to_string();
        for n in raw_names(&repo, id, &folder) {
            restic_dump_sha(&repo, id, &n);
        }
    }
    for (vm, folder) in [(&a, "vm-a"), (&b, "vm-b")] {
        let last = snaps.iter().rev().find(|s| s["paths"][0] == format!("/{folder}")).unwrap();
        let id = last["short_id"].as_str().unwrap();
        let got: Vec<String> = raw_names(&repo, id, folder).iter().map(|n| restic_dump_sha(&repo, id, n)).collect();
        assert_eq!(got, vm.digests(), "{folder}");
    }
}

/// A one-disk VM `vm/` (128 MiB thin, 100 MiB of data) backed up twice into `repo/`: S1, then
/// 2 of its 128 blocks changed (one rewritten, one zeroed, 1.6 %), S2.
struct Replicated {
    root: tempfile::TempDir,
    s1: String,
    s2: String,
    /// The disk's SHA-256 at S1 and at S2.
    sha: [String; 2],
}

const REPLICA_CAP: u64 = 128 * MIB;
const FILE: &str = "/web/scsi0-0-os.raw";

impl Replicated {
    fn new() -> Replicated {
        let root = tempfile::tempdir().unwrap();
        let d = root.path().join("vm");
        std::fs::create_dir(&d).unwrap();
        create_disk(&d, "os.vmdk", "thin", REPLICA_CAP);
        write_pattern(&d, "os.vmdk", 0, 100 * MIB as usize, 1);
        std::fs::write(
            d.join("vm.vmx"),
            "displayName = \"web\"\nscsi0:0.present = \"TRUE\"\nscsi0:0.fileName = \"os.vmdk\"\n",
        )
        .unwrap();
        let r = format!("restic:{}", root.path().join("repo").display());
        backup_ok(root.path(), &["-a", "vm/vm.vmx", "-r", &r, "--init", "--keep-tracking"]);
        let ids = || -> Vec<String> {
            snapshots(&root.path().join("repo")).iter().map(|s| s["id"].as_str().unwrap().to_string()).collect()
        };
        let s1 = ids().pop().unwrap();
        let top = |root: &Path| Vm::top_of(&root.join("vm"), "scsi0:0");
        let sha1 = disk_digest(&d, &top(root.path()), &[]).unwrap().sha256;
        write_pattern(&d, &top(root.path()), 7 * MIB + 4096, 64 * KIB as usize, 2);
        write_at(&d, &top(root.path()), 40 * MIB, &vec![0u8; MIB as usize]);
        backup_ok(root.path(), &["-a", "vm/vm.vmx", "-r", &r, "--since", "latest", "--keep-tracking"]);
        let sha2 = disk_digest(&d, &top(root.path()), &[]).unwrap().sha256;
        // S2 is the other one (their times may fall within one second).
        let s2 = ids().into_iter().find(|i| *i != s1).unwrap();
        Replicated { s1, s2, sha: [sha1, sha2], root }
    }

    fn dir(&self) -> &Path {
        self.root.path()
    }

    /// `restic:REPO@SNAP:/web/scsi0-0-os.raw`.
    fn at(&self, snap: &str) -> String {
        format!("restic:{}@{snap}:{FILE}", self.dir().join("repo").display())
    }

    /// `vmkfs ARGS` with the password in RESTIC_PASSWORD.
    fn vmkfs(&self, args: &[&str]) -> Outcome {
        run(with_password(vmkfs_cmd(self.dir(), args)), None, Some(Duration::from_secs(300)))
    }

    /// `vmkfs --json --apply SRC REPLICA [EXTRA]`, which must succeed: its report.
    fn apply(&self, snap: &str, replica: &str, extra: &[&str]) -> serde_json::Value {
        let src = self.at(snap);
        let o = self.vmkfs(&[&["--json", "--apply", &src, replica], extra].concat());
        assert!(o.success(), "{}", o.describe());
        serde_json::from_str(o.out().lines().last().unwrap()).unwrap()
    }

    fn sha(&self, disk: &str) -> String {
        disk_digest(self.dir(), disk, &[]).unwrap().sha256
    }
}

impl Vm {
    /// The disk file the `.vmx` in `dir` names for `key`.
    fn top_of(dir: &Path, key: &str) -> String {
        let text = std::fs::read_to_string(dir.join("vm.vmx")).unwrap();
        let want = format!("{key}.filename");
        text.lines()
            .find_map(|l| {
                let (k, v) = l.split_once('=')?;
                (k.trim().to_ascii_lowercase() == want).then(|| v.trim().trim_matches('"').to_string())
            })
            .unwrap()
    }
}

fn qemu_identical(dir: &Path, a: &str, b: &str) {
    if !have_qemu() {
        return;
    }
    let o = qemu_img(dir, &["compare", "-f", "vmdk", "-F", "vmdk", a, b]);
    assert!(o.success() && o.out().contains("identical"), "{}", o.describe());
}

#[test]
fn replica_follows_snapshots() {
    if !have_restic() {
        return;
    }
    let f = Replicated::new();
    let dir = f.dir();
    let source = format!("vm/{}", Vm::top_of(&dir.join("vm"), "scsi0:0"));
    // Item 2: the password from --password-file (RESTIC_PASSWORD unset).
    let pw = dir.join("pw");
    std::fs::write(&pw, format!("{PASSWORD}\n")).unwrap();
    for fmt in ["thin", "2gbsparse", "zeroedthick"] {
        let replica = format!("replica-{fmt}.vmdk");
        let mut c = vmkfs_cmd(dir, &["-i", &f.at(&f.s1), "-d", fmt, &replica, "--password-file", pw.to_str().unwrap()]);
        c.env_remove("RESTIC_PASSWORD").env_remove("RESTIC_PASSWORD_FILE");
        let o = run(c, None, Some(Duration::from_secs(300)));
        assert!(o.success(), "{}", o.describe());
        assert_eq!(f.sha(&replica), f.sha[0], "{fmt}");
        let desc = std::fs::read_to_string(dir.join(&replica)).unwrap();
        assert!(desc.contains(&format!("ddb.vmkfs.resticSnapshot = \"{}\"", f.s1)), "{desc}");
        // S2 through RESTIC_PASSWORD_FILE: exactly the changed block written, the zeroed one
        // discarded.
        let mut c = vmkfs_cmd(dir, &["--json", "--apply", &f.at(&f.s2), &replica]);
        c.env_remove("RESTIC_PASSWORD").env("RESTIC_PASSWORD_FILE", &pw);
        let o = run(c, None, Some(Duration::from_secs(300)));
        assert!(o.success(), "{}", o.describe());
        let rep: serde_json::Value = serde_json::from_str(o.out().lines().last().unwrap()).unwrap();
        assert_eq!(rep["mode"], "diff", "{rep}");
        assert_eq!(rep["from"].as_str(), Some(f.s1.as_str()));
        assert_eq!(
            (rep["ranges"].as_u64(), rep["written"].as_u64(), rep["zeroed"].as_u64()),
            (Some(2), Some(MIB), Some(MIB)),
            "{rep}"
        );
        assert_eq!(f.sha(&replica), f.sha[1], "{fmt}");
        qemu_identical(dir, &replica, &source);
        // Again: nothing to do.
        let rep = f.apply("latest", &replica, &[]);
        assert_eq!((rep["mode"].as_str(), rep["written"].as_u64()), (Some("already"), Some(0)), "{rep}");
    }
    // Back to the older snapshot: the two blocks written back, reported as older.
    let rep = f.apply(&f.s1[..8], "replica-thin.vmdk", &[]);
    assert_eq!((rep["mode"].as_str(), rep["older"].as_bool()), (Some("diff"), Some(true)), "{rep}");
    assert_eq!((rep["written"].as_u64(), rep["zeroed"].as_u64()), (Some(2 * MIB), Some(0)), "{rep}");
    assert_eq!(f.sha("replica-thin.vmdk"), f.sha[0]);
    // A replica written since its point (its CID changed): every block compared, one written.
    f.apply(&f.s2, "replica-thin.vmdk", &[]);
    write_at(dir, "replica-thin.vmdk", 90 * MIB + 5, b"local change");
    let rep = f.apply(&f.s2, "replica-thin.vmdk", &[]);
    assert_eq!(rep["mode"], "compare", "{rep}");
    assert!(rep["why"].as_str().unwrap().contains("written since"), "{rep}");
    assert_eq!((rep["written"].as_u64(), rep["compared"].as_u64()), (Some(MIB), Some(99 * MIB)), "{rep}");
    assert_eq!(f.sha("replica-thin.vmdk"), f.sha[1]);
    // A disk that records no point: refused (it may be another disk), then with --force every
    // block compared and written where it differs.
    create_disk(dir, "plain.vmdk", "thin", REPLICA_CAP);
    write_pattern(dir, "plain.vmdk", 0, 50 * MIB as usize, 1);
    let o = f.vmkfs(&["--apply", &f.at("latest"), "plain.vmdk"]);
    assert!(
        !o.success() && o.err().contains("records no restic point") && o.err().contains("--force"),
        "{}",
        o.describe()
    );
    let rep = f.apply("latest", "plain.vmdk", &["--force"]);
    assert_eq!(rep["mode"], "compare", "{rep}");
    // It holds S1's first 50 MiB: S2's other 50 MiB, its changed block and its zeroed one differ.
    let counts = (rep["ranges"].as_u64(), rep["written"].as_u64(), rep["zeroed"].as_u64(), rep["compared"].as_u64());
    assert_eq!(counts, (Some(52), Some(51 * MIB), Some(MIB), Some(50 * MIB)), "{rep}");
    assert_eq!(f.sha("plain.vmdk"), f.sha[1]);
    qemu_identical(dir, "plain.vmdk", &source);
    let rep = f.apply("latest", "plain.vmdk", &[]);
    assert_eq!(rep["mode"], "already", "{rep}");
    // Another capacity: a typed refusal naming both sizes; nothing written.
    create_disk(dir, "small.vmdk", "thin", 64 * MIB);
    let before = f.sha("small.vmdk");
    let o = f.vmkfs(&["--apply", &f.at("latest"), "small.vmdk", "--force"]);
    assert!(
        !o.success() && o.err().contains(&(64 * MIB).to_string()) && o.err().contains(&REPLICA_CAP.to_string()),
        "{}",
        o.describe()
    );
    assert_eq!(f.sha("small.vmdk"), before);
    // A replica with a child (a snapshot link on it) is read-only to --apply.
    assert_eq!(snapshot(dir, "replica-2gbsparse.vmdk", false), "replica-2gbsparse-000001.vmdk");
    let o = f.vmkfs(&["--apply", &f.at(&f.s1), "replica-2gbsparse.vmdk"]);
    assert!(!o.success() && o.err().contains("replica-2gbsparse-000001.vmdk"), "{}", o.describe());
    // Password options: a wrong one names the keys; --password-file goes only with restic:.
    std::fs::write(&pw, "wrong\n").unwrap();
    let o = f.vmkfs(&["--apply", &f.at("latest"), "replica-thin.vmdk", "--password-file", pw.to_str().unwrap()]);
    assert!(!o.success() && o.err().contains("wrong password"), "{}", o.describe());
    let o = f.vmkfs(&["-i", "plain.vmdk", "-d", "thin", "x.vmdk", "--password-file", pw.to_str().unwrap()]);
    assert_eq!(o.code(), Some(2), "{}", o.describe());
    let mut c = vmkfs_cmd(dir, &["--apply", &f.at("latest"), "replica-thin.vmdk"]);
    c.env_remove("RESTIC_PASSWORD").env_remove("RESTIC_PASSWORD_FILE");
    let o = run(c, None, Some(Duration::from_secs(60)));
    assert!(!o.success() && o.err().contains("--password-file"), "{}", o.describe());
}

/// System calls an apply is killed at (one at a time).
const KILL_SYSCALLS: [&str; 5] = ["pwrite64", "fsync", "fdatasync", "rename", "unlink"];

/// `vmkfs --threads 1 --chunk-kib 256 --apply SRC replica.vmdk` under strace in `dir`, killed at
/// the `n`-th call of `syscall` (per thread), or (`None`) counting the calls: the most any one
/// thread made of each.
fn strace_apply(dir: &Path, src: &str, kill: Option<(&str, u64)>) -> (Outcome, BTreeMap<String, u64>) {
    let trace = dir.join("trace.txt");
    let mut c = with_password(Command::new("strace"));
    match kill {
        Some((sc, n)) => c.args([
            "-f",
            "-qq",
            "-e",
            &format!("trace={sc}"),
            "-e",
            &format!("inject={sc}:signal=KILL:when={n}"),
            "-o",
            "/dev/null",
        ]),
        None => {
            c.args(["-f", "-qq", "-e", &format!("trace={}", KILL_SYSCALLS.join(",")), "-o", trace.to_str().unwrap()])
        }
    };
    c.arg(bin())
        .args(["--threads", "1", "--chunk-kib", "256", "--apply", src, "replica.vmdk"])
        .current_dir(dir)
        .stdin(Stdio::null());
    let o = run(c, None, Some(Duration::from_secs(300)));
    let mut per_thread: BTreeMap<(String, String), u64> = BTreeMap::new();
    if kill.is_none() {
        for line in std::fs::read_to_string(&trace).unwrap_or_default().lines() {
            let Some((tid, rest)) = line.split_once(' ') else { continue };
            let name = rest.trim_start().split('(').next().unwrap_or_default();
            if KILL_SYSCALLS.contains(&name) {
                *per_thread.entry((name.to_string(), tid.to_string())).or_default() += 1;
            }
        }
        let _ = std::fs::remove_file(&trace);
    }
    let mut counts = BTreeMap::new();
    for ((sc, _), n) in per_thread {
        let m = counts.entry(sc).or_insert(0);
        *m = (*m).max(n);
    }
    (o, counts)
}

/// Up to `k` points spread evenly over `1..=m`, the first and the last among them.
fn spread(m: u64, k: u64) -> Vec<u64> {
    let k = k.min(m).max(1);
    if k == 1 {
        return vec![m];
    }
    (0..k).map(|i| 1 + i * (m - 1) / (k - 1)).collect()
}

#[test]
fn kill_9_during_apply() {
    if !have_restic() {
        return;
    }
    if !have_tool("strace") {
        skip("strace is not installed: the apply kill points need it");
        return;
    }
    let f = Replicated::new();
    let base = f.dir().join("base");
    std::fs::create_dir(&base).unwrap();
    let o = f.vmkfs(&["-i", &f.at(&f.s1), "-d", "2gbsparse", "base/replica.vmdk"]);
    assert!(o.success(), "{}", o.describe());
    let src = f.at(&f.s2);
    let fresh = |name: &str| -> PathBuf {
        let d = f.dir().join(name);
        let st = Command::new("cp").args(["-a", "--sparse=always"]).arg(&base).arg(&d).status().unwrap();
        assert!(st.success());
        d
    };
    let (o, counts) = strace_apply(&fresh("count"), &src, None);
    assert!(o.success(), "{}", o.describe());
    assert!(
        counts.get("pwrite64").copied().unwrap_or(0) > 4 && counts.get("rename").copied().unwrap_or(0) > 0,
        "{counts:?}"
    );
    let max = env_number("VMKFS_KILLPOINTS_MAX", 6);
    let mut cases = 0;
    for (sc, &m) in &counts {
        for n in spread(m, max) {
            let d = fresh(&format!("kill-{sc}-{n}"));
            let (killed, _) = strace_apply(&d, &src, Some((sc, n)));
            let at = format!("killed at {sc} #{n} of {m}");
            // As before, as after, or refused naming the re-run.
            match disk_digest(&d, "replica.vmdk", &[]) {
                Ok(dg) => assert!(
                    dg.sha256 == f.sha[0] || dg.sha256 == f.sha[1],
                    "{at}: a mixed replica ({})",
                    killed.describe()
                ),
                Err(o) => assert!(o.code() == Some(5) && o.text().contains("re-run"), "{at}: {}", o.describe()),
            }
            let o = run(
                with_password(vmkfs_cmd(&d, &["--json", "--apply", &src, "replica.vmdk"])),
                None,
                Some(Duration::from_secs(300)),
            );
            assert!(o.success(), "{at}: the re-run failed: {}", o.describe());
            let got = disk_digest(&d, "replica.vmdk", &[]).unwrap().sha256;
            assert_eq!(got, f.sha[1], "{at} (S1 is {}): the re-run said {}", f.sha[0], o.out());
            let desc = std::fs::read_to_string(d.join("replica.vmdk")).unwrap();
            assert!(desc.contains(&f.s2), "{at}: the point is not recorded: {desc}");
            let left: Vec<String> = listing(&d).into_iter().filter(|n| n.contains(".vmkfs")).collect();
            assert!(left.is_empty(), "{at}: left {left:?}");
            let o = vmkfs_cmd(&d, &["-x", "check", "replica.vmdk"]).output().unwrap();
            assert!(o.status.success(), "{at}: {}", String::from_utf8_lossy(&o.stdout));
            std::fs::remove_dir_all(&d).unwrap();
            cases += 1;
        }
    }
    println!("{cases} kill points (the replica at S1 reads as {}, at S2 as {})", f.sha[0], f.sha[1]);
}
