#!/usr/bin/env python3
"""Import cycles between modules of one crate.

usage: scripts/module_cycles.py CRATE_SRC_DIR [...]; exit 1 when any cycle exists.

A module depends on another when its code (outside `#[cfg(test)]` modules, comments and string
literals) names it or one of its items:

- any path: `use` declarations (groups, `self`, globs, renames) and paths in expressions and types,
  starting with `crate::`, `super::`, `self::`, a child module's name (`child::f()` in a `mod.rs`) or
  a name the module imported (`use crate::a; a::b::f()`);
- through re-exports: a path that reaches an item by a `pub use` elsewhere (`crate::Error` re-exported
  at the root from `error`) depends on the module that defines the item, not on the facade; a
  `pub use` counts for the re-exporting module itself only when that module also uses the name;
- an inherent `impl` block of a type defined in another module (`impl Volume { .. }` in
  `blockmap.rs`): the type's methods live there, so the defining module depends on it as much as
  the impl depends on the type. A type whose impl is split across files is a cycle.

Edges are taken between sibling modules (children of the deepest common parent); a parent counts as
its child's sibling, so a `mod.rs` that uses a child whose code uses the parent's own items is a
cycle too. Strongly connected groups of that graph are reported.
"""
import os
import re
import sys

from rust_text import skip_comment

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
DEF = re.compile(r"\b(?:struct|enum|trait|fn|type|const|static|union|mod)\s+(" + IDENT + r")|\bmacro_rules!\s*(" + IDENT + r")")
USE = re.compile(r"\b(pub(?:\s*\([^)]*\))?\s+)?use\s+([^;]*);", re.S)
PATH = re.compile(r"(?<![A-Za-z0-9_:])(" + IDENT + r")((?:\s*::\s*" + IDENT + r")+)")
IMPL = re.compile(r"\bimpl\b")
KEYWORD_ROOTS = {"crate", "super", "self"}


def module_of(src, path):
    rel = os.path.relpath(path, src)[:-3].split(os.sep)
    if rel[-1] in ("mod", "lib", "main"):
        rel = rel[:-1]
    return tuple(rel)


def strip(text):
    """Code without comments, string/char literal contents and `#[cfg(test)]` modules."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if (j := skip_comment(text, i)) is not None:
            i = j
        elif re.match(r'b?r(#*)"', text[i : i + 40]) and (i == 0 or not re.match(r"[A-Za-z0-9_]", text[i - 1])):
            m = re.match(r'b?r(#*)"', text[i:])
            end = text.find('"' + m.group(1), i + m.end())
            out.append('""')
            i = n if end < 0 else end + 1 + len(m.group(1))
        elif c == '"':
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
            out.append('""')
            i += 1
        elif c == "'":
            m = re.match(r"'(?:\\(?:x[0-9a-fA-F]{2}|u\{[0-9a-fA-F]+\}|.)|[^'\\])'", text[i:])
            if m:
                out.append("' '")
                i += m.end()
            else:
                out.append(c)
                i += 1
        else:
            out.append(c)
            i += 1
    return drop_test_modules("".join(out))


def drop_test_modules(code):
    """Removes `#[cfg(test)] mod name { ... }` blocks (balanced braces)."""
    while True:
        m = re.search(r"#\s*\[\s*cfg\s*\(\s*test\s*\)\s*\]\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+" + IDENT + r"\s*\{", code)
        if not m:
            return code
        depth, i = 1, m.end()
        while i < len(code) and depth:
            depth += {"{": 1, "}": -1}.get(code[i], 0)
            i += 1
        code = code[: m.start()] + code[i:]


def split_top(inner):
    depth, start, parts = 0, 0, []
    for i, ch in enumerate(inner):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(inner[start:i])
            start = i + 1
    parts.append(inner[start:])
    return [p.strip() for p in parts if p.strip()]


def expand_use(body):
    """`a::{b, c::{d as e}}` -> [(alias, [a, b]), (e, [a, c, d])]; globs have alias `*`."""
    body = re.sub(r"\s+", " ", body.strip()).replace(" ::", "::").replace(":: ", "::")
    m = re.match(r"^(.*?)\{(.*)\}$", body, re.S)
    if m:
        prefix = [s for s in m.group(1).split("::") if s]
        out = []
        for part in split_top(m.group(2)):
            for alias, segs in expand_use(part):
                segs = prefix + segs
                if segs and segs[-1] == "self":
                    segs = segs[:-1]
                    alias = segs[-1] if alias == "self" and segs else alias
                out.append((alias, segs))
        return out
    alias = None
    am = re.match(r"^(.*?)\s+as\s+(" + IDENT + r")$", body)
    if am:
        body, alias = am.group(1), am.group(2)
    segs = [s.strip() for s in body.split("::") if s.strip()]
    if segs and segs[0] == "":
        segs = segs[1:]
    if not segs:
        return []
    return [(alias or segs[-1], segs)]


class Crate:
    def __init__(self, src):
        self.files = {}
        for d, _, names in os.walk(src):
            if os.sep + "bin" in d[len(src) :]:
                continue
            for n in names:
                if n.endswith(".rs"):
                    f = os.path.join(d, n)
                    with open(f, encoding="utf-8") as fh:
                        self.files[module_of(src, f)] = strip(fh.read())
        self.modules = set(self.files)
        self.defs, self.imports, self.globs, self.uses = {}, {}, {}, {}
        for mod, code in self.files.items():
            self.defs[mod] = {a or b for a, b in DEF.findall(code)}
            imports, globs, uses = {}, [], []
            for m in USE.finditer(code):
                public = m.group(1) is not None
                for alias, segs in expand_use(m.group(2)):
                    uses.append((public, alias, segs))
                    if alias == "*":
                        globs.append(segs[:-1])
                    else:
                        imports[alias] = segs
            self.imports[mod], self.globs[mod], self.uses[mod] = imports, globs, uses

    def start(self, mod, first):
        """Module a path starting with `first` is relative to, or None (external, local)."""
        if first == "crate":
            return ()
        if first == "self":
            return mod
        if first == "super":
            return mod[:-1]
        if mod + (first,) in self.modules:
            return mod + (first,)
        return None

    def resolve(self, mod, segs, seen=None):
        """The module whose item (or which module itself) `segs`, written in `mod`, names."""
        seen = set() if seen is None else seen
        if not segs:
            return mod
        target = self.start(mod, segs[0])
        if target is None:
            if segs[0] in self.imports.get(mod, {}) and (mod, segs[0]) not in seen:
                seen.add((mod, segs[0]))
                via = self.imports[mod][segs[0]]
                target = self.resolve(mod, via, seen)
                if target is None:
                    return None
                return self.walk(target, segs[1:], seen)
            return None
        rest = segs[1:]
        while rest and rest[0] == "super":
            target, rest = target[:-1], rest[1:]
        return self.walk(target, rest, seen)

    def walk(self, target, rest, seen):
        for i, s in enumerate(rest):
            if target + (s,) in self.modules:
                target = target + (s,)
                continue
            if s in self.defs.get(target, ()):
                return target
            imp = self.imports.get(target, {}).get(s)
            if imp is not None and (target, s) not in seen:
                seen.add((target, s))
                found = self.resolve(target, imp, seen)
                if found is None:
                    return target
                return self.walk(found, rest[i + 1 :], seen)
            for g in self.globs.get(target, ()):
                found = self.resolve(target, g + [s], seen)
                if found is not None and found != target:
                    return found
            return target
        return target

    def refs(self, mod):
        """Modules `mod` depends on (see the module docs)."""
        code = self.files[mod]
        found = set()
        body = USE.sub(" ", code)
        for public, alias, segs in self.uses[mod]:
            if public and alias != "*" and not re.search(r"\b" + re.escape(alias) + r"\b", body):
                continue
            t = self.resolve(mod, segs if alias != "*" else segs[:-1])
            if t is not None:
                found.add(t)
        for m in PATH.finditer(body):
            segs = [s.strip() for s in m.group(0).split("::")]
            t = self.resolve(mod, segs)
            if t is not None:
                found.add(t)
        for ty in self.inherent_impls(mod):
            t = self.resolve(mod, ty.split("::"))
            if t is not None and t != mod:
                found.add(t)
        found.discard(mod)
        return found

    def inherent_impls(self, mod):
        """Type paths of the `impl Type { .. }` blocks (not `impl Trait for Type`) in `mod`."""
        code = self.files[mod]
        out = []
        for m in IMPL.finditer(code):
            i = m.end()
            head = code[i : code.find("{", i)] if code.find("{", i) >= 0 else ""
            head = head.strip()
            if head.startswith("<"):
                depth, j = 0, 0
                for j, ch in enumerate(head):
                    depth += {"<": 1, ">": -1}.get(ch, 0)
                    if depth == 0:
                        break
                head = head[j + 1 :].strip()
            if re.search(r"\bfor\b", head.split("where")[0]):
                continue
            tm = re.match(r"((?:" + IDENT + r"\s*::\s*)*" + IDENT + r")", head)
            if tm:
                out.append(re.sub(r"\s+", "", tm.group(1)))
        return out

    def graph(self):
        g = {}
        for mod in self.modules:
            deps = self.refs(mod)
            for t in deps:
                add_edge(g, mod, t)
            # the defining module depends on where its type's methods are
            for ty in self.inherent_impls(mod):
                t = self.resolve(mod, ty.split("::"))
                if t is not None and t != mod:
                    add_edge(g, t, mod)
        return g


def add_edge(g, a, b):
    a, b = sibling_edge(a, b)
    if a != b:
        g.setdefault(a, set()).add(b)


def sibling_edge(a, b):
    """The pair of sibling modules under the deepest common parent (a parent may be one side)."""
    i = 0
    while i < len(a) and i < len(b) and a[i] == b[i]:
        i += 1
    return a[: i + 1], b[: i + 1]


def sccs(graph):
    index, low, stack, on, out, n = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def main():
    sys.setrecursionlimit(10000)
    bad = 0
    for src in sys.argv[1:]:
        crate = Crate(src)
        g = crate.graph()
        for comp in sccs(g):
            bad += 1
            names = ["::".join(m) or "(root)" for m in comp]
            edges = [f"{'::'.join(a) or '(root)'} -> {'::'.join(b) or '(root)'}" for a in comp for b in sorted(g.get(a, ())) if b in comp]
            print(f"{src}: cycle: " + " <-> ".join(names) + "  [" + ", ".join(edges) + "]")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
