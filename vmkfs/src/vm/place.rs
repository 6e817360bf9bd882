//! Where a VM's files are: host folders and VMFS volumes, and the datastore names that lead there.
//!
//! A path as a `.vmx` or a catalog writes it is one of:
//! - `[NAME] rel/path`: inside datastore `NAME` — a host folder given with `--datastore NAME=DIR`,
//!   or the VMFS volume of `--volume` whose label is `NAME`;
//! - an absolute path: on the host, or inside the volume when the VM itself lies in the volume;
//! - a relative path: from the folder of the file that names it (the VM folder for a `.vmx`).
//!
//! A [`Place`] is one resolved path together with where it is; it opens files through the same
//! [`vmdk::Storage`] seam disks use, so small files come out of a volume through the volume's
//! plain-file reader exactly as disks do.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use vmdk::{HostStorage, Storage};

use crate::error::{Error, Result};
use crate::vmfs::{FileKind, VmfsStorage, Volume};

/// Where a place is.
#[derive(Debug, Clone)]
pub enum Where {
    /// The host file system.
    Host,
    /// A VMFS volume (read-only), with its label.
    Volume(Volume, String),
}

/// A resolved path and where it is.
#[derive(Debug, Clone)]
pub struct Place {
    /// Host or volume.
    pub on: Where,
    /// The path (host: as given or absolute; volume: absolute inside the volume).
    pub path: PathBuf,
}

impl Place {
    /// A place on the host.
    pub fn host(path: impl Into<PathBuf>) -> Place {
        Place { on: Where::Host, path: path.into() }
    }

    /// The storage its files open through.
    pub fn storage(&self) -> Arc<dyn Storage> {
        match &self.on {
            Where::Host => HostStorage::shared(),
            Where::Volume(v, _) => VmfsStorage::shared(v.clone()),
        }
    }

    /// True inside a (read-only) VMFS volume.
    pub fn on_volume(&self) -> bool {
        matches!(self.on, Where::Volume(..))
    }

    /// The same kind of place at another path.
    pub fn at(&self, path: impl Into<PathBuf>) -> Place {
        Place { on: self.on.clone(), path: path.into() }
    }

    /// The folder it lies in.
    pub fn folder(&self) -> Place {
        self.at(vmdk::txn::folder(&self.path).to_path_buf())
    }

    /// `name` inside this folder.
    pub fn join(&self, name: &str) -> Place {
        self.at(self.path.join(name))
    }

    /// The file name.
    pub fn name(&self) -> String {
        vmdk::txn::file_name(&self.path)
    }

    /// True if something exists there.
    pub fn exists(&self) -> bool {
        match &self.on {
            Where::Host => std::fs::symlink_metadata(&self.path).is_ok(),
            Where::Volume(v, _) => v.exists(&self.text()),
        }
    }

    /// True for a folder.
    pub fn is_dir(&self) -> bool {
        match &self.on {
            Where::Host => self.path.is_dir(),
            Where::Volume(v, _) => v.stat(&self.text()).is_ok_and(|s| s.kind == FileKind::Directory),
        }
    }

    /// The names in this folder, sorted (empty when it cannot be listed).
    pub fn list(&self) -> Vec<String> {
        let mut v: Vec<String> = match &self.on {
            Where::Host => std::fs::read_dir(&self.path)
                .map(|r| r.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
                .unwrap_or_default(),
            Where::Volume(vol, _) => {
                vol.read_dir(&self.text()).map(|r| r.into_iter().map(|e| e.name).collect()).unwrap_or_default()
            }
        };
        v.sort();
        v
    }

    /// Reads the whole file, refusing one larger than `max` bytes.
    pub fn read_small(&self, max: u64) -> Result<Vec<u8>> {
        let b = self.storage().open(&self.path, false)?;
        let len = b.len()?;
        if len > max {
            return Err(Error::Backup {
                path: self.path.clone(),
                what: format!("{len} bytes is more than the {max} bytes such a file may have"),
            });
        }
        let mut buf = vec![0u8; len as usize];
        b.read_exact_at(&mut buf, 0)?;
        Ok(buf)
    }

    /// The path as text (volume paths are strings).
    pub fn text(&self) -> String {
        self.path.to_string_lossy().into_owned()
    }

    /// For messages: `PATH` on the host, `PATH in volume LABEL` inside a volume.
    pub fn describe(&self) -> String {
        match &self.on {
            Where::Host => self.path.display().to_string(),
            Where::Volume(_, l) => format!("{} in volume {l:?}", self.path.display()),
        }
    }
}

/// `[NAME] rel` split into `(NAME, rel)`.
pub fn split_datastore(s: &str) -> Option<(&str, &str)> {
    let rest = s.trim_start().strip_prefix('[')?;
    let (name, rel) = rest.split_once(']')?;
    Some((name.trim(), rel.trim_start().trim_start_matches('/')))
}

/// The datastores a command knows: host folders (`--datastore NAME=DIR`) and the volume of
/// `--volume` (named by its label).
#[derive(Debug, Clone, Default)]
pub struct Datastores {
    host: Vec<(String, PathBuf)>,
    volume: Option<(String, Volume)>,
}

impl Datastores {
    /// Datastores from `--datastore NAME=DIR` values and the volume of `--volume`, if any.
    pub fn new(host: &[String], volume: Option<Volume>) -> Result<Datastores> {
        let mut h = Vec::new();
        for spec in host {
            let (name, dir) = spec
                .split_once('=')
                .filter(|(n, d)| !n.trim().is_empty() && !d.is_empty())
                .ok_or_else(|| Error::Usage(format!("--datastore {spec:?}: expected NAME=DIR")))?;
            h.push((name.trim().to_string(), PathBuf::from(dir)));
        }
        let volume = volume.map(|v| (v.descriptor().label.clone(), v));
        Ok(Datastores { host: h, volume })
    }

    /// The root of datastore `name`.
    pub fn root(&self, name: &str) -> Option<Place> {
        if let Some((_, d)) = self.host.iter().rev().find(|(n, _)| n == name) {
            return Some(Place::host(d.clone()));
        }
        match &self.volume {
            Some((label, v)) if label == name => {
                Some(Place { on: Where::Volume(v.clone(), label.clone()), path: "/".into() })
            }
            _ => None,
        }
    }

    /// Every datastore root (host folders, then the volume).
    pub fn roots(&self) -> Vec<(String, Place)> {
        let mut v: Vec<(String, Place)> = self.host.iter().map(|(n, d)| (n.clone(), Place::host(d.clone()))).collect();
        if let Some((label, _)) = &self.volume {
            v.extend(self.root(label).map(|p| (label.clone(), p)));
        }
        v
    }

    /// Resolves `written` (as a `.vmx` or catalog writes a path) against `base`, the folder of the
    /// file that names it. `what` names the path in errors.
    pub fn resolve(&self, written: &str, base: &Place, what: &str) -> Result<Place> {
        if let Some((name, rel)) = split_datastore(written) {
            let root = self.root(name).ok_or_else(|| {
                Error::Usage(format!(
                    "{what} {written:?} is on datastore [{name}], which is not known: give --datastore {name}=DIR{}",
                    if self.volume.is_some() { " (the volume's label is another)" } else { "" }
                ))
            })?;
            return Ok(root.at(root.path.join(rel)));
        }
        let p = Path::new(written);
        if p.is_absolute() {
            return Ok(base.at(p));
        }
        Ok(base.at(base.path.join(p)))
    }

    /// The place of a host path given on the command line (or inside the volume with `--volume`).
    pub fn command_line(&self, given: &str) -> Result<Place> {
        if split_datastore(given).is_some() {
            return self.resolve(given, &Place::host("."), "the path");
        }
        match &self.volume {
            Some((label, v)) => {
                let p = if given.starts_with('/') { given.to_string() } else { format!("/{given}") };
                Ok(Place { on: Where::Volume(v.clone(), label.clone()), path: p.into() })
            }
            None => Ok(Place::host(std::path::absolute(given).unwrap_or_else(|_| PathBuf::from(given)))),
        }
    }

    /// How a catalog writes `place`: `[NAME] rel` when it lies in a datastore, else its absolute
    /// path.
    pub fn written(&self, place: &Place) -> String {
        match &place.on {
            Where::Volume(_, label) => format!("[{label}] {}", place.text().trim_start_matches('/')),
            Where::Host => {
                let abs = std::path::absolute(&place.path).unwrap_or_else(|_| place.path.clone());
                for (n, d) in &self.host {
                    let d = std::path::absolute(d).unwrap_or_else(|_| d.clone());
                    if let Ok(rel) = abs.strip_prefix(&d) {
                        return format!("[{n}] {}", rel.display());
                    }
                }
                abs.display().to_string()
            }
        }
    }

    /// The `.vmx` of a VM given as a `.vmx` path, a VM folder, or `name:DISPLAYNAME` (searched in
    /// every datastore: `*.vmx` at the root and one folder down).
    pub fn find_vm(&self, spec: &str) -> Result<Place> {
        if let Some(name) = spec.strip_prefix("name:") {
            return self.find_by_name(name);
        }
        let p = self.command_line(spec)?;
        if p.is_dir() {
            let vmx: Vec<String> = p.list().into_iter().filter(|n| n.to_ascii_lowercase().ends_with(".vmx")).collect();
            return match vmx.as_slice() {
                [one] => Ok(p.join(one)),
                [] => Err(Error::Usage(format!("{}: no .vmx in this folder", p.describe()))),
                many => {
                    Err(Error::Usage(format!("{}: several .vmx files ({}): give one", p.describe(), many.join(", "))))
                }
            };
        }
        if !p.exists() {
            return Err(Error::Usage(format!("{}: no such VM (.vmx file or folder)", p.describe())));
        }
        Ok(p)
    }

    fn find_by_name(&self, name: &str) -> Result<Place> {
        let mut found: Vec<Place> = Vec::new();
        for (_, root) in self.roots() {
            let mut candidates: Vec<Place> = Vec::new();
            for n in root.list() {
                let p = root.join(&n);
                if n.to_ascii_lowercase().ends_with(".vmx") {
                    candidates.push(p);
                } else if p.is_dir() {
                    candidates.extend(
                        p.list().into_iter().filter(|m| m.to_ascii_lowercase().ends_with(".vmx")).map(|m| p.join(&m)),
                    );
                }
            }
            for c in candidates {
                let Ok(raw) = c.read_small(super::kv::MAX_BYTES) else { continue };
                let Ok(v) = super::vmx::Vmx::parse(&String::from_utf8_lossy(&raw), &c.path) else { continue };
                if v.display_name() == Some(name) {
                    found.push(c);
                }
            }
        }
        match found.len() {
            1 => Ok(found.remove(0)),
            0 => Err(Error::Usage(format!(
                "no VM named {name:?} in the datastores ({})",
                self.roots().iter().map(|(n, p)| format!("[{n}] {}", p.describe())).collect::<Vec<_>>().join(", ")
            ))),
            _ => Err(Error::Usage(format!(
                "several VMs are named {name:?}: {}; give the .vmx",
                found.iter().map(Place::describe).collect::<Vec<_>>().join(", ")
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datastore_paths() {
        assert_eq!(split_datastore("[ds1] vm/vm.vmdk"), Some(("ds1", "vm/vm.vmdk")));
        assert_eq!(split_datastore("[my ds]/vm.vmx"), Some(("my ds", "vm.vmx")));
        assert_eq!(split_datastore("vm.vmdk"), None);
        let d = tempfile::tempdir().unwrap();
        let ds = Datastores::new(&[format!("ds1={}", d.path().display())], None).unwrap();
        let base = Place::host("/somewhere/vm");
        assert_eq!(ds.resolve("[ds1] vm/a.vmdk", &base, "disk").unwrap().path, d.path().join("vm/a.vmdk"));
        assert_eq!(ds.resolve("a.vmdk", &base, "disk").unwrap().path, Path::new("/somewhere/vm/a.vmdk"));
        assert_eq!(ds.resolve("/abs/a.vmdk", &base, "disk").unwrap().path, Path::new("/abs/a.vmdk"));
        let e = ds.resolve("[nope] a.vmdk", &base, "disk").unwrap_err().to_string();
        assert!(e.contains("--datastore nope=DIR"), "{e}");
        assert_eq!(ds.written(&Place::host(d.path().join("vm/x.vmx"))), "[ds1] vm/x.vmx");
        assert_eq!(ds.written(&Place::host("/other/x.vmx")), "/other/x.vmx");
        assert!(Datastores::new(&["nodir".into()], None).is_err());
    }
}
