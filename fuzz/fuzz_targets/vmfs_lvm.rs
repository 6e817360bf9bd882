//! VMFS LVM metadata: the device header at 1 MiB, the volume table and the PE table, then the logical
//! volume assembled from it and reads across it. The input is the header (512 bytes), one volume
//! entry (512 bytes) and PE entries, placed where an LVM of the header's version keeps them, unless it
//! is a whole device image (starting with 1 MiB of anything, then the magic).
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use vmkfs::vmfs::lvm::{DeviceHeader, LogicalVolume, Member};
use vmkfs::vmfs::partition::{self, Partition};
use vmkfs::vmfs::{DeviceRead, MemDevice, ReadAt, Volume};

const H: usize = 0x10_0000;

fn device(data: &[u8]) -> Vec<u8> {
    if data.len() > H + 4 && data[H..H + 4] == 0xC001_D00Du32.to_le_bytes() {
        return data.to_vec();
    }
    let mut dev = vec![0u8; H + 0x18_4000];
    let head = &data[..data.len().min(512)];
    dev[H..H + head.len()].copy_from_slice(head);
    dev[H..H + 4].copy_from_slice(&0xC001_D00Du32.to_le_bytes());
    let major = u32::from_le_bytes(dev[H + 4..H + 8].try_into().unwrap_or_default());
    let md = if major >= 6 {
        let m = u32::from_le_bytes(dev[H + 0xCA..H + 0xCE].try_into().unwrap_or_default()) as usize;
        if m.is_power_of_two() && (512..=4096).contains(&m) {
            m
        } else {
            4096
        }
    } else {
        512
    };
    let vol = data.get(512..1024).unwrap_or(&[]);
    dev[H + md..H + md + vol.len()].copy_from_slice(vol);
    let bitmap = if major >= 6 { md.max(1024) } else { 1024 };
    let pe = H + md + 0x80000 + bitmap;
    let rest = data.get(1024..).unwrap_or(&[]);
    let n = rest.len().min(dev.len() - pe);
    dev[pe..pe + n].copy_from_slice(&rest[..n]);
    dev
}

fuzz_target!(|data: &[u8]| {
    let dev: Arc<dyn DeviceRead> = Arc::new(MemDevice::new("/fuzz/lvm.img", device(data)));
    let _ = partition::find(dev.as_ref());
    let part = Partition { start: 0, len: dev.len(), number: 0 };
    if let Ok(header) = DeviceHeader::read(dev.as_ref(), &part) {
        let m = Member { dev: dev.clone(), partition: part, header };
        if let Ok(lv) = LogicalVolume::assemble(vec![m]) {
            let size = lv.size;
            for (off, len) in [(0, 4096), (size.saturating_sub(100), 200), (size / 2, 1 << 20)] {
                if let Ok(segs) = lv.locate(off, len) {
                    let total: u64 = segs.iter().map(|s| s.len).sum();
                    assert_eq!(total, len.min(size.saturating_sub(off)).min(len), "locate covers the range");
                }
                let mut buf = vec![0u8; len.min(1 << 20) as usize];
                let _ = lv.read_exact_at(&mut buf, off);
            }
        }
    }
    let _ = Volume::open_devices(vec![dev]);
});
