//! The VM model: what a `.vmx` says about a virtual machine's files.
//!
//! Read with the lenient [`kv`](super::kv) parser. What counts:
//! - `displayName`, `uuid.bios`;
//! - every disk of every controller kind — `scsiX:Y`, `ideX:Y`, `sataX:Y`, `nvmeX:Y` — that is
//!   present (`.present = "TRUE"`, and its controller `scsiX.present` not `FALSE`), is not a CD-ROM
//!   or floppy (`.deviceType`), and names a file (`.fileName`); with its `.mode`
//!   (`persistent`, `independent-persistent`, `independent-nonpersistent`, `nonpersistent`, …);
//! - `nvram`, `extendedConfigFile` (the `.vmxf`), the `.vmsd` beside the `.vmx` (VMware names it
//!   after the `.vmx`; no key names it), `workingDir`, `suspend.directory`, `checkpoint.vmState`
//!   (the suspended state file: set means the VM is suspended), and `log.fileName`, whose folder
//!   holds the logs (default: the VM folder).
//!
//! Paths are kept as written: relative to the VM folder, absolute, or `[datastore] path`; the
//! [`place`](super::place) module resolves them.

use std::path::Path;

use super::kv::{truthy, Lines};
use crate::error::Result;

/// The controller kinds disks sit on, in `.vmx` spelling.
pub const CONTROLLERS: [&str; 4] = ["scsi", "ide", "sata", "nvme"];

/// How VMware treats a disk's writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskMode {
    /// `persistent` (the default) or `independent-persistent`: writes stay.
    Persistent,
    /// `independent-nonpersistent` or `nonpersistent`: writes are thrown away at power-off, so the
    /// disk holds nothing worth backing up (VCB skips these too).
    NonPersistent,
    /// Any other mode, as written (`undoable`, `append`): backed up like a persistent disk.
    Other(String),
}

impl DiskMode {
    fn parse(v: Option<&str>) -> DiskMode {
        match v.map(|s| s.trim().to_ascii_lowercase()) {
            None => DiskMode::Persistent,
            Some(m) if m.is_empty() || m == "persistent" || m == "independent-persistent" => DiskMode::Persistent,
            Some(m) if m == "independent-nonpersistent" || m == "nonpersistent" => DiskMode::NonPersistent,
            Some(m) => DiskMode::Other(m),
        }
    }
}

/// One disk of the VM, as the `.vmx` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmxDisk {
    /// The device key: `scsi0:1`, `ide0:0`, … (lower case).
    pub key: String,
    /// `.fileName` as written.
    pub file_name: String,
    /// `.mode`.
    pub mode: DiskMode,
    /// `.mode` as written (for messages and the catalog).
    pub mode_text: Option<String>,
    /// `.deviceType` as written.
    pub device_type: Option<String>,
}

impl VmxDisk {
    /// The key with `:` turned into `-` (`scsi0-1`), for file names in a backup.
    pub fn file_key(&self) -> String {
        self.key.replace(':', "-")
    }
}

/// A parsed `.vmx`.
#[derive(Debug, Clone)]
pub struct Vmx {
    lines: Lines,
}

impl Vmx {
    /// Parses the text of the `.vmx` at `path`.
    pub fn parse(text: &str, path: &Path) -> Result<Vmx> {
        Ok(Vmx { lines: Lines::parse(text, path)? })
    }

    /// The lines, as written.
    pub fn lines(&self) -> &Lines {
        &self.lines
    }

    /// A value (case-insensitive key; the last of duplicates).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.lines.get(key).filter(|v| !v.trim().is_empty())
    }

    /// `displayName`.
    pub fn display_name(&self) -> Option<&str> {
        self.get("displayName")
    }

    /// `uuid.bios`.
    pub fn uuid(&self) -> Option<&str> {
        self.get("uuid.bios")
    }

    /// `nvram`.
    pub fn nvram(&self) -> Option<&str> {
        self.get("nvram")
    }

    /// `extendedConfigFile` (the `.vmxf`).
    pub fn vmxf(&self) -> Option<&str> {
        self.get("extendedConfigFile")
    }

    /// `checkpoint.vmState`: the suspended state file, when the VM is suspended.
    pub fn vm_state(&self) -> Option<&str> {
        self.get("checkpoint.vmState")
    }

    /// `suspend.directory`, else `workingDir`: where the suspended state file lives.
    pub fn suspend_dir(&self) -> Option<&str> {
        self.get("suspend.directory").or_else(|| self.get("workingDir"))
    }

    /// `log.fileName`: the log file, whose folder holds the logs.
    pub fn log_file(&self) -> Option<&str> {
        self.get("log.fileName")
    }

    /// `poweredOff` or `suspended` (a running VM is refused before this matters).
    pub fn state(&self) -> &'static str {
        if self.vm_state().is_some() {
            "suspended"
        } else {
            "poweredOff"
        }
    }

    /// Every present disk, in device order (controller kind, then bus, then unit).
    pub fn disks(&self) -> Vec<VmxDisk> {
        let mut keys: Vec<(usize, u32, u32, String)> = Vec::new();
        for (k, _) in self.lines.entries() {
            let lower = k.to_ascii_lowercase();
            let Some(dev) = lower.strip_suffix(".filename") else { continue };
            if let Some(sort) = device_key(dev) {
                if !keys.iter().any(|(_, _, _, d)| d == dev) {
                    keys.push((sort.0, sort.1, sort.2, dev.to_string()));
                }
            }
        }
        keys.sort();
        let mut out = Vec::new();
        for (kind, bus, _, dev) in keys {
            let controller = format!("{}{bus}", CONTROLLERS[kind]);
            let present = self.lines.get(&format!("{dev}.present")).is_some_and(truthy);
            let controller_off = self.lines.get(&format!("{controller}.present")).is_some_and(|v| !truthy(v));
            let device_type = self.get(&format!("{dev}.deviceType")).map(str::to_string);
            let not_a_disk = device_type.as_deref().is_some_and(|t| {
                let t = t.to_ascii_lowercase();
                t.contains("cdrom") || t.contains("floppy")
            });
            let Some(file) = self.get(&format!("{dev}.fileName")) else { continue };
            if !present || controller_off || not_a_disk || file.to_ascii_lowercase().ends_with(".iso") {
                continue;
            }
            let mode_text = self.get(&format!("{dev}.mode")).map(str::to_string);
            out.push(VmxDisk {
                key: dev,
                file_name: file.to_string(),
                mode: DiskMode::parse(mode_text.as_deref()),
                mode_text,
                device_type,
            });
        }
        out
    }

    /// The `.vmx` text with disk `key`'s `.fileName` set to `file_name` (every other line as it was).
    pub fn with_disk_file(&self, key: &str, file_name: &str) -> Vmx {
        let mut lines = self.lines.clone();
        lines.set(&format!("{key}.fileName"), file_name);
        Vmx { lines }
    }

    /// The file's text.
    pub fn to_text(&self) -> String {
        self.lines.to_text()
    }
}

/// `(controller kind index, bus, unit)` of a device key like `scsi0:1`, or `None`.
fn device_key(dev: &str) -> Option<(usize, u32, u32)> {
    let kind = CONTROLLERS.iter().position(|c| dev.starts_with(c))?;
    let rest = &dev[CONTROLLERS[kind].len()..];
    let (bus, unit) = rest.split_once(':')?;
    if bus.is_empty() || unit.is_empty() || !bus.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !unit.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((kind, bus.parse().ok()?, unit.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const VMX: &str = r#".encoding = "UTF-8"
config.version = "8"
displayName = "web 01"
uuid.bios = "56 4d 12 34 56 78 9a bc-de f0 12 34 56 78 9a bc"
nvram = "web01.nvram"
extendedConfigFile = "web01.vmxf"
scsi0.present = "TRUE"
scsi0.virtualDev = "lsilogic"
scsi0:0.present = "TRUE"
scsi0:0.fileName = "web01.vmdk"
SCSI0:1.Present = "true"
scsi0:1.fileName = "[datastore2] web01/data-000001.vmdk"
scsi0:2.present = "FALSE"
scsi0:2.fileName = "gone.vmdk"
scsi1.present = "FALSE"
scsi1:0.present = "TRUE"
scsi1:0.fileName = "off-controller.vmdk"
ide0:0.present = "TRUE"
ide0:0.fileName = "scratch.vmdk"
ide0:0.mode = "independent-nonpersistent"
ide1:0.present = "TRUE"
ide1:0.deviceType = "cdrom-image"
ide1:0.fileName = "/iso/debian.iso"
sata0:0.present = "TRUE"
sata0:0.fileName = "/vmfs/volumes/ds/rdm.vmdk"
sata0:0.mode = "independent-persistent"
checkpoint.vmState = ""
"#;

    #[test]
    fn disks_of_every_controller_and_the_small_files() {
        let v = Vmx::parse(VMX, Path::new("/vm/web01.vmx")).unwrap();
        assert_eq!(v.display_name(), Some("web 01"));
        assert_eq!(v.uuid(), Some("56 4d 12 34 56 78 9a bc-de f0 12 34 56 78 9a bc"));
        assert_eq!(v.nvram(), Some("web01.nvram"));
        assert_eq!(v.vmxf(), Some("web01.vmxf"));
        assert_eq!(v.state(), "poweredOff");
        let d = v.disks();
        let keys: Vec<&str> = d.iter().map(|d| d.key.as_str()).collect();
        assert_eq!(keys, ["scsi0:0", "scsi0:1", "ide0:0", "sata0:0"]);
        assert_eq!(d[1].file_name, "[datastore2] web01/data-000001.vmdk");
        assert_eq!(d[2].mode, DiskMode::NonPersistent);
        assert_eq!(d[3].mode, DiskMode::Persistent);
        assert_eq!(d[2].file_key(), "ide0-0");
    }

    #[test]
    fn rewriting_one_disk_keeps_everything_else() {
        let v = Vmx::parse(VMX, Path::new("/vm/web01.vmx")).unwrap();
        let w = v.with_disk_file("scsi0:1", "data.vmdk");
        let (a, b) = (v.to_text(), w.to_text());
        let diff: Vec<(&str, &str)> = a.lines().zip(b.lines()).filter(|(x, y)| x != y).collect();
        assert_eq!(
            diff,
            [("scsi0:1.fileName = \"[datastore2] web01/data-000001.vmdk\"", "scsi0:1.fileName = \"data.vmdk\"")]
        );
        assert_eq!(a.lines().count(), b.lines().count());
    }
}
