//! The VMFS FS descriptor and resource-file headers: parsing, the derived geometry, and resource
//! offsets for every cluster/resource pair the input names. No panic, no overflow.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmkfs::vmfs::fsdesc::{FsDescriptor, VMFS_MAGIC};
use vmkfs::vmfs::geometry::Geometry;
use vmkfs::vmfs::resource::ResourceMeta;

fuzz_target!(|data: &[u8]| {
    let mut raw = data.to_vec();
    raw.resize(512, 0);
    if data.first().is_some_and(|b| b & 1 == 0) {
        raw[..4].copy_from_slice(&VMFS_MAGIC.to_le_bytes());
    }
    if let Ok(fs) = FsDescriptor::parse(&raw, "fuzz") {
        let g = Geometry::new(&fs);
        assert!(g.fd_data + g.fd_data_size <= g.fd_size as usize);
        assert!(g.fd_addrs + g.fd_addr_count * g.addr_width <= g.fd_size as usize);
        let _ = fs.version_text();
        let _ = g.pb_bytes();
    }
    for (vmfs6, hdr) in [(false, 1024u64), (true, 8192)] {
        if let Ok(m) = ResourceMeta::parse(data, vmfs6, hdr, "fuzz", 0) {
            for w in data.chunks(8).take(64) {
                let mut b = [0u8; 8];
                b[..w.len()].copy_from_slice(w);
                let v = u64::from_le_bytes(b);
                let _ = m.offset(v & 0xFFFF_FFFF, v >> 32);
                let _ = m.cluster_header_offset(v);
                let _ = m.num_clusters();
            }
        }
    }
});
