#!/usr/bin/env python3
"""Functions longer than LIMIT lines (default 120) in the Rust sources under the given folders,
longest first; test modules and tests/ folders count too unless --no-tests. Exit 1 when any.
usage: scripts/long_functions.py [--limit N] [--no-tests] DIR...
"""
import os
import re
import sys

FN = re.compile(r"^(\s*)(?:pub(?:\([^)]*\))?\s+)?(?:const\s+|async\s+|unsafe\s+|extern\s+\"C\"\s+)*fn\s+([A-Za-z0-9_]+)")


def functions(path):
    lines = open(path, encoding="utf-8").read().split("\n")
    i = 0
    while i < len(lines):
        m = FN.match(lines[i])
        if m and not lines[i].rstrip().endswith(";"):
            indent = m.group(1)
            j = i
            # the body ends at the first line that is exactly the indent plus "}"
            while j < len(lines) and not (lines[j] == indent + "}" or (j == i and lines[j].rstrip().endswith("}"))):
                j += 1
            yield m.group(2), i + 1, j - i + 1
            i += 1
        else:
            i += 1


def main():
    args = sys.argv[1:]
    limit, tests = 120, True
    if "--limit" in args:
        k = args.index("--limit")
        limit = int(args[k + 1])
        del args[k : k + 2]
    if "--no-tests" in args:
        tests = False
        args.remove("--no-tests")
    found = []
    for root in args:
        for d, _, names in os.walk(root):
            if "/target" in d or (not tests and ("/tests" in d or d.endswith("tests"))):
                continue
            for n in names:
                if n.endswith(".rs"):
                    p = os.path.join(d, n)
                    for name, line, length in functions(p):
                        if length > limit:
                            found.append((length, p, line, name))
    for length, p, line, name in sorted(found, reverse=True):
        print(f"{length:5} {p}:{line} {name}")
    sys.exit(1 if found else 0)


if __name__ == "__main__":
    main()
