//! The confinement rule and the aliasing rule, through the real command: every path a disk names
//! (extents, parent hints, RDM mapping device paths, `raw:` devices, and symbolic links inside the
//! folder) stays inside the disk's folder unless `--allow-outside-paths` is given, and no two
//! extents of a chain are the same file. After each refusal the outside file is byte-for-byte what
//! it was. Also the file-level rules of the transaction home: `-U`/`-E` refuse symbolic links,
//! `--force` over a split disk removes every old extent, `--save-map` never replaces a file or
//! follows a link unless forced, and a commit re-points only the committed link's children.

mod common;

use std::path::Path;

use common::*;

const MIB: u64 = 1 << 20;

/// A folder `vm/` beside a folder `outside/` holding `secret` (1 MiB of a pattern); returns the
/// secret's sha256.
fn layout(root: &Path) -> String {
    std::fs::create_dir(root.join("vm")).unwrap();
    std::fs::create_dir(root.join("outside")).unwrap();
    std::fs::write(root.join("outside/secret"), pattern(0, MIB as usize, 7)).unwrap();
    sha256_file(&root.join("outside/secret"))
}

fn escape(o: &Outcome) -> bool {
    o.code() == Some(3) && o.err().contains("outside the disk's folder")
}

/// A flat descriptor naming `extent` for a 1 MiB disk.
fn flat_descriptor(extent: &str) -> String {
    format!("# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\n\nRW 2048 FLAT \"{extent}\" 0\n")
}

#[test]
fn extent_paths_stay_in_the_folder() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let before = layout(root);
    let vm = root.join("vm");
    std::os::unix::fs::symlink("../outside/secret", vm.join("link-flat.vmdk")).unwrap();
    std::os::unix::fs::symlink(root.join("outside/secret"), vm.join("abs-flat.vmdk")).unwrap();
    let cases = [
        ("dotdot.vmdk", "../outside/secret".to_string()),
        ("absolute.vmdk", root.join("outside/secret").display().to_string()),
        ("symlink.vmdk", "link-flat.vmdk".to_string()),
        ("abssymlink.vmdk", "abs-flat.vmdk".to_string()),
    ];
    for (name, extent) in &cases {
        std::fs::write(vm.join(name), flat_descriptor(extent)).unwrap();
        for args in [vec!["--read-at", "0", "--length", "4096", name], vec!["--info", name], vec!["-w", name]] {
            let o = vmkfs(&vm, &args);
            assert!(escape(&o), "{name} {args:?}: {}", o.describe());
        }
        // A check does not call such a disk clean (a finding, or the same refusal).
        let o = vmkfs(&vm, &["-x", "check", name]);
        assert!(!o.success() && o.text().contains("outside the disk's folder"), "{name}: {}", o.describe());
        let o = vmkfs_stdin(&vm, &["--write-at", "0", name], b"overwritten");
        assert!(escape(&o), "{name} --write-at: {}", o.describe());
        assert_eq!(sha256_file(&root.join("outside/secret")), before, "{name}: the outside file changed");
        // Explicitly allowed, it reads the outside file.
        let got = vmkfs(&vm, &["--allow-outside-paths", "--read-at", "0", "--length", "16", name]);
        assert!(got.success(), "{}", got.describe());
        assert_eq!(got.stdout, pattern(0, 16, 7), "{name}");
    }
    // A symbolic link that stays inside the folder is fine.
    std::fs::write(vm.join("real-flat.vmdk"), pattern(0, MIB as usize, 9)).unwrap();
    std::os::unix::fs::symlink("real-flat.vmdk", vm.join("near-flat.vmdk")).unwrap();
    std::fs::write(vm.join("near.vmdk"), flat_descriptor("near-flat.vmdk")).unwrap();
    assert_eq!(read_at(&vm, "near.vmdk", 0, 16), pattern(0, 16, 9));
}

#[test]
fn parent_hints_stay_in_the_folder() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    layout(root);
    let (vm, out) = (root.join("vm"), root.join("outside"));
    // A base outside, and a child in vm/ naming it three ways.
    create_disk(&out, "base.vmdk", "monosparse", 4 * MIB);
    write_pattern(&out, "base.vmdk", 0, 64 << 10, 3);
    let child = snapshot(&out, "base.vmdk", false);
    std::fs::rename(out.join(&child), vm.join("child.vmdk")).unwrap();
    let base_hash = sha256_file(&out.join("base.vmdk"));
    let raw = std::fs::read(vm.join("child.vmdk")).unwrap();
    let k = kdmv(&raw).unwrap();
    let area = (k.desc_offset * 512) as usize..((k.desc_offset + k.desc_size) * 512) as usize;
    let desc = String::from_utf8_lossy(&raw[area.clone()]).trim_end_matches('\0').to_string();
    std::os::unix::fs::symlink("../outside/base.vmdk", vm.join("base-link.vmdk")).unwrap();
    for hint in ["../outside/base.vmdk", &out.join("base.vmdk").display().to_string(), "base-link.vmdk"] {
        let new = desc.replace("parentFileNameHint=\"base.vmdk\"", &format!("parentFileNameHint=\"{hint}\""));
        assert_ne!(new, desc, "the hint was rewritten");
        let mut raw2 = raw.clone();
        let bytes = &mut raw2[area.clone()];
        bytes.fill(0);
        bytes[..new.len()].copy_from_slice(new.as_bytes());
        std::fs::write(vm.join("child.vmdk"), &raw2).unwrap();
        for args in [vec!["--read-at", "0", "--length", "4096", "child.vmdk"], vec!["-m", "child.vmdk"]] {
            let o = vmkfs(&vm, &args);
            assert!(escape(&o), "hint {hint} {args:?}: {}", o.describe());
        }
        assert_eq!(sha256_file(&out.join("base.vmdk")), base_hash, "hint {hint}: the outside parent changed");
        let o = vmkfs(&vm, &["--allow-outside-paths", "--read-at", "0", "--length", "16", "child.vmdk"]);
        assert!(o.success(), "hint {hint}: {}", o.describe());
        assert_eq!(o.stdout, pattern(0, 16, 3));
    }
}

#[test]
fn devices_and_mapping_records_follow_the_rule() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let before = layout(root);
    let vm = root.join("vm");
    let secret = root.join("outside/secret");
    let secret = secret.to_str().unwrap();
    // A regular file outside the folder cannot stand in for a device without the flag…
    for args in [vec!["-r", secret, "m.vmdk"], vec!["-z", secret, "p.vmdk"]] {
        let o = vmkfs(&vm, &args);
        assert!(escape(&o), "{args:?}: {}", o.describe());
    }
    let o = vmkfs(&vm, &["-c", "1m", "-d", "thin", "src.vmdk"]);
    assert!(o.success(), "{}", o.describe());
    let raw_target = format!("raw:{secret}");
    let o = vmkfs(&vm, &["-i", "src.vmdk", "-d", &raw_target, "r.vmdk"]);
    assert!(escape(&o), "{}", o.describe());
    assert_eq!(sha256_file(&root.join("outside/secret")), before);
    // …with it, it can; and every later open needs it too.
    assert!(vmkfs(&vm, &["--allow-outside-paths", "-r", secret, "m.vmdk"]).success());
    let o = vmkfs(&vm, &["--read-at", "0", "--length", "16", "m.vmdk"]);
    assert!(escape(&o), "{}", o.describe());
    let o = vmkfs(&vm, &["--allow-outside-paths", "--read-at", "0", "--length", "16", "m.vmdk"]);
    assert_eq!(o.stdout, pattern(0, 16, 7), "{}", o.describe());
    // A crafted mapping record naming an outside file (moved in from a folder where it was fine).
    std::fs::write(root.join("outside/lun.img"), vec![0u8; MIB as usize]).unwrap();
    let out = root.join("outside");
    assert!(vmkfs(&out, &["-r", "lun.img", "crafted.vmdk"]).success());
    for f in ["crafted.vmdk", "crafted-rdm.vmdk"] {
        std::fs::rename(out.join(f), vm.join(f)).unwrap();
    }
    let o = vmkfs(&vm, &["--read-at", "0", "--length", "16", "crafted.vmdk"]);
    assert!(escape(&o), "{}", o.describe());
    let o = vmkfs_stdin(&vm, &["--write-at", "0", "crafted.vmdk"], b"x");
    assert!(escape(&o), "{}", o.describe());
    assert!(std::fs::read(root.join("outside/lun.img")).unwrap().iter().all(|&b| b == 0));
    // A raw disk vmkfs made over a file in its own folder reopens without flags.
    std::fs::write(vm.join("lun.img"), pattern(0, MIB as usize, 5)).unwrap();
    assert!(vmkfs(&vm, &["-i", "src.vmdk", "-d", "raw:lun.img", "--force", "own.vmdk"]).success());
    assert!(vmkfs(&vm, &["--info", "own.vmdk"]).success());
}

#[test]
fn no_two_extents_are_one_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("x-flat.vmdk"), pattern(0, MIB as usize, 1)).unwrap();
    std::fs::hard_link(d.join("x-flat.vmdk"), d.join("y-flat.vmdk")).unwrap();
    let alias = |o: &Outcome| o.code() == Some(3);
    let twice = "# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\n\nRW 1024 FLAT \"x-flat.vmdk\" 0\nRW 1024 FLAT \"x-flat.vmdk\" 0\n";
    let linked = "# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\n\nRW 1024 FLAT \"x-flat.vmdk\" 0\nRW 1024 FLAT \"y-flat.vmdk\" 1024\n";
    // Padded to more than a sector, so that only the aliasing is wrong with it.
    let itself = format!(
        "# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\n\nRW 1 FLAT \"self.vmdk\" 0\n#{}\n",
        "-".repeat(600)
    );
    let apart = "# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\n\nRW 1024 FLAT \"x-flat.vmdk\" 0\nRW 1024 FLAT \"x-flat.vmdk\" 1024\n";
    for (name, text, what) in [
        ("twice.vmdk", twice, "both use bytes"),
        ("linked.vmdk", linked, "same file by two names"),
        ("self.vmdk", itself.as_str(), "the descriptor file itself"),
    ] {
        std::fs::write(d.join(name), text).unwrap();
        let before = sha256_file(&d.join(name));
        let o = vmkfs_stdin(d, &["--write-at", "0", name], &[0xaa; 4096]);
        assert!(alias(&o) && o.err().contains(what), "{name}: {}", o.describe());
        assert_eq!(sha256_file(&d.join(name)), before);
    }
    // Two extents at different offsets of one file are a layout VMware writes: fine.
    std::fs::write(d.join("apart.vmdk"), apart).unwrap();
    assert_eq!(read_at(d, "apart.vmdk", MIB / 2, 16), pattern(MIB / 2, 16, 1));
    // A child whose delta is its parent's file.
    create_disk(d, "base.vmdk", "thin", MIB);
    let child = snapshot(d, "base.vmdk", false);
    let text = std::fs::read_to_string(d.join(&child)).unwrap();
    let delta = child.replace(".vmdk", "-delta.vmdk");
    std::fs::write(d.join(&child), text.replace(&delta, "base-flat.vmdk").replace("VMFSSPARSE", "VMFS")).unwrap();
    let o = vmkfs(d, &["--read-at", "0", "--length", "16", &child]);
    assert!(alias(&o) && o.err().contains("also"), "{}", o.describe());
    for args in [vec!["--discard", &child], vec!["-U", &child], vec!["-m", &child]] {
        let o = vmkfs(d, &args);
        assert!(!o.success(), "{args:?}: {}", o.describe());
        assert!(d.join("base-flat.vmdk").exists(), "{args:?} must not remove the parent's data");
    }
}

#[test]
fn file_rules_of_the_transaction_home() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    disk_with_data(d, "vm.vmdk", "thin", 4 * MIB, 11);
    // -U and -E through a symbolic link are refused; the real disk stays whole.
    std::os::unix::fs::symlink("vm.vmdk", d.join("alias.vmdk")).unwrap();
    for args in [vec!["-U", "alias.vmdk"], vec!["-E", "alias.vmdk", "moved.vmdk"]] {
        let o = vmkfs(d, &args);
        assert_eq!(o.code(), Some(2), "{args:?}: {}", o.describe());
        assert!(o.err().contains("symbolic link"), "{}", o.describe());
    }
    assert!(d.join("vm.vmdk").exists() && d.join("vm-flat.vmdk").exists() && d.join("alias.vmdk").exists());
    // --force over a split disk: every old extent goes once the new disk is in place.
    let big = 4100 * MIB;
    vmkfs_ok(d, &["-c", &big.to_string(), "-d", "2gbflat", "split.vmdk"]);
    let old: Vec<String> = listing(d).into_iter().filter(|n| n.starts_with("split")).collect();
    assert_eq!(old.len(), 4, "{old:?}");
    vmkfs_ok(d, &["-i", "vm.vmdk", "-d", "2gbflat", "--force", "split.vmdk"]);
    let new: Vec<String> = listing(d).into_iter().filter(|n| n.starts_with("split")).collect();
    assert_eq!(new, vec!["split-f001.vmdk".to_string(), "split.vmdk".to_string()], "old extents left behind");
    assert!(vmkfs(d, &["--compare", "vm.vmdk", "split.vmdk"]).success());
    // --save-map never replaces a file, nor writes through a link, unless forced.
    let snap = snapshot(d, "vm.vmdk", false);
    write_at(d, &snap, 0, b"changed");
    std::fs::write(d.join("target"), b"keep me").unwrap();
    std::os::unix::fs::symlink("target", d.join("map.link")).unwrap();
    std::fs::write(d.join("map.bin"), b"old map").unwrap();
    for f in ["map.bin", "map.link"] {
        let o = vmkfs(d, &["--changed-blocks", "--save-map", f, &snap]);
        assert_eq!(o.code(), Some(2), "{f}: {}", o.describe());
    }
    assert_eq!(std::fs::read(d.join("target")).unwrap(), b"keep me");
    assert_eq!(std::fs::read(d.join("map.bin")).unwrap(), b"old map");
    vmkfs_ok(d, &["--changed-blocks", "--force", "--save-map", "map.link", &snap]);
    assert_eq!(std::fs::read(d.join("target")).unwrap(), b"keep me", "the link's target is never written");
    assert!(!std::fs::symlink_metadata(d.join("map.link")).unwrap().file_type().is_symlink());
    vmkfs_ok(d, &["--changed-blocks", "--save-map", "fresh.bin", &snap]);
    assert!(std::fs::metadata(d.join("fresh.bin")).unwrap().len() > 0);
}

#[test]
fn commit_repoints_only_the_committed_links_children() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    disk_with_data(d, "vm.vmdk", "thin", 4 * MIB, 21);
    let s1 = snapshot(d, "vm.vmdk", false);
    write_at(d, &s1, 0, b"one");
    let s2 = snapshot(d, &s1, false);
    write_at(d, &s2, 4096, b"two");
    // A stale descriptor naming s1 (its parentCID no longer matches) is no child: left alone.
    let stale = std::fs::read_to_string(d.join(&s2)).unwrap();
    let stale = stale
        .lines()
        .map(|l| if l.starts_with("parentCID=") { "parentCID=0badc0de".to_string() } else { l.to_string() })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(d.join("stale.vmdk"), &stale).unwrap();
    let before = sha256_file(&d.join("stale.vmdk"));
    let expect = vmkfs(d, &["--read-at", "0", &s2]).stdout;
    vmkfs_ok(d, &["-m", &s1]);
    assert_eq!(sha256_file(&d.join("stale.vmdk")), before, "a descriptor outside the chain was rewritten");
    let s2_text = std::fs::read_to_string(d.join(&s2)).unwrap();
    assert!(s2_text.contains("parentFileNameHint=\"vm.vmdk\""), "{s2_text}");
    assert_eq!(vmkfs(d, &["--read-at", "0", &s2]).stdout, expect);
    assert!(vmkfs(d, &["--chain", &s2]).success());
}
