//! The code's shape, checked like its behaviour: no module of any crate imports one that imports
//! it back (scripts/module_cycles.py: every path between sibling modules, through re-exports, and
//! inherent `impl` blocks of a type split across files), and no function of any library or binary
//! source is over 120 lines (scripts/long_functions.py counts from the `fn` line to its closing brace).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// The workspace root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Runs one of the workspace's Python scripts from the root.
fn script(name: &str, args: &[&str]) -> Outcome {
    let mut cmd = Command::new("python3");
    cmd.current_dir(root()).arg(format!("scripts/{name}")).args(args);
    run(cmd, None, None)
}

const SOURCES: [&str; 5] = ["rdm/src", "vmdk/src", "redo/src", "vmkfs/src", "vmkfs/capi/src"];

/// Runs the cycle checker on `dirs`.
fn check_cycles(dirs: &[&Path]) -> Outcome {
    let dirs: Vec<&str> = dirs.iter().map(|d| d.to_str().unwrap()).collect();
    script("module_cycles.py", &dirs)
}

#[test]
fn no_import_cycles_inside_any_crate() {
    if !have_tool("python3") {
        return skip("python3 (runs scripts/module_cycles.py)");
    }
    let o = script("module_cycles.py", &SOURCES[..4]);
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

#[test]
fn no_function_is_over_120_lines() {
    if !have_tool("python3") {
        return skip("python3 (runs scripts/long_functions.py)");
    }
    let o = script("long_functions.py", &SOURCES);
    assert!(o.success(), "functions over 120 lines (length, place, name):\n{}", o.describe());
}

/// A function of `lines` lines (its `fn` line and closing brace included) whose body holds every
/// kind of brace the counter must not take for code: in strings, raw strings, chars, comments.
fn planted(name: &str, lines: usize) -> String {
    let tricky = [
        "    let _s = \"} { \\\" }\";",
        "    let _r = r#\"}\"# ;",
        "    let _c = ('{', '}', '\\'', b'}');",
        "    // } a comment's brace",
        "    /* } /* nested } */ } */",
        "    let _l: &'static str = \"'\";",
        "    if true {",
        "        let _inner = |x: &str| -> usize { x.len() };",
        "    }",
    ];
    let mut body: Vec<String> = tricky.iter().map(|s| s.to_string()).collect();
    while body.len() < lines - 2 {
        body.push(format!("    let _x{} = {};", body.len(), body.len()));
    }
    format!("fn {name}<'a>(x: &'a str) -> &'a str {{\n{}\n    x\n}}\n", body[..lines - 3].join("\n"))
}

#[test]
fn long_function_counter_finds_121_lines_and_passes_120() {
    if !have_tool("python3") {
        return skip("python3 (runs scripts/long_functions.py)");
    }
    let dir = tempfile::tempdir().unwrap();
    let declared = "trait T {\n    fn declared(\n        &self,\n    );\n}\n";
    let pointer = "struct S {\n    f: fn(u8) -> u8,\n}\n";
    let text = format!("{declared}{pointer}{}{}", planted("fits", 120), planted("too_long", 121));
    let file = dir.path().join("planted.rs");
    std::fs::write(&file, &text).unwrap();
    let fits_line = text.lines().position(|l| l.starts_with("fn fits")).unwrap() + 1;
    let long_line = text.lines().position(|l| l.starts_with("fn too_long")).unwrap() + 1;
    // the planted functions are as long as they say, counted here by their closing lines
    assert_eq!(text.lines().skip(long_line - 1).position(|l| l == "}").unwrap() + 1, 121);
    assert_eq!(text.lines().skip(fits_line - 1).position(|l| l == "}").unwrap() + 1, 120);

    let o = script("long_functions.py", &[file.to_str().unwrap()]);
    assert_eq!(o.code(), Some(1), "{}", o.describe());
    let want = format!("  121 {}:{long_line} too_long\n", file.display());
    assert_eq!(o.out(), want, "{}", o.describe());

    let o = script("long_functions.py", &["--limit", "119", file.to_str().unwrap()]);
    let both = format!("  121 {f}:{long_line} too_long\n  120 {f}:{fits_line} fits\n", f = file.display());
    assert_eq!(o.out(), both, "{}", o.describe());
}

/// The `vmkfs` binary is thin: under 600 lines in all its files, and no binary holds `unsafe`
/// (signal handling is the library's `interrupt` service).
#[test]
fn the_binary_is_thin_and_safe() {
    let bin = root().join("vmkfs/src/bin");
    let mut vmkfs_lines = 0;
    let mut dirs = vec![bin.clone()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
                continue;
            }
            let text = std::fs::read_to_string(&p).unwrap();
            assert!(!text.contains("unsafe"), "{}: a binary holds `unsafe`", p.display());
            if p.starts_with(bin.join("vmkfs")) {
                vmkfs_lines += text.lines().count();
            }
        }
    }
    assert!(vmkfs_lines > 100, "the vmkfs binary's files were not found ({vmkfs_lines} lines)");
    assert!(vmkfs_lines < 600, "the vmkfs binary is {vmkfs_lines} lines (goal: under 600)");
}
