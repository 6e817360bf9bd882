#!/usr/bin/env python3
"""Functions longer than LIMIT lines (default 120) in the Rust sources under the given folders,
longest first; a function's length counts from the line of its `fn` keyword to the line of its
closing brace. Braces inside strings (plain, byte, raw `r#"…"#`), char literals (`'{'`, `'\\''`)
and comments (`//`, nested `/* */`) do not count; lifetimes (`'a`) are not chars. Test modules and
tests/ folders count too unless --no-tests. Exit 1 when any function is too long.
usage: scripts/long_functions.py [--limit N] [--no-tests] DIR_OR_FILE...
"""
import os
import sys

from rust_text import skip_comment


def ident_char(c):
    return c.isalnum() or c == "_"


def tokens(text):
    """Yield (kind, value, line) for the tokens that matter here: identifiers ('id'), and the
    punctuation '{', '}', '(', ')', '[', ']', ';' ('p'). Strings, chars and comments are skipped."""
    i, n, line = 0, len(text), 1
    while i < n:
        c = text[i]
        if c == "\n":
            line += 1
            i += 1
        elif c.isspace():
            i += 1
        elif (j := skip_comment(text, i)) is not None:
            line += text.count("\n", i, j)
            i = j
        elif c == '"':
            i, line = skip_string(text, i + 1, line)
        elif c == "'":
            i, line = skip_char_or_lifetime(text, i, line)
        elif ident_char(c):
            j = i
            while j < n and ident_char(text[j]):
                j += 1
            word = text[i:j]
            if word in ("r", "br", "cr") and j < n and text[j] in '#"':
                k = j
                while k < n and text[k] == "#":
                    k += 1
                if k < n and text[k] == '"':
                    i, line = skip_raw_string(text, k + 1, k - j, line)
                    continue
                # r#ident: a raw identifier
                j = k
                while j < n and ident_char(text[j]):
                    j += 1
                yield "id", text[k:j], line
                i = j
                continue
            if word in ("b", "c") and j < n and text[j] == '"':
                i, line = skip_string(text, j + 1, line)
                continue
            if word == "b" and j < n and text[j] == "'":
                i, line = skip_char_or_lifetime(text, j, line)
                continue
            yield "id", word, line
            i = j
        elif c in "{}()[];":
            yield "p", c, line
            i += 1
        else:
            i += 1


def skip_string(text, i, line):
    """From just after an opening quote to just after the closing one."""
    n = len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            line += text[i + 1 : i + 2] == "\n"
            i += 2
        elif c == '"':
            return i + 1, line
        else:
            line += c == "\n"
            i += 1
    return n, line


def skip_raw_string(text, i, hashes, line):
    end = '"' + "#" * hashes
    j = text.find(end, i)
    j = len(text) if j < 0 else j
    return j + len(end), line + text.count("\n", i, j)


def skip_char_or_lifetime(text, i, line):
    """At a quote: a char literal ('x', '\\n', '\\u{..}', '{') is skipped whole; a lifetime or
    label ('a, 'static) only its quote."""
    n = len(text)
    if i + 1 < n and text[i + 1] == "\\":
        j = text.find("'", i + 3)
        return (n if j < 0 else j + 1), line
    if i + 2 < n and text[i + 2] == "'":
        return i + 3, line
    return i + 1, line


def functions(text):
    """(name, first line, last line) of every function with a body, nested ones included."""
    toks = list(tokens(text))
    for k, (kind, value, line) in enumerate(toks):
        if kind != "id" or value != "fn" or k + 1 >= len(toks) or toks[k + 1][0] != "id":
            continue  # `fn(u8) -> u8` is a type, not a function
        name, depth, m = toks[k + 1][1], 0, k + 2
        # the body is the first `{` outside the signature's brackets, unless a `;` ends it first
        while m < len(toks):
            v = toks[m][1]
            if v in "([":
                depth += 1
            elif v in ")]":
                depth -= 1
            elif depth == 0 and v in ";{":
                break
            m += 1
        if m >= len(toks) or toks[m][1] == ";":
            continue
        braces = 0
        while m < len(toks):
            v = toks[m][1]
            if v == "{":
                braces += 1
            elif v == "}":
                braces -= 1
                if braces == 0:
                    break
            m += 1
        if m < len(toks):
            yield name, line, toks[m][2]


def rust_files(root, tests):
    if os.path.isfile(root):
        yield root
        return
    for d, subdirs, names in os.walk(root):
        subdirs[:] = sorted(s for s in subdirs if s != "target" and (tests or s != "tests"))
        for n in sorted(names):
            if n.endswith(".rs"):
                yield os.path.join(d, n)


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
    if not args:
        sys.exit(__doc__)
    found = []
    for root in args:
        for p in rust_files(root, tests):
            with open(p, encoding="utf-8") as f:
                text = f.read()
            for name, first, last in functions(text):
                length = last - first + 1
                if length > limit:
                    found.append((length, p, first, name))
    for length, p, line, name in sorted(found, key=lambda f: (-f[0], f[1], f[2])):
        print(f"{length:5} {p}:{line} {name}")
    sys.exit(1 if found else 0)


if __name__ == "__main__":
    main()
