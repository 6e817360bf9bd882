//! The one framing of the transaction home's small JSON files (intent records, repair backups):
//! a header line `MAGIC VERSION CRC32` and the pretty-printed JSON body the CRC covers, so a torn
//! or damaged file is refused rather than misread.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, Result};

/// `value` framed under `magic` and `version`.
pub fn seal<T: Serialize>(magic: &str, version: u32, value: &T) -> Vec<u8> {
    let body = serde_json::to_string_pretty(value).unwrap_or_default();
    format!("{magic} {version} {:08x}\n{body}\n", crc32fast::hash(body.as_bytes())).into_bytes()
}

/// The value framed in `raw` (read from `path`), or a corruption error naming `what` (`intent
/// record`, `repair backup`) and what did not hold.
pub fn unseal<T: DeserializeOwned>(raw: &[u8], path: &Path, magic: &str, version: u32, what: &str) -> Result<T> {
    let bad = |why: String| Error::corrupt(path, 0, format!("{what}: {why}"));
    let text = std::str::from_utf8(raw).map_err(|_| bad("not UTF-8".into()))?;
    let (head, body) = text.split_once('\n').ok_or_else(|| bad("no header line".into()))?;
    let f: Vec<&str> = head.split(' ').collect();
    if f.len() != 3 || f[0] != magic {
        return Err(bad(format!("header {head:?} is not `{magic} VERSION CRC`")));
    }
    if f[1] != version.to_string() {
        return Err(bad(format!("version {} is not {version}", f[1])));
    }
    let body = body.strip_suffix('\n').unwrap_or(body);
    let crc = u32::from_str_radix(f[2], 16).map_err(|_| bad(format!("CRC {:?} is not hex", f[2])))?;
    if crc != crc32fast::hash(body.as_bytes()) {
        return Err(bad(format!("CRC-32 does not match: the {what} is damaged")));
    }
    serde_json::from_str(body).map_err(|e| bad(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_damage() {
        let p = Path::new("x.intent");
        let raw = seal("VMKFSX", 1, &vec![1u32, 2, 3]);
        assert_eq!(unseal::<Vec<u32>>(&raw, p, "VMKFSX", 1, "intent record").unwrap(), vec![1, 2, 3]);
        let mut bad = raw.clone();
        let i = bad.len() - 4;
        bad[i] ^= 1;
        let e = unseal::<Vec<u32>>(&bad, p, "VMKFSX", 1, "intent record").unwrap_err().to_string();
        assert!(e.contains("the intent record is damaged"), "{e}");
        assert!(unseal::<Vec<u32>>(&raw, p, "VMKFSX", 2, "intent record").is_err());
        assert!(unseal::<Vec<u32>>(&raw, p, "OTHER", 1, "intent record").is_err());
    }
}
