//! The sequential streamOptimized reader (`StreamReader`, what reads a stream from a pipe): the
//! header, the metadata before overHead (descriptor, directory and tables), then the marker walk
//! (grain, GT, GD, footer, end-of-stream and unknown markers) and the inflation of each grain.
//!
//! The same file is walked twice, from a byte slice read as a pipe (grain data read) and from an
//! in-memory file by position (grain data skipped, as `Link::open` does for a footer-less stream):
//! both must see the same grains and both succeed or both fail.
#![no_main]

use std::path::{Path, PathBuf};

use libfuzzer_sys::fuzz_target;
use vmdk::extent::stream::sequential::{BackingCursor, Pipe, SeqRead, StreamReader};
use vmdk::Storage;
use vmkfs_fuzz::{kdmv_file, MemStorage, DISK};

/// Grains larger than this are walked but not inflated (the output buffer would dominate a run).
const MAX_INFLATE: u64 = 1 << 20;

fn walk<S: SeqRead>(src: S, inflate: bool) -> (Vec<(u64, u64)>, bool) {
    let mut seen = Vec::new();
    let Ok(mut r) = StreamReader::with_data(src, Path::new(DISK), inflate) else {
        return (seen, false);
    };
    let gb = r.grain_bytes();
    let mut out = vec![0u8; if inflate && gb <= MAX_INFLATE { gb as usize } else { 0 }];
    let mut last_at = 0;
    loop {
        match r.next_grain() {
            Ok(Some(g)) => {
                assert!(g.lba < r.header().capacity && g.lba % r.header().grain_size == 0, "{g:?}");
                assert!(g.at >= last_at && g.at % 512 == 0, "markers go forward on sector boundaries");
                last_at = g.at + 512;
                if !out.is_empty() {
                    let _ = r.inflate(&g, &mut out);
                }
                seen.push((g.lba, g.at));
            }
            Ok(None) => return (seen, true),
            Err(_) => return (seen, false),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let file = kdmv_file(data, true);
    let (piped, ok_piped) = walk(Pipe::new(&file[..], "<fuzz>"), true);
    let storage = MemStorage::new([(PathBuf::from(DISK), file)]);
    let Ok(backing) = storage.open(Path::new(DISK), false) else { return };
    let Ok(cursor) = BackingCursor::new(backing) else { return };
    let (indexed, ok_indexed) = walk(cursor, false);
    assert_eq!(piped, indexed, "the pipe and the file walks see different grains");
    assert_eq!(ok_piped, ok_indexed, "one walk failed and the other did not");
});
