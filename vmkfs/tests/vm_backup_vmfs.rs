//! Whole-VM backups from VMFS volumes (`--volume`, issue 13): the real ESX 3 image of
//! `../shared/testdata/vmfs` (its four 200 MiB disks, named by a host `.vmx` through the volume's
//! label `toto` as their datastore), and a synthetic VMFS5 volume (the test-only writer) holding a
//! whole VM folder. The volume is read-only: no snapshot is taken (the catalog says so), small
//! files come out through the volume's file reader, an incremental pass compares block hashes and
//! finds nothing changed, and the restored disks read as the volume's (sha256, and
//! `qemu-img compare` with a raw image of the expected bytes).

mod common;
mod vmfs_common;
mod vmfs_synth;

use std::path::Path;

use common::{backup_bin, disk_digest, have_tool, qemu_img, restore_bin, sha256_hex, skip, tool, vmx_disks, MIB};
use vmfs_synth::{expected, pattern, Builder, FileSpec, Gen, Layout};

fn catalog_value(backup: &Path, key: &str) -> Option<String> {
    std::fs::read_to_string(backup.join("catalog"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key} = ")).map(|v| v.trim_matches('"').to_string()))
}

/// `qemu-img compare` of a restored disk with a raw image holding `bytes`.
fn qemu_matches(dir: &Path, disk: &Path, bytes: &[u8], what: &str) {
    if !have_tool("qemu-img") {
        skip("qemu-img not installed: restored disks are not compared independently");
        return;
    }
    let raw = dir.join(format!("{what}.raw"));
    std::fs::write(&raw, bytes).unwrap();
    let o = qemu_img(dir, &["compare", "-f", "vmdk", "-F", "raw", disk.to_str().unwrap(), raw.to_str().unwrap()]);
    assert_eq!(o.code(), Some(0), "{what}: {}", o.describe());
    std::fs::remove_file(raw).unwrap();
}

#[test]
fn esx3_image_disks_through_their_datastore_label() {
    let Some(img) = vmfs_common::real_image("vmfs3.img") else { return };
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    std::fs::create_dir_all(r.join("host/vm")).unwrap();
    std::fs::create_dir(r.join("bk")).unwrap();
    let disks = ["thin", "thick", "zeroedthick", "eagerzeroedthick"];
    let mut vmx = String::from("displayName = \"esx3 disks\"\nscsi0.present = \"TRUE\"\nnvram = \"vm.nvram\"\n");
    for (i, d) in disks.iter().enumerate() {
        vmx += &format!("scsi0:{i}.present = \"TRUE\"\nscsi0:{i}.fileName = \"[toto] {d}.vmdk\"\n");
    }
    std::fs::write(r.join("host/vm/vm.vmx"), &vmx).unwrap();
    std::fs::write(r.join("host/vm/vm.nvram"), b"nvram").unwrap();
    let img = img.to_str().unwrap().to_string();
    let host = format!("host={}", r.join("host").display());
    let o = tool(backup_bin(), r, &["--volume", &img, "--datastore", &host, "-a", "[host] vm/vm.vmx", "-r", "bk/full"]);
    assert!(o.success(), "{}", o.describe());
    let full = r.join("bk/full");
    assert_eq!(catalog_value(&full, "config.vmx").unwrap(), "[host] vm/vm.vmx");
    assert!(catalog_value(&full, "source.snapshot").unwrap().starts_with("none: the disks are in a VMFS volume image"));
    for (i, d) in disks.iter().enumerate() {
        assert_eq!(catalog_value(&full, &format!("disk.scsi0:{i}.diskname")).unwrap(), format!("[toto] {d}.vmdk"));
    }
    assert_eq!(catalog_value(&full, "disk.scsi0:0.format").unwrap(), "thin");
    let o = tool(backup_bin(), r, &["--verify", "bk/full"]);
    assert!(o.success(), "{}", o.describe());
    let o = tool(
        backup_bin(),
        r,
        &["--volume", &img, "--datastore", &host, "-a", "[host] vm/vm.vmx", "-r", "bk/inc", "--since", "bk/full"],
    );
    assert!(o.success(), "{}", o.describe());
    for i in 0..disks.len() {
        assert_eq!(catalog_value(&r.join("bk/inc"), &format!("disk.scsi0:{i}.method")).unwrap(), "hashes");
        assert_eq!(
            catalog_value(&r.join("bk/inc"), &format!("disk.scsi0:{i}.bytes")).unwrap(),
            "0",
            "a volume image does not change"
        );
    }
    // Restore through datastore maps to host folders.
    let rt = format!("toto={}", r.join("restore/toto").display());
    let rh = format!("host={}", r.join("restore/host").display());
    std::fs::create_dir_all(r.join("restore/toto")).unwrap();
    let o = tool(restore_bin(), r, &["-s", "bk/inc", "--datastore", &rt, "--datastore", &rh, "-b", "abort"]);
    assert!(o.success(), "{}", o.describe());
    let vmx_out = r.join("restore/host/vm/vm.vmx");
    let names = vmx_disks(&vmx_out);
    let zeros = vec![0u8; 200 * MIB as usize];
    let want = sha256_hex(&zeros);
    for (i, d) in disks.iter().enumerate() {
        let f = &names[&format!("scsi0:{i}")];
        assert_eq!(Path::new(f), r.join(format!("restore/toto/{d}.vmdk")), "the .vmx names the restored disk");
        assert_eq!(disk_digest(r, f, &[]).unwrap().sha256, want, "{d}: every byte of the ESX 3 disks is zero");
        qemu_matches(r, Path::new(f), &zeros, d);
    }
    assert_eq!(std::fs::read(r.join("restore/host/vm/vm.nvram")).unwrap(), b"nvram");
}

fn spec(size: u64, layout: Layout, chunks: Vec<(u64, Vec<u8>)>, sparse: bool) -> FileSpec {
    FileSpec { size, layout, chunks, sparse, tbz: vec![] }
}

fn text_file(text: &str) -> FileSpec {
    let b = text.as_bytes().to_vec();
    spec(b.len() as u64, if b.len() < 1024 { Layout::Resident } else { Layout::Sub }, vec![(0, b)], false)
}

#[test]
fn a_vm_folder_inside_a_synthetic_volume() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let cap = 16 * MIB;
    let flat =
        spec(cap, Layout::Direct, vec![(MIB, pattern(11, MIB as usize)), (9 * MIB + 4096, pattern(12, 300_000))], true);
    let desc = format!(
        "# Disk DescriptorFile\nversion=1\nCID=1a2b3c4d\nparentCID=ffffffff\ncreateType=\"vmfs\"\n\nRW {} VMFS \"web-flat.vmdk\"\n\nddb.adapterType = \"lsilogic\"\nddb.thinProvisioned = \"1\"\n",
        cap / 512
    );
    let vmx = "displayName = \"web synth\"\nuuid.bios = \"56 4d 01\"\nnvram = \"web.nvram\"\nscsi0.present = \"TRUE\"\nscsi0:0.present = \"TRUE\"\nscsi0:0.fileName = \"web.vmdk\"\n";
    let nvram = spec(8192 + 100, Layout::Sub, vec![(0, pattern(13, 8292))], false);
    let log = text_file("Dec 01 vmx| a log line\n");
    let mut b = Builder::new(Gen::V5, "synth-ds", 512 * MIB);
    b.dir("/web");
    b.file("/web/web.vmx", text_file(vmx));
    b.file("/web/web.vmdk", text_file(&desc));
    b.file("/web/web-flat.vmdk", flat.clone());
    b.file("/web/web.nvram", nvram.clone());
    b.file("/web/vmware.log", log.clone());
    std::fs::create_dir(r.join("vol")).unwrap();
    let built = b.build(&r.join("vol"));
    let dev = built.devices[0].to_str().unwrap().to_string();
    std::fs::create_dir(r.join("bk")).unwrap();
    let o = tool(
        backup_bin(),
        r,
        &["--volume", &dev, "-a", "name:web synth", "--datastore", "unused=/nonexistent", "-r", "bk/full"],
    );
    assert!(o.success(), "{}", o.describe());
    let full = r.join("bk/full");
    assert_eq!(catalog_value(&full, "source").unwrap(), "volume");
    assert!(
        catalog_value(&full, "source.snapshot").unwrap().starts_with("none"),
        "no snapshot inside a read-only volume"
    );
    assert_eq!(catalog_value(&full, "config.vmx").unwrap(), "[synth-ds] web/web.vmx");
    assert_eq!(catalog_value(&full, "disk.scsi0:0.diskname").unwrap(), "[synth-ds] web/web.vmdk");
    let o = tool(backup_bin(), r, &["--volume", &dev, "-a", "/web/web.vmx", "-r", "bk/inc", "--since", "bk/full"]);
    assert!(o.success(), "{}", o.describe());
    assert_eq!(catalog_value(&r.join("bk/inc"), "disk.scsi0:0.method").unwrap(), "hashes");
    assert_eq!(catalog_value(&r.join("bk/inc"), "disk.scsi0:0.bytes").unwrap(), "0");
    let o = tool(backup_bin(), r, &["--volume", &dev, "-a", "/web", "-r", "bk/t", "--keep-tracking"]);
    assert_eq!(o.code(), Some(2), "no tracking link can be kept in a read-only volume: {}", o.describe());
    for p in ["bk/full", "bk/inc"] {
        let o = tool(backup_bin(), r, &["--verify", p]);
        assert!(o.success(), "{}", o.describe());
    }
    // Restored to a host folder standing for the datastore.
    std::fs::create_dir(r.join("ds")).unwrap();
    let ds = format!("synth-ds={}", r.join("ds").display());
    let o = tool(restore_bin(), r, &["-s", "bk/inc", "--datastore", &ds]);
    assert!(o.success(), "{}", o.describe());
    let out = r.join("ds/web");
    assert_eq!(vmx_disks(&out.join("web.vmx"))["scsi0:0"], "web.vmdk");
    let want = expected(&flat, 0, cap);
    assert_eq!(disk_digest(&out, "web.vmdk", &[]).unwrap().sha256, sha256_hex(&want));
    qemu_matches(&out, &out.join("web.vmdk"), &want, "web");
    assert_eq!(std::fs::read(out.join("web.nvram")).unwrap(), expected(&nvram, 0, nvram.size));
    assert_eq!(std::fs::read(out.join("vmware.log")).unwrap(), expected(&log, 0, log.size));
    // Restoring into the volume itself is refused: it is read-only.
    let o = tool(restore_bin(), r, &["-s", "bk/full", "--volume", &dev, "-b", "overwrite"]);
    assert_eq!(o.code(), Some(2), "{}", o.describe());
    assert!(o.err().contains("read-only"), "{}", o.describe());
}
