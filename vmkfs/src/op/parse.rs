//! Option values of the `vmkfs` command parsed into the typed parameters of an [`super::Op`],
//! each refusing a bad value with a usage error in the command's words.

use std::path::PathBuf;

use crate::engine::{DirectIo, Tuning};
use crate::error::{Error, Result};
use crate::rdm_ops::DeviceTarget;
use crate::vmdk::create::{Adapter, DiskFormat};

fn unknown_format(f: &str, what: &str, extra: &str) -> Error {
    let all: Vec<&str> = DiskFormat::EVERY.iter().map(|f| f.name()).collect();
    Error::Usage(format!("unknown disk format {f:?}{what} (expected one of: {}, {extra})", all.join(", ")))
}

/// `-d FMT` of a disk written (`None`: zeroedthick).
pub fn disk_format(f: Option<&str>) -> Result<DiskFormat> {
    match f {
        None => Ok(DiskFormat::ZeroedThick),
        Some(f) => DiskFormat::parse(f).ok_or_else(|| unknown_format(f, "", "thick")),
    }
}

/// `-d FMT` of `-e` (`None`: 2gbsparse); `Ok(None)` for `-d raw`, the plain bytes.
pub fn export_format(f: Option<&str>) -> Result<Option<DiskFormat>> {
    let f = f.unwrap_or("2gbsparse");
    if f.eq_ignore_ascii_case("raw") {
        return Ok(None);
    }
    DiskFormat::parse(f).map(Some).ok_or_else(|| unknown_format(f, " for -e", "raw"))
}

/// `-a ADAPTER`.
pub fn adapter(a: Option<&str>) -> Result<Option<Adapter>> {
    let parse = |a: &str| Adapter::parse(a).ok_or_else(|| Error::Usage(format!("unknown adapter type {a:?}")));
    a.map(parse).transpose()
}

/// The device target of `-d rdm:DEV`, `rdmp:DEV` or `raw:DEV`; `None` for other formats.
pub fn device_target(f: Option<&str>) -> Result<Option<DeviceTarget>> {
    let Some(f) = f else { return Ok(None) };
    if let Some(t) = DeviceTarget::parse(f) {
        return Ok(Some(t));
    }
    let lower = f.to_ascii_lowercase();
    if ["rdm", "rdmp", "raw", "rdm:", "rdmp:", "raw:"].contains(&lower.as_str()) {
        return Err(Error::Usage(format!("-d {f} needs the device: -d {}:DEV", lower.trim_end_matches(':'))));
    }
    Ok(None)
}

/// `-X`'s `-d`: true for eagerzeroedthick (the new space zeroed), refusing any other format.
pub fn extend_eager(f: Option<&str>) -> Result<bool> {
    match f {
        None => Ok(false),
        Some(f) if f.eq_ignore_ascii_case("eagerzeroedthick") => Ok(true),
        Some(f) => Err(Error::Usage(format!("-X takes only -d eagerzeroedthick, not {f:?}"))),
    }
}

/// `-x check|repair`: true for a repair.
pub fn fix_mode(mode: &str) -> Result<bool> {
    match mode {
        "check" => Ok(false),
        "repair" => Ok(true),
        m => Err(Error::Usage(format!("-x takes check or repair, not {m:?}"))),
    }
}

/// The engine tuning of `--threads N`, `--chunk-kib N` and `--direct-io auto|on|off`.
pub fn tuning(threads: Option<u32>, chunk_kib: Option<u32>, direct_io: Option<&str>) -> Tuning {
    Tuning {
        threads: threads.map(|t| t as usize),
        chunk: chunk_kib.map(|k| u64::from(k) << 10),
        direct: direct_io.map(|w| match w {
            "on" => DirectIo::On,
            "off" => DirectIo::Off,
            _ => DirectIo::Auto,
        }),
    }
}

/// `--wait SECONDS` (a value that is negative or not a number waits not at all; at most 1e6 s).
pub fn wait(seconds: Option<f64>) -> Option<std::time::Duration> {
    seconds.filter(|w| w.is_finite() && *w >= 0.0).map(|w| std::time::Duration::from_secs_f64(w.min(1e6)))
}

/// The devices of `-P`'s volume: `--volume`'s, else the target's comma-separated list.
pub fn volume_devices(volume: &[PathBuf], target: Option<&std::path::Path>) -> Result<Vec<PathBuf>> {
    if !volume.is_empty() {
        return Ok(volume.to_vec());
    }
    let t = target.ok_or_else(|| Error::Usage("give the volume's devices with --volume DEV[,DEV...]".into()))?;
    Ok(t.to_string_lossy().split(',').filter(|s| !s.is_empty()).map(PathBuf::from).collect())
}
