//! Hosted sparse `KDMV` files: header, embedded descriptor, grain directory (and redundant copy),
//! tables, zeroed-grain entries, through `Link::open` on an in-memory file, then the allocation
//! map and reads at chosen offsets; then a write (grain allocation and table updates on a possibly
//! corrupt file) and the reads again.
#![no_main]

use std::path::PathBuf;

use libfuzzer_sys::fuzz_target;
use vmkfs_fuzz::{byte, check_range, chosen_ranges, exercise, kdmv_file, options, MemStorage, DISK};

fuzz_target!(|data: &[u8]| {
    let file = kdmv_file(data, false);
    let storage = MemStorage::new([(PathBuf::from(DISK), file)]);
    let Some(link) = exercise(storage.clone(), data) else {
        return;
    };
    // Writes allocate whole grains: keep them to grains of at most 64 KiB so an execution stays small.
    let small = link.extents().iter().all(|e| e.grain.unwrap_or(0) <= 64 << 10);
    drop(link);
    if !small {
        return;
    }
    let Ok(link) = vmdk::Link::open(DISK, &options(storage, true)) else {
        return;
    };
    let cap = link.capacity();
    let fill = byte(data, 7);
    for (off, len) in chosen_ranges(data, cap).into_iter().take(2) {
        let len = len.min(3 * 4096);
        if link.write_at(&vec![fill; len as usize], off).is_ok() {
            check_range(&link, off, len);
        }
    }
    let _ = link.flush();
    let _ = link.close();
});
