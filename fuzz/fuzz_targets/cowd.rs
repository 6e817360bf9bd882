//! vmfsSparse / COWD files: header, grain directory, 4096- or 512-entry tables, grains, through
//! `Link::open` on an in-memory file, then the allocation map and reads at chosen offsets.
#![no_main]

use std::path::PathBuf;

use libfuzzer_sys::fuzz_target;
use vmkfs_fuzz::{cowd_file, exercise, MemStorage, DISK};

fuzz_target!(|data: &[u8]| {
    let storage = MemStorage::new([(PathBuf::from(DISK), cowd_file(data))]);
    exercise(storage, data);
});
