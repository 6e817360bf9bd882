//! RDM mapping files (`NAME-rdm.vmdk`, `NAME-rdmp.vmdk`): a small record naming a device by a
//! stable identity.
//!
//! On ESXi the mapping file is a VMFS inode with no public layout, so this is our own: a versioned
//! binary record with a CRC-32, laid out in `rdm/FORMAT.md`. [`Mapping::encode`] writes it,
//! [`Mapping::parse`] reads it (bounded: nothing is allocated from a length before it is checked
//! against the input, and no input makes it panic), [`Mapping::for_device`] builds one for a device
//! and [`Mapping::open_device`] finds the device again: by its stable identity first, then by its
//! recorded path, refusing a device whose identity or size no longer matches.

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use crate::device::{Device, OpenMode};
use crate::identity::{candidates, DeviceKind, Difference, FoundBy, Identity};

/// The first 8 bytes of a mapping file.
pub const MAGIC: [u8; 8] = *b"VMKFSRDM";
/// The record version this code writes and reads.
pub const VERSION: u16 = 1;
/// Bytes of the fixed header.
pub const HEADER_LEN: usize = 40;
/// Largest record accepted (header, fields and CRC).
pub const MAX_RECORD: usize = 64 << 10;
/// Largest field value.
pub const MAX_FIELD: usize = 4096;
/// Most fields in a record.
pub const MAX_FIELDS: usize = 256;

/// Field tags (see `rdm/FORMAT.md`).
mod tag {
    pub const DEVICE_PATH: u16 = 1;
    pub const CANONICAL_PATH: u16 = 2;
    pub const BY_ID: u16 = 3;
    pub const WWID: u16 = 4;
    pub const SERIAL: u16 = 5;
    pub const LOOP_BACKING: u16 = 6;
    pub const PARTITION: u16 = 7;
}

/// The compatibility mode of a raw device mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Virtual compatibility (`vmfsRawDeviceMap`, `-rdm.vmdk`): the device acts like a virtual
    /// disk; snapshots are allowed (a REDO chain whose base is the device).
    Virtual,
    /// Physical compatibility, passthrough (`vmfsPassthroughRawDeviceMap`, `-rdmp.vmdk`): SCSI
    /// commands pass through; no snapshots.
    Physical,
    /// A raw device (`vmfsRaw`, `VMFSRAW` extent): passthrough only, no snapshots.
    Raw,
}

impl Mode {
    fn code(self) -> u8 {
        match self {
            Mode::Virtual => 1,
            Mode::Physical => 2,
            Mode::Raw => 3,
        }
    }

    fn from_code(c: u8) -> Option<Mode> {
        match c {
            1 => Some(Mode::Virtual),
            2 => Some(Mode::Physical),
            3 => Some(Mode::Raw),
            _ => None,
        }
    }

    /// `virtual`, `physical` or `raw`.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Virtual => "virtual",
            Mode::Physical => "physical",
            Mode::Raw => "raw",
        }
    }

    /// True when the mode passes SCSI commands through to the device (physical and raw).
    pub fn is_passthrough(self) -> bool {
        self != Mode::Virtual
    }

    /// True when snapshots (REDO links over the device) are allowed: virtual mode only.
    pub fn allows_snapshots(self) -> bool {
        self == Mode::Virtual
    }

    /// The suffix of the mapping file's name: `-rdm` (virtual) or `-rdmp` (physical, raw).
    pub fn file_suffix(self) -> &'static str {
        match self {
            Mode::Virtual => "-rdm",
            Mode::Physical | Mode::Raw => "-rdmp",
        }
    }
}

/// Everything that can go wrong with a mapping file or its device.
#[derive(Debug, thiserror::Error)]
pub enum MappingError {
    /// The file is not a valid mapping record.
    #[error("{path}: not a valid RDM mapping file: at byte {offset}: {what}", path = .path.display())]
    Corrupt {
        /// The mapping file.
        path: PathBuf,
        /// Byte offset of the problem.
        offset: u64,
        /// What was found and what was expected.
        what: String,
    },
    /// A record of a version this code does not read.
    #[error("{path}: RDM mapping file version {version} is not supported (this build reads version {VERSION})", path = .path.display())]
    Version {
        /// The mapping file.
        path: PathBuf,
        /// The version found.
        version: u16,
    },
    /// The operating system refused an operation.
    #[error("{path}: {op}: {source}", path = .path.display())]
    Io {
        /// The file or device.
        path: PathBuf,
        /// What was being done.
        op: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The path is neither a block device nor a regular file.
    #[error("{path}: not a block device or a regular file", path = .path.display())]
    NotADevice {
        /// The path.
        path: PathBuf,
    },
    /// Another process has the device open for writing, or it is mounted.
    #[error("{path}: device is busy (mounted, or opened for writing by another process)", path = .path.display())]
    Busy {
        /// The device.
        path: PathBuf,
    },
    /// Neither the stable identity nor the recorded path leads to a device.
    #[error("{mapping}: the mapped device was not found: no device has its identity ({identity}) and {path} does not exist", mapping = .mapping.display(), path = .path.display())]
    NotFound {
        /// The mapping file.
        mapping: PathBuf,
        /// The recorded device path.
        path: PathBuf,
        /// The recorded identity, summarized.
        identity: String,
    },
    /// The device found is not the one the mapping was made for (or it changed size).
    #[error("{mapping}: device {device} is not the mapped device: {diffs}; refusing to use it (recreate the mapping if the device really changed)", mapping = .mapping.display(), device = .device.display(), diffs = .differences.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("; "))]
    Mismatch {
        /// The mapping file.
        mapping: PathBuf,
        /// The device that was found (by identity or at the recorded path).
        device: PathBuf,
        /// What differs, expected against found.
        differences: Vec<Difference>,
    },
}

impl MappingError {
    fn io(path: &Path, op: &str, source: std::io::Error) -> MappingError {
        MappingError::Io { path: path.to_path_buf(), op: op.to_string(), source }
    }
}

/// A mapping: the mode, the device path and the identity of the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    /// Compatibility mode.
    pub mode: Mode,
    /// The device path given when the mapping was made (absolute).
    pub device_path: PathBuf,
    /// The device's identity then.
    pub identity: Identity,
    /// Creation time, seconds since 1970-01-01 UTC.
    pub created: u64,
}

/// A device found through a mapping and opened.
#[derive(Debug)]
pub struct Resolved {
    /// The open device.
    pub device: Device,
    /// How it was found.
    pub found_by: FoundBy,
    /// Its identity now.
    pub identity: Identity,
}

/// Opens a block device or regular file, refusing anything else before opening it (so a FIFO or a
/// character device is never opened), and reports a device in use as [`MappingError::Busy`].
pub fn open_device(path: &Path, mode: OpenMode) -> Result<Device, MappingError> {
    let meta = std::fs::metadata(path).map_err(|e| MappingError::io(path, "stat", e))?;
    if !(meta.file_type().is_block_device() || meta.is_file()) {
        return Err(MappingError::NotADevice { path: path.to_path_buf() });
    }
    // A child process that another thread is starting holds a copy of every open descriptor (and
    // so a lock this process just released) until it execs: retry briefly before calling it busy.
    let start = std::time::Instant::now();
    let dev = loop {
        match Device::open(path, mode) {
            Ok(d) => break d,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if start.elapsed() >= std::time::Duration::from_millis(250) {
                    return Err(MappingError::Busy { path: path.to_path_buf() });
                }
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            Err(e) => {
                let op = if mode == OpenMode::Read { "open" } else { "open for writing" };
                return Err(MappingError::io(path, op, e));
            }
        }
    };
    // What was opened must still be a device or a file (the path may have changed in between).
    let m = dev.metadata().map_err(|e| MappingError::io(path, "fstat", e))?;
    if !(m.file_type().is_block_device() || m.is_file()) {
        return Err(MappingError::NotADevice { path: path.to_path_buf() });
    }
    Ok(dev)
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl Mapping {
    /// Opens `device` (read-only, or exclusively for writing with `mode`) and builds a mapping of
    /// it in `rdm_mode`. Returns the mapping and the open device.
    pub fn for_device(device: &Path, rdm_mode: Mode, mode: OpenMode) -> Result<(Mapping, Device), MappingError> {
        let abs = std::path::absolute(device).map_err(|e| MappingError::io(device, "resolve path", e))?;
        let dev = open_device(&abs, mode)?;
        let identity = Identity::of(&dev).map_err(|e| MappingError::io(&abs, "read identity", e))?;
        Ok((Mapping { mode: rdm_mode, device_path: abs, identity, created: now() }, dev))
    }

    /// Finds and opens the mapped device. Candidates come from the stable identity first (recorded
    /// by-id names, then WWID/serial/loop backing file in sysfs; for a file its canonical path),
    /// then the recorded path. Each is opened and its identity read from the open handle; the first
    /// with no [`Difference`] is returned. When candidates exist but none matches, the error is a
    /// [`MappingError::Mismatch`] naming the first one and what differs (expected against found);
    /// when none exists, [`MappingError::NotFound`]. `mapping_path` is used in messages.
    pub fn open_device(&self, mode: OpenMode, mapping_path: &Path) -> Result<Resolved, MappingError> {
        let mut tried = candidates(&self.identity);
        if std::fs::symlink_metadata(&self.device_path).is_ok() {
            tried.push((self.device_path.clone(), FoundBy::Path));
        }
        // What to report if nothing matches: a busy candidate (it may be the right device, held by
        // someone else), else the first mismatch, else the first failure to open, else not found.
        let (mut busy, mut mismatch, mut failed) = (None, None, None);
        for (path, found_by) in tried {
            let dev = match open_device(&path, mode) {
                Ok(d) => d,
                Err(e @ MappingError::Busy { .. }) => {
                    busy.get_or_insert(e);
                    continue;
                }
                Err(e) => {
                    failed.get_or_insert(e);
                    continue;
                }
            };
            let found = match Identity::of(&dev) {
                Ok(f) => f,
                Err(e) => {
                    failed.get_or_insert(MappingError::io(&path, "read identity", e));
                    continue;
                }
            };
            let differences = self.identity.differences(&found);
            if differences.is_empty() {
                return Ok(Resolved { device: dev, found_by, identity: found });
            }
            mismatch.get_or_insert(MappingError::Mismatch {
                mapping: mapping_path.to_path_buf(),
                device: path,
                differences,
            });
        }
        Err(busy.or(mismatch).or(failed).unwrap_or_else(|| MappingError::NotFound {
            mapping: mapping_path.to_path_buf(),
            path: self.device_path.clone(),
            identity: self.identity.summary(),
        }))
    }

    /// The record's bytes (see `rdm/FORMAT.md`). Values longer than [`MAX_FIELD`] bytes are cut
    /// (at a character boundary) and at most [`MAX_FIELDS`] fields are written, so every record
    /// written parses back.
    pub fn encode(&self) -> Vec<u8> {
        let mut fields: Vec<(u16, String)> = vec![(tag::DEVICE_PATH, self.device_path.display().to_string())];
        let id = &self.identity;
        if let Some(c) = &id.canonical_path {
            fields.push((tag::CANONICAL_PATH, c.clone()));
        }
        if let Some(w) = &id.wwid {
            fields.push((tag::WWID, w.clone()));
        }
        if let Some(s) = &id.serial {
            fields.push((tag::SERIAL, s.clone()));
        }
        if let Some(l) = &id.loop_backing {
            fields.push((tag::LOOP_BACKING, l.clone()));
        }
        if let Some(p) = id.partition {
            fields.push((tag::PARTITION, p.to_string()));
        }
        for n in &id.by_id {
            fields.push((tag::BY_ID, n.clone()));
        }
        fields.truncate(MAX_FIELDS);
        let mut body = Vec::new();
        let mut count: u16 = 0;
        for (t, v) in &fields {
            let mut end = v.len().min(MAX_FIELD);
            while !v.is_char_boundary(end) {
                end -= 1;
            }
            if HEADER_LEN + body.len() + 4 + end + 4 > MAX_RECORD {
                break; // Only by-id names come this late; the record stays readable.
            }
            count += 1;
            body.extend_from_slice(&t.to_le_bytes());
            body.extend_from_slice(&(end as u16).to_le_bytes());
            body.extend_from_slice(&v.as_bytes()[..end]);
        }
        let mut out = Vec::with_capacity(HEADER_LEN + body.len() + 4);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.push(self.mode.code());
        out.push(match id.kind {
            DeviceKind::Block => 1,
            DeviceKind::File => 2,
        });
        out.extend_from_slice(&0u32.to_le_bytes()); // flags
        out.extend_from_slice(&id.size.to_le_bytes());
        out.extend_from_slice(&self.created.to_le_bytes());
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&count.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes()); // reserved
        out.extend_from_slice(&body);
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// True when `bytes` start with the mapping file magic.
    pub fn looks_like_mapping(bytes: &[u8]) -> bool {
        bytes.starts_with(&MAGIC)
    }

    /// Parses a record. `path` is only used in error messages.
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Mapping, MappingError> {
        let r = Record { bytes, path };
        r.check_frame()?;
        let crc_at = bytes.len() - 4;
        let mode =
            Mode::from_code(bytes[10]).ok_or_else(|| r.bad(10, format!("mode {} is not 1, 2 or 3", bytes[10])))?;
        let kind = match bytes[11] {
            1 => DeviceKind::Block,
            2 => DeviceKind::File,
            k => return Err(r.bad(11, format!("device kind {k} is not 1 (block device) or 2 (regular file)"))),
        };
        let flags = r.u32_at(12);
        if flags != 0 {
            return Err(r.bad(12, format!("unknown flags {flags:08x}")));
        }
        let size = r.u64_at(16);
        let created = r.u64_at(24);
        let count = r.u16_at(36) as usize;
        if count > MAX_FIELDS {
            return Err(r.bad(36, format!("{count} fields; at most {MAX_FIELDS} are accepted")));
        }
        let mut identity = Identity {
            kind,
            size,
            canonical_path: None,
            by_id: Vec::new(),
            wwid: None,
            serial: None,
            loop_backing: None,
            partition: None,
        };
        let device_path = r.fields(count, crc_at, &mut identity)?;
        Ok(Mapping { mode, device_path, identity, created })
    }

    /// The mapping file name for a disk named `stem` (`NAME` of `NAME.vmdk`): `NAME-rdm.vmdk` or
    /// `NAME-rdmp.vmdk`.
    pub fn file_name(stem: &str, mode: Mode) -> String {
        format!("{stem}{}.vmdk", mode.file_suffix())
    }
}

/// A mapping record's bytes being parsed ([`Mapping::parse`]), with the file they came from.
struct Record<'a> {
    bytes: &'a [u8],
    path: &'a Path,
}

impl Record<'_> {
    fn bad(&self, offset: usize, what: String) -> MappingError {
        MappingError::Corrupt { path: self.path.to_path_buf(), offset: offset as u64, what }
    }

    fn u16_at(&self, i: usize) -> u16 {
        u16::from_le_bytes([self.bytes[i], self.bytes[i + 1]])
    }

    fn u32_at(&self, i: usize) -> u32 {
        let b = self.bytes;
        u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
    }

    fn u64_at(&self, i: usize) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.bytes[i..i + 8]);
        u64::from_le_bytes(b)
    }

    /// The frame around the fields: size limits, magic, version, the field area's length against
    /// the file's, and the CRC-32 over everything before it.
    fn check_frame(&self) -> Result<(), MappingError> {
        let bytes = self.bytes;
        if bytes.len() > MAX_RECORD {
            return Err(self.bad(0, format!("file is {} bytes; a mapping record is at most {MAX_RECORD}", bytes.len())));
        }
        if bytes.len() < HEADER_LEN + 4 {
            return Err(self.bad(
                0,
                format!("file is {} bytes, shorter than the smallest record ({})", bytes.len(), HEADER_LEN + 4),
            ));
        }
        if bytes[..8] != MAGIC {
            return Err(self.bad(0, format!("magic is {:02x?}, expected \"VMKFSRDM\"", &bytes[..8])));
        }
        let version = self.u16_at(8);
        if version != VERSION {
            return Err(MappingError::Version { path: self.path.to_path_buf(), version });
        }
        let body_len = self.u32_at(32) as usize;
        let expected_len = HEADER_LEN.checked_add(body_len).and_then(|n| n.checked_add(4));
        if expected_len != Some(bytes.len()) {
            return Err(self.bad(
                32,
                format!(
                    "field area of {body_len} bytes needs a file of {} bytes, the file has {}",
                    HEADER_LEN as u64 + body_len as u64 + 4,
                    bytes.len()
                ),
            ));
        }
        let crc_at = bytes.len() - 4;
        let stored = self.u32_at(crc_at);
        let actual = crc32fast::hash(&bytes[..crc_at]);
        if stored != actual {
            return Err(self.bad(crc_at, format!("CRC-32 is {stored:08x}, the record's bytes give {actual:08x}")));
        }
        Ok(())
    }

    /// Reads the `count` fields from the header's end up to the CRC at `crc_at` into `identity`;
    /// returns the device path (which must appear exactly once). Unknown tags are skipped.
    fn fields(&self, count: usize, crc_at: usize, identity: &mut Identity) -> Result<PathBuf, MappingError> {
        let mut device_path: Option<PathBuf> = None;
        let mut pos = HEADER_LEN;
        for _ in 0..count {
            if pos + 4 > crc_at {
                return Err(self.bad(pos, "field header runs past the field area".into()));
            }
            let t = self.u16_at(pos);
            let len = self.u16_at(pos + 2) as usize;
            if len > MAX_FIELD {
                return Err(self.bad(pos + 2, format!("field of {len} bytes; at most {MAX_FIELD} are accepted")));
            }
            let start = pos + 4;
            let end = start + len;
            if end > crc_at {
                return Err(self.bad(pos + 2, format!("field of {len} bytes runs past the field area")));
            }
            let value = std::str::from_utf8(&self.bytes[start..end])
                .map_err(|_| self.bad(start, format!("field {t} is not UTF-8")))?
                .to_string();
            let once = |slot: &mut Option<String>, value: String| -> Result<(), MappingError> {
                if slot.is_some() {
                    return Err(self.bad(pos, format!("field {t} appears twice")));
                }
                *slot = Some(value);
                Ok(())
            };
            match t {
                tag::DEVICE_PATH => {
                    if device_path.is_some() {
                        return Err(self.bad(pos, "device path appears twice".into()));
                    }
                    if value.is_empty() || value.contains('\0') {
                        return Err(self.bad(start, "device path is empty or holds a NUL byte".into()));
                    }
                    device_path = Some(PathBuf::from(value));
                }
                tag::CANONICAL_PATH => once(&mut identity.canonical_path, value)?,
                tag::WWID => once(&mut identity.wwid, value)?,
                tag::SERIAL => once(&mut identity.serial, value)?,
                tag::LOOP_BACKING => once(&mut identity.loop_backing, value)?,
                tag::PARTITION => {
                    if identity.partition.is_some() {
                        return Err(self.bad(pos, "partition appears twice".into()));
                    }
                    identity.partition = Some(
                        value.parse().map_err(|_| self.bad(start, format!("partition {value:?} is not a number")))?,
                    );
                }
                tag::BY_ID => identity.by_id.push(value),
                // Unknown tags are skipped: fields are self-delimiting, and a change that older
                // readers must not ignore bumps the version instead.
                _ => {}
            }
            pos = end;
        }
        if pos != crc_at {
            return Err(self.bad(pos, format!("{} bytes after the last field", crc_at - pos)));
        }
        device_path.ok_or_else(|| self.bad(HEADER_LEN, "no device path field".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Mapping {
        Mapping {
            mode: Mode::Physical,
            device_path: PathBuf::from("/dev/disk/by-id/wwn-0x5000c500a1b2c3d4"),
            identity: Identity {
                kind: DeviceKind::Block,
                size: 10 << 30,
                canonical_path: Some("/dev/sdb".into()),
                by_id: vec!["scsi-35000c500a1b2c3d4".into(), "wwn-0x5000c500a1b2c3d4".into()],
                wwid: Some("naa.5000c500a1b2c3d4".into()),
                serial: Some("ZA1B2C3D".into()),
                loop_backing: None,
                partition: Some(2),
            },
            created: 1_700_000_000,
        }
    }

    #[test]
    fn round_trip() {
        let m = sample();
        let b = m.encode();
        assert!(Mapping::looks_like_mapping(&b));
        assert_eq!(Mapping::parse(&b, Path::new("m")).unwrap(), m);
        // The fixed header.
        assert_eq!(&b[..8], b"VMKFSRDM");
        assert_eq!(u16::from_le_bytes([b[8], b[9]]), 1);
        assert_eq!(b[10], 2);
        assert_eq!(b[11], 1);
    }

    #[test]
    fn every_damage_is_an_error() {
        let b = sample().encode();
        // Any single flipped bit is caught (by the CRC if nothing else).
        for i in 0..b.len() {
            for bit in [0x01u8, 0x80] {
                let mut c = b.clone();
                c[i] ^= bit;
                assert!(Mapping::parse(&c, Path::new("m")).is_err(), "byte {i} bit {bit:#x}");
            }
        }
        // Truncation and extension.
        for n in 0..b.len() {
            assert!(Mapping::parse(&b[..n], Path::new("m")).is_err());
        }
        let mut longer = b.clone();
        longer.push(0);
        assert!(Mapping::parse(&longer, Path::new("m")).is_err());
    }

    fn with_crc(mut b: Vec<u8>) -> Vec<u8> {
        let n = b.len() - 4;
        let crc = crc32fast::hash(&b[..n]);
        b[n..].copy_from_slice(&crc.to_le_bytes());
        b
    }

    #[test]
    fn structural_errors_name_the_problem() {
        let b = sample().encode();
        let mut v = b.clone();
        v[8] = 2;
        assert!(matches!(Mapping::parse(&with_crc(v), Path::new("m")), Err(MappingError::Version { version: 2, .. })));
        let mut m = b.clone();
        m[10] = 9;
        let e = Mapping::parse(&with_crc(m), Path::new("m")).unwrap_err().to_string();
        assert!(e.contains("mode 9"), "{e}");
        // A field count larger than what the field area holds.
        let mut c = b.clone();
        c[36] = 200;
        let e = Mapping::parse(&with_crc(c), Path::new("m")).unwrap_err().to_string();
        assert!(e.contains("past the field area"), "{e}");
        // A field length reaching past the area.
        let mut f = b.clone();
        f[HEADER_LEN + 2] = 0xff;
        f[HEADER_LEN + 3] = 0x0f;
        let e = Mapping::parse(&with_crc(f), Path::new("m")).unwrap_err().to_string();
        assert!(e.contains("runs past"), "{e}");
    }

    #[test]
    fn unknown_tags_are_skipped_and_path_is_required() {
        let m = sample();
        let mut b = m.encode();
        b.truncate(b.len() - 4);
        // Append an unknown field (tag 99, 3 bytes), fix the lengths and the CRC.
        b.extend_from_slice(&99u16.to_le_bytes());
        b.extend_from_slice(&3u16.to_le_bytes());
        b.extend_from_slice(b"xyz");
        let body = (b.len() - HEADER_LEN) as u32;
        b[32..36].copy_from_slice(&body.to_le_bytes());
        let count = u16::from_le_bytes([b[36], b[37]]) + 1;
        b[36..38].copy_from_slice(&count.to_le_bytes());
        b.extend_from_slice(&[0; 4]);
        assert_eq!(Mapping::parse(&with_crc(b), Path::new("m")).unwrap(), m);

        let empty = Mapping { device_path: PathBuf::new(), ..sample() };
        assert!(Mapping::parse(&empty.encode(), Path::new("m")).is_err());
    }

    #[test]
    fn long_values_are_cut_to_parse_back() {
        let mut m = sample();
        m.identity.serial = Some("é".repeat(3000));
        let p = Mapping::parse(&m.encode(), Path::new("m")).unwrap();
        let s = p.identity.serial.unwrap();
        assert!(s.len() <= MAX_FIELD && s.chars().all(|c| c == 'é'));
    }

    #[test]
    fn many_names_stay_within_the_record_limit() {
        let mut m = sample();
        m.identity.by_id = (0..400).map(|i| format!("{i:0>1000}")).collect();
        let b = m.encode();
        assert!(b.len() <= MAX_RECORD);
        let p = Mapping::parse(&b, Path::new("m")).unwrap();
        assert!(!p.identity.by_id.is_empty() && p.identity.by_id.len() < 400);
        assert_eq!(p.identity.wwid, m.identity.wwid);
    }

    #[test]
    fn modes() {
        assert_eq!(Mapping::file_name("vm", Mode::Virtual), "vm-rdm.vmdk");
        assert_eq!(Mapping::file_name("vm", Mode::Physical), "vm-rdmp.vmdk");
        assert!(
            Mode::Virtual.allows_snapshots() && !Mode::Physical.allows_snapshots() && !Mode::Raw.allows_snapshots()
        );
        assert!(Mode::Physical.is_passthrough() && !Mode::Virtual.is_passthrough());
    }

    #[test]
    fn resolving_a_file_device() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("lun.img");
        std::fs::write(&p, vec![7u8; 1 << 16]).unwrap();
        let (m, dev) = Mapping::for_device(&p, Mode::Virtual, OpenMode::Read).unwrap();
        drop(dev);
        let r = m.open_device(OpenMode::Write, Path::new("x-rdm.vmdk")).unwrap();
        assert_eq!(r.found_by, FoundBy::CanonicalPath);
        assert!(r.device.is_writable());
        // A second writer is refused while the first holds the device.
        assert!(matches!(m.open_device(OpenMode::Write, Path::new("x-rdm.vmdk")), Err(MappingError::Busy { .. })));
        drop(r);
        // Shrunk: the error names both sizes.
        std::fs::OpenOptions::new().write(true).open(&p).unwrap().set_len(1 << 15).unwrap();
        let e = m.open_device(OpenMode::Read, Path::new("x-rdm.vmdk")).unwrap_err();
        let s = e.to_string();
        assert!(matches!(e, MappingError::Mismatch { .. }), "{s}");
        assert!(s.contains("size: expected 65536 bytes, found 32768 bytes"), "{s}");
        // Gone: not found, naming the path.
        std::fs::remove_file(&p).unwrap();
        let e = m.open_device(OpenMode::Read, Path::new("x-rdm.vmdk")).unwrap_err();
        assert!(matches!(e, MappingError::NotFound { .. }), "{e}");
        // Neither a device nor a file.
        assert!(matches!(open_device(dir.path(), OpenMode::Read), Err(MappingError::NotADevice { .. })));
    }

    #[test]
    fn a_symlink_retargeted_is_a_mismatch() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, link) = (dir.path().join("a.img"), dir.path().join("b.img"), dir.path().join("lun"));
        std::fs::write(&a, vec![1u8; 4096]).unwrap();
        std::fs::write(&b, vec![2u8; 4096]).unwrap();
        std::os::unix::fs::symlink(&a, &link).unwrap();
        let (m, _) = Mapping::for_device(&link, Mode::Virtual, OpenMode::Read).unwrap();
        std::fs::remove_file(&a).unwrap();
        std::fs::remove_file(&link).unwrap();
        std::os::unix::fs::symlink(&b, &link).unwrap();
        let e = m.open_device(OpenMode::Read, Path::new("m")).unwrap_err().to_string();
        assert!(e.contains("canonical path") && e.contains("a.img") && e.contains("b.img"), "{e}");
    }
}
