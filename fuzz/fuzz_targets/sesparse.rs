//! seSparse files: constant and volatile headers, grain directory of table indexes, u64 table
//! entries of each type, through `Link::open` on an in-memory file, then the allocation map and
//! reads at chosen offsets.
#![no_main]

use std::path::PathBuf;

use libfuzzer_sys::fuzz_target;
use vmkfs_fuzz::{exercise, sesparse_file, MemStorage, DISK};

fuzz_target!(|data: &[u8]| {
    let storage = MemStorage::new([(PathBuf::from(DISK), sesparse_file(data))]);
    exercise(storage, data);
});
