//! Descriptor text: `Descriptor::parse` on arbitrary (lossily decoded) bytes, and the canonical
//! writer's round trip; then the same bytes as a separate descriptor file opened through
//! `Link::open`, next to a few extent files it may name.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use vmdk::descriptor::{looks_like_descriptor, MAX_DESCRIPTOR_BYTES};
use vmdk::Descriptor;
use vmkfs_fuzz::{exercise, kdmv_file, MemStorage, DISK};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let path = Path::new(DISK);
    let _ = looks_like_descriptor(data);
    if let Ok(d) = Descriptor::parse(&text, path) {
        let _ = d.total_sectors();
        let _ = d.ddb("adapterType");
        let _ = d.header("isNativeSnapshot");
        let out = d.to_text();
        // The canonical text may be longer than the input (it adds quotes, spaces and comments), so
        // an input just under the size limit can produce text just over it: not a round-trip bug.
        if out.len() <= MAX_DESCRIPTOR_BYTES {
            let again = Descriptor::parse(&out, path)
                .unwrap_or_else(|e| panic!("canonical text does not parse: {e}\n--- text ---\n{out}"));
            // The writer puts `isNativeSnapshot` just before `createType`, where ESXi writes it, so
            // it moves ahead of other extra header keys. The order of header keys carries no meaning
            // (only the database and extent order do), so compare with the writer's order.
            let mut d = d.clone();
            d.header_extra.sort_by_key(|e| !e.key.eq_ignore_ascii_case("isNativeSnapshot"));
            assert_eq!(d, again, "canonical text parses to a different descriptor\n--- text ---\n{out}");
            assert_eq!(again.to_text(), out, "writing is not idempotent");
        }
        let mut d = d;
        d.set_cid(0x1234_5678);
        d.set_ddb("longContentID", "00000000000000000000000012345678");
        d.remove_ddb("uuid");
    }

    // The same bytes as a separate descriptor, with a flat file, a small sparse file and the
    // descriptor itself available to be named by its extent lines.
    let dir = Path::new(DISK).parent().unwrap_or(Path::new("/"));
    static FLAT: OnceLock<Vec<u8>> = OnceLock::new();
    let flat = FLAT.get_or_init(|| (0..64 * 1024u32).map(|i| (i % 251) as u8).collect()).clone();
    let storage = MemStorage::new([
        (PathBuf::from(DISK), data.to_vec()),
        (dir.join("flat.bin"), flat),
        (dir.join("sparse.vmdk"), kdmv_file(&[3, 5, 0, 16, 0, 0, 0, 0], false)),
    ]);
    exercise(storage, data);
});
