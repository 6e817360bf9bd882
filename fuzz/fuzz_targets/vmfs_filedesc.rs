//! VMFS file descriptors: the metadata, the block-pointer array, resident data and RDM ids, parsed
//! with the VMFS5 or VMFS6 layout (first input byte), and every pointer decoded as an address.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmkfs::vmfs::address::Addr;
use vmkfs::vmfs::filedesc::FileDesc;
use vmkfs::vmfs::fsdesc::{FsDescriptor, VMFS_MAGIC};
use vmkfs::vmfs::geometry::Geometry;

fn geometry(v6: bool, md: u32) -> Option<Geometry> {
    let mut sd = vec![0u8; 512];
    sd[..4].copy_from_slice(&VMFS_MAGIC.to_le_bytes());
    sd[4..8].copy_from_slice(&(if v6 { 24u32 } else { 14 }).to_le_bytes());
    sd[0xA1..0xA9].copy_from_slice(&(1u64 << 20).to_le_bytes());
    sd[0xD5..0xD9].copy_from_slice(&8u32.to_le_bytes());
    sd[0xD9..0xDD].copy_from_slice(&(if v6 { 65536u32 } else { 8192 }).to_le_bytes());
    sd[0x134..0x138].copy_from_slice(&md.to_le_bytes());
    sd[0x138..0x13A].copy_from_slice(&9u16.to_le_bytes());
    FsDescriptor::parse(&sd, "fuzz").ok().map(|fs| Geometry::new(&fs))
}

fuzz_target!(|data: &[u8]| {
    let sel = data.first().copied().unwrap_or(0);
    let v6 = sel & 1 != 0;
    let md = 4096u32 << (sel >> 1 & 3);
    let Some(g) = geometry(v6, md) else { return };
    let mut raw = data.get(1..).unwrap_or(&[]).to_vec();
    raw.resize(g.fd_size as usize, 0);
    if let Ok(fd) = FileDesc::parse(&raw, &g, 1 << 30, "fuzz") {
        let _ = fd.full_mode();
        let _ = fd.allocated();
        let _ = fd.is_dir();
        assert!(fd.blocks.len() <= g.fd_addr_count);
        assert!(fd.resident.len() <= g.fd_data_size);
        for &b in &fd.blocks {
            let _ = if v6 { Addr::decode64(b) } else { Addr::decode32(b as u32, sel & 8 != 0) };
        }
        if let Some(r) = &fd.rdm {
            let _ = r.describe();
        }
    }
});
