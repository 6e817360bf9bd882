//! The code's shape, checked like its behaviour: no module of any crate imports one that imports
//! it back (scripts/module_cycles.py walks every `crate::`/`super::` path between sibling modules).

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

#[test]
fn no_import_cycles_inside_any_crate() {
    if !have_tool("python3") {
        return skip("python3 (runs scripts/module_cycles.py)");
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut cmd = Command::new("python3");
    cmd.current_dir(root).args(["scripts/module_cycles.py", "rdm/src", "vmdk/src", "redo/src", "vmkfs/src"]);
    let o = run(cmd, None, None);
    assert!(o.success(), "import cycles:\n{}", o.describe());
}
