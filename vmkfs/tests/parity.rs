//! vmkfstools parity (cli.md "More vmkfstools letters"): `-v N`, `-c -d streamoptimized`, sizes in
//! sectors and bytes, ESX descriptors shaped as ESXi writes them (checked against ESXi-made
//! descriptors), `--chainConsistent`, `-D`, `--uniqueblocks`, `--since-map` and `--copy-out`
//! (checked against dissect.vmfs and debugvmfs on the real images of `../shared`).

mod common;
mod vmfs_common;

use std::path::Path;

use common::*;

// ---------------------------------------------------------------------------------------------
// Sizes, -c -d streamoptimized, -v
// ---------------------------------------------------------------------------------------------

#[test]
fn sizes_take_sectors_and_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    vmkfs_ok(d, &["-c", "2048s", "-d", "thin", "s.vmdk"]);
    vmkfs_ok(d, &["-c", "1048576b", "-d", "thin", "b.vmdk"]);
    vmkfs_ok(d, &["-c", "1048576", "-d", "thin", "n.vmdk"]);
    for disk in ["s.vmdk", "b.vmdk", "n.vmdk"] {
        assert_eq!(info_json(d, disk)["capacity"], MIB, "{disk}");
    }
    let o = vmkfs(d, &["-c", "100b", "x.vmdk"]);
    assert_eq!(o.code(), Some(2), "{}", o.describe());
    assert!(o.err().contains("multiple of 512"), "{}", o.describe());
    let o = vmkfs(d, &["-c", "10q", "x.vmdk"]);
    assert!(o.code() == Some(2) && o.err().contains("use b, s, k, m, g or t"), "{}", o.describe());
    // Offsets take them too.
    write_at(d, "s.vmdk", 512, b"sector one");
    assert_eq!(vmkfs(d, &["--read-at", "1s", "--length", "10b", "s.vmdk"]).stdout, b"sector one");
}

#[test]
fn create_makes_an_empty_stream_qemu_reads() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    vmkfs_ok(d, &["-c", "10m", "-d", "streamoptimized", "s.vmdk"]);
    let i = info_json(d, "s.vmdk");
    assert_eq!(i["format"], "streamOptimized");
    assert_eq!(i["capacity"], 10 * MIB);
    assert_eq!(i["allocated"], 0);
    assert_eq!(read_at(d, "s.vmdk", 0, 10 * MIB), vec![0u8; (10 * MIB) as usize]);
    assert!(vmkfs(d, &["-x", "check", "s.vmdk"]).success());
    // Never over an existing disk without --force.
    assert_eq!(vmkfs(d, &["-c", "10m", "-d", "streamoptimized", "s.vmdk"]).code(), Some(2));
    if !have_tool("qemu-img") {
        return skip("qemu-img is not installed: the stream is not checked by qemu");
    }
    let o = qemu_img(d, &["info", "--output=json", "s.vmdk"]);
    assert!(o.success(), "{}", o.describe());
    let q: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(q["virtual-size"], 10 * MIB);
    assert_eq!(q["format-specific"]["data"]["create-type"], "streamOptimized");
    assert!(qemu_img(d, &["check", "s.vmdk"]).success());
    let raw = d.join("s.raw");
    assert!(qemu_img(d, &["convert", "-O", "raw", "s.vmdk", "s.raw"]).success());
    assert_eq!(std::fs::read(raw).unwrap(), vec![0u8; (10 * MIB) as usize]);
}

#[test]
fn verbose_levels_add_detail() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    disk_with_data(d, "a.vmdk", "monosparse", 4 * MIB, 7);
    let quiet = vmkfs(d, &["-i", "a.vmdk", "-d", "thin", "q.vmdk"]);
    assert!(quiet.success() && quiet.err().is_empty(), "{}", quiet.describe());
    let one = vmkfs(d, &["-v", "1", "-i", "a.vmdk", "-d", "thin", "one.vmdk"]);
    assert!(one.success(), "{}", one.describe());
    let e = one.err();
    assert!(e.contains("link 0: a.vmdk [monolithicSparse] CID"), "{e}");
    assert!(e.contains("read ") && e.contains(" bytes, wrote "), "{e}");
    assert!(!e.contains("engine:") && !e.contains("depth 0:"), "{e}");
    let two = vmkfs(d, &["-v", "2", "-i", "a.vmdk", "-d", "thin", "two.vmdk"]).err();
    assert!(two.contains("engine: ") && two.contains("depth 0: "), "{two}");
    assert!(!two.contains("vmkfs: run "), "{two}");
    let three = vmkfs(d, &["-v", "3", "-e", "three.vmdk", "a.vmdk"]).err();
    // Every run of the map, as --map lists them.
    let runs = vmkfs_ok(d, &["--map", "a.vmdk"]).lines().count();
    assert_eq!(three.lines().filter(|l| l.starts_with("vmkfs: run ")).count(), runs, "{three}");
    // The data bytes reported are the disk's.
    let data = info_json(d, "a.vmdk")["allocated"].as_u64().unwrap();
    assert!(three.contains(&format!("depth 0: {data} bytes of data")), "{three}");
}

// ---------------------------------------------------------------------------------------------
// ESX descriptors as ESXi writes them
// ---------------------------------------------------------------------------------------------

/// The shape of a descriptor: its header keys in order, its extent line without the file name,
/// its DDB keys in order, and its DDB values.
#[derive(Debug)]
struct Shape {
    header: Vec<String>,
    extent: String,
    ddb: Vec<String>,
    values: std::collections::HashMap<String, String>,
}

fn shape(text: &str) -> Shape {
    let mut s = Shape { header: vec![], extent: String::new(), ddb: vec![], values: Default::default() };
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        if let Some((k, v)) = line.split_once('=') {
            let (k, v) = (k.trim().to_string(), v.trim().trim_matches('"').to_string());
            if k.starts_with("ddb.") {
                s.ddb.push(k.clone());
            } else {
                s.header.push(k.clone());
            }
            s.values.insert(k, v);
        } else {
            let f: Vec<&str> = line.split_whitespace().collect();
            s.extent = f[..3].join(" ");
        }
    }
    s
}

/// Creates the disk `reference` describes and checks that ours has its shape. `reference_has` are
/// `later_keys` are keys the reference has that creation does not write (added later by a VM's
/// tools); without `same_order` only the geometry, adapter and extent line are compared.
fn check_against(d: &Path, name: &str, reference: &str, later_keys: &[&str], same_order: bool) {
    let r = shape(reference);
    let sectors = r.extent.split_whitespace().nth(1).unwrap();
    let format =
        if r.values.get("ddb.thinProvisioned").map(String::as_str) == Some("1") { "thin" } else { "zeroedthick" };
    let adapter = &r.values["ddb.adapterType"];
    let disk = format!("{name}.vmdk");
    vmkfs_ok(d, &["-c", &format!("{sectors}s"), "-d", format, "-a", adapter, &disk]);
    let ours = shape(&std::fs::read_to_string(d.join(&disk)).unwrap());
    for k in ["ddb.geometry.cylinders", "ddb.geometry.heads", "ddb.geometry.sectors", "ddb.adapterType"] {
        assert_eq!(ours.values[k], r.values[k], "{name}: {k}");
    }
    assert_eq!(ours.extent, r.extent, "{name}: extent line");
    if !same_order {
        return;
    }
    assert_eq!(ours.header, r.header, "{name}: header keys");
    let theirs: Vec<String> = r.ddb.iter().filter(|k| !later_keys.contains(&k.as_str())).cloned().collect();
    assert_eq!(ours.ddb, theirs, "{name}: DDB keys and their order");
    let hw: u32 = ours.values["ddb.virtualHWVersion"].parse().unwrap();
    assert!(hw >= r.values["ddb.virtualHWVersion"].parse().unwrap(), "{name}: virtualHWVersion {hw}");
}

#[test]
fn esx_descriptors_are_shaped_as_esxi_writes_them() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/esxi");
    // testdata/README.md names where each comes from.
    let xo = std::fs::read_to_string(data.join("xo-thin-32g.vmdk")).unwrap();
    check_against(d, "xo", &xo, &["ddb.toolsVersion"], true);
    let sos = std::fs::read_to_string(data.join("sos-512m.vmdk")).unwrap();
    check_against(d, "sos", &sos, &[], true);
    // The geometry rule at its edges, for every adapter.
    for (size, heads, secs) in [("1023m", 64, 32), ("1024m", 128, 32), ("2046m", 128, 32), ("2047m", 255, 63)] {
        for a in ["lsilogic", "buslogic", "lsisas", "pvscsi"] {
            let disk = format!("g-{size}-{a}.vmdk");
            vmkfs_ok(d, &["-c", size, "-d", "thin", "-a", a, &disk]);
            let g = shape(&std::fs::read_to_string(d.join(&disk)).unwrap());
            let sectors = vmkfs::size::parse_size(size).unwrap() / 512;
            assert_eq!(g.values["ddb.geometry.heads"], heads.to_string(), "{disk}");
            assert_eq!(g.values["ddb.geometry.sectors"], secs.to_string(), "{disk}");
            assert_eq!(g.values["ddb.geometry.cylinders"], (sectors / (heads * secs)).to_string(), "{disk}");
        }
    }
    // ESX 3's own (in the real VMFS3 image): the same geometry and extent lines; ESX 3 wrote its
    // DDB keys in no fixed order, so only the values are compared.
    let Some(img) = vmfs_common::real_image("vmfs3.img") else { return };
    let img = img.display().to_string();
    for name in ["thin", "thick", "zeroedthick", "eagerzeroedthick"] {
        let src = format!("/{name}.vmdk");
        let copy = format!("esx3-{name}.txt");
        vmkfs_ok(d, &["--volume", &img, "--copy-out", &src, &copy]);
        let text = std::fs::read_to_string(d.join(&copy)).unwrap();
        let text = text.replace(&format!("\"{name}-flat.vmdk\""), &format!("\"esx3-{name}-flat.vmdk\""));
        check_against(d, &format!("esx3-{name}"), &text, &[], false);
    }
}

// ---------------------------------------------------------------------------------------------
// --chainConsistent, -D, --uniqueblocks, --since-map
// ---------------------------------------------------------------------------------------------

#[test]
fn chain_consistent_answers_for_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    create_disk(d, "base.vmdk", "thin", MIB);
    let top = snapshot(d, "base.vmdk", false);
    let o = vmkfs(d, &["--chainConsistent", &top]);
    assert!(o.success() && o.out().contains("Disk chain is consistent (2 link(s))"), "{}", o.describe());
    // -e stays --exportfile.
    let o = vmkfs(d, &["-e", "exported.vmdk", &top]);
    assert!(o.success() && d.join("exported.vmdk").exists(), "{}", o.describe());
    // The base's content identity changes under the child: broken.
    set_descriptor_cid(&d.join("base.vmdk"), "12345678");
    let o = vmkfs(d, &["--chainConsistent", "--json", &top]);
    assert_eq!(o.code(), Some(1), "{}", o.describe());
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["consistent"], false);
    assert!(j["broken"][0].as_str().unwrap().contains("CID"), "{j}");
}

#[test]
fn dump_shows_every_link() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    create_disk(d, "base.vmdk", "monosparse", 2 * MIB);
    let top = snapshot(d, "base.vmdk", false);
    let o = vmkfs(d, &["-D", "--json", &top]);
    assert!(o.success(), "{}", o.describe());
    let links: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(links.as_array().unwrap().len(), 2);
    assert_eq!(links[0]["parent_cid"], links[1]["cid"]);
    assert_eq!(links[1]["format"], "monolithicSparse");
    assert_eq!(links[1]["extents"][0]["grain"], 65536);
    assert_eq!(links[1]["extents"][0]["version"], 1);
    assert!(links[1]["descriptor"].as_str().unwrap().contains("createType=\"monolithicSparse\""));
    assert_eq!(links[0]["parent"], "base.vmdk");
    let text = vmkfs_ok(d, &["-D", &top]);
    assert!(text.contains("Link 1: base.vmdk") && text.contains("grain 65536 bytes, version 1"), "{text}");
}

#[test]
fn unique_blocks_count_what_only_the_child_holds() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // An ESX base: its child is a COWD delta of 512-byte grains.
    create_disk(d, "base.vmdk", "thin", 4 * MIB);
    write_pattern(d, "base.vmdk", 0, (64 * KIB) as usize, 1);
    let top = snapshot(d, "base.vmdk", false);
    // 4 KiB over the parent's data, 8 KiB where the parent has nothing.
    write_pattern(d, &top, 4096, 4096, 2);
    write_pattern(d, &top, MIB, 8192, 3);
    let j: serde_json::Value = serde_json::from_str(&vmkfs_ok(d, &["--json", "--uniqueblocks", &top])).unwrap();
    assert_eq!(j["held"], 12288, "{j}");
    assert_eq!(j["unique"], 8192, "{j}");
    // Counted from the base explicitly: the same.
    let j: serde_json::Value =
        serde_json::from_str(&vmkfs_ok(d, &["--json", "--uniqueblocks", &top, "base.vmdk"])).unwrap();
    assert_eq!(j["unique"], 8192, "{j}");
    let o = vmkfs(d, &["--uniqueblocks", "base.vmdk"]);
    assert_eq!(o.code(), Some(2), "a base has no parent: {}", o.describe());
}

#[test]
fn since_map_reads_back_a_saved_map() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    create_disk(d, "base.vmdk", "monosparse", 4 * MIB);
    let top = snapshot(d, "base.vmdk", false);
    write_pattern(d, &top, 0, 4096, 1);
    vmkfs_ok(d, &["--changed-blocks", "--save-map", "m.chg", &top]);
    // Saved with a header and a checksum.
    let bytes = std::fs::read(d.join("m.chg")).unwrap();
    assert_eq!(&bytes[..8], b"VMKFSCHG");
    let body = bytes.len() - 4;
    assert_eq!(crc32(&bytes[..body]).to_le_bytes(), bytes[body..]);
    assert_eq!(vmkfs_ok(d, &["--changed-blocks", "--since-map", "m.chg", &top]), "");
    write_pattern(d, &top, 2 * MIB + 96, 16, 2);
    write_pattern(d, &top, 8, 8, 3); // in a block the map already has
    let out = vmkfs_ok(d, &["--changed-blocks", "--since-map", "m.chg", &top]);
    assert_eq!(out, format!("{} {}", 2 * MIB, 64 * KIB));
    // A damaged map is refused naming the file and the byte.
    let mut bad = bytes.clone();
    bad[50] ^= 1;
    std::fs::write(d.join("bad.chg"), &bad).unwrap();
    let o = vmkfs(d, &["--changed-blocks", "--since-map", "bad.chg", &top]);
    assert_eq!(o.code(), Some(3), "{}", o.describe());
    assert!(o.err().contains("bad.chg") && o.err().contains("byte"), "{}", o.describe());
    // A map of another disk's size is refused.
    create_disk(d, "other.vmdk", "monosparse", 8 * MIB);
    let o = vmkfs(d, &["--changed-blocks", "--since-map", "m.chg", "other.vmdk"]);
    assert_eq!(o.code(), Some(3), "{}", o.describe());
}

/// CRC-32 (IEEE), bit by bit: an implementation independent of the one the map writer uses.
fn crc32(b: &[u8]) -> u32 {
    let mut c = !0u32;
    for &x in b {
        c ^= x as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 { (c >> 1) ^ 0xEDB8_8320 } else { c >> 1 };
        }
    }
    !c
}

// ---------------------------------------------------------------------------------------------
// --copy-out and -D --volume on the real images
// ---------------------------------------------------------------------------------------------

/// Every plain file of the real images, copied out: the bytes dissect.vmfs and debugvmfs read,
/// the exact size, the mtime.
#[test]
fn copy_out_matches_the_independent_readers() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for name in ["vmfs3.img", "vmfs5.bin", "vmfs6.bin"] {
        let Some(img) = vmfs_common::real_image(name) else { return };
        let devs = vec![img.display().to_string()];
        let vol = vmkfs::vmfs::Volume::open(&[&img]).unwrap();
        let files = vmfs_common::our_walk(&vol, 0);
        let mut checked = 0;
        for f in files.iter().filter(|f| f.kind == "file" || f.kind == "sysfile") {
            let dest = d.join(format!("{name}-{}", f.path.replace('/', "_")));
            let dest_s = dest.display().to_string();
            let o = vmkfs(d, &["--json", "--volume", &devs[0], "--copy-out", &f.path, &dest_s]);
            assert!(o.success(), "{name}{}: {}", f.path, o.describe());
            let meta = std::fs::metadata(&dest).unwrap();
            assert_eq!(meta.len(), f.size, "{name}{}: size", f.path);
            let mtime = meta.modified().unwrap().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
            assert_eq!(mtime, f.mtime as u64, "{name}{}: mtime", f.path);
            let ours = sha256_file(&dest);
            let tool = if name == "vmfs6.bin" { "debugvmfs6" } else { "debugvmfs" };
            let have = if name == "vmfs6.bin" { vmfs_common::have_debugvmfs6() } else { vmfs_common::have_debugvmfs() };
            if have && f.size <= 256 * MIB {
                let theirs = sha256_hex(&vmfs_common::debugvmfs_cat(tool, &devs, &f.path));
                assert_eq!(ours, theirs, "{name}{}: {tool} reads other bytes", f.path);
            }
            std::fs::remove_file(&dest).unwrap();
            checked += 1;
        }
        assert!(checked >= 4, "{name}: only {checked} files");
        if vmfs_common::have_dissect() {
            check_copy_out_against_dissect(d, name, &devs);
        }
    }
}

/// The files dissect.vmfs can read (it fails on VMFS3 file blocks), copied out, hash the same.
fn check_copy_out_against_dissect(d: &Path, name: &str, devs: &[String]) {
    let mut checked = 0;
    for e in vmfs_common::dissect_list(devs, 64 * MIB) {
        let (Some(path), Some(sha)) = (e["path"].as_str(), e["sha256"].as_str()) else { continue };
        if e["type"] != "file" {
            continue;
        }
        let dest = d.join("dissect-check");
        let dest_s = dest.display().to_string();
        vmkfs_ok(d, &["--force", "--volume", &devs[0], "--copy-out", path, &dest_s]);
        assert_eq!(sha256_file(&dest), sha, "{name}{path}: dissect.vmfs reads other bytes");
        let mtime = std::fs::metadata(&dest).unwrap().modified().unwrap();
        let mtime = mtime.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        assert_eq!(Some(mtime), e["mtime"].as_u64(), "{name}{path}: mtime");
        checked += 1;
    }
    eprintln!("{name}: {checked} files copied out agree with dissect.vmfs");
}

#[test]
fn copy_out_refuses_what_is_not_a_plain_file() {
    let Some(img) = vmfs_common::real_image("vmfs5.bin") else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let img = img.display().to_string();
    let o = vmkfs(d, &["--volume", &img, "--copy-out", "/directory", "out"]);
    assert_eq!(o.code(), Some(3), "{}", o.describe());
    assert!(!d.join("out").exists());
    let o = vmkfs(d, &["--volume", &img, "--copy-out", "/nonexistent", "out"]);
    assert!(!o.success() && !d.join("out").exists(), "{}", o.describe());
    // Never over an existing file without --force, and nothing left behind.
    std::fs::write(d.join("out"), b"keep").unwrap();
    let o = vmkfs(d, &["--volume", &img, "--copy-out", "/directory/file5", "out"]);
    assert!(o.code() == Some(2) && o.err().contains("already exists"), "{}", o.describe());
    assert_eq!(std::fs::read(d.join("out")).unwrap(), b"keep");
    vmkfs_ok(d, &["--force", "--volume", &img, "--copy-out", "/directory/file5", "out"]);
    assert_eq!(std::fs::metadata(d.join("out")).unwrap().len(), 8193);
    assert_eq!(listing(d), vec!["out".to_string()]);
}

/// `-D --volume`: the descriptor's address, size and mtime as dissect.vmfs lists them; block size,
/// allocated blocks and links as our reader's `-l`; the lock of an offline image.
#[test]
fn dump_of_a_volume_file_matches_dissect() {
    if !vmfs_common::have_dissect() {
        return;
    }
    for name in ["vmfs3.img", "vmfs5.bin", "vmfs6.bin"] {
        let Some(img) = vmfs_common::real_image(name) else { return };
        let devs = vec![img.display().to_string()];
        let vol = vmkfs::vmfs::Volume::open(&[&img]).unwrap();
        for e in vmfs_common::dissect_list(&devs, 0) {
            let path = e["path"].as_str().unwrap();
            if e.get("error").is_some() || e["type"] == "symlink" {
                continue;
            }
            let o = vmkfs(Path::new("."), &["--json", "--volume", &devs[0], "-D", path]);
            assert!(o.success(), "{name}{path}: {}", o.describe());
            let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
            assert_eq!(j["address"], format!("{:#x}", e["fd"].as_u64().unwrap()), "{name}{path}");
            assert_eq!(j["size"], e["size"], "{name}{path}");
            assert_eq!(j["mtime"], e["mtime"], "{name}{path}");
            assert_eq!(j["type"], e["type"], "{name}{path}");
            let st = vol.stat(path).unwrap();
            assert_eq!(j["links"], st.links, "{name}{path}");
            assert_eq!(j["block_size"], st.block_size, "{name}{path}");
            assert_eq!(j["allocated"], st.allocated, "{name}{path}");
            let mode = j["lock"]["mode"].as_u64().unwrap();
            assert!(mode <= 3, "{name}{path}: lock mode {mode}");
            assert!(j["lock"]["owner"].as_str().unwrap().len() == 35, "{name}{path}: {}", j["lock"]);
        }
    }
}
