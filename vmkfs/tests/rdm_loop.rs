//! Raw device mappings over real block devices: loop devices (`losetup`). Where the machine does
//! not allow them (no root, no `/dev/loop-control`, a container without loop devices) each test
//! prints why and returns.
//!
//! Covered: cloning onto a device full of random bytes (the first N bytes become exactly the
//! source's, checked through our reader and by reading the device node), finding the device again
//! by its identity after it moved to another node, refusing a different device at the recorded
//! node (a real identity mismatch: two loop devices) and a device that shrank, each error naming
//! expected and found, and `-U` leaving the device's bytes intact.

mod common;

use common::*;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// Loop devices are a machine-wide resource: one test at a time in this binary.
static LOOPS: Mutex<()> = Mutex::new(());

/// Standard output of a successful run, as bytes.
fn bytes(o: &Outcome) -> Vec<u8> {
    ok(o);
    o.stdout.clone()
}

/// An attached loop device, detached on drop.
struct Loop {
    dev: String,
}

impl Loop {
    /// Attaches `file` to the first free loop device; `None` (after saying why) where the machine
    /// does not allow it.
    fn attach(file: &Path) -> Option<Loop> {
        if !Path::new("/dev/loop-control").exists() {
            eprintln!("SKIP: /dev/loop-control does not exist (no loop devices here)");
            return None;
        }
        match Command::new("losetup").arg("-f").arg("--show").arg(file).output() {
            Ok(o) if o.status.success() => Some(Loop { dev: String::from_utf8_lossy(&o.stdout).trim().to_string() }),
            Ok(o) => {
                eprintln!("SKIP: losetup refused: {}", String::from_utf8_lossy(&o.stderr).trim());
                None
            }
            Err(e) => {
                eprintln!("SKIP: cannot run losetup: {e}");
                None
            }
        }
    }

    /// Attaches `file` at a given node (retrying while a detach there completes).
    fn attach_at(dev: &str, file: &Path) -> Loop {
        for _ in 0..100 {
            let o = Command::new("losetup").arg(dev).arg(file).output().expect("run losetup");
            if o.status.success() {
                return Loop { dev: dev.to_string() };
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("cannot attach {} at {dev}", file.display());
    }

    fn detach(self) -> String {
        let dev = self.dev.clone();
        drop(self);
        // Wait until the node is really free (the kernel may finish a detach asynchronously).
        for _ in 0..100 {
            let o = Command::new("losetup").arg(&dev).output();
            if o.is_ok_and(|o| !o.status.success()) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        dev
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).output();
    }
}

fn image(dir: &Path, name: &str, len: usize, seed: u64) -> (PathBuf, Vec<u8>) {
    let p = dir.join(name);
    let data = noise(len, seed);
    std::fs::write(&p, &data).unwrap();
    (p, data)
}

/// Reads the first `n` bytes of a device node directly.
fn read_node(dev: &str, n: usize) -> Vec<u8> {
    use std::io::Read;
    let mut v = vec![0u8; n];
    std::fs::File::open(dev).unwrap().read_exact(&mut v).unwrap();
    v
}

#[test]
fn clone_onto_a_loop_device_full_of_random_bytes() {
    let _g = LOOPS.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (lun, _) = image(d, "lun.img", 8 << 20, 0);
    let before = noise(8 << 20, 21);
    let Some(l) = Loop::attach(&lun) else { return };
    // The source: data, zero gaps, data in a thin disk.
    let mut src = vec![0u8; 5 << 20];
    src[..1 << 20].copy_from_slice(&noise(1 << 20, 5));
    src[(3 << 20) + 4096..(3 << 20) + 8192].fill(0x77);
    src[(5 << 20) - 512..].fill(0x11);
    std::fs::write(d.join("src.raw"), &src).unwrap();
    ok(&vmkfs(d, &["-i", "src.raw", "-d", "thin", "src.vmdk"]));

    for (mode, suffix) in [("rdm", "-rdm.vmdk"), ("rdmp", "-rdmp.vmdk"), ("raw", "")] {
        // Random bytes again on the device before each clone (through the node, so the device's
        // page cache and the backing file agree).
        {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new().write(true).open(&l.dev).unwrap();
            f.write_all(&before).unwrap();
            f.sync_all().unwrap();
        }
        let dst = format!("dst-{mode}.vmdk");
        ok(&vmkfs(d, &["-i", "src.vmdk", "-d", &format!("{mode}:{}", l.dev), &dst]));
        let node = read_node(&l.dev, 8 << 20);
        assert!(node[..src.len()] == src[..], "{mode}: device differs from the source");
        assert!(node[src.len()..] == before[src.len()..], "{mode}: bytes past the source changed");
        let extra = if mode == "raw" { "--allow-outside-paths" } else { "--json" };
        let out = vmkfs(d, &["--read-at", "0", "--length", &src.len().to_string(), extra, &dst]);
        assert!(bytes(&out) == src, "{mode}: our reader disagrees");
        if !suffix.is_empty() {
            let q = ok(&vmkfs(d, &["-q", &dst]));
            assert!(q.contains(&format!("Maps to: {}\n", l.dev)), "{q}");
            assert!(q.contains(&format!("Loop backing file: {}", lun.display())), "{q}");
            assert!(q.contains("Device: block device, 8388608 bytes"), "{q}");
            assert!(d.join(format!("dst-{mode}{suffix}")).exists());
        }
        let text = std::fs::read_to_string(d.join(&dst)).unwrap();
        assert!(text.contains("RW 16384 VMFS"), "{text}");
    }
    // The backing file holds what the device showed.
    assert!(std::fs::read(&lun).unwrap()[..src.len()] == src[..]);
}

#[test]
fn identity_follows_the_device_and_refuses_another() {
    let _g = LOOPS.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (a, a_bytes) = image(d, "a.img", 4 << 20, 1);
    let (b, b_bytes) = image(d, "b.img", 4 << 20, 2);
    let Some(la) = Loop::attach(&a) else { return };
    let node = la.dev.clone();
    ok(&vmkfs(d, &["-r", &node, "vm.vmdk"]));
    let q = ok(&vmkfs(d, &["-q", "vm.vmdk"]));
    assert!(q.contains(&format!("Loop backing file: {}", a.display())), "{q}");
    let node = la.detach();

    // Another device at the recorded node: a real identity mismatch, refused naming both.
    let lb = Loop::attach_at(&node, &b);
    let e = fail(&vmkfs(d, &["--read-at", "0", "--length", "4096", "vm.vmdk"]), 3);
    assert!(e.contains(&node) && e.contains("loop backing file"), "{e}");
    assert!(e.contains(&format!("expected {:?}", a.display().to_string())), "{e}");
    assert!(e.contains(&format!("found {:?}", b.display().to_string())), "{e}");
    let e = fail(&vmkfs(d, &["--write-at", "0", "vm.vmdk"]), 3);
    assert!(e.contains("is not the mapped device"), "{e}");
    assert!(read_node(&lb.dev, 4 << 20) == b_bytes, "the other device was changed");

    // The mapped device attached at another node: found by its identity, not by the stale path.
    let Some(la2) = Loop::attach(&a) else { return };
    assert_ne!(la2.dev, node);
    let q = ok(&vmkfs(d, &["-q", "vm.vmdk"]));
    assert!(q.contains(&format!("Status: device found at {}", la2.dev)), "{q}");
    let out = vmkfs(d, &["--read-at", "0", "--length", "65536", "vm.vmdk"]);
    assert!(bytes(&out) == a_bytes[..65536]);
    drop(la2);
    drop(lb);

    // Shrunk: the same backing file, now smaller, refused naming both sizes.
    let f = std::fs::OpenOptions::new().write(true).open(&a).unwrap();
    f.set_len(2 << 20).unwrap();
    drop(f);
    let Some(small) = Loop::attach(&a) else { return };
    let e = fail(&vmkfs(d, &["--info", "vm.vmdk"]), 3);
    assert!(e.contains("size: expected 4194304 bytes, found 2097152 bytes"), "{e}");
    assert!(e.contains(&small.dev), "{e}");
    drop(small);
}

#[test]
fn delete_leaves_the_loop_device_intact() {
    let _g = LOOPS.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (a, bytes) = image(d, "a.img", 2 << 20, 9);
    let Some(l) = Loop::attach(&a) else { return };
    ok(&vmkfs(d, &["-z", &l.dev, "p.vmdk"]));
    let q = ok(&vmkfs(d, &["-q", "p.vmdk"]));
    assert!(q.starts_with("Disk p.vmdk is a Passthrough Raw Device Mapping\n"), "{q}");
    ok(&vmkfs(d, &["-U", "p.vmdk"]));
    assert!(!d.join("p.vmdk").exists() && !d.join("p-rdmp.vmdk").exists());
    assert!(read_node(&l.dev, 2 << 20) == bytes);
    assert!(Path::new(&l.dev).exists());
}
