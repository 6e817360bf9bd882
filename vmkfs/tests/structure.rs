//! The code's shape, checked like its behaviour: no module of any crate imports one that imports
//! it back (scripts/module_cycles.py: every path between sibling modules, through re-exports, and
//! inherent `impl` blocks of a type split across files).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn check_cycles(dirs: &[&Path]) -> Outcome {
    let mut cmd = Command::new("python3");
    cmd.current_dir(repo_root()).arg("scripts/module_cycles.py").args(dirs);
    run(cmd, None, None)
}

#[test]
fn no_import_cycles_inside_any_crate() {
    if !have_tool("python3") {
        return skip("python3 (runs scripts/module_cycles.py)");
    }
    let dirs = ["rdm/src", "vmdk/src", "redo/src", "vmkfs/src"].map(Path::new);
    let o = check_cycles(&dirs);
    assert!(o.success(), "import cycles:\n{}", o.describe());
}

/// A small crate: its name, its files `(path, text)`, and the cycle the checker must report.
type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], Option<&'a str>);

/// Small crates, each with one kind of reference closing a cycle (and one without a cycle): the
/// checker must fail on every cyclic one, naming the two modules, and pass the acyclic one.
#[test]
fn cycle_checker_catches_every_kind_of_reference() {
    if !have_tool("python3") {
        return skip("python3 (runs scripts/module_cycles.py)");
    }
    let cases: &[Case] = &[
        ("use crate::", &[("lib.rs", "mod a; mod b;"), ("a.rs", "use crate::b::B; pub struct A;"), ("b.rs", "use crate::a::A; pub struct B;")], Some("a <-> b")),
        ("use super:: group", &[("lib.rs", "mod m;"), ("m/mod.rs", "mod a; mod b;"), ("m/a.rs", "use super::b::B;"), ("m/b.rs", "use super::{a::{self}};")], Some("m::a <-> m::b")),
        ("paths in expressions", &[("lib.rs", "mod a; mod b;"), ("a.rs", "pub fn f() { crate::b::g() }"), ("b.rs", "pub fn g() { let _ = crate::a::f; }")], Some("a <-> b")),
        ("pub use re-export", &[("lib.rs", "mod a; mod b; pub use a::A;"), ("a.rs", "pub struct A(crate::b::B);"), ("b.rs", "pub struct B; fn f(_: crate::A) {}")], Some("a <-> b")),
        ("impl split across files", &[("lib.rs", "mod a; mod b;"), ("a.rs", "pub struct S; fn g(s: S) { s.f() }"), ("b.rs", "use crate::a::S;\nimpl S { pub fn f(&self) {} }")], Some("a <-> b")),
        ("parent and child", &[("lib.rs", "mod m;"), ("m/mod.rs", "mod c; pub struct Own; pub fn f() { c::g() }"), ("m/c.rs", "pub fn g() { let _ = super::Own; }")], Some("m <-> m::c")),
        (
            "no cycle: facade, comments, strings, trait impls, tests",
            &[
                ("lib.rs", "mod a; mod b; pub use a::A; pub use b::B;"),
                ("a.rs", "pub struct A; // crate::b::B\n"),
                ("b.rs", "pub struct B(crate::A); const S: &str = \"crate::a::x\";\nimpl std::fmt::Debug for B { fn fmt(&self, _: &mut std::fmt::Formatter) -> std::fmt::Result { Ok(()) } }\n#[cfg(test)]\nmod tests { use crate::a::A; }\n"),
            ],
            None,
        ),
    ];
    for (name, files, cycle) in cases {
        let dir = tempfile::tempdir().unwrap();
        for (path, text) in *files {
            let p = dir.path().join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, text).unwrap();
        }
        let o = check_cycles(&[dir.path()]);
        match cycle {
            Some(c) => assert!(!o.success() && o.out().contains(c), "{name}: expected cycle {c}:\n{}", o.describe()),
            None => assert!(o.success(), "{name}: expected no cycle:\n{}", o.describe()),
        }
    }
}
