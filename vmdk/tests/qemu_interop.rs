//! Interoperability with qemu-img, both ways:
//!
//! - qemu writes, we read: every subformat qemu can create, read back byte-identical, with our
//!   allocation map equal to `qemu-img map`'s; a split disk with several 2 GiB extents; version-2
//!   sparse files with zeroed-grain entries.
//! - we write, qemu reads: every format we create, filled through the API, passes `qemu-img check`
//!   and `qemu-img compare` against the raw pattern, reopens with the same bytes, and keeps its
//!   format's promises (thin stays sparse, sparse stores no zero grains, eagerzeroedthick is fully
//!   allocated).
//!
//! Tests that need qemu-img print a message and pass when it is not installed.

mod common;

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use common::*;
use vmdk::create::{create, CreateOptions, DiskFormat};
use vmdk::{Container, Link, OpenOptions, State};

// ---------------------------------------------------------------------------------------------
// qemu writes, we read
// ---------------------------------------------------------------------------------------------

/// 10 MiB plus 7 sectors: not a multiple of the 64 KiB grain, so the last grain is partial.
const PATTERN_LEN: u64 = 10 * MIB + 7 * 512;

fn convert(raw: &Path, out: &Path, opts: &str) {
    qemu_ok(&["convert", "-f", "raw", "-O", "vmdk", "-o", opts, raw.to_str().unwrap(), out.to_str().unwrap()]);
}

fn qemu_writes_we_read(subformat: &str, seed: u64) {
    qemu_writes_we_read_opts(subformat, "", seed);
}

fn qemu_writes_we_read_opts(subformat: &str, more: &str, seed: u64) {
    require_qemu!();
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("pattern.raw");
    let data = pattern(PATTERN_LEN, seed);
    write_raw_sparse(&raw, &data);
    let img = dir.path().join(format!("{subformat}.vmdk"));
    convert(&raw, &img, &format!("subformat={subformat}{more}"));

    let link = Link::open(&img, &OpenOptions::read()).unwrap();
    assert_eq!(link.capacity(), PATTERN_LEN, "{subformat}: capacity");
    assert_same(&read_all(&link), &data, subformat);
    random_reads(|b, o| link.read_at(b, o), &data, (seed + 1, 200, 200_000), "qemu's image");

    let map = link.map(0, link.capacity()).unwrap();
    assert_map_covers(&map, PATTERN_LEN);
    let ours = map_set(&map, State::Data);
    assert_eq!(ours, qemu_data_set(&img), "{subformat}: our Data runs differ from qemu-img map's data && !zero");
    if subformat != "monolithicFlat" && subformat != "twoGbMaxExtentFlat" {
        // Sparse kinds: exactly the grains holding a non-zero byte are stored.
        assert_eq!(ours, nonzero_blocks(&data, 64 * KIB), "{subformat}: Data runs are not the non-zero grains");
    } else {
        assert!(set_bytes(&ours) < PATTERN_LEN, "{subformat}: qemu's flat file should have holes");
    }
    // Pieces of a map request must agree with the whole.
    let part = link.map(100_000, 3 * MIB + 77).unwrap();
    assert_map_covers_range(&part, 100_000, 3 * MIB + 77);
}

#[track_caller]
fn assert_map_covers_range(map: &vmdk::AllocMap, offset: u64, len: u64) {
    let mut pos = offset;
    for r in map.runs() {
        assert_eq!(r.offset, pos);
        pos = r.end();
    }
    assert_eq!(pos, offset + len);
}

#[test]
fn qemu_monolithic_sparse() {
    qemu_writes_we_read("monolithicSparse", 1);
}

#[test]
fn qemu_monolithic_sparse_zeroed_grain_option() {
    // Version 2 with the zeroed-grain flag, as qemu writes it from scratch.
    qemu_writes_we_read_opts("monolithicSparse", ",zeroed_grain=on", 18);
}

#[test]
fn qemu_split_sparse_zeroed_grain_option() {
    qemu_writes_we_read_opts("twoGbMaxExtentSparse", ",zeroed_grain=on", 19);
}

#[test]
fn qemu_monolithic_flat() {
    qemu_writes_we_read("monolithicFlat", 2);
}

#[test]
fn qemu_two_gb_sparse() {
    qemu_writes_we_read("twoGbMaxExtentSparse", 3);
}

#[test]
fn qemu_two_gb_flat() {
    qemu_writes_we_read("twoGbMaxExtentFlat", 4);
}

#[test]
fn qemu_stream_optimized() {
    qemu_writes_we_read("streamOptimized", 5);
}

#[test]
fn qemu_monolithic_sparse_renamed() {
    // The embedded descriptor names the original file; the file opened is what counts.
    require_qemu!();
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("p.raw");
    let data = pattern(2 * MIB, 6);
    write_raw_sparse(&raw, &data);
    let img = dir.path().join("orig.vmdk");
    convert(&raw, &img, "subformat=monolithicSparse");
    let moved = dir.path().join("renamed.vmdk");
    std::fs::rename(&img, &moved).unwrap();
    let link = Link::open(&moved, &OpenOptions::read()).unwrap();
    assert_eq!(link.container(), Container::Embedded);
    assert_same(&read_all(&link), &data, "renamed monolithicSparse");
}

/// A version-2 file with zeroed-grain entries (GTE = 1): qemu fills an image with random data,
/// then converts the pattern onto it in place, which turns whole zero grains into GTE 1.
#[test]
fn qemu_zeroed_grain() {
    require_qemu!();
    let dir = tempfile::tempdir().unwrap();
    let len = 6 * MIB;
    let mut full = vec![0u8; len as usize];
    Rng::new(7).fill_nonzero(&mut full);
    let raw_a = dir.path().join("a.raw");
    std::fs::write(&raw_a, &full).unwrap();
    let data = pattern(len, 8);
    let raw_b = dir.path().join("b.raw");
    write_raw_sparse(&raw_b, &data);
    let img = dir.path().join("z.vmdk");
    convert(&raw_a, &img, "subformat=monolithicSparse,zeroed_grain=on");
    qemu_ok(&["convert", "-n", "-f", "raw", "-O", "vmdk", raw_b.to_str().unwrap(), img.to_str().unwrap()]);

    let link = Link::open(&img, &OpenOptions::read()).unwrap();
    assert_eq!(link.extents()[0].version, Some(2));
    assert_same(&read_all(&link), &data, "zeroed-grain image");
    let map = link.map(0, len).unwrap();
    assert_map_covers(&map, len);
    let zero = map_set(&map, State::Zero);
    assert!(set_bytes(&zero) >= 64 * KIB, "expected zeroed-grain entries, map: {map:?}");
    assert_eq!(map_set(&map, State::Data), qemu_data_set(&img));
    // Every grain that is entirely zero in the pattern is a zeroed grain, the others are data.
    let nz = nonzero_blocks(&data, 64 * KIB);
    assert_eq!(map_set(&map, State::Data), nz);

    // Writing into a zeroed grain allocates it; the rest of that grain still reads as zeros.
    drop(link);
    let (g0, _) = zero[0];
    let link = Link::open(&img, &OpenOptions::write()).unwrap();
    link.write_at(b"hello", g0 + 1000).unwrap();
    link.write_at(&vec![0u8; 64 * KIB as usize], zero.last().unwrap().1 - 64 * KIB).unwrap();
    link.close().unwrap();
    let mut want = data.clone();
    want[(g0 + 1000) as usize..(g0 + 1005) as usize].copy_from_slice(b"hello");
    let link = Link::open(&img, &OpenOptions::read()).unwrap();
    assert_same(&read_all(&link), &want, "zeroed-grain image after our write");
    drop(link);
    let raw_w = dir.path().join("w.raw");
    std::fs::write(&raw_w, &want).unwrap();
    qemu_check_passes(&img);
    qemu_compare_identical(&img, &raw_w);
}

/// A disk of several 2 GiB extents (qemu's split size), data only near the extent boundaries.
fn qemu_split(subformat: &str) {
    require_qemu!();
    let dir = tempfile::tempdir().unwrap();
    let cap = 4 * GIB + 100 * MIB;
    let raw = dir.path().join("big.raw");
    let f = File::create(&raw).unwrap();
    f.set_len(cap).unwrap();
    let mut rng = Rng::new(9);
    let places = [(0, 70_000), (2 * GIB - 50_000, 100_000), (4 * GIB - 3_000, 7_000), (cap - 10_000, 10_000)];
    let mut chunks = Vec::new();
    for &(off, n) in &places {
        let mut b = vec![0u8; n as usize];
        rng.fill_nonzero(&mut b);
        f.write_all_at(&b, off).unwrap();
        chunks.push((off, b));
    }
    drop(f);
    let expected_at = |off: u64, len: u64| -> Vec<u8> {
        let mut v = vec![0u8; len as usize];
        for (o, b) in &chunks {
            let (s, e) = ((*o).max(off), (o + b.len() as u64).min(off + len));
            if s < e {
                v[(s - off) as usize..(e - off) as usize].copy_from_slice(&b[(s - o) as usize..(e - o) as usize]);
            }
        }
        v
    };
    let img = dir.path().join("split.vmdk");
    convert(&raw, &img, &format!("subformat={subformat}"));

    let link = Link::open(&img, &OpenOptions::read()).unwrap();
    assert_eq!(link.capacity(), cap);
    assert_eq!(link.extents().len(), 3, "{subformat}: expected three extents");
    let map = link.map(0, cap).unwrap();
    assert_map_covers(&map, cap);
    let data = map_set(&map, State::Data);
    assert_eq!(data, qemu_data_set(&img), "{subformat}: Data runs differ from qemu's");
    assert!(set_bytes(&data) < 2 * MIB, "{subformat}: far too much data: {data:?}");
    // Everything stored reads back as written.
    for &(s, e) in &data {
        let mut buf = vec![0u8; (e - s) as usize];
        link.read_at(&mut buf, s).unwrap();
        assert_same(&buf, &expected_at(s, e - s), &format!("{subformat}: data run {s}..{e}"));
    }
    // Windows around every place and every extent boundary, and inside the holes.
    let mut windows: Vec<u64> = places.iter().map(|p| p.0).collect();
    windows.extend([2 * GIB, 4 * GIB, GIB, 3 * GIB + 12_345, cap - 1]);
    for w in windows {
        let off = w.saturating_sub(300_000);
        let len = (600_000).min(cap - off);
        let mut buf = vec![0xeeu8; len as usize];
        link.read_at(&mut buf, off).unwrap();
        assert_same(&buf, &expected_at(off, len), &format!("{subformat}: window at {off}"));
    }
}

#[test]
fn qemu_split_sparse() {
    qemu_split("twoGbMaxExtentSparse");
}

#[test]
fn qemu_split_flat() {
    qemu_split("twoGbMaxExtentFlat");
}

// ---------------------------------------------------------------------------------------------
// we write, qemu reads
// ---------------------------------------------------------------------------------------------

const OUR_CAP: u64 = 6 * MIB;
/// Never written by the fill, and zero in the pattern.
const UNTOUCHED: (u64, u64) = (4 * MIB + 512 * KIB, 5 * MIB + 512 * KIB);

#[track_caller]
fn qemu_check_passes(img: &Path) {
    let o = qemu_img(&["check", "-f", "vmdk", img.to_str().unwrap()]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    if o.status.success() {
        assert!(out.contains("No errors were found"), "qemu-img check: {out}");
    } else {
        assert!(out.contains("does not support checks"), "qemu-img check failed ({}): {out}", o.status);
    }
}

#[track_caller]
fn qemu_compare_identical(img: &Path, raw: &Path) {
    let out = qemu_ok(&["compare", "-f", "vmdk", "-F", "raw", img.to_str().unwrap(), raw.to_str().unwrap()]);
    assert!(out.contains("Images are identical"), "qemu-img compare: {out}");
}

fn qemu_virtual_size(img: &Path) -> u64 {
    let out = qemu_ok(&["info", "--output=json", "-f", "vmdk", img.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["virtual-size"].as_u64().unwrap()
}

fn round_out(set: &[(u64, u64)], unit: u64) -> Vec<(u64, u64)> {
    normalize(set.iter().map(|&(s, e)| (s / unit * unit, e.div_ceil(unit) * unit)).collect())
}

/// Paths of the data files of a disk we created (everything but the descriptor).
fn data_files(paths: &[PathBuf], format: DiskFormat) -> Vec<PathBuf> {
    if format == DiskFormat::MonoSparse {
        paths.to_vec()
    } else {
        paths[..paths.len() - 1].to_vec()
    }
}

fn we_write(format: DiskFormat, seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("ours.vmdk");
    let mut data = pattern(OUR_CAP, seed);
    data[UNTOUCHED.0 as usize..UNTOUCHED.1 as usize].fill(0);
    // Non-zero data across the extent boundaries of split formats (2 MiB extents).
    let mut rng = Rng::new(seed ^ 0xabc);
    for b in [2 * MIB, 4 * MIB] {
        rng.fill_nonzero(&mut data[(b - 3000) as usize..(b + 5000) as usize]);
    }
    let mut opts = CreateOptions::new(format, OUR_CAP);
    opts.split_sectors = 4096;
    let nd = create(&img, &opts).unwrap();
    let files = nd.final_paths();
    // Fill everything but UNTOUCHED; half of the all-zero chunks are skipped, the others written.
    let mut skip = |pos: u64, chunk: &[u8]| is_zero(chunk) && pos.is_multiple_of(2);
    let (u0, u1) = (UNTOUCHED.0 as usize, UNTOUCHED.1 as usize);
    let mut written = write_in_chunks(nd.link(), &data[..u0], 0, &mut rng, 300_000, &mut skip);
    written.extend(write_in_chunks(nd.link(), &data[u1..], UNTOUCHED.1, &mut rng, 300_000, &mut skip));
    // Unaligned writes spanning grains and extents (same bytes again).
    for b in [2 * MIB, 4 * MIB] {
        let (s, e) = (b - 2999, b + 4999);
        nd.link().write_at(&data[s as usize..e as usize], s).unwrap();
    }
    assert_same(&read_all(nd.link()), &data, &format!("{}: before commit", format.name()));
    let main = nd.commit().unwrap();
    assert_eq!(main, img);
    for f in &files {
        assert!(f.exists(), "{} missing after commit", f.display());
    }
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");

    let link = Link::open(&img, &OpenOptions::read()).unwrap();
    assert_eq!(link.capacity(), OUR_CAP);
    let expected_extents = if matches!(format, DiskFormat::TwoGbSparse | DiskFormat::TwoGbFlat) { 3 } else { 1 };
    assert_eq!(link.extents().len(), expected_extents, "{}", format.name());
    assert!(!link.was_unclean(), "{}: unclean flag left set after commit", format.name());
    assert_eq!(link.descriptor().create_type, format.create_type());
    assert_same(&read_all(&link), &data, &format!("{}: reopened", format.name()));
    random_reads(|b, o| link.read_at(b, o), &data, (seed + 100, 200, 200_000), "our image");
    let map = link.map(0, OUR_CAP).unwrap();
    assert_map_covers(&map, OUR_CAP);
    let data_set = map_set(&map, State::Data);

    // Format promises.
    match format {
        DiskFormat::MonoSparse | DiskFormat::TwoGbSparse => {
            // No all-zero grain stored: exactly the grains with a non-zero byte are Data.
            assert_eq!(data_set, nonzero_blocks(&data, 64 * KIB), "{}: stored grains", format.name());
            assert_eq!(map_set(&map, State::Zero), vec![], "{}: no zeroed-grain entries expected", format.name());
            let grains: u64 = data_files(&files, format).iter().map(|f| assert_redundant_tables_match(f)).sum();
            assert_eq!(grains * 64 * KIB, set_bytes(&data_set).div_ceil(64 * KIB) * 64 * KIB);
        }
        DiskFormat::Thin => {
            // Nothing is allocated where nothing was written.
            let allowed = round_out(&written, 4096);
            assert_eq!(
                subtract(&data_set, &allowed).first().copied(),
                None,
                "thin: data where nothing was written (written: {written:?})"
            );
            assert!(
                subtract(&[UNTOUCHED], &map_set(&map, State::Zero)).is_empty(),
                "thin: the untouched MiB must be a hole"
            );
        }
        DiskFormat::EagerZeroedThick => {
            assert_eq!(data_set, vec![(0, OUR_CAP)], "eagerzeroedthick must be all data");
        }
        _ => {}
    }
    if matches!(format, DiskFormat::ZeroedThick | DiskFormat::EagerZeroedThick) {
        let flat = &data_files(&files, format)[0];
        let md = std::fs::metadata(flat).unwrap();
        assert_eq!(md.len(), OUR_CAP);
        assert!(md.blocks() * 512 >= OUR_CAP, "{}: flat file is not fully allocated: {md:?}", format.name());
    }
    if format == DiskFormat::Thin {
        let md = std::fs::metadata(&data_files(&files, format)[0]).unwrap();
        assert!(md.blocks() * 512 <= OUR_CAP - MIB, "thin: flat file is not sparse ({} blocks)", md.blocks());
    }
    drop(link);

    if !have_qemu() {
        eprintln!("qemu-img not found: skipping the qemu half of {}", format.name());
        return;
    }
    let raw = dir.path().join("pattern.raw");
    write_raw_sparse(&raw, &data);
    qemu_check_passes(&img);
    assert_eq!(qemu_virtual_size(&img), OUR_CAP, "{}: qemu's virtual size", format.name());
    qemu_compare_identical(&img, &raw);
    if format.is_sparse() {
        assert_eq!(qemu_data_set(&img), data_set, "{}: qemu's map differs from ours", format.name());
    }
}

#[test]
fn ours_zeroedthick() {
    we_write(DiskFormat::ZeroedThick, 11);
}

#[test]
fn ours_eagerzeroedthick() {
    we_write(DiskFormat::EagerZeroedThick, 12);
}

#[test]
fn ours_thin() {
    we_write(DiskFormat::Thin, 13);
}

#[test]
fn ours_monosparse() {
    we_write(DiskFormat::MonoSparse, 14);
}

#[test]
fn ours_2gbsparse() {
    we_write(DiskFormat::TwoGbSparse, 15);
}

#[test]
fn ours_monoflat() {
    we_write(DiskFormat::MonoFlat, 16);
}

#[test]
fn ours_2gbflat() {
    we_write(DiskFormat::TwoGbFlat, 17);
}

/// Every format again, written by us and then modified by qemu: we must read qemu's changes.
#[test]
fn qemu_modifies_ours() {
    require_qemu!();
    for (i, format) in DiskFormat::ALL.into_iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("d.vmdk");
        let mut opts = CreateOptions::new(format, 4 * MIB);
        opts.split_sectors = 2048;
        let nd = create(&img, &opts).unwrap();
        let first = pattern(4 * MIB, 40 + i as u64);
        nd.link().write_at(&first, 0).unwrap();
        nd.commit().unwrap();
        // qemu overwrites everything with a second pattern (in place, so zeros are written too).
        let second = pattern(4 * MIB, 50 + i as u64);
        let raw = dir.path().join("second.raw");
        write_raw_sparse(&raw, &second);
        qemu_ok(&["convert", "-n", "-f", "raw", "-O", "vmdk", raw.to_str().unwrap(), img.to_str().unwrap()]);
        let link = Link::open(&img, &OpenOptions::read()).unwrap();
        assert_same(&read_all(&link), &second, &format!("{} after qemu wrote to it", format.name()));
    }
}

/// qemu makes the disk, we write into it (partial grains, new grains, zeros, across extents), and
/// qemu must still find it consistent and identical to our model.
#[test]
fn we_modify_qemu_images() {
    require_qemu!();
    for (i, sub) in ["monolithicSparse", "twoGbMaxExtentSparse", "monolithicFlat", "twoGbMaxExtentFlat", "zeroed"]
        .into_iter()
        .enumerate()
    {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("a.raw");
        let mut model = pattern(4 * MIB + 1536, 60 + i as u64);
        write_raw_sparse(&raw, &model);
        let img = dir.path().join("q.vmdk");
        if sub == "zeroed" {
            // Version 2 with zeroed-grain entries where the pattern has whole zero grains.
            let full = dir.path().join("full.raw");
            let mut b = vec![0u8; model.len()];
            Rng::new(80).fill_nonzero(&mut b);
            std::fs::write(&full, &b).unwrap();
            convert(&full, &img, "subformat=monolithicSparse,zeroed_grain=on");
            qemu_ok(&["convert", "-n", "-f", "raw", "-O", "vmdk", raw.to_str().unwrap(), img.to_str().unwrap()]);
            let l = Link::open(&img, &OpenOptions::read()).unwrap();
            assert!(!map_set(&l.map(0, l.capacity()).unwrap(), State::Zero).is_empty());
        } else {
            convert(&raw, &img, &format!("subformat={sub}"));
        }
        let link = Link::open(&img, &OpenOptions::write()).unwrap();
        let mut rng = Rng::new(70 + i as u64);
        for k in 0..40 {
            let (off, len) = if k % 5 == 0 {
                // A whole grain (zeros a quarter of the time).
                let g = rng.range(0, model.len() as u64 / (64 * KIB) - 1);
                (g * 64 * KIB, 64 * KIB)
            } else {
                let off = rng.range(0, model.len() as u64 - 1);
                (off, rng.range(1, 150_000).min(model.len() as u64 - off))
            };
            let mut b = vec![0u8; len as usize];
            if rng.chance(3, 4) {
                rng.fill_nonzero(&mut b);
            }
            link.write_at(&b, off).unwrap();
            model[off as usize..(off + len) as usize].copy_from_slice(&b);
        }
        link.close().unwrap();
        let link = Link::open(&img, &OpenOptions::read()).unwrap();
        assert!(!link.was_unclean());
        assert_same(&read_all(&link), &model, sub);
        drop(link);
        if sub.contains("Sparse") || sub == "zeroed" {
            let mono = sub != "twoGbMaxExtentSparse";
            let mut files: Vec<PathBuf> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.to_string_lossy().contains("-s0") || mono && p.ends_with("q.vmdk"))
                .collect();
            files.sort();
            assert!(!files.is_empty());
            for f in &files {
                assert_redundant_tables_match(f);
            }
        }
        let raw_b = dir.path().join("b.raw");
        write_raw_sparse(&raw_b, &model);
        qemu_check_passes(&img);
        qemu_compare_identical(&img, &raw_b);
    }
}
