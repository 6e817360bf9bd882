//! What makes a device the same device: names that survive a reboot or a different host.
//!
//! A block device is known by its WWN/WWID and serial number (from sysfs), the `/dev/disk/by-id`
//! names udev gives it, the backing file of a loop device, its partition number and its size. A
//! regular file standing in for a device is known by its canonical path and size. Node names like
//! `/dev/sdb` are recorded too, but only as a hint: they change from boot to boot.
//!
//! [`Identity::of`] reads the identity of an open [`Device`] (through `fstat`, so what is checked is
//! what was opened, not what a path pointed at a moment earlier). [`Identity::differences`] compares
//! a recorded identity with a found one, and [`candidates`] lists the devices of this host whose
//! stable names match a recorded identity.

use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::device::Device;

/// Where udev keeps the stable names of block devices.
pub const BY_ID_DIR: &str = "/dev/disk/by-id";

/// Longest sysfs attribute we read.
const MAX_ATTR: u64 = 4096;
/// Most block devices and by-id entries looked at in one scan.
const MAX_SCAN: usize = 65_536;

/// What kind of thing a mapping points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    /// A block device (a LUN, a disk, a partition, a loop device).
    Block,
    /// A regular file used as a device (tests, images).
    File,
}

impl DeviceKind {
    /// `block device` or `regular file`.
    pub fn name(self) -> &'static str {
        match self {
            DeviceKind::Block => "block device",
            DeviceKind::File => "regular file",
        }
    }
}

impl std::fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Serialized as its [`DeviceKind::name`] (`--json` output of `-q`).
impl serde::Serialize for DeviceKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// The stable identity of a device.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Identity {
    /// Block device or regular file.
    pub kind: DeviceKind,
    /// Size in bytes.
    pub size: u64,
    /// The canonical path: for a file, part of its identity; for a block device, the node it was
    /// found at (informational: node names are not stable).
    pub canonical_path: Option<String>,
    /// Names in `/dev/disk/by-id` that pointed at the device (sorted).
    pub by_id: Vec<String>,
    /// The WWN / WWID from sysfs (`wwid` of the disk or of its `device`).
    pub wwid: Option<String>,
    /// The serial number from sysfs (`serial`, `device/serial`, or SCSI VPD page 0x80).
    pub serial: Option<String>,
    /// The backing file of a loop device (`loop/backing_file`).
    pub loop_backing: Option<String>,
    /// The partition number, for a partition of a disk.
    pub partition: Option<u32>,
}

/// One way a found device differs from the recorded identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    /// What differs (`size`, `WWID`, `serial`, …).
    pub what: &'static str,
    /// The recorded value.
    pub expected: String,
    /// The value found.
    pub found: String,
}

impl std::fmt::Display for Difference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: expected {}, found {}", self.what, self.expected, self.found)
    }
}

fn show(v: &Option<String>) -> String {
    match v {
        Some(s) => format!("{s:?}"),
        None => "none".into(),
    }
}

impl Identity {
    /// True when the identity names the device by more than its path and size (a WWID, a serial,
    /// a by-id name or a loop backing file).
    pub fn is_stable(&self) -> bool {
        self.wwid.is_some() || self.serial.is_some() || !self.by_id.is_empty() || self.loop_backing.is_some()
    }

    /// Reads the identity of an open device or file.
    pub fn of(dev: &Device) -> io::Result<Identity> {
        let meta = dev.metadata()?;
        let size = dev.size()?;
        if meta.file_type().is_block_device() {
            let mut id = Identity {
                kind: DeviceKind::Block,
                size,
                canonical_path: fs::canonicalize(dev.path()).ok().map(|p| p.display().to_string()),
                by_id: by_id_names(meta.rdev()),
                wwid: None,
                serial: None,
                loop_backing: None,
                partition: None,
            };
            if let Some(dir) = sysfs_dir(meta.rdev()) {
                let s = SysfsIds::read(&dir);
                id.wwid = s.wwid;
                id.serial = s.serial;
                id.loop_backing = s.loop_backing;
                id.partition = s.partition;
            }
            Ok(id)
        } else if meta.file_type().is_file() {
            Ok(Identity {
                kind: DeviceKind::File,
                size,
                canonical_path: Some(fs::canonicalize(dev.path())?.display().to_string()),
                by_id: Vec::new(),
                wwid: None,
                serial: None,
                loop_backing: None,
                partition: None,
            })
        } else {
            Err(io::Error::new(io::ErrorKind::InvalidInput, "neither a block device nor a regular file"))
        }
    }

    /// How `found` differs from this (recorded) identity; empty when it is the same device.
    ///
    /// The kind and the size must be equal. For a file, so must the canonical path. For a block
    /// device, every stable name recorded (WWID, serial, loop backing file, partition number) must be
    /// found with the same value; by-id names must share at least one name, unless the host shows
    /// none at all (no udev). Node names (`/dev/sdb`) are never compared.
    pub fn differences(&self, found: &Identity) -> Vec<Difference> {
        let mut d = Vec::new();
        if self.kind != found.kind {
            d.push(Difference { what: "kind", expected: self.kind.name().into(), found: found.kind.name().into() });
            return d;
        }
        if self.size != found.size {
            d.push(Difference {
                what: "size",
                expected: format!("{} bytes", self.size),
                found: format!("{} bytes", found.size),
            });
        }
        match self.kind {
            DeviceKind::File => {
                if self.canonical_path != found.canonical_path {
                    d.push(Difference {
                        what: "canonical path",
                        expected: show(&self.canonical_path),
                        found: show(&found.canonical_path),
                    });
                }
            }
            DeviceKind::Block => {
                let pairs: [(&'static str, &Option<String>, &Option<String>); 3] = [
                    ("WWID", &self.wwid, &found.wwid),
                    ("serial", &self.serial, &found.serial),
                    ("loop backing file", &self.loop_backing, &found.loop_backing),
                ];
                for (what, want, have) in pairs {
                    if want.is_some() && want != have {
                        d.push(Difference { what, expected: show(want), found: show(have) });
                    }
                }
                if self.partition != found.partition {
                    let p = |v: Option<u32>| v.map(|n| n.to_string()).unwrap_or_else(|| "none (whole disk)".into());
                    d.push(Difference { what: "partition", expected: p(self.partition), found: p(found.partition) });
                }
                if !self.by_id.is_empty()
                    && !found.by_id.is_empty()
                    && !self.by_id.iter().any(|n| found.by_id.contains(n))
                {
                    d.push(Difference {
                        what: "/dev/disk/by-id names",
                        expected: self.by_id.join(", "),
                        found: found.by_id.join(", "),
                    });
                }
            }
        }
        d
    }

    /// A one-line summary: `WWID "…", serial "…", by-id …, size N bytes`.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        if let Some(w) = &self.wwid {
            parts.push(format!("WWID {w:?}"));
        }
        if let Some(s) = &self.serial {
            parts.push(format!("serial {s:?}"));
        }
        if !self.by_id.is_empty() {
            parts.push(format!("by-id {}", self.by_id.join(", ")));
        }
        if let Some(l) = &self.loop_backing {
            parts.push(format!("loop backing file {l:?}"));
        }
        if let Some(p) = self.partition {
            parts.push(format!("partition {p}"));
        }
        if self.kind == DeviceKind::File || parts.is_empty() {
            if let Some(c) = &self.canonical_path {
                parts.push(format!("path {c:?}"));
            }
        }
        parts.push(format!("size {} bytes", self.size));
        format!("{} ({})", self.kind.name(), parts.join(", "))
    }
}

/// Splits a `dev_t` into major and minor numbers (the glibc encoding).
fn major_minor(dev: u64) -> (u64, u64) {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    (major, minor)
}

/// The sysfs folder of a block device: `/sys/dev/block/MAJ:MIN`, resolved.
fn sysfs_dir(rdev: u64) -> Option<PathBuf> {
    let (ma, mi) = major_minor(rdev);
    fs::canonicalize(format!("/sys/dev/block/{ma}:{mi}")).ok()
}

/// Reads a small sysfs attribute, trimmed; `None` when absent or empty.
fn attr(path: &Path) -> Option<String> {
    let raw = read_bounded(path)?;
    let s = String::from_utf8_lossy(&raw);
    let t = s.trim_matches(|c: char| c.is_whitespace() || c == '\0');
    (!t.is_empty()).then(|| t.to_string())
}

fn read_bounded(path: &Path) -> Option<Vec<u8>> {
    use std::io::Read;
    let f = fs::File::open(path).ok()?;
    let mut v = Vec::new();
    f.take(MAX_ATTR).read_to_end(&mut v).ok()?;
    Some(v)
}

/// The serial number in a SCSI VPD page 0x80 (unit serial number): 4 header bytes, then ASCII.
fn vpd80_serial(raw: &[u8]) -> Option<String> {
    if raw.len() < 4 || raw[1] != 0x80 {
        return None;
    }
    let len = u16::from_be_bytes([raw[2], raw[3]]) as usize;
    let body = raw.get(4..4 + len.min(raw.len() - 4))?;
    let s = String::from_utf8_lossy(body);
    let t = s.trim_matches(|c: char| c.is_whitespace() || c == '\0');
    (!t.is_empty()).then(|| t.to_string())
}

/// The stable names sysfs shows for one block device (a disk or a partition).
#[derive(Debug, Default)]
struct SysfsIds {
    wwid: Option<String>,
    serial: Option<String>,
    loop_backing: Option<String>,
    partition: Option<u32>,
}

impl SysfsIds {
    /// Reads them from the device's sysfs folder; a partition takes the names of its disk.
    fn read(dir: &Path) -> SysfsIds {
        let partition = attr(&dir.join("partition")).and_then(|p| p.parse().ok());
        let disk = if partition.is_some() { dir.parent().unwrap_or(dir) } else { dir };
        let wwid = attr(&disk.join("wwid")).or_else(|| attr(&disk.join("device/wwid")));
        let serial = attr(&disk.join("serial"))
            .or_else(|| attr(&disk.join("device/serial")))
            .or_else(|| read_bounded(&disk.join("device/vpd_pg80")).and_then(|r| vpd80_serial(&r)));
        let loop_backing = attr(&disk.join("loop/backing_file"));
        SysfsIds { wwid, serial, loop_backing, partition }
    }

    /// True when a stable name recorded in `want` is found here with the same value.
    fn matches(&self, want: &Identity) -> bool {
        let eq = |a: &Option<String>, b: &Option<String>| a.is_some() && a == b;
        (eq(&want.wwid, &self.wwid) || eq(&want.serial, &self.serial) || eq(&want.loop_backing, &self.loop_backing))
            && want.partition == self.partition
    }
}

/// Names in `/dev/disk/by-id` that resolve to the block device `rdev`.
fn by_id_names(rdev: u64) -> Vec<String> {
    let mut v = Vec::new();
    let Ok(entries) = fs::read_dir(BY_ID_DIR) else { return v };
    for e in entries.flatten().take(MAX_SCAN) {
        let Ok(m) = fs::metadata(e.path()) else { continue };
        if m.file_type().is_block_device() && m.rdev() == rdev {
            v.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    v.sort();
    v
}

/// How a candidate device was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FoundBy {
    /// Through a recorded `/dev/disk/by-id` name.
    ById(String),
    /// By a WWID, serial or loop backing file shown in sysfs.
    Sysfs,
    /// At the recorded canonical path (regular files).
    CanonicalPath,
    /// At the recorded device path.
    Path,
}

impl std::fmt::Display for FoundBy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FoundBy::ById(n) => write!(f, "by-id name {n}"),
            FoundBy::Sysfs => f.write_str("WWID/serial/backing file in sysfs"),
            FoundBy::CanonicalPath => f.write_str("canonical path"),
            FoundBy::Path => f.write_str("recorded path"),
        }
    }
}

/// The devices of this host that the stable names of `want` point at, best first, each once:
/// recorded by-id names that still exist, then every block device whose sysfs WWID, serial or loop
/// backing file (and partition number) match; for a file, its canonical path. The recorded device
/// path is not included (it is the caller's last resort).
pub fn candidates(want: &Identity) -> Vec<(PathBuf, FoundBy)> {
    let mut out: Vec<(PathBuf, FoundBy)> = Vec::new();
    let mut seen: Vec<u64> = Vec::new();
    let mut add = |p: PathBuf, by: FoundBy, out: &mut Vec<(PathBuf, FoundBy)>| {
        let Ok(m) = fs::metadata(&p) else { return };
        let key = if m.file_type().is_block_device() { m.rdev() } else { m.ino() ^ (m.dev() << 32) };
        if !seen.contains(&key) {
            seen.push(key);
            out.push((p, by));
        }
    };
    match want.kind {
        DeviceKind::File => {
            if let Some(c) = &want.canonical_path {
                add(PathBuf::from(c), FoundBy::CanonicalPath, &mut out);
            }
        }
        DeviceKind::Block => {
            for n in &want.by_id {
                // Only plain names: a recorded name must not walk out of the by-id folder.
                if !n.is_empty() && !n.contains('/') && n != "." && n != ".." {
                    add(Path::new(BY_ID_DIR).join(n), FoundBy::ById(n.clone()), &mut out);
                }
            }
            if want.wwid.is_some() || want.serial.is_some() || want.loop_backing.is_some() {
                let Ok(entries) = fs::read_dir("/sys/class/block") else { return out };
                for e in entries.flatten().take(MAX_SCAN) {
                    let dir = e.path();
                    let dir = fs::canonicalize(&dir).unwrap_or(dir);
                    if !SysfsIds::read(&dir).matches(want) {
                        continue;
                    }
                    // The node name is in the uevent file (DEVNAME=…), else the folder's name.
                    let name = read_bounded(&dir.join("uevent"))
                        .and_then(|u| {
                            String::from_utf8_lossy(&u)
                                .lines()
                                .find_map(|l| l.strip_prefix("DEVNAME=").map(str::to_string))
                        })
                        .unwrap_or_else(|| e.file_name().to_string_lossy().into_owned());
                    if name.split('/').any(|c| c == "..") {
                        continue;
                    }
                    add(Path::new("/dev").join(name), FoundBy::Sysfs, &mut out);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block() -> Identity {
        Identity {
            kind: DeviceKind::Block,
            size: 1 << 30,
            canonical_path: Some("/dev/sdb".into()),
            by_id: vec!["wwn-0x5000c500a1b2c3d4".into(), "scsi-35000c500a1b2c3d4".into()],
            wwid: Some("naa.5000c500a1b2c3d4".into()),
            serial: Some("ZA1B2C3D".into()),
            loop_backing: None,
            partition: None,
        }
    }

    #[test]
    fn same_device_has_no_differences() {
        let a = block();
        let mut b = block();
        b.canonical_path = Some("/dev/sdc".into()); // node names change across boots
        assert!(a.differences(&b).is_empty());
        // A host without udev shows no by-id names: not a difference.
        b.by_id.clear();
        assert!(a.differences(&b).is_empty());
    }

    #[test]
    fn other_lun_differs_by_name_and_size() {
        let a = block();
        let mut b = block();
        b.wwid = Some("naa.600508b1001c0000".into());
        b.size = 1 << 29;
        b.by_id = vec!["wwn-0x600508b1001c0000".into()];
        let d = a.differences(&b);
        let whats: Vec<_> = d.iter().map(|x| x.what).collect();
        assert_eq!(whats, vec!["size", "WWID", "/dev/disk/by-id names"]);
        assert!(d[0].to_string().contains("expected 1073741824 bytes, found 536870912 bytes"), "{}", d[0]);
        assert!(d[1].to_string().contains("naa.5000c500a1b2c3d4") && d[1].to_string().contains("naa.600508b1001c0000"));
    }

    #[test]
    fn missing_serial_and_partition_differ() {
        let a = block();
        let mut b = block();
        b.serial = None;
        b.partition = Some(1);
        let d = a.differences(&b);
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].found, "none");
        assert_eq!(d[1].what, "partition");
    }

    #[test]
    fn files_compare_by_canonical_path_and_size() {
        let f = Identity {
            kind: DeviceKind::File,
            size: 4096,
            canonical_path: Some("/a".into()),
            by_id: vec![],
            wwid: None,
            serial: None,
            loop_backing: None,
            partition: None,
        };
        let mut g = f.clone();
        assert!(f.differences(&g).is_empty());
        g.canonical_path = Some("/b".into());
        assert_eq!(f.differences(&g)[0].what, "canonical path");
        assert_eq!(f.differences(&block())[0].what, "kind");
        assert!(!f.is_stable());
        assert!(block().is_stable());
    }

    #[test]
    fn vpd80_parsing_is_bounded() {
        assert_eq!(vpd80_serial(b"\x00\x80\x00\x04AB12"), Some("AB12".into()));
        assert_eq!(vpd80_serial(b"\x00\x80\x00\xffAB"), Some("AB".into()));
        assert_eq!(vpd80_serial(b"\x00\x83\x00\x02AB"), None);
        assert_eq!(vpd80_serial(b"\x00\x80"), None);
    }

    #[test]
    fn major_minor_split() {
        assert_eq!(major_minor(0x0700), (7, 0));
        assert_eq!(major_minor(0x0803), (8, 3));
        assert_eq!(major_minor((259 << 8) | 1), (259, 1));
    }

    #[test]
    fn regular_file_identity() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("dev.img");
        std::fs::write(&p, vec![0u8; 8192]).unwrap();
        let d = Device::open(&p, crate::OpenMode::Read).unwrap();
        let id = Identity::of(&d).unwrap();
        assert_eq!(id.kind, DeviceKind::File);
        assert_eq!(id.size, 8192);
        assert_eq!(id.canonical_path, Some(std::fs::canonicalize(&p).unwrap().display().to_string()));
        let c = candidates(&id);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].1, FoundBy::CanonicalPath);
    }
}
