//! Hostile input: the real VMFS5 and VMFS6 images with bytes of their metadata (LVM header, volume
//! and PE tables, FS descriptor, resource headers, file descriptors, directories) overwritten at
//! random. Opening, listing and reading must return errors, never panic, hang or allocate wildly.

mod common;
mod vmfs_common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use common::XorShift;
use vmfs_common::real_image;
use vmkfs::vmfs::{DeviceRead, FileKind, HostDevice, ReadAt, VmfsError, Volume};

/// A device with some bytes replaced.
#[derive(Debug)]
struct Patched {
    base: HostDevice,
    patch: HashMap<u64, u8>,
}

impl ReadAt for Patched {
    type Error = VmfsError;
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<(), VmfsError> {
        self.base.read_exact_at(buf, offset)?;
        for (&at, &v) in &self.patch {
            if at >= offset && at - offset < buf.len() as u64 {
                buf[(at - offset) as usize] = v;
            }
        }
        Ok(())
    }
}

impl DeviceRead for Patched {
    fn path(&self) -> &Path {
        self.base.path()
    }
    fn len(&self) -> u64 {
        self.base.len()
    }
}

/// Corrupted images tried per real image.
const ROUNDS: usize = 1000;

fn walk(vol: &Volume, dir: &str, depth: usize, budget: &mut usize) {
    let Ok(list) = vol.list(dir) else { return };
    for (e, st) in list {
        if *budget == 0 {
            return;
        }
        *budget -= 1;
        let path = format!("{}/{}", dir.trim_end_matches('/'), e.name);
        if st.kind == FileKind::Directory && depth < 4 {
            walk(vol, &path, depth + 1, budget);
        } else if let Ok(f) = vol.open_file(&path) {
            let _ = f.extents(0, f.len().min(64 << 20));
            let mut buf = vec![0u8; 64 << 10];
            let _ = f.read_at(&mut buf, 0);
            let _ = f.read_at(&mut buf, f.len().saturating_sub(100));
        }
    }
}

fn hammer(name: &str, regions: &[(u64, u64)]) {
    let Some(img) = real_image(name) else { return };
    let mut x = XorShift(0x2545_F491_4F6C_DD1D);
    let mut rnd = || x.next_u64();
    let (mut opened, mut failed) = (0, 0);
    for _ in 0..ROUNDS {
        let mut patch = HashMap::new();
        for _ in 0..1 + rnd() % 4 {
            let (start, len) = regions[(rnd() % regions.len() as u64) as usize];
            let v = match rnd() % 4 {
                0 => 0,
                1 => 0xFF,
                _ => rnd() as u8,
            };
            patch.insert(start + rnd() % len, v);
        }
        let dev = Patched { base: HostDevice::open(&img).unwrap(), patch };
        match Volume::open_devices(vec![Arc::new(dev)]) {
            Ok(vol) => {
                opened += 1;
                let _ = vol.usage();
                let _ = vol.heartbeats();
                let mut budget = 200;
                walk(&vol, "/", 0, &mut budget);
            }
            Err(e) => {
                failed += 1;
                assert!(!e.to_string().is_empty());
            }
        }
    }
    eprintln!("{name}: {ROUNDS} corrupted images: {opened} opened and were walked, {failed} refused with an error");
}

#[test]
fn corrupted_vmfs5_metadata_never_panics() {
    let v = 0x110_0000u64; // the volume's first PE on the device
    hammer(
        "vmfs5.bin",
        &[
            (0x10_0000, 0x100),      // LVM header
            (0x10_0200, 0x100),      // volume table
            (0x18_0600, 0x80),       // PE entry
            (v + 0x20_0000, 0x180),  // FS descriptor
            (v + 0x40_0000, 0x40),   // .fdc.sf resource header
            (v + 0x42_0000, 0x4000), // root and system file descriptors
            (v + 0x50_0000, 0x1400), // root directory
            (v + 0x42_4000, 0x2000), // /directory's descriptors
        ],
    );
}

#[test]
fn corrupted_vmfs6_metadata_never_panics() {
    let v = 0x110_0000u64;
    hammer(
        "vmfs6.bin",
        &[
            (0x10_0000, 0x100),
            (0x10_1000, 0x100),
            (0x18_2000, 0x80),
            (v + 0x20_0000, 0x180),
            (v + 0x70_0000, 0x40),
            (v + 0x72_0000, 0x14000),
            (v + 0x80_0000, 0x12000), // root directory
        ],
    );
}
