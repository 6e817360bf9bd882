//! The backup cycle of README "Snapshots and backups", end to end with the `vmkfs` command: a thin
//! `vm.vmdk`, a snapshot so the base is static, a full copy of the base (`-i … -d 2gbsparse`, and
//! once `-e`), then three nights of: writes into the top link; `--snapshot` of the top; an
//! incremental `--export-delta incN.vmdk --since vm.vmdk TOP`; `-m TOP`; `--apply incN.vmdk
//! full.vmdk` (no `--force`). After each night the replica must read exactly what the live chain
//! reads (sha256 of `--read-at 0`, an in-memory model of every write, and `qemu-img compare` where
//! qemu opens both). Applying an increment out of order is refused and changes nothing; applying
//! one that already landed again exits 0 and changes nothing.
//!
//! This needs a full copy to keep the base's content identity (CID) and a commit to give the
//! parent the committed link's CID, so each increment's `parentCID` is the replica's CID.

mod common;

use std::path::Path;

use common::*;

const CAP: u64 = 32 * MIB;

/// The writes of night `n` (offset, bytes): new data, data over earlier data across a grain
/// boundary, and zeros over data (which must travel too).
fn night_writes(n: u64) -> Vec<(u64, Vec<u8>)> {
    vec![
        (n * 4 * MIB + 4096, pattern(n * 4 * MIB + 4096, 192 * KIB as usize, 100 + n)),
        (MIB + n * 64 * KIB - 512, pattern(MIB + n * 64 * KIB - 512, 8 * KIB as usize, 200 + n)),
        (2 * MIB + n * 128 * KIB, vec![0u8; 64 * KIB as usize]),
    ]
}

fn apply_to_model(model: &mut [u8], writes: &[(u64, Vec<u8>)]) {
    for (off, data) in writes {
        model[*off as usize..*off as usize + data.len()].copy_from_slice(data);
    }
}

/// `parentCID` of a text descriptor file.
fn parent_cid(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .find_map(|l| l.trim().strip_prefix("parentCID=").map(|v| v.trim().to_string()))
        .unwrap_or_else(|| panic!("{} has no parentCID", path.display()))
}

/// The files of the replica (everything in `backup/` but the increments), with their hashes.
fn replica_files(backup: &Path) -> Vec<(String, String)> {
    hash_tree(backup).into_iter().filter(|(n, _)| !n.starts_with("inc")).collect()
}

/// `qemu-img compare` of the replica with the live chain, when qemu can open both.
fn qemu_agrees(d: &Path, replica: &str, top: &str, night: u64) {
    let o = qemu_img(d, &["compare", "-f", "vmdk", "-F", "vmdk", replica, top]);
    match o.code() {
        Some(0) => {}
        Some(1) => panic!("night {night}: qemu-img compare finds the replica differs from the chain: {}", o.describe()),
        _ => {
            eprintln!("night {night}: qemu-img cannot open {replica} or {top}, skipping its check: {}", o.err().trim())
        }
    }
}

fn cycle(full_copy: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let backup = d.join("backup");
    std::fs::create_dir(&backup).unwrap();
    let qemu = have_tool("qemu-img");
    if !qemu {
        skip("qemu-img not installed: the backup cycle runs without its independent comparison");
    }

    // The VM's disk, with data.
    create_disk(d, "vm.vmdk", "thin", CAP);
    let mut model = vec![0u8; CAP as usize];
    let base = [(0, pattern(0, 3 * MIB as usize, 1)), (20 * MIB, pattern(20 * MIB, 2 * MIB as usize, 2))];
    for (off, data) in &base {
        write_at(d, "vm.vmdk", *off, data);
    }
    apply_to_model(&mut model, &base);
    // Snapshot: the base becomes static; then the full copy of it.
    let mut top = snapshot(d, "vm.vmdk", false);
    assert_eq!(top, "vm-000001.vmdk");
    vmkfs_ok(d, full_copy);
    assert_eq!(disk_digest(&backup, "full.vmdk", &[]).unwrap().sha256, sha256_hex(&model), "the full copy");
    assert_eq!(cid_of(&backup, "full.vmdk"), cid_of(d, "vm.vmdk"), "a full copy keeps the base's CID");

    let mut replica_after_night_1 = None;
    for night in 1..=3u64 {
        let writes = night_writes(night);
        for (off, data) in &writes {
            write_at(d, &top, *off, data);
        }
        apply_to_model(&mut model, &writes);
        let next = snapshot(d, &top, false);
        let inc = format!("backup/inc{night}.vmdk");
        vmkfs_ok(d, &["--export-delta", &inc, "--since", "vm.vmdk", &top]);
        vmkfs_ok(d, &["-m", &top]);
        let chain = disk_digest(d, &next, &[]).unwrap();
        assert_eq!(chain.sha256, sha256_hex(&model), "night {night}: the chain reads every write");

        // An increment out of order: inc3 onto the replica as it was after night 1.
        if night == 3 {
            let old: &tempfile::TempDir = replica_after_night_1.as_ref().unwrap();
            let before = replica_files(old.path());
            std::fs::copy(d.join(&inc), old.path().join("inc3.vmdk")).unwrap();
            std::fs::copy(d.join("backup/inc3-delta.vmdk"), old.path().join("inc3-delta.vmdk")).unwrap();
            let o = vmkfs(old.path(), &["--apply", "inc3.vmdk", "full.vmdk"]);
            assert!(!o.success(), "inc3 onto the replica of night 1 (inc2 missing) must be refused: {}", o.describe());
            let needs = parent_cid(&old.path().join("inc3.vmdk"));
            assert!(
                o.text().contains(&needs) && o.text().contains("full.vmdk"),
                "the refusal must name the state the increment needs (CID {needs}) and the replica: {}",
                o.describe()
            );
            assert_eq!(replica_files(old.path()), before, "a refused apply changes nothing");
        }

        // Apply, check, apply again.
        let applied = vmkfs(&backup, &["--apply", &format!("inc{night}.vmdk"), "full.vmdk"]);
        assert!(applied.success(), "night {night}: {}", applied.describe());
        let replica = disk_digest(&backup, "full.vmdk", &[]).unwrap();
        assert_eq!(replica, chain, "night {night}: the replica must read what the chain reads");
        if qemu {
            qemu_agrees(d, "backup/full.vmdk", &next, night);
        }
        let check = vmkfs(&backup, &["-x", "check", "full.vmdk"]);
        assert!(check.success(), "night {night}: the replica after the apply: {}", check.describe());
        let landed = replica_files(&backup);
        let again = vmkfs(&backup, &["--apply", &format!("inc{night}.vmdk"), "full.vmdk"]);
        assert!(
            again.success(),
            "night {night}: applying an increment that already landed exits 0: {}",
            again.describe()
        );
        assert_eq!(replica_files(&backup), landed, "night {night}: applying it again changes nothing");
        if night == 1 {
            let keep = tempfile::tempdir().unwrap();
            copy_dir(&backup, keep.path());
            replica_after_night_1 = Some(keep);
        }
        top = next;
    }
    // The live chain is the base and one empty top link, as after a plain snapshot.
    assert_eq!(listing(d).iter().filter(|n| !n.starts_with("backup")).count(), 4, "{:?}", listing(d));
}

#[test]
fn backup_cycle_with_a_2gbsparse_clone() {
    cycle(&["-i", "vm.vmdk", "-d", "2gbsparse", "backup/full.vmdk"]);
}

#[test]
fn backup_cycle_with_an_export() {
    cycle(&["-e", "backup/full.vmdk", "vm.vmdk"]);
}
