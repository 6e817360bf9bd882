//! VMFS directories: the flat VMFS3/5 records, and the VMFS6 hashed layout (header, allocation-map
//! blocks, directory-entry blocks with their slot bitmaps) with a block size chosen by the first byte.
//! The input overlays the 64 KiB VMFS6 header's first bytes and then the blocks after it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmkfs::vmfs::dir::{parse_flat, parse_v6, V6_HEADER};

fuzz_target!(|data: &[u8]| {
    let _ = parse_flat(data);
    let sel = data.first().copied().unwrap_or(0);
    let block = 512usize << (sel & 3);
    let body = data.get(1..).unwrap_or(&[]);
    let (head, blocks) = body.split_at(body.len().min(0x600));
    let nblocks = blocks.len().div_ceil(block).max(1);
    let mut d = vec![0u8; V6_HEADER + nblocks * block];
    d[..head.len()].copy_from_slice(head);
    if sel & 4 == 0 {
        d[..4].copy_from_slice(&0xF5_0001u32.to_le_bytes());
    }
    d[V6_HEADER..V6_HEADER + blocks.len()].copy_from_slice(blocks);
    if let Ok(entries) = parse_v6(&d, block, "fuzz", 0) {
        let count = u32::from_le_bytes(d[4..8].try_into().unwrap_or_default()) as usize;
        assert!(entries.len() <= count, "never more entries than the header counts");
    }
});
