//! Raw device mappings with regular files standing in for devices (runs everywhere): `-r`, `-z`,
//! `-q`, I/O through a mapping, cloning from a mapping and onto a device (`rdm:`, `rdmp:`, `raw:`),
//! identity and size checks, `-U`.
//!
//! qemu-img cannot read RDM descriptors (it rejects the createType), so content is checked through
//! our own reader and by reading the device file directly.

mod common;

use common::*;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// A 3 MiB source image: random, zero and text blocks, zeros at both ends of some blocks.
fn source_bytes() -> Vec<u8> {
    let mut data = vec![0u8; 3 << 20];
    for (i, chunk) in data.chunks_mut(64 << 10).enumerate() {
        match i % 5 {
            0 => chunk.copy_from_slice(&noise(64 << 10, i as u64 + 7)),
            2 => {
                for (j, b) in chunk[512..40_000].iter_mut().enumerate() {
                    *b = b"raw device mapping "[j % 19];
                }
            }
            _ => {}
        }
    }
    data
}

/// `src.vmdk`, a thin disk (holes where the source is zero) with [`source_bytes`].
fn thin_source(dir: &Path) -> (PathBuf, Vec<u8>) {
    let data = source_bytes();
    std::fs::write(dir.join("src.raw"), &data).unwrap();
    ok(&vmkfs(dir, &["-i", "src.raw", "-d", "thin", "src.vmdk"]));
    std::fs::remove_file(dir.join("src.raw")).unwrap();
    (dir.join("src.vmdk"), data)
}

fn read_disk(dir: &Path, disk: &str, off: u64, len: u64, extra: &[&str]) -> Vec<u8> {
    let (o, l) = (off.to_string(), len.to_string());
    let mut args = vec!["--read-at", o.as_str(), "--length", l.as_str()];
    args.extend_from_slice(extra);
    args.push(disk);
    let out = vmkfs(dir, &args);
    ok(&out);
    out.stdout
}

#[test]
fn create_query_and_io_through_a_virtual_mapping() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A sparse 4 MiB "LUN" with data at 1 MiB only.
    let lun = d.join("lun.img");
    let f = std::fs::File::create(&lun).unwrap();
    f.set_len(4 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &[0xabu8; 8192], 1 << 20).unwrap();
    drop(f);

    let out = ok(&vmkfs(d, &["-r", "lun.img", "vm.vmdk"]));
    assert_eq!(out, "");
    let text = std::fs::read_to_string(d.join("vm.vmdk")).unwrap();
    assert!(text.contains("\ncreateType=\"vmfsRawDeviceMap\"\n"), "{text}");
    assert!(text.contains("# Extent description\nRW 8192 VMFSRDM \"vm-rdm.vmdk\"\n"), "{text}");
    assert!(text.contains("CID=") && text.contains("isNativeSnapshot=\"no\""), "{text}");
    assert!(std::fs::read(d.join("vm-rdm.vmdk")).unwrap().starts_with(b"VMKFSRDM"));

    // -q in vmkfstools' words, then the identity.
    let q = ok(&vmkfs(d, &["-q", "vm.vmdk"]));
    let lun_abs = std::fs::canonicalize(&lun).unwrap();
    assert!(q.starts_with("Disk vm.vmdk is a Non-passthrough Raw Device Mapping\n"), "{q}");
    assert!(q.contains(&format!("Maps to: {}\n", lun_abs.display())), "{q}");
    assert!(q.contains("Device: regular file, 4194304 bytes"), "{q}");
    assert!(q.contains("Status: device found at"), "{q}");
    let j: serde_json::Value = serde_json::from_str(&ok(&vmkfs(d, &["-q", "--json", "vm.vmdk"]))).unwrap();
    assert_eq!(j["rdm"], true);
    assert_eq!(j["mode"], "virtual");
    assert_eq!(j["passthrough"], false);
    assert_eq!(j["create_type"], "vmfsRawDeviceMap");
    assert_eq!(j["identity"]["size"], 4 << 20);
    assert_eq!(j["identity"]["kind"], "regular file");
    assert_eq!(j["maps_to"], lun_abs.display().to_string());
    // The mapping file itself can be queried too.
    let q = ok(&vmkfs(d, &["-q", "vm-rdm.vmdk"]));
    assert!(q.starts_with("Disk vm-rdm.vmdk is a Non-passthrough Raw Device Mapping\n"), "{q}");

    // Reads and writes go to the device.
    assert_eq!(read_disk(d, "vm.vmdk", (1 << 20) - 2, 4, &[]), vec![0, 0, 0xab, 0xab]);
    write_at(d, "vm.vmdk", 3 << 20, b"through the mapping");
    let raw = std::fs::read(&lun).unwrap();
    assert_eq!(&raw[3 << 20..(3 << 20) + 19], b"through the mapping");
    assert_eq!(read_disk(d, "vm.vmdk", 3 << 20, 19, &[]), b"through the mapping");

    // --info and --map: a regular file device answers with SEEK_DATA.
    let info: serde_json::Value = serde_json::from_str(&ok(&vmkfs(d, &["--info", "--json", "vm.vmdk"]))).unwrap();
    assert_eq!(info["format"], "vmfsRawDeviceMap");
    assert_eq!(info["capacity"], 4 << 20);
    assert_eq!(info["extents"][0]["kind"], "VMFSRDM");
    let map: serde_json::Value = serde_json::from_str(&ok(&vmkfs(d, &["--map", "--json", "vm.vmdk"]))).unwrap();
    let data: Vec<(u64, u64)> = map
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["data"] == true)
        .map(|r| (r["start"].as_u64().unwrap(), r["length"].as_u64().unwrap()))
        .collect();
    assert!(data.iter().any(|&(s, l)| s <= 1 << 20 && s + l >= (1 << 20) + 8192), "{data:?}");
    assert!(data.iter().all(|&(s, _)| s >= 1 << 20), "{data:?}");

    // Opening the mapping file as a disk is refused with a pointer to the descriptor.
    let e = fail(&vmkfs(d, &["--info", "vm-rdm.vmdk"]), 3);
    assert!(e.contains("RDM mapping file"), "{e}");
    // A non-RDM disk: a negative answer.
    ok(&vmkfs(d, &["-c", "1m", "-d", "thin", "plain.vmdk"]));
    let e = fail(&vmkfs(d, &["-q", "plain.vmdk"]), 1);
    assert!(e.contains("Disk plain.vmdk is not a Raw Device Mapping"), "{e}");
    // Existing files are not replaced without --force.
    fail(&vmkfs(d, &["-r", "lun.img", "vm.vmdk"]), 2);
    ok(&vmkfs(d, &["-r", "lun.img", "--force", "vm.vmdk"]));
}

#[test]
fn passthrough_mapping_wording_and_files() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("lun.img"), noise(1 << 20, 3)).unwrap();
    ok(&vmkfs(d, &["-z", "lun.img", "p.vmdk"]));
    let text = std::fs::read_to_string(d.join("p.vmdk")).unwrap();
    assert!(text.contains("createType=\"vmfsPassthroughRawDeviceMap\""), "{text}");
    assert!(text.contains("RW 2048 VMFSRDM \"p-rdmp.vmdk\"\n"), "{text}");
    let q = ok(&vmkfs(d, &["--queryrdm", "p.vmdk"]));
    assert!(q.starts_with("Disk p.vmdk is a Passthrough Raw Device Mapping\n"), "{q}");
    assert_eq!(read_disk(d, "p.vmdk", 0, 1 << 20, &[]), noise(1 << 20, 3));
    let j: serde_json::Value = serde_json::from_str(&ok(&vmkfs(d, &["-z", "lun.img", "--json", "q.vmdk"]))).unwrap();
    assert_eq!(j["mode"], "physical");
    assert_eq!(j["capacity"], 1 << 20);
}

/// Clone onto a "device" full of random bytes: its first N bytes become exactly the source's,
/// zero ranges included; the bytes past N are untouched.
fn clone_onto_noise(mode: &str) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_, data) = thin_source(d);
    let n = data.len();
    let before = noise(5 << 20, 11);
    std::fs::write(d.join("lun.img"), &before).unwrap();
    let target = format!("{mode}:lun.img");
    let out = ok(&vmkfs(d, &["-i", "src.vmdk", "-d", &target, "dst.vmdk"]));
    assert!(out.contains("Destination disk format: raw device"), "{out}");
    assert!(out.contains("Clone: 100% done."), "{out}");
    let after = std::fs::read(d.join("lun.img")).unwrap();
    assert_eq!(after.len(), before.len());
    assert!(after[..n] == data[..], "{mode}: device differs from the source in the first {n} bytes");
    assert!(after[n..] == before[n..], "{mode}: bytes past the source were changed");
    // Through our reader, too.
    let extra: &[&str] = if mode == "raw" { &["--allow-outside-paths"] } else { &[] };
    assert!(read_disk(d, "dst.vmdk", 0, n as u64, extra) == data);
    let text = std::fs::read_to_string(d.join("dst.vmdk")).unwrap();
    let (ct, line) = match mode {
        "rdm" => ("vmfsRawDeviceMap", "RW 10240 VMFSRDM \"dst-rdm.vmdk\"".to_string()),
        "rdmp" => ("vmfsPassthroughRawDeviceMap", "RW 10240 VMFSRDM \"dst-rdmp.vmdk\"".to_string()),
        _ => {
            ("vmfsRaw", format!("RW 10240 VMFSRAW \"{}\"", std::fs::canonicalize(d).unwrap().join("lun.img").display()))
        }
    };
    assert!(text.contains(&format!("createType=\"{ct}\"")), "{text}");
    assert!(text.contains(&line), "{text}\n{line}");
    // A raw disk over a file in its own folder (as vmkfs made it) reopens without flags; moved
    // away from that file, it is refused unless allowed.
    if mode == "raw" {
        ok(&vmkfs(d, &["--info", "dst.vmdk"]));
        std::fs::create_dir(d.join("elsewhere")).unwrap();
        std::fs::rename(d.join("dst.vmdk"), d.join("elsewhere/dst.vmdk")).unwrap();
        let e = fail(&vmkfs(d, &["--info", "elsewhere/dst.vmdk"]), 3);
        assert!(e.contains("outside the disk's folder"), "{e}");
        ok(&vmkfs(d, &["--info", "--allow-outside-paths", "elsewhere/dst.vmdk"]));
    }
}

#[test]
fn clone_to_rdm_over_random_bytes() {
    clone_onto_noise("rdm");
}

#[test]
fn clone_to_rdmp_over_random_bytes() {
    clone_onto_noise("rdmp");
}

#[test]
fn clone_to_raw_over_random_bytes() {
    clone_onto_noise("raw");
}

#[test]
fn target_is_zero_skips_zero_ranges_and_small_devices_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_, data) = thin_source(d);
    // A sparse, all-zero device: with --target-is-zero the zero ranges are not written, so it stays
    // sparse, and it reads exactly as the source.
    let f = std::fs::File::create(d.join("zero.img")).unwrap();
    f.set_len(4 << 20).unwrap();
    drop(f);
    ok(&vmkfs(d, &["-i", "src.vmdk", "-d", "rdm:zero.img", "--target-is-zero", "z.vmdk"]));
    let after = std::fs::read(d.join("zero.img")).unwrap();
    assert!(after[..data.len()] == data[..]);
    let data_bytes = data.chunks(4096).filter(|c| c.iter().any(|&b| b != 0)).count() as u64 * 4096;
    let allocated = std::fs::metadata(d.join("zero.img")).unwrap().blocks() * 512;
    assert!(allocated <= data_bytes + (256 << 10), "allocated {allocated}, data {data_bytes}");
    // --target-is-zero means nothing without a device target.
    fail(&vmkfs(d, &["-i", "src.vmdk", "-d", "thin", "--target-is-zero", "t.vmdk"]), 2);
    // -d rdm without a device.
    let e = fail(&vmkfs(d, &["-i", "src.vmdk", "-d", "rdm", "t.vmdk"]), 2);
    assert!(e.contains("rdm:DEV"), "{e}");

    // A device smaller than the source: refused before anything is written, naming both sizes.
    std::fs::write(d.join("small.img"), noise(1 << 20, 5)).unwrap();
    let e = fail(&vmkfs(d, &["-i", "src.vmdk", "-d", "rdm:small.img", "s.vmdk"]), 2);
    assert!(e.contains("holds 1048576 bytes") && e.contains("needs 3145728"), "{e}");
    assert_eq!(std::fs::read(d.join("small.img")).unwrap(), noise(1 << 20, 5));
    assert!(!d.join("s.vmdk").exists() && !d.join("s-rdm.vmdk").exists());
    // No temporary files left behind by any of this.
    let left: Vec<String> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn clone_from_a_mapping_into_other_formats() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let lun_data = {
        let mut v = source_bytes();
        v.extend_from_slice(&[0u8; 1 << 20]);
        v
    };
    std::fs::write(d.join("lun.img"), &lun_data).unwrap();
    ok(&vmkfs(d, &["-r", "lun.img", "vm.vmdk"]));
    for fmt in ["thin", "monosparse", "2gbsparse", "eagerzeroedthick"] {
        let out = format!("out-{fmt}.vmdk");
        ok(&vmkfs(d, &["-i", "vm.vmdk", "-d", fmt, &out]));
        assert!(read_disk(d, &out, 0, lun_data.len() as u64, &[]) == lun_data, "{fmt}");
        ok(&vmkfs(d, &["--compare", "vm.vmdk", &out]));
    }
    // qemu-img, an independent reader, agrees on a hosted copy (it cannot open the RDM itself).
    if have_qemu() {
        let o = qemu_img(d, &["compare", "-f", "raw", "-F", "vmdk", "lun.img", "out-monosparse.vmdk"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    }
    // A mapping onto a device, from a mapping: rdm to rdm.
    std::fs::write(d.join("lun2.img"), noise(lun_data.len(), 9)).unwrap();
    ok(&vmkfs(d, &["-i", "vm.vmdk", "-d", "rdmp:lun2.img", "copy.vmdk"]));
    assert!(std::fs::read(d.join("lun2.img")).unwrap() == lun_data);
}

#[test]
fn changed_devices_are_refused_naming_both() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("a.img"), noise(2 << 20, 1)).unwrap();
    std::fs::write(d.join("b.img"), noise(2 << 20, 2)).unwrap();
    std::os::unix::fs::symlink("a.img", d.join("lun")).unwrap();
    ok(&vmkfs(d, &["-r", "lun", "vm.vmdk"]));
    ok(&vmkfs(d, &["--info", "vm.vmdk"]));

    // Shrunk: every operation refuses, naming the expected and the found size.
    let f = std::fs::OpenOptions::new().write(true).open(d.join("a.img")).unwrap();
    f.set_len(1 << 20).unwrap();
    for args in [vec!["--info", "vm.vmdk"], vec!["--read-at", "0", "--length", "512", "vm.vmdk"]] {
        let e = fail(&vmkfs(d, &args), 3);
        assert!(e.contains("size: expected 2097152 bytes, found 1048576 bytes"), "{e}");
        assert!(e.contains("a.img") && e.contains("vm-rdm.vmdk"), "{e}");
    }
    let e = fail(&vmkfs(d, &["-q", "vm.vmdk"]), 3);
    assert!(e.contains("Status: ") && e.contains("size: expected 2097152 bytes"), "{e}");
    f.set_len(2 << 20).unwrap();
    drop(f);

    // The path now leads to another file: refused, naming both files.
    std::fs::remove_file(d.join("a.img")).unwrap();
    std::fs::remove_file(d.join("lun")).unwrap();
    std::os::unix::fs::symlink("b.img", d.join("lun")).unwrap();
    let e = fail(&vmkfs(d, &["--write-at", "0", "vm.vmdk"]), 3);
    assert!(e.contains("canonical path") && e.contains("a.img") && e.contains("b.img"), "{e}");
    assert_eq!(std::fs::read(d.join("b.img")).unwrap(), noise(2 << 20, 2));
    // Gone altogether.
    std::fs::remove_file(d.join("lun")).unwrap();
    let e = fail(&vmkfs(d, &["--info", "vm.vmdk"]), 3);
    assert!(e.contains("not found"), "{e}");
    // A damaged mapping file is a typed error naming the byte.
    std::fs::write(d.join("a.img"), noise(2 << 20, 1)).unwrap();
    let mut m = std::fs::read(d.join("vm-rdm.vmdk")).unwrap();
    m[20] ^= 1;
    std::fs::write(d.join("vm-rdm.vmdk"), &m).unwrap();
    let e = fail(&vmkfs(d, &["--info", "vm.vmdk"]), 3);
    assert!(e.contains("not a valid RDM mapping file") && e.contains("CRC-32"), "{e}");
}

#[test]
fn delete_removes_the_mapping_never_the_device() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let bytes = noise(1 << 20, 4);
    std::fs::write(d.join("lun.img"), &bytes).unwrap();
    ok(&vmkfs(d, &["-r", "lun.img", "vm.vmdk"]));
    let j: serde_json::Value = serde_json::from_str(&ok(&vmkfs(d, &["-U", "--json", "vm.vmdk"]))).unwrap();
    assert_eq!(j["files"].as_array().unwrap().len(), 2, "{j}");
    assert!(!d.join("vm.vmdk").exists() && !d.join("vm-rdm.vmdk").exists());
    assert_eq!(std::fs::read(d.join("lun.img")).unwrap(), bytes);

    // Also when the device is gone, and for raw disks (whose descriptor names the device).
    ok(&vmkfs(d, &["-z", "lun.img", "p.vmdk"]));
    std::fs::rename(d.join("lun.img"), d.join("moved.img")).unwrap();
    ok(&vmkfs(d, &["-U", "p.vmdk"]));
    assert!(!d.join("p.vmdk").exists() && !d.join("p-rdmp.vmdk").exists());
    std::fs::write(d.join("src.img"), &bytes).unwrap();
    ok(&vmkfs(d, &["-i", "src.img", "-d", "raw:moved.img", "--force", "r.vmdk"]));
    ok(&vmkfs(d, &["-U", "r.vmdk"]));
    assert!(!d.join("r.vmdk").exists());
    assert_eq!(std::fs::read(d.join("moved.img")).unwrap(), bytes);

    // A descriptor whose "mapping file" is something else: nothing is deleted.
    ok(&vmkfs(d, &["-r", "moved.img", "x.vmdk"]));
    std::fs::write(d.join("x-rdm.vmdk"), b"precious data, not a mapping").unwrap();
    fail(&vmkfs(d, &["-U", "x.vmdk"]), 3);
    assert!(d.join("x.vmdk").exists());
    assert_eq!(std::fs::read(d.join("x-rdm.vmdk")).unwrap(), b"precious data, not a mapping");
    // Deleting the mapping file itself is refused (its descriptor would be left naming nothing).
    ok(&vmkfs(d, &["-r", "moved.img", "--force", "x.vmdk"]));
    fail(&vmkfs(d, &["-U", "x-rdm.vmdk"]), 3);
    assert!(d.join("x-rdm.vmdk").exists());
}

#[test]
fn a_device_in_use_for_writing_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("lun.img"), noise(1 << 20, 8)).unwrap();
    ok(&vmkfs(d, &["-r", "lun.img", "vm.vmdk"]));
    let held = vmkfs::vmdk::Link::open(d.join("vm.vmdk"), &vmkfs::vmdk::OpenOptions::write()).unwrap();
    let e = fail(&vmkfs(d, &["-i", "vm.vmdk", "-d", "rdm:lun.img", "--force", "other.vmdk"]), 5);
    assert!(e.contains("busy") || e.contains("locked"), "{e}");
    // Readers are locked out too while the writer holds the disk (they would read a disk that is
    // changing under them); the refusal names the holder.
    let e = fail(&vmkfs(d, &["--read-at", "0", "--length", "16", "vm.vmdk"]), 5);
    assert!(
        e.contains(&format!("locked by this process {}", std::process::id()))
            || e.contains(&format!("process {}", std::process::id())),
        "{e}"
    );
    drop(held);
    ok(&vmkfs(d, &["--read-at", "0", "--length", "16", "vm.vmdk"]));
}
