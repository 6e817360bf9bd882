//! Snapshot files: the root tree, the paths backed up, host, user, tags.

use serde::{Deserialize, Serialize};

use super::Id;

pub use super::browse::{find_file, folder, read_tree, save_folder};

/// A snapshot.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Snapshot {
    /// When it was taken (RFC 3339).
    pub time: String,
    /// The root tree.
    pub tree: Id,
    /// The paths it holds.
    pub paths: Vec<String>,
    /// Host.
    #[serde(default)]
    pub hostname: String,
    /// User.
    #[serde(default)]
    pub username: String,
    /// User id.
    #[serde(default)]
    pub uid: u32,
    /// Group id.
    #[serde(default)]
    pub gid: u32,
    /// Tags (`vmkfs`, the VM's name, the backup type).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// The snapshot this one was made from by changing its metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original: Option<Id>,
    /// The program that wrote it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub program_version: Option<String>,
}

/// Now, as restic writes snapshot times (RFC 3339 with nanoseconds, UTC), so that two snapshots
/// taken within one second still have an order (`latest`).
pub fn now_nanos() -> String {
    loop {
        let before = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let whole = crate::text::now_utc();
        // The same second on both sides: `whole` names it.
        if crate::text::unix_now() == before.as_secs() {
            return format!("{}.{:09}Z", whole.trim_end_matches('Z'), before.subsec_nanos());
        }
    }
}

/// The order of snapshot times: seconds since 1970 (any RFC 3339 offset), then the fraction in
/// nanoseconds; a time that does not parse sorts first.
pub fn time_key(time: &str) -> (u64, u32) {
    let secs = crate::text::parse_utc(time).unwrap_or(0);
    let frac = time.split_once('.').map(|(_, f)| f.bytes().take_while(u8::is_ascii_digit).collect::<Vec<u8>>());
    let nanos = frac.map_or(0, |d| {
        let mut n = 0u32;
        for i in 0..9 {
            n = n * 10 + d.get(i).map_or(0, |c| u32::from(c - b'0'));
        }
        n
    });
    (secs, nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_times_order_within_a_second() {
        assert!(time_key("2026-12-01T14:51:39.5Z") > time_key("2026-12-01T14:51:39.123456789Z"));
        assert!(time_key("2026-12-01T14:51:39Z") < time_key("2026-12-01T14:51:39.000000001Z"));
        // restic's local offsets: 15:51:40+01:00 is 14:51:40 UTC.
        assert!(time_key("2026-12-01T15:51:40.1+01:00") > time_key("2026-12-01T14:51:39.9Z"));
        let (a, b) = (now_nanos(), now_nanos());
        assert!(time_key(&b) >= time_key(&a) && time_key(&a).0 > 0, "{a} {b}");
    }
}
