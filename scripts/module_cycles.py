#!/usr/bin/env python3
"""Import cycles between modules of one crate: for every pair of sibling modules (children of the
same parent, a parent counting as its own child's sibling when its mod.rs uses a child and the
child uses the parent's own items), report strongly connected groups of the `crate::`/`super::`
reference graph. usage: scripts/module_cycles.py CRATE_SRC_DIR [...]; exit 1 when any cycle exists.
"""
import os
import re
import sys

PATH = re.compile(r"\b(crate|super|self)((?:::[A-Za-z_][A-Za-z0-9_]*)+)")
USE_GROUP = re.compile(r"\buse\s+(crate|super|self)::([^;]*);", re.S)


def module_of(src, path):
    rel = os.path.relpath(path, src)[:-3].split(os.sep)
    if rel[-1] in ("mod", "lib", "main"):
        rel = rel[:-1]
    return tuple(rel)


def strip(text):
    text = re.sub(r"//[^\n]*", "", text)
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', text)
    # test modules do not count
    return re.split(r"#\[cfg\(test\)\]\s*mod\s+tests", text)[0]


def expand_use(body):
    """`a::{b, c::{d}}` -> [a::b, a::c::d] (first segments only matter)."""
    out = []
    body = body.strip()
    m = re.match(r"([A-Za-z0-9_:]*)\{(.*)\}$", body, re.S)
    if not m:
        return [body]
    prefix, inner = m.group(1), m.group(2)
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
    for p in parts:
        if p.strip():
            out += [prefix + q for q in expand_use(p)]
    return out


def refs(mod, text, modules):
    found = set()
    paths = [(m.group(1), m.group(2)) for m in PATH.finditer(text)]
    for root, body in USE_GROUP.findall(text):
        for e in expand_use(body):
            paths.append((root, "::" + e))
    for root, tail in paths:
        segs = [s for s in tail.split("::") if s]
        if root == "crate":
            base = ()
        elif root == "self":
            base = mod
        else:
            base = mod[:-1]
            while segs and segs[0] == "super":
                base, segs = base[:-1], segs[1:]
        target = base
        for s in segs:
            if target + (s,) in modules:
                target = target + (s,)
            else:
                break
        if target != mod:
            found.add(target)
    return found


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
        for w in graph.get(v, ()):
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

    for v in list(graph):
        if v not in index:
            visit(v)
    return out


def main():
    sys.setrecursionlimit(10000)
    bad = 0
    for src in sys.argv[1:]:
        files = []
        for d, _, names in os.walk(src):
            if os.sep + "bin" in d[len(src):]:
                continue
            files += [os.path.join(d, n) for n in names if n.endswith(".rs")]
        modules = {module_of(src, f) for f in files}
        graph = {}
        for f in files:
            mod = module_of(src, f)
            with open(f, encoding="utf-8") as fh:
                text = strip(fh.read())
            for t in refs(mod, text, modules):
                a, b = sibling_edge(mod, t)
                if a != b:
                    graph.setdefault(a, set()).add(b)
        for comp in sccs(graph):
            bad += 1
            print(f"{src}: cycle: " + " <-> ".join("::".join(m) or "(root)" for m in comp))
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
