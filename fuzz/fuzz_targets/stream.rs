//! streamOptimized (compressed) `KDMV` files: header, footer, grain directory and tables, grain
//! markers and inflation, through `Link::open` on an in-memory file, then the allocation map and
//! reads at chosen offsets.
#![no_main]

use std::path::PathBuf;

use libfuzzer_sys::fuzz_target;
use vmkfs_fuzz::{exercise, kdmv_file, MemStorage, DISK};

fuzz_target!(|data: &[u8]| {
    let file = kdmv_file(data, true);
    let storage = MemStorage::new([(PathBuf::from(DISK), file)]);
    exercise(storage, data);
});
