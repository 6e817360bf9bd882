//! [`ReadAt`]: the one positional-read trait of the vmkfs crates.
//!
//! Everything that reads bytes at offsets implements it: a host file or device ([`crate::Device`]),
//! an open file of a disk (`vmdk::Backing` extends it), the virtual disk below a link (a parent
//! chain, for partial grains), the devices a VMFS volume lives on (`vmkfs::vmfs::DeviceRead`
//! extends it) and the files inside a volume. Each layer keeps its own error type, which names the
//! file or device and the offset of a failed read.

/// Reads exactly `buf.len()` bytes at a byte offset, from many threads at once (`&self`).
pub trait ReadAt: Send + Sync {
    /// What a failed or short read is; it names the file or device, the offset and the length.
    type Error;
    /// Reads exactly `buf.len()` bytes at byte `offset`. A read past the end is an error (at the
    /// layers that know file formats, a "truncated" corruption naming the offset).
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<(), Self::Error>;
}

/// A view of `inner` shifted by `base` bytes: offset 0 here is `base` there.
pub struct Shifted<'a, E> {
    /// What is read.
    pub inner: &'a dyn ReadAt<Error = E>,
    /// Where offset 0 maps to.
    pub base: u64,
}

impl<E> ReadAt for Shifted<'_, E> {
    type Error = E;
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<(), E> {
        self.inner.read_exact_at(buf, self.base + offset)
    }
}

impl ReadAt for crate::Device {
    type Error = std::io::Error;
    /// [`crate::Device::read_exact_at`]: a short read is [`std::io::ErrorKind::UnexpectedEof`].
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        crate::Device::read_exact_at(self, buf, offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Bytes(Vec<u8>);

    impl ReadAt for Bytes {
        type Error = String;
        fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<(), String> {
            let end = offset as usize + buf.len();
            let src = self.0.get(offset as usize..end).ok_or_else(|| format!("past the end at offset {offset}"))?;
            buf.copy_from_slice(src);
            Ok(())
        }
    }

    #[test]
    fn shifted_reads_from_its_base() {
        let b = Bytes((0..100).collect());
        let s = Shifted { inner: &b, base: 10 };
        let mut buf = [0u8; 3];
        s.read_exact_at(&mut buf, 5).unwrap();
        assert_eq!(buf, [15, 16, 17]);
        assert_eq!(s.read_exact_at(&mut buf, 88).unwrap_err(), "past the end at offset 98");
    }

    #[test]
    fn device_reads_through_the_trait() {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), b"abcdef").unwrap();
        let d = crate::Device::open(f.path(), crate::OpenMode::Read).unwrap();
        let r: &dyn ReadAt<Error = std::io::Error> = &d;
        let mut buf = [0u8; 2];
        r.read_exact_at(&mut buf, 3).unwrap();
        assert_eq!(&buf, b"de");
        assert_eq!(r.read_exact_at(&mut buf, 5).unwrap_err().kind(), std::io::ErrorKind::UnexpectedEof);
    }
}
