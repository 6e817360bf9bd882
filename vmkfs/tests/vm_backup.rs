//! Whole-VM backup and restore (`vmkfs-backup`, `vmkfs-restore`, issue 13), end to end with the
//! binaries, on a realistic VM folder made here: a `.vmx` with three disks on two controllers — an
//! ESX thin disk (`scsi0:0`), a hosted 2gbsparse disk with a snapshot chain (`scsi0:1`, the `.vmx`
//! naming the snapshot link) and an independent-nonpersistent disk (`ide0:0`) — plus `.nvram`,
//! `.vmsd` and a log.
//!
//! - `cycle_*`: a full backup, two incremental passes and one differential, with writes (new data,
//!   data over data, zeros over data) between them; every point restored into its own folder
//!   (through an edited catalog) reads exactly as the VM did at that point (sha256 of every disk,
//!   and `qemu-img compare` with a clone taken then), the restored `.vmx` names the restored disks,
//!   the small files are back, the nonpersistent disk is left out with its entry untouched; the
//!   catalogs say how each disk's changes were found (tracking link or block hashes).
//! - `-b` behaviours: no `-b` on a non-terminal and `-b abort` stop before writing; `keep`,
//!   `overwrite`; `prompt` refused without a terminal and driven through a pseudo-terminal
//!   (`script`) answering per file and for all.
//! - a damaged or missing backup file: `--verify` exits 1 naming it; restore refuses before
//!   anything is written.
//! - a running VM (VMware `.lck` folders) is refused with exit 5, and nothing changes.
//! - kill -9 at random points of backup and restore: the backup folder is absent or complete, the
//!   source VM reads as before, and the re-run finishes the job with nothing left over.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

const THIN_CAP: u64 = 32 * MIB;
const SPARSE_CAP: u64 = 48 * MIB;
const SCRATCH_CAP: u64 = 8 * MIB;
/// The disks that are backed up, by device key.
const KEYS: [&str; 2] = ["scsi0:0", "scsi0:1"];

/// A VM folder `vm/` under a test root.
struct Vm {
    root: tempfile::TempDir,
}

impl Vm {
    fn dir(&self) -> PathBuf {
        self.root.path().join("vm")
    }
    fn root(&self) -> &Path {
        self.root.path()
    }
    fn vmx(&self) -> PathBuf {
        self.dir().join("vm.vmx")
    }
    /// `(key, fileName)` of the `.vmx`'s disks now.
    fn disks(&self) -> BTreeMap<String, String> {
        vmx_disks(&self.vmx())
    }
    /// The link the VM writes to for disk `key`.
    fn top(&self, key: &str) -> String {
        self.disks()[key].clone()
    }
    /// sha256 of every backed-up disk as the VM reads it now.
    fn digests(&self) -> BTreeMap<String, String> {
        KEYS.iter()
            .map(|k| {
                let d = disk_digest(&self.dir(), &self.top(k), &[]).unwrap_or_else(|o| panic!("{k}: {}", o.describe()));
                (k.to_string(), d.sha256)
            })
            .collect()
    }
}

const VMX: &str = r#".encoding = "UTF-8"
config.version = "8"
virtualHW.version = "4"
displayName = "web 01"
uuid.bios = "56 4d 0a 1b 2c 3d 4e 5f-60 71 82 93 a4 b5 c6 d7"
memsize = "512"
nvram = "vm.nvram"
scsi0.present = "TRUE"
scsi0.virtualDev = "lsilogic"
scsi0:0.present = "TRUE"
scsi0:0.fileName = "vm.vmdk"
scsi0:1.present = "TRUE"
scsi0:1.fileName = "data-000001.vmdk"
ide0:0.present = "TRUE"
ide0:0.fileName = "scratch.vmdk"
ide0:0.mode = "independent-nonpersistent"
ide1:0.present = "TRUE"
ide1:0.deviceType = "cdrom-image"
ide1:0.fileName = "/isos/install.iso"
"#;

/// Builds the VM: disks with data, the snapshot chain, the small files.
fn make_vm() -> Vm {
    let root = tempfile::tempdir().unwrap();
    let d = root.path().join("vm");
    std::fs::create_dir(&d).unwrap();
    create_disk(&d, "vm.vmdk", "thin", THIN_CAP);
    write_pattern(&d, "vm.vmdk", 0, 2 * MIB as usize, 1);
    write_pattern(&d, "vm.vmdk", 20 * MIB, MIB as usize, 2);
    create_disk(&d, "data.vmdk", "2gbsparse", SPARSE_CAP);
    write_pattern(&d, "data.vmdk", MIB, 3 * MIB as usize, 3);
    assert_eq!(snapshot(&d, "data.vmdk", false), "data-000001.vmdk");
    write_pattern(&d, "data-000001.vmdk", 2 * MIB, MIB as usize, 4);
    create_disk(&d, "scratch.vmdk", "monosparse", SCRATCH_CAP);
    write_pattern(&d, "scratch.vmdk", 0, 64 * KIB as usize, 5);
    std::fs::write(d.join("vm.vmx"), VMX).unwrap();
    std::fs::write(d.join("vm.nvram"), pattern(0, 8192, 6)).unwrap();
    std::fs::write(d.join("vm.vmsd"), ".encoding = \"UTF-8\"\nsnapshot.lastUID = \"1\"\n").unwrap();
    std::fs::write(d.join("vmware.log"), "Dec 01 00:00:00.000: vmx| Log for VMware Workstation\n").unwrap();
    Vm { root }
}

/// The writes of round `n` (>= 1) into the VM's current tops: new data, data over data across a
/// grain boundary, zeros over data.
fn write_round(vm: &Vm, n: u64) {
    let d = vm.dir();
    let (t0, t1) = (vm.top("scsi0:0"), vm.top("scsi0:1"));
    write_pattern(&d, &t0, n * 3 * MIB + 4096, 128 * KIB as usize, 100 + n);
    write_pattern(&d, &t0, MIB - 512 + n * 64 * KIB, 8 * KIB as usize, 200 + n);
    write_at(&d, &t0, 20 * MIB + n * 64 * KIB, &vec![0u8; 64 * KIB as usize]);
    write_pattern(&d, &t1, 10 * MIB + n * MIB, 256 * KIB as usize, 300 + n);
    write_at(&d, &t1, 2 * MIB + n * 128 * KIB, &vec![0u8; 128 * KIB as usize]);
}

fn backup_ok(dir: &Path, args: &[&str]) -> String {
    let o = tool(backup_bin(), dir, args);
    assert!(o.success(), "{}", o.describe());
    o.out()
}

/// A copy of `backup`'s catalog with the VM folder replaced by `to` (what an admin edits to
/// restore elsewhere).
fn moved_catalog(backup: &Path, from: &Path, to: &Path, at: &Path) -> PathBuf {
    let text = std::fs::read_to_string(backup.join("catalog")).unwrap();
    let edited = text.replace(&from.display().to_string(), &to.display().to_string());
    assert_ne!(text, edited, "the catalog names the VM folder");
    std::fs::write(at, edited).unwrap();
    at.to_path_buf()
}

/// The value of `key` in a catalog.
fn catalog_value(backup: &Path, key: &str) -> Option<String> {
    std::fs::read_to_string(backup.join("catalog"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key} = ")).map(|v| v.trim_matches('"').to_string()))
}

/// What the VM looked like at one backup.
struct Point {
    name: String,
    digests: BTreeMap<String, String>,
    /// Thin clones of each disk taken at that point (for `qemu-img compare`).
    refs: BTreeMap<String, PathBuf>,
}

fn record_point(vm: &Vm, name: &str) -> Point {
    let refs_dir = vm.root().join("refs");
    std::fs::create_dir_all(&refs_dir).unwrap();
    let mut refs = BTreeMap::new();
    for k in KEYS {
        let r = refs_dir.join(format!("{name}-{}.vmdk", k.replace(':', "-")));
        vmkfs_ok(&vm.dir(), &["-i", &vm.top(k), "-d", "thin", r.to_str().unwrap()]);
        refs.insert(k.to_string(), r);
    }
    Point { name: name.into(), digests: vm.digests(), refs }
}

/// Restores backup `name` into `root/restore-NAME/vm` and checks it against `p`.
fn restore_and_check(vm: &Vm, p: &Point, small: &BTreeMap<String, String>) {
    let backup = vm.root().join("bk").join(&p.name);
    let target = vm.root().join(format!("restore-{}", p.name)).join("vm");
    let alt = moved_catalog(&backup, &vm.dir(), &target, &vm.root().join(format!("{}.catalog", p.name)));
    let o =
        tool(restore_bin(), vm.root(), &["-s", backup.to_str().unwrap(), "-a", alt.to_str().unwrap(), "-b", "abort"]);
    assert!(o.success(), "restore of {}: {}", p.name, o.describe());
    let disks = vmx_disks(&target.join("vm.vmx"));
    for k in KEYS {
        let f = &disks[k];
        assert!(!f.contains('/'), "{}: the restored .vmx names {k} beside it: {f}", p.name);
        let got = disk_digest(&target, f, &[]).unwrap_or_else(|o| panic!("{}: {k}: {}", p.name, o.describe())).sha256;
        assert_eq!(got, p.digests[k], "{}: restored {k} ({f}) must read as the VM did at that point", p.name);
        if have_tool("qemu-img") {
            let q = qemu_img(&target, &["compare", "-f", "vmdk", "-F", "vmdk", f, p.refs[k].to_str().unwrap()]);
            assert_eq!(q.code(), Some(0), "{}: qemu-img compare {k}: {}", p.name, q.describe());
        }
    }
    assert_eq!(disks["ide0:0"], "scratch.vmdk", "the nonpersistent disk's entry stays as it was");
    assert!(!target.join("scratch.vmdk").exists(), "the nonpersistent disk is not restored");
    for (name, sum) in small {
        assert_eq!(&sha256_file(&target.join(name)), sum, "{}: {name}", p.name);
    }
    let left: Vec<String> = listing(target.parent().unwrap()).into_iter().filter(|n| n.contains(".vmkfs")).collect();
    assert!(left.is_empty(), "{}: leftovers {left:?}", p.name);
}

fn small_sums(vm: &Vm) -> BTreeMap<String, String> {
    ["vm.nvram", "vm.vmsd", "vmware.log"].iter().map(|n| (n.to_string(), sha256_file(&vm.dir().join(n)))).collect()
}

fn cycle(track: bool) {
    if !have_tool("qemu-img") {
        skip("qemu-img not installed: the VM backup cycle runs without its independent comparison");
    }
    let vm = make_vm();
    let bk = vm.root().join("bk");
    std::fs::create_dir(&bk).unwrap();
    let vmx = vm.vmx().display().to_string();
    let t: Vec<&str> = if track { vec!["--keep-tracking"] } else { vec![] };
    let run = |extra: &[&str]| {
        let mut a: Vec<&str> = vec!["-a", &vmx];
        a.extend_from_slice(extra);
        a.extend_from_slice(&t);
        backup_ok(vm.root(), &a)
    };
    let small = small_sums(&vm);
    let mut points = Vec::new();
    let out = run(&["-r", "bk/full"]);
    assert!(out.contains("ide0:0: note: not backed up: independent-nonpersistent"), "{out}");
    points.push(record_point(&vm, "full"));
    if track {
        let d = vm.disks();
        assert_eq!(d["scsi0:0"], "vm-000001.vmdk", "the .vmx names the tracking link");
        assert_eq!(d["scsi0:1"], "data-000002.vmdk", "the .vmx names the tracking link");
    } else {
        assert_eq!(std::fs::read_to_string(vm.vmx()).unwrap(), VMX, "without tracking the .vmx is unchanged");
    }
    write_round(&vm, 1);
    run(&["-r", "bk/inc1", "--since", "bk/full"]);
    points.push(record_point(&vm, "inc1"));
    write_round(&vm, 2);
    run(&["-r", "bk/inc2", "--since", "bk/inc1"]);
    points.push(record_point(&vm, "inc2"));
    write_round(&vm, 3);
    run(&["-r", "bk/diff", "--since", "bk/full", "--differential"]);
    points.push(record_point(&vm, "diff"));

    let method = |b: &str, k: &str| catalog_value(&bk.join(b), &format!("disk.{k}.method")).unwrap();
    for k in KEYS {
        assert_eq!(method("full", k), "full");
        let inc = if track { "tracking" } else { "hashes" };
        assert_eq!(method("inc1", k), inc, "{k}");
        assert_eq!(method("inc2", k), inc, "{k}");
        // The incrementals committed the links above the full backup's point, so its CID moved
        // on: the differential compares block hashes with the full backup.
        assert_eq!(method("diff", k), "hashes", "{k}");
        let bytes: u64 = catalog_value(&bk.join("inc2"), &format!("disk.{k}.bytes")).unwrap().parse().unwrap();
        assert!(bytes > 0 && bytes <= 2 * MIB, "{k}: inc2 carries only the changes ({bytes} bytes)");
    }
    assert_eq!(catalog_value(&bk.join("inc2"), "backup.parent").unwrap(), "../inc1");
    assert_eq!(catalog_value(&bk.join("diff"), "backup.type").unwrap(), "differential");
    assert_eq!(
        catalog_value(&bk.join("inc1"), "disk.scsi0:0.diskname").unwrap(),
        vm.dir().join("vm.vmdk").display().to_string()
    );
    for p in ["full", "inc1", "inc2", "diff"] {
        let o = tool(backup_bin(), vm.root(), &["--verify", &format!("bk/{p}")]);
        assert!(o.success() && o.out().contains("Backup verified"), "{}", o.describe());
    }
    for p in &points {
        restore_and_check(&vm, p, &small);
    }
    // The source VM holds no leftovers, and its chains are sound.
    let left: Vec<String> = listing(vm.root()).into_iter().filter(|n| n.contains(".vmkfs")).collect();
    assert!(left.is_empty(), "{left:?}");
    for k in KEYS {
        let c = vmkfs(&vm.dir(), &["--chain", &vm.top(k)]);
        assert!(c.success(), "{}", c.describe());
    }
}

#[test]
fn cycle_with_tracking_links() {
    cycle(true);
}

#[test]
fn cycle_with_block_hashes() {
    cycle(false);
}

#[test]
fn differentials_from_a_tracking_link() {
    let vm = make_vm();
    std::fs::create_dir(vm.root().join("bk")).unwrap();
    let vmx = vm.vmx().display().to_string();
    backup_ok(vm.root(), &["-a", &vmx, "-r", "bk/full", "--keep-tracking", "-M", "1"]);
    assert_eq!(catalog_value(&vm.root().join("bk/full"), "disk.scsi0:0.export").unwrap(), "monosparse");
    write_round(&vm, 1);
    backup_ok(vm.root(), &["-a", &vmx, "-r", "bk/d1", "--since", "bk/full", "--differential", "--keep-tracking"]);
    let p1 = record_point(&vm, "d1");
    write_round(&vm, 2);
    backup_ok(vm.root(), &["-a", &vmx, "-r", "bk/d2", "--since", "bk/full", "--differential", "--keep-tracking"]);
    let p2 = record_point(&vm, "d2");
    for b in ["d1", "d2"] {
        for k in KEYS {
            let m = catalog_value(&vm.root().join("bk").join(b), &format!("disk.{k}.method")).unwrap();
            assert_eq!(
                m, "tracking",
                "{b} {k}: the links since the full backup's point are kept, so the tracking covers it"
            );
        }
        assert_eq!(catalog_value(&vm.root().join("bk").join(b), "backup.parent").unwrap(), "../full");
    }
    let small = small_sums(&vm);
    restore_and_check(&vm, &p2, &small);
    restore_and_check(&vm, &p1, &small);
}

/// A restored VM in `root/r/vm` (from a full backup) for the `-b` tests; returns the backup, the
/// catalog that moves it there, and the target.
fn restored_once() -> (Vm, PathBuf, PathBuf, PathBuf) {
    let vm = make_vm();
    std::fs::create_dir(vm.root().join("bk")).unwrap();
    backup_ok(vm.root(), &["-a", &vm.vmx().display().to_string(), "-r", "bk/full"]);
    let backup = vm.root().join("bk/full");
    let target = vm.root().join("r/vm");
    let alt = moved_catalog(&backup, &vm.dir(), &target, &vm.root().join("alt.catalog"));
    let o = tool(restore_bin(), vm.root(), &["-s", "bk/full", "-a", alt.to_str().unwrap(), "-b", "abort"]);
    assert!(o.success(), "{}", o.describe());
    (vm, backup, alt, target)
}

#[test]
fn existing_files_abort_keep_overwrite() {
    let (vm, _backup, alt, target) = restored_once();
    let restored = hash_tree(&target);
    // Change the restored VM: a disk and a small file.
    write_pattern(&target, "vm.vmdk", 0, 64 * KIB as usize, 77);
    std::fs::write(target.join("vm.nvram"), b"changed").unwrap();
    let changed = hash_tree(&target);
    assert_ne!(changed, restored);
    let alt = alt.to_str().unwrap();
    for args in [vec!["-s", "bk/full", "-a", alt], vec!["-s", "bk/full", "-a", alt, "-b", "abort"]] {
        let o = tool(restore_bin(), vm.root(), &args);
        assert_eq!(o.code(), Some(2), "{}", o.describe());
        assert!(o.err().contains("already exists") && o.err().contains("before writing anything"), "{}", o.describe());
        assert_eq!(hash_tree(&target), changed, "an aborted restore writes nothing");
    }
    let o = tool(restore_bin(), vm.root(), &["-s", "bk/full", "-a", alt, "-b", "prompt"]);
    assert_eq!(o.code(), Some(2), "-b prompt without a terminal: {}", o.describe());
    assert!(o.err().contains("needs a terminal"), "{}", o.describe());
    let o = tool(restore_bin(), vm.root(), &["-s", "bk/full", "-a", alt, "-b", "keep"]);
    assert!(o.success(), "{}", o.describe());
    assert_eq!(hash_tree(&target), changed, "-b keep keeps every existing file");
    let o = tool(restore_bin(), vm.root(), &["-s", "bk/full", "-a", alt, "-b", "overwrite"]);
    assert!(o.success(), "{}", o.describe());
    assert_eq!(
        disk_digest(&target, "vm.vmdk", &[]).unwrap().sha256,
        disk_digest(&vm.dir(), "vm.vmdk", &[]).unwrap().sha256
    );
    assert_eq!(std::fs::read(target.join("vm.nvram")).unwrap(), std::fs::read(vm.dir().join("vm.nvram")).unwrap());
    let left: Vec<String> = listing(target.parent().unwrap()).into_iter().filter(|n| n.contains(".vmkfs")).collect();
    assert!(left.is_empty(), "{left:?}");
    // Overwriting removed the old disk's files that the new one does not reuse: none here (same
    // format), and nothing else is in the folder.
    let names: Vec<String> = listing(&target);
    assert_eq!(names, listing(&target).into_iter().filter(|n| !n.starts_with('.')).collect::<Vec<_>>());
}

#[test]
fn prompt_on_a_terminal() {
    if !have_tool("script") {
        skip("script (util-linux) is not installed: the prompt is not driven through a pseudo-terminal");
        return;
    }
    let (vm, _backup, alt, target) = restored_once();
    write_pattern(&target, "vm.vmdk", 0, 64 * KIB as usize, 77);
    write_pattern(&target, "data-000001.vmdk", 0, 64 * KIB as usize, 78);
    std::fs::write(target.join("vm.nvram"), b"changed").unwrap();
    let d1_changed = disk_digest(&target, "data-000001.vmdk", &[]).unwrap().sha256;
    // Items come in catalog order: scsi0:0, scsi0:1, then the small files, the .vmx last.
    // Overwrite the first disk, keep the second, then keep all the rest.
    let cmd = format!("{} -s bk/full -a {} -b prompt", restore_bin(), alt.display());
    let mut c = std::process::Command::new("script");
    c.args(["-qec", &cmd, "/dev/null"]).current_dir(vm.root());
    let o = run(c, Some(b"o\nk\nK\n"), Some(Duration::from_secs(300)));
    assert!(o.success(), "{}", o.describe());
    let text = o.text();
    assert!(text.contains("[o]verwrite, [k]eep, [a]bort"), "the question is asked: {text}");
    assert_eq!(text.matches("[o]verwrite").count(), 3, "three questions, then keep-all answers the rest: {text}");
    assert_eq!(
        disk_digest(&target, "vm.vmdk", &[]).unwrap().sha256,
        disk_digest(&vm.dir(), "vm.vmdk", &[]).unwrap().sha256,
        "overwritten"
    );
    assert_eq!(disk_digest(&target, "data-000001.vmdk", &[]).unwrap().sha256, d1_changed, "kept");
    assert_eq!(std::fs::read(target.join("vm.nvram")).unwrap(), b"changed", "kept by keep-all");
    // Aborting at the first question writes nothing.
    write_pattern(&target, "vm.vmdk", 0, 64 * KIB as usize, 79);
    let before = hash_tree(&target);
    let mut c = std::process::Command::new("script");
    c.args(["-qec", &cmd, "/dev/null"]).current_dir(vm.root());
    let o = run(c, Some(b"a\n"), Some(Duration::from_secs(300)));
    assert_eq!(o.code(), Some(2), "{}", o.describe());
    assert_eq!(hash_tree(&target), before);
}

#[test]
fn damaged_backups_are_found_and_refused() {
    let vm = make_vm();
    std::fs::create_dir(vm.root().join("bk")).unwrap();
    let vmx = vm.vmx().display().to_string();
    backup_ok(vm.root(), &["-a", &vmx, "-r", "bk/full"]);
    write_round(&vm, 1);
    backup_ok(vm.root(), &["-a", &vmx, "-r", "bk/inc1", "--since", "bk/full"]);
    let full = vm.root().join("bk/full");
    // One byte in the middle of the full backup's first data extent.
    let ext = full.join("scsi0-0-vm-s001.vmdk");
    let mut b = std::fs::read(&ext).unwrap();
    let at = b.len() / 2;
    b[at] ^= 0x40;
    std::fs::write(&ext, &b).unwrap();
    let o = tool(backup_bin(), vm.root(), &["--verify", "bk/inc1"]);
    assert_eq!(o.code(), Some(1), "{}", o.describe());
    assert!(o.out().contains("scsi0-0-vm-s001.vmdk") && o.out().contains("damaged"), "{}", o.describe());
    let target = vm.root().join("r/vm");
    let alt = moved_catalog(&vm.root().join("bk/inc1"), &vm.dir(), &target, &vm.root().join("alt"));
    let o = tool(restore_bin(), vm.root(), &["-s", "bk/inc1", "-a", alt.to_str().unwrap(), "-b", "overwrite"]);
    assert_eq!(o.code(), Some(3), "{}", o.describe());
    assert!(o.err().contains("scsi0-0-vm-s001.vmdk") && o.err().contains("nothing was restored"), "{}", o.describe());
    assert!(!vm.root().join("r").exists(), "nothing was written");
    // A missing file and a stray one.
    b[at] ^= 0x40;
    std::fs::write(&ext, &b).unwrap();
    std::fs::remove_file(vm.root().join("bk/inc1/vm.nvram")).unwrap();
    std::fs::write(vm.root().join("bk/inc1/stray"), b"x").unwrap();
    let o = tool(backup_bin(), vm.root(), &["--verify", "bk/inc1"]);
    assert_eq!(o.code(), Some(1), "{}", o.describe());
    assert!(
        o.out().contains("vm.nvram: cannot be read") && o.out().contains("stray: not in the catalog"),
        "{}",
        o.describe()
    );
    // A missing parent backup is named.
    std::fs::rename(&full, vm.root().join("bk/elsewhere")).unwrap();
    let o = tool(restore_bin(), vm.root(), &["-s", "bk/inc1", "-a", alt.to_str().unwrap()]);
    assert_eq!(o.code(), Some(3), "{}", o.describe());
    assert!(o.err().contains("bk/full") && o.err().contains("builds on"), "{}", o.describe());
    assert!(!vm.root().join("r").exists());
}

#[test]
fn a_running_vm_is_refused() {
    let vm = make_vm();
    std::fs::create_dir(vm.root().join("bk")).unwrap();
    let vmx = vm.vmx().display().to_string();
    for lck in ["vm.vmx.lck", "vm-flat.vmdk.lck"] {
        std::fs::create_dir(vm.dir().join(lck)).unwrap();
        let before = hash_tree(&vm.dir());
        let o = tool(backup_bin(), vm.root(), &["-a", &vmx, "-r", "bk/full"]);
        assert_eq!(o.code(), Some(5), "{lck}: {}", o.describe());
        assert!(o.err().contains("in use by VMware") && o.err().contains(lck), "{}", o.describe());
        assert_eq!(hash_tree(&vm.dir()), before, "nothing changes");
        assert!(listing(&vm.root().join("bk")).is_empty());
        std::fs::remove_dir(vm.dir().join(lck)).unwrap();
    }
    // Other refusals: a destination that exists, a missing parent, other transports.
    std::fs::create_dir(vm.root().join("bk/full")).unwrap();
    for (args, code, says) in [
        (vec!["-a", &vmx, "-r", "bk/full"], 2, "already exists"),
        (vec!["-a", &vmx, "-r", "nowhere/x"], 2, "does not exist"),
        (vec!["-a", &vmx, "-r", "nfs://host/x"], 2, "not supported"),
        (vec!["-a", &vmx, "-r", "restic:/repo"], 2, "restic"),
        (vec!["-a", &vmx, "-r", "bk/new", "--differential"], 2, "--since"),
    ] {
        let o = tool(backup_bin(), vm.root(), &args);
        assert_eq!(o.code(), Some(code), "{args:?}: {}", o.describe());
        assert!(o.text().contains(says), "{args:?}: {}", o.describe());
    }
}

// ---------------------------------------------------------------------------------------------
// kill -9
// ---------------------------------------------------------------------------------------------

/// Runs `program args` in `dir` and kills it with SIGKILL after `after`; returns true when it was
/// killed before it ended by itself.
fn kill_after(program: &str, dir: &Path, args: &[&str], after: Duration) -> bool {
    let mut c = tool_cmd(program, dir, args);
    c.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    let mut child = c.spawn().unwrap();
    let t0 = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        if t0.elapsed() >= after {
            let _ = child.kill();
            let _ = child.wait();
            return true;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// A state of the source VM that a kill may leave: every disk reads as before, or is refused
/// until the backup is re-run.
fn source_reads_as_before(vm: &Vm, before: &BTreeMap<String, String>, vmx_ok: &[String], trial: &str) {
    let vmx = std::fs::read_to_string(vm.vmx()).unwrap();
    assert!(vmx_ok.contains(&vmx), "{trial}: the .vmx is neither as before nor as after:\n{vmx}");
    for k in KEYS {
        match disk_digest(&vm.dir(), &vm.top(k), &[]) {
            Ok(d) => assert_eq!(d.sha256, before[k], "{trial}: {k} reads other data"),
            Err(o) => assert!(
                o.code() == Some(5) && o.err().contains("re-run `vmkfs-backup"),
                "{trial}: {k}: {}",
                o.describe()
            ),
        }
    }
}

fn no_leftovers(dir: &Path, trial: &str) {
    let left: Vec<String> = listing(dir).into_iter().filter(|n| n.contains(".vmkfs")).collect();
    assert!(left.is_empty(), "{trial}: {left:?} ({})", listing_with_sizes(dir));
}

/// What a restored VM folder holds: its file names, every disk's content, every other file's bytes
/// (disk descriptors differ between restores only in their `ddb.uuid`).
fn restored_state(target: &Path) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = listing(target).into_iter().map(|n| (n, String::new())).collect();
    for (k, f) in vmx_disks(&target.join("vm.vmx")) {
        if KEYS.contains(&k.as_str()) {
            v.push((k, disk_digest(target, &f, &[]).map(|d| d.sha256).unwrap_or_else(|o| o.describe())));
        }
    }
    for n in ["vm.vmx", "vm.nvram", "vm.vmsd", "vmware.log"] {
        v.push((n.into(), sha256_file(&target.join(n))));
    }
    v
}

#[test]
fn kill_9_during_backup_and_restore() {
    let trials = env_number("VMKFS_VM_KILL_TRIALS", 8);
    let base = make_vm();
    std::fs::create_dir(base.root().join("bk")).unwrap();
    // How long each uninterrupted run takes, and what a tracking backup leaves in the .vmx.
    let timing = tempfile::tempdir().unwrap();
    copy_dir(base.root(), timing.path());
    let tvmx = timing.path().join("vm/vm.vmx").display().to_string();
    let t0 = Instant::now();
    backup_ok(timing.path(), &["-a", &tvmx, "-r", "bk/full", "--keep-tracking"]);
    let backup_time = t0.elapsed();
    let vmx_after = std::fs::read_to_string(timing.path().join("vm/vm.vmx")).unwrap();
    let target = timing.path().join("r/vm");
    let alt =
        moved_catalog(&timing.path().join("bk/full"), &timing.path().join("vm"), &target, &timing.path().join("alt"));
    let t0 = Instant::now();
    let o = tool(restore_bin(), timing.path(), &["-s", "bk/full", "-a", alt.to_str().unwrap()]);
    assert!(o.success(), "{}", o.describe());
    let restore_time = t0.elapsed();
    let restored = restored_state(&target);

    let before = base.digests();
    let mut rng = Rng::new(0x5eed_0013);
    let mut killed = 0;
    for trial in 0..trials {
        let work = tempfile::tempdir().unwrap();
        copy_dir(base.root(), work.path());
        let vm = Vm { root: work };
        let wvmx = vm.vmx().display().to_string();
        let at = Duration::from_micros(rng.below(backup_time.as_micros() as u64 + 1));
        let name = format!("backup trial {trial} (kill at {at:?} of {backup_time:?})");
        let args = ["-a", wvmx.as_str(), "-r", "bk/full", "--keep-tracking"];
        killed += kill_after(backup_bin(), vm.root(), &args, at) as usize;
        backup_recovers(&vm, &args, &before, &vmx_after, &name);
    }
    for trial in 0..trials {
        let work = tempfile::tempdir().unwrap();
        copy_dir(timing.path(), work.path());
        let root = work.path();
        std::fs::remove_dir_all(root.join("r")).unwrap();
        let target = root.join("r/vm");
        let alt = moved_catalog(&root.join("bk/full"), &timing.path().join("vm"), &target, &root.join("alt2"));
        let at = Duration::from_micros(rng.below(restore_time.as_micros() as u64 + 1));
        let name = format!("restore trial {trial} (kill at {at:?} of {restore_time:?})");
        let args = ["-s", "bk/full", "-a", alt.to_str().unwrap(), "-b", "abort"];
        killed += kill_after(restore_bin(), root, &args, at) as usize;
        // Whatever the kill left, the next restore finds the VM absent (and restores it) or
        // complete (and stops: -b abort); a half-restored VM would be neither.
        let o = tool(restore_bin(), root, &args);
        assert!(o.success() || o.code() == Some(2), "{name}: {}", o.describe());
        assert_eq!(restored_state(&target), restored, "{name}: the restored VM is whole ({})", o.describe());
        no_leftovers(root, &name);
    }
    eprintln!("{killed} of {} runs were killed before they ended", 2 * trials);
    assert!(killed > 0, "no run was killed: the timing is off");
}

/// After a backup of `vm` into `bk/full` (run with `args`) was killed: a backup folder that
/// exists verifies, the source reads as before (its .vmx as before or as after a backup), and the
/// re-run finishes the job — the same backup, complete, the source as after an uninterrupted run
/// (`vmx_after`, the digests `before`), nothing left over. Killed after everything was done, the
/// re-run finds the backup there, as it would after an uninterrupted run.
fn backup_recovers(vm: &Vm, args: &[&str], before: &BTreeMap<String, String>, vmx_after: &str, name: &str) {
    let complete = vm.root().join("bk/full").exists();
    if complete {
        let o = tool(backup_bin(), vm.root(), &["--verify", "bk/full"]);
        assert!(o.success(), "{name}: the backup folder exists, so it must be complete: {}", o.describe());
    }
    source_reads_as_before(vm, before, &[VMX.to_string(), vmx_after.to_string()], name);
    let o = tool(backup_bin(), vm.root(), args);
    let done_before = complete && o.code() == Some(2) && o.err().contains("already exists");
    assert!(o.success() || done_before, "{name}: the re-run: {}", o.describe());
    let o = tool(backup_bin(), vm.root(), &["--verify", "bk/full"]);
    assert!(o.success(), "{name}: {}", o.describe());
    assert_eq!(std::fs::read_to_string(vm.vmx()).unwrap(), vmx_after, "{name}");
    assert_eq!(&vm.digests(), before, "{name}");
    no_leftovers(vm.root(), name);
}

/// The rename-family system calls: every commit point of a backup and a restore is one of them
/// (a folder or file put in place, an intent record written, a link committed).
const RENAMES: [&str; 3] = ["rename", "renameat", "renameat2"];

/// For each rename-family call, the most calls any one thread of `program args` makes of it
/// (strace counts injections per thread and call).
fn count_renames(program: &str, dir: &Path, args: &[&str]) -> Vec<(&'static str, usize)> {
    let log = dir.join("strace.log");
    let mut c = std::process::Command::new("strace");
    c.args(["-f", "-qq", "-e", &format!("trace={}", RENAMES.join(",")), "-o", log.to_str().unwrap(), program]);
    c.args(args).current_dir(dir);
    let o = run(c, None, Some(Duration::from_secs(300)));
    assert!(o.success(), "{}", o.describe());
    let text = std::fs::read_to_string(&log).unwrap();
    std::fs::remove_file(&log).unwrap();
    let counts: Vec<(&'static str, usize)> = RENAMES
        .iter()
        .map(|s| {
            let mut per: BTreeMap<&str, usize> = BTreeMap::new();
            for l in text.lines() {
                // strace prefixes the pid padded to five columns: `2013  rename(`, `12345 rename(`.
                let (pid, call) = match l.split_once(' ') {
                    Some((p, rest)) if p.bytes().all(|b| b.is_ascii_digit()) => (p, rest.trim_start()),
                    _ => ("", l),
                };
                if call.starts_with(&format!("{s}(")) && !call.contains("resumed>") {
                    *per.entry(pid).or_default() += 1;
                }
            }
            (*s, per.values().copied().max().unwrap_or(0))
        })
        .collect();
    let head: String = text.lines().take(20).collect::<Vec<_>>().join("\n");
    assert!(
        counts.iter().any(|c| c.1 > 0),
        "no rename seen in the traced run of {args:?} ({} bytes of trace):\n{head}\n{}",
        text.len(),
        o.describe()
    );
    counts
}

/// `program args` under strace, killed (SIGKILL) at the `n`th call of `syscall`.
fn kill_at(program: &str, dir: &Path, args: &[&str], syscall: &str, n: usize) {
    let mut c = std::process::Command::new("strace");
    c.args(["-f", "-qq", "-e", &format!("trace={syscall}"), "-e", &format!("inject={syscall}:signal=KILL:when={n}")]);
    c.args(["-o", "/dev/null", program]).args(args).current_dir(dir);
    let _ = run(c, None, Some(Duration::from_secs(300)));
}

#[test]
fn kill_9_at_every_rename_of_backup_and_restore() {
    if !have_tool("strace") {
        skip("strace not installed: the backup and restore are not killed at each rename");
        return;
    }
    let base = make_vm();
    std::fs::create_dir(base.root().join("bk")).unwrap();
    let before = base.digests();
    let count_dir = tempfile::tempdir().unwrap();
    copy_dir(base.root(), count_dir.path());
    let cvmx = count_dir.path().join("vm/vm.vmx").display().to_string();
    let bargs =
        |vmx: &str| vec!["-a".to_string(), vmx.to_string(), "-r".into(), "bk/full".into(), "--keep-tracking".into()];
    let a = bargs(&cvmx);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let counts = count_renames(backup_bin(), count_dir.path(), &a);
    let vmx_after = std::fs::read_to_string(count_dir.path().join("vm/vm.vmx")).unwrap();
    let max = env_number("VMKFS_VM_KILLPOINTS_MAX", 30) as usize;
    let mut points = 0;
    for (call, total) in &counts {
        let step = total.div_ceil(max).max(1);
        for n in (1..=*total).step_by(step) {
            points += 1;
            let work = tempfile::tempdir().unwrap();
            copy_dir(base.root(), work.path());
            let vm = Vm { root: work };
            let wvmx = vm.vmx().display().to_string();
            let a = bargs(&wvmx);
            let a: Vec<&str> = a.iter().map(String::as_str).collect();
            let name = format!("backup killed at {call} #{n} of {total}");
            kill_at(backup_bin(), vm.root(), &a, call, n);
            backup_recovers(&vm, &a, &before, &vmx_after, &name);
        }
    }
    // Restore: from the counting run's backup, into a fresh folder each time.
    let croot = count_dir.path();
    let target = croot.join("r/vm");
    let alt = moved_catalog(&croot.join("bk/full"), &croot.join("vm"), &target, &croot.join("alt"));
    let rargs = ["-s", "bk/full", "-a", alt.to_str().unwrap(), "-b", "abort"];
    let counts = count_renames(restore_bin(), croot, &rargs);
    let restored = restored_state(&target);
    for (call, total) in &counts {
        let step = total.div_ceil(max).max(1);
        for n in (1..=*total).step_by(step) {
            points += 1;
            std::fs::remove_dir_all(croot.join("r")).unwrap();
            let name = format!("restore killed at {call} #{n} of {total}");
            kill_at(restore_bin(), croot, &rargs, call, n);
            let o = tool(restore_bin(), croot, &rargs);
            assert!(o.success() || o.code() == Some(2), "{name}: {}", o.describe());
            assert_eq!(restored_state(&target), restored, "{name}: the restored VM is whole ({})", o.describe());
            no_leftovers(croot, &name);
        }
    }
    eprintln!("killed backup and restore at {points} renames");
    assert!(points > 10, "too few kill points: {points}");
}

#[test]
fn a_failed_backup_leaves_the_source_as_it_was() {
    let vm = make_vm();
    std::fs::create_dir(vm.root().join("bk")).unwrap();
    // A grain pointer of the 2gbsparse base far past the end of its file: reading that grain
    // fails in the middle of the export, after the snapshots were taken.
    let ext = vm.dir().join("data-s001.vmdk");
    let (at, _) = zero_primary_gte(&ext);
    let f = std::fs::OpenOptions::new().write(true).open(&ext).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &0x7fff_fff0u32.to_le_bytes(), at).unwrap();
    drop(f);
    let before = hash_tree(&vm.dir());
    let o = tool(backup_bin(), vm.root(), &["-a", &vm.vmx().display().to_string(), "-r", "bk/full", "--keep-tracking"]);
    assert_eq!(o.code(), Some(3), "{}", o.describe());
    assert!(o.err().contains("data-s001.vmdk"), "the error names the damaged file: {}", o.describe());
    assert!(o.out().contains("scsi0:1: snapshot"), "the failure came after the snapshots: {}", o.describe());
    assert_eq!(hash_tree(&vm.dir()), before, "the snapshots were discarded and nothing else changed");
    assert!(listing(&vm.root().join("bk")).is_empty(), "{:?}", listing(&vm.root().join("bk")));
    let o = vmkfs(&vm.dir(), &["--info", "vm.vmdk"]);
    assert!(o.success(), "the disks are not left refused: {}", o.describe());
}
