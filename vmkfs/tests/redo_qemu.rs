//! qemu-img, an independent reader, sees our REDO chains as we do: a 3-link chain in the modern
//! ESX shape (vmfsSparse descriptor + COWD delta) and in the hosted shape (monolithicSparse
//! children) read the same through `qemu-img compare`, and `qemu-img info --backing-chain` lists
//! every link.

mod common;

use common::*;

use std::path::Path;

use vmkfs::redo::Chain;
use vmkfs::vmdk::create::{create, CreateOptions};
use vmkfs::vmdk::{DiskFormat, OpenOptions};

const CAP: u64 = 5 << 20;

/// Writes `len` bytes at `at` to the top of the chain at `top`, in `model` too (zeros when `seed` is 0).
fn write(dir: &Path, top: &str, model: &mut [u8], at: u64, len: usize, seed: u64) {
    let mut buf = vec![0u8; len];
    if seed != 0 {
        fill(&mut buf, seed);
    }
    let chain = Chain::open(dir.join(top), &OpenOptions::write()).unwrap();
    chain.write_at(&buf, at).unwrap();
    chain.close().unwrap();
    model[at as usize..at as usize + len].copy_from_slice(&buf);
}

fn three_links(fmt: DiskFormat) {
    if !have_qemu() {
        eprintln!("qemu-img not found: skipping the qemu-img chain checks for {}", fmt.name());
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    create(d.join("base.vmdk"), &CreateOptions::new(fmt, CAP)).unwrap().commit().unwrap();
    let mut model = vec![0u8; CAP as usize];
    // The base: data at unaligned places, including the last sector.
    write(d, "base.vmdk", &mut model, 100_000, 900_000, 1);
    write(d, "base.vmdk", &mut model, CAP - 4096, 4096, 2);
    let s1 = snapshot(d, "base.vmdk", false);
    write(d, &s1, &mut model, 65_536 - 1000, 70_000, 3); // across grain boundaries
    write(d, &s1, &mut model, 300_000, 50_000, 0); // zeros over base data
    write(d, &s1, &mut model, (2 << 20) - 7, 5000, 4); // across a COWD grain table boundary
    let s2 = snapshot(d, &s1, false);
    write(d, &s2, &mut model, 310_000, 1000, 5);
    write(d, &s2, &mut model, (4 << 20) + 3, 300_000, 6);
    write(d, &s2, &mut model, CAP - 512, 512, 0);
    if fmt.is_esx() {
        for s in [&s1, &s2] {
            let text = std::fs::read_to_string(d.join(s)).unwrap();
            assert!(text.contains("createType=\"vmfsSparse\"") && text.contains("VMFSSPARSE"), "{text}");
        }
    }
    // We read what the model says...
    let chain = Chain::open(d.join(&s2), &OpenOptions::read()).unwrap();
    assert_eq!(chain.links().len(), 3);
    let mut ours = vec![0u8; CAP as usize];
    chain.read_at(&mut ours, 0).unwrap();
    drop(chain);
    assert!(ours == model, "our read of the chain differs from the model");
    std::fs::write(d.join("expected.raw"), &model).unwrap();
    // ...and so does qemu, at the top and at the middle link.
    let o = qemu_img(d, &["compare", "-f", "vmdk", "-F", "raw", &s2, "expected.raw"]);
    assert!(
        o.status.success(),
        "qemu-img compare {s2}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let o = qemu_img(d, &["compare", &s2, "base.vmdk"]);
    assert_eq!(o.status.code(), Some(1), "the top differs from the base: {}", String::from_utf8_lossy(&o.stdout));
    // qemu lists the whole chain.
    let o = qemu_img(d, &["info", "--backing-chain", "--output=json", &s2]);
    assert!(o.status.success(), "qemu-img info: {}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let names: Vec<String> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|i| Path::new(i["filename"].as_str().unwrap()).file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec![s2.clone(), s1.clone(), "base.vmdk".to_string()]);
    for i in v.as_array().unwrap() {
        assert_eq!(i["virtual-size"], CAP, "{i}");
    }
    // Committing the middle link re-points the top at the base; qemu still reads the same data.
    let o = vmkfs(d, &["-m", &s1]);
    assert!(o.status.success(), "-m {s1}: {}", String::from_utf8_lossy(&o.stderr));
    assert!(!d.join(&s1).exists());
    let o = qemu_img(d, &["compare", "-f", "vmdk", "-F", "raw", &s2, "expected.raw"]);
    assert!(
        o.status.success(),
        "qemu-img compare after commit: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let o = qemu_img(d, &["info", "--backing-chain", "--output=json", &s2]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2, "{v}");
}

#[test]
fn qemu_reads_esx_delta_chain() {
    three_links(DiskFormat::Thin);
}

#[test]
fn qemu_reads_esx_delta_chain_on_zeroedthick() {
    three_links(DiskFormat::ZeroedThick);
}

#[test]
fn qemu_reads_hosted_chain() {
    three_links(DiskFormat::MonoSparse);
}

#[test]
fn qemu_reads_hosted_chain_on_2gbsparse() {
    three_links(DiskFormat::TwoGbSparse);
}
