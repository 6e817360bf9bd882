//! The command line as one [`Op`]: which operation it selects, and its parameters parsed
//! ([`vmkfs::op::parse`], [`vmkfs::size`]).

use std::path::{Path, PathBuf};

use vmkfs::error::{Error, Result};
use vmkfs::nbd::Address;
use vmkfs::op::copy::{self, CopyOp};
use vmkfs::op::disk::DiskOp;
use vmkfs::op::parse as p;
use vmkfs::op::rdm::RdmOp;
use vmkfs::op::redo::RedoOp;
use vmkfs::op::serve::ServeOp;
use vmkfs::op::vmfs::VmfsOp;
use vmkfs::op::Op;
use vmkfs::rdm::Mode;
use vmkfs::size::{parse_bytes, parse_size};
use vmkfs::vmdk::create::DiskFormat;

use crate::Cli;

fn count(flags: &[bool]) -> usize {
    flags.iter().filter(|x| **x).count()
}

fn disk_ops(cli: &Cli) -> usize {
    let d = &cli.disk;
    let (c, x, i, e, f) =
        (d.create.is_some(), d.extend.is_some(), d.clone.is_some(), d.rename.is_some(), d.fix.is_some());
    let (cmp, ra, wa) = (d.compare.is_some(), d.read_at.is_some(), d.write_at.is_some());
    count(&[c, i, d.info, d.geometry, x, d.delete, e, d.punch_zero, d.write_zeros, d.inflate, d.eager_zero, f])
        + count(&[d.map, cmp, ra, wa, d.dump])
}

fn redo_ops(cli: &Cli) -> usize {
    let r = &cli.redo;
    let (e, a, u) = (r.export_delta.is_some(), r.apply.is_some(), r.unique_blocks.is_some());
    count(&[r.snapshot, r.commit, r.discard, r.chain, r.changed_blocks, e, a, r.chain_consistent, u])
}

fn rdm_ops(cli: &Cli) -> usize {
    count(&[cli.rdm.create_rdm.is_some(), cli.rdm.create_rdmp.is_some(), cli.rdm.query])
}

fn vmfs_ops(cli: &Cli) -> usize {
    count(&[cli.vmfs.queryfs, cli.vmfs.list.is_some(), cli.vmfs.copy_out.is_some()])
}

/// `-h` alone (no disk, REDO or RDM operation either) prints help, as it always has.
fn help(cli: &Cli) -> bool {
    cli.vmfs.human && vmfs_ops(cli) == 0 && disk_ops(cli) + redo_ops(cli) + rdm_ops(cli) == 0
}

/// How many operations the command line selects (`-i -` and cloning onto a device count as `-i`).
pub fn selected(cli: &Cli) -> usize {
    let (s, n, m) = (cli.stream.export_file.is_some(), cli.nbd.serve_nbd.is_some(), cli.mount.mount.is_some());
    disk_ops(cli) + redo_ops(cli) + rdm_ops(cli) + vmfs_ops(cli) + count(&[help(cli), s, n, m])
}

/// The operation the command line selects (exactly one is); `None` for `-h` alone.
pub fn op(cli: &Cli) -> Result<Option<Op>> {
    let (fmt, writable) = (cli.common.format.as_deref(), cli.nbd.writable);
    let (level, size_given) = (cli.stream.compress_level, cli.stream.input_size.is_some());
    Ok(Some(if let Some(dst) = &cli.stream.export_file {
        let (src, dst) = (target(cli)?, dst.clone());
        let (format, adapter) = (p::export_format(fmt)?, p::adapter(cli.common.adapter.as_deref())?);
        Op::Copy(CopyOp::Export { src, dst, format, adapter, compress_level: level, size_given })
    } else if cli.disk.clone.as_deref() == Some(Path::new("-")) {
        import(cli)?
    } else if let Some(src) = &cli.disk.clone {
        clone(cli, src)?
    } else if disk_ops(cli) > 0 {
        disk(cli)?
    } else if redo_ops(cli) > 0 {
        Op::Redo(redo(cli)?)
    } else if rdm_ops(cli) > 0 {
        Op::Rdm(rdm(cli)?)
    } else if vmfs_ops(cli) > 0 {
        Op::Vmfs(vmfs(cli)?)
    } else if let Some(socket) = &cli.nbd.serve_nbd {
        let path = target(cli)?;
        Op::Serve(ServeOp::Nbd { path, address: Address::parse(socket)?, writable })
    } else if let Some(dir) = &cli.mount.mount {
        Op::Serve(ServeOp::Mount { path: target(cli)?, dir: dir.clone(), writable })
    } else {
        return Ok(None);
    }))
}

/// The target path (the last positional argument).
fn target(cli: &Cli) -> Result<PathBuf> {
    cli.common.target.clone().ok_or_else(|| Error::Usage("missing the target disk path".into()))
}

fn clone(cli: &Cli, src: &Path) -> Result<Op> {
    let (dst, fmt) = (target(cli)?, cli.common.format.as_deref());
    let (device, target_is_zero) = (p::device_target(fmt)?, cli.rdm.target_is_zero);
    if target_is_zero && device.is_none() {
        return Err(Error::Usage("--target-is-zero needs -d rdm:DEV, rdmp:DEV or raw:DEV".into()));
    }
    let format = if device.is_some() { DiskFormat::ZeroedThick } else { p::disk_format(fmt)? };
    let (adapter, compress_level) = (p::adapter(cli.common.adapter.as_deref())?, cli.stream.compress_level);
    let (src, size_given) = (src.to_path_buf(), cli.stream.input_size.is_some());
    let how = copy::CloneArgs { device, format, adapter, target_is_zero, compress_level, size_given };
    Ok(Op::Copy(CopyOp::Clone { src, dst, how }))
}

fn import(cli: &Cli) -> Result<Op> {
    let dst = target(cli)?;
    if dst == Path::new("-") {
        return Err(Error::Usage("-i - writes a disk file: give its path, not `-`".into()));
    }
    if cli.common.format.as_deref().is_some_and(|f| f.contains(':')) {
        return Err(Error::Usage("-i - cannot write onto a device (-d rdm:, rdmp:, raw:)".into()));
    }
    let format = p::disk_format(cli.common.format.as_deref())?;
    let size = cli.stream.input_size.as_deref().map(parse_size).transpose()?;
    let (compress_level, adapter) = (cli.stream.compress_level, p::adapter(cli.common.adapter.as_deref())?);
    Ok(Op::Copy(CopyOp::Import { dst, format, size, compress_level, adapter }))
}

fn disk(cli: &Cli) -> Result<Op> {
    let (d, fmt) = (&cli.disk, cli.common.format.as_deref());
    let path = target(cli)?;
    if let Some(size) = &d.create {
        let (capacity, format) = (parse_size(size)?, p::disk_format(fmt)?);
        let (adapter, compress_level) = (p::adapter(cli.common.adapter.as_deref())?, cli.stream.compress_level);
        return Ok(Op::Disk(DiskOp::Create { path, capacity, format, adapter, compress_level }));
    }
    if d.dump && !cli.vmfs.volume.is_empty() {
        let path = path.to_string_lossy().into_owned();
        return Ok(Op::Vmfs(VmfsOp::DumpFile { devices: cli.vmfs.volume.clone(), path }));
    }
    let offset = |o: &str| parse_bytes(o, "offset");
    let length = || d.length.as_deref().map(|l| parse_bytes(l, "length")).transpose();
    Ok(Op::Disk(match () {
        _ if d.info => DiskOp::Info(path),
        _ if d.geometry => DiskOp::Geometry(path),
        _ if d.dump => DiskOp::Dump(path),
        _ if d.delete => DiskOp::Delete(path),
        _ if d.punch_zero => DiskOp::PunchZero(path),
        _ if d.write_zeros => DiskOp::WriteZeros(path),
        _ if d.inflate || d.eager_zero => DiskOp::Inflate(path),
        _ if d.map => DiskOp::Map(path),
        _ => match (&d.extend, &d.rename, &d.fix, &d.compare, &d.read_at, &d.write_at) {
            (Some(size), ..) => {
                let eager = p::extend_eager(fmt)?;
                DiskOp::Extend { path, capacity: parse_size(size)?, eager }
            }
            (_, Some(old), ..) => DiskOp::Rename { from: old.clone(), to: path },
            (_, _, Some(mode), ..) => DiskOp::Fix { path, repair: p::fix_mode(mode)? },
            // `--compare A B`: A is the option's value, B the target.
            (_, _, _, Some(a), ..) => DiskOp::Compare { a: a.clone(), b: path },
            (.., Some(off), _) => DiskOp::ReadAt { path, offset: offset(off)?, length: length()? },
            (.., Some(off)) => DiskOp::WriteAt { path, offset: offset(off)? },
            _ => return Err(Error::Usage("no operation".into())),
        },
    }))
}

fn redo(cli: &Cli) -> Result<RedoOp> {
    let r = &cli.redo;
    if let Some(child) = &r.unique_blocks {
        return Ok(RedoOp::Unique { child: child.clone(), parent: cli.common.target.clone() });
    }
    let path = target(cli)?;
    let apply = r.apply.as_deref();
    Ok(match () {
        _ if r.chain_consistent => RedoOp::ChainConsistent(path),
        _ if r.snapshot => RedoOp::Snapshot { path, legacy: r.legacy_redo },
        _ if r.export_delta.is_some() => {
            let since = r.since.clone().ok_or_else(|| Error::Usage("--export-delta needs --since LINK".into()))?;
            RedoOp::ExportDelta { path, since, dst: r.export_delta.clone().unwrap_or_default() }
        }
        _ if apply.is_some() => {
            let (a, replica) = (apply.unwrap_or(Path::new("")), path);
            match vmkfs::repo::location::parse_location(&a.to_string_lossy()) {
                Some(location) => RedoOp::ApplyRestic { location, replica },
                None => RedoOp::Apply { delta: a.to_path_buf(), replica },
            }
        }
        _ if r.commit => RedoOp::Commit(path),
        _ if r.discard => RedoOp::Discard(path),
        _ if r.chain => RedoOp::Chain(path),
        _ => {
            let block = r.block_size.as_deref().map(|b| parse_bytes(b, "block size")).transpose()?;
            let (since, save_map, since_map) = (r.since.clone(), r.save_map.clone(), r.since_map.clone());
            RedoOp::ChangedBlocks { path, since, block, save_map, since_map }
        }
    })
}

fn rdm(cli: &Cli) -> Result<RdmOp> {
    let r = &cli.rdm;
    if r.target_is_zero {
        return Err(Error::Usage("--target-is-zero goes with -i SRC -d rdm:|rdmp:|raw:DEV DST".into()));
    }
    let path = target(cli)?;
    let (device, mode) = match (&r.create_rdm, &r.create_rdmp) {
        (Some(dev), _) => (dev.clone(), Mode::Virtual),
        (None, Some(dev)) => (dev.clone(), Mode::Physical),
        (None, None) => return Ok(RdmOp::Query(path)),
    };
    Ok(RdmOp::Create { device, path, mode, adapter: p::adapter(cli.common.adapter.as_deref())? })
}

fn vmfs(cli: &Cli) -> Result<VmfsOp> {
    let (v, human) = (&cli.vmfs, cli.vmfs.human);
    if let Some(path) = &v.copy_out {
        return Ok(VmfsOp::CopyOut { devices: v.volume.clone(), path: path.clone(), dest: target(cli)? });
    }
    if v.queryfs {
        return Ok(VmfsOp::QueryFs { devices: p::volume_devices(&v.volume, cli.common.target.as_deref())?, human });
    }
    if v.volume.is_empty() {
        return Err(Error::Usage("-l needs the volume: --volume DEV[,DEV...]".into()));
    }
    let path = v.list.clone().unwrap_or_else(|| "/".into());
    Ok(VmfsOp::List { devices: v.volume.clone(), path, human })
}
