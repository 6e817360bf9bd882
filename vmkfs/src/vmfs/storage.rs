//! The storage seam over a volume: [`VmfsStorage`] implements [`vmdk::Storage`] (read-only) and
//! [`VmfsBacking`] implements [`vmdk::Backing`], so `vmdk::Link::open` and `redo::Chain::open` open a
//! disk inside the volume exactly like one in a host folder. `data_runs` comes from the extent map,
//! so the clone engine never reads holes or to-be-zeroed blocks.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use vmdk::{Backing, Storage};

use super::error::VmfsError;
use super::file::File;
use super::volume::Volume;

/// A VMFS volume as a place disks live in. Paths are absolute or relative to the volume's root.
#[derive(Debug, Clone)]
pub struct VmfsStorage {
    vol: Volume,
}

impl VmfsStorage {
    /// Storage over `vol`.
    pub fn new(vol: Volume) -> VmfsStorage {
        VmfsStorage { vol }
    }

    /// A shared handle, ready for [`vmdk::OpenOptions::storage`].
    pub fn shared(vol: Volume) -> Arc<dyn Storage> {
        Arc::new(VmfsStorage { vol })
    }

    /// The volume.
    pub fn volume(&self) -> &Volume {
        &self.vol
    }
}

/// A volume that failed to open (`--volume` given, the volume unreadable): every access reports why,
/// so a command fails on the first path it resolves.
#[derive(Debug)]
pub struct Unopened(pub String);

impl Unopened {
    fn err(&self) -> vmdk::Error {
        vmdk::Error::unsupported("--volume", self.0.clone())
    }
}

impl Storage for Unopened {
    fn open(&self, _: &Path, _: bool) -> vmdk::Result<Arc<dyn Backing>> {
        Err(self.err())
    }
    fn create_new(&self, _: &Path) -> vmdk::Result<Arc<dyn Backing>> {
        Err(self.err())
    }
    fn exists(&self, _: &Path) -> bool {
        false
    }
    fn rename(&self, _: &Path, _: &Path) -> vmdk::Result<()> {
        Err(self.err())
    }
    fn remove(&self, _: &Path) -> vmdk::Result<()> {
        Err(self.err())
    }
}

fn text(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

fn read_only(path: &Path, op: &str) -> vmdk::Error {
    VmfsError::ReadOnly { path: text(path), op: op.into() }.into()
}

impl Storage for VmfsStorage {
    fn open(&self, path: &Path, write: bool) -> vmdk::Result<Arc<dyn Backing>> {
        if write {
            return Err(read_only(path, "open for writing"));
        }
        let file = self.vol.open_file(&text(path))?;
        Ok(Arc::new(VmfsBacking { path: path.to_path_buf(), file }))
    }
    fn create_new(&self, path: &Path) -> vmdk::Result<Arc<dyn Backing>> {
        Err(read_only(path, "create"))
    }
    fn exists(&self, path: &Path) -> bool {
        self.vol.exists(&text(path))
    }
    fn rename(&self, from: &Path, _to: &Path) -> vmdk::Result<()> {
        Err(read_only(from, "rename"))
    }
    fn remove(&self, path: &Path) -> vmdk::Result<()> {
        Err(read_only(path, "remove"))
    }
    fn sync_dir(&self, _dir: &Path) -> vmdk::Result<()> {
        Ok(())
    }
}

/// A file inside a VMFS volume, as a [`vmdk::Backing`].
#[derive(Debug)]
pub struct VmfsBacking {
    path: PathBuf,
    file: File,
}

impl VmfsBacking {
    /// The open file.
    pub fn file(&self) -> &File {
        &self.file
    }
}

impl vmdk::ReadAt for VmfsBacking {
    type Error = vmdk::Error;
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> vmdk::Result<()> {
        let n = self.file.read_at(buf, offset)?;
        if n < buf.len() {
            return Err(vmdk::Error::corrupt(
                &self.path,
                offset + n as u64,
                format!("file is truncated: needed {} bytes at offset {offset}, file ends after {n}", buf.len()),
            ));
        }
        Ok(())
    }
}

impl Backing for VmfsBacking {
    fn path(&self) -> &Path {
        &self.path
    }
    fn len(&self) -> vmdk::Result<u64> {
        Ok(self.file.len())
    }
    fn write_all_at(&self, _buf: &[u8], _offset: u64) -> vmdk::Result<()> {
        Err(read_only(&self.path, "write"))
    }
    fn set_len(&self, _len: u64) -> vmdk::Result<()> {
        Err(read_only(&self.path, "change the length"))
    }
    fn sync(&self) -> vmdk::Result<()> {
        Ok(())
    }
    fn data_runs(&self, offset: u64, len: u64) -> vmdk::Result<Vec<(u64, u64)>> {
        Ok(self.file.data_runs(offset, len)?)
    }
    fn allocate(&self, _offset: u64, _len: u64) -> vmdk::Result<()> {
        Err(read_only(&self.path, "allocate"))
    }
    fn punch_hole(&self, _offset: u64, _len: u64) -> vmdk::Result<()> {
        Err(read_only(&self.path, "punch a hole"))
    }
}

/// The storage paths resolve in inside the volume on `devices` (one that fails every access
/// with the reason when the volume does not open).
pub fn volume_storage(devices: &[PathBuf]) -> Arc<dyn Storage> {
    match Volume::open(devices) {
        Ok(v) => VmfsStorage::shared(v),
        Err(e) => Arc::new(Unopened(e.to_string())),
    }
}
