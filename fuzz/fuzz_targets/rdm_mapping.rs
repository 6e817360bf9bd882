//! RDM mapping files (`NAME-rdm.vmdk`, `rdm/FORMAT.md`): `Mapping::parse` on arbitrary bytes, and
//! on the same bytes with their last four replaced by the right CRC-32 (so inputs get past the
//! checksum to the header and field checks). A record that parses must encode to bytes that parse
//! back to an equal record, and compare equal to itself as an identity.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use rdm::Mapping;

const PATH: &str = "/fuzz/vm-rdm.vmdk";

fn check(bytes: &[u8]) {
    let _ = Mapping::looks_like_mapping(bytes);
    let Ok(m) = Mapping::parse(bytes, Path::new(PATH)) else { return };
    let out = m.encode();
    assert!(out.len() <= bytes.len(), "encoding grew the record: {} > {}", out.len(), bytes.len());
    let again = Mapping::parse(&out, Path::new(PATH))
        .unwrap_or_else(|e| panic!("an encoded record does not parse: {e}\n{m:?}"));
    assert_eq!(again, m, "the encoded record parses to a different mapping");
    assert!(m.identity.differences(&again.identity).is_empty());
    let _ = m.identity.summary();
    let _ = m.identity.is_stable();
}

fuzz_target!(|data: &[u8]| {
    check(data);
    if data.len() >= 4 {
        let mut fixed = data.to_vec();
        let n = fixed.len() - 4;
        let crc = crc32fast::hash(&fixed[..n]);
        fixed[n..].copy_from_slice(&crc.to_le_bytes());
        check(&fixed);
    }
});
