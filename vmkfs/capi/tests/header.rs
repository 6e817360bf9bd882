//! The checked-in header (`include/vmkfs.h`) is what cbindgen makes of `src/lib.rs` today: CI
//! fails on drift. `VMKFS_BLESS=1 cargo test -p vmkfs-capi --test header` rewrites it.

use std::path::Path;

#[test]
fn checked_in_header_matches_cbindgen() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")).expect("read cbindgen.toml");
    let mut generated = Vec::new();
    cbindgen::Builder::new()
        .with_crate(crate_dir)
        .with_config(config)
        .generate()
        .expect("cbindgen generates the header")
        .write(&mut generated);
    let generated = String::from_utf8(generated).expect("the header is UTF-8");
    let path = crate_dir.join("include/vmkfs.h");
    if std::env::var_os("VMKFS_BLESS").is_some() {
        std::fs::write(&path, &generated).expect("write include/vmkfs.h");
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "{} differs from what cbindgen makes of src/lib.rs; rerun with VMKFS_BLESS=1 and commit the header",
        path.display()
    );
}
