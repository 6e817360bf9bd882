"""What the source-shape scripts (long_functions.py, module_cycles.py) share about Rust text."""


def skip_comment(text, i):
    """The index just past the comment starting at `i` (a `//` comment ends before its newline;
    `/* */` comments nest), or None when no comment starts there."""
    n = len(text)
    if text.startswith("//", i):
        j = text.find("\n", i)
        return n if j < 0 else j
    if not text.startswith("/*", i):
        return None
    depth, i = 1, i + 2
    while i < n and depth:
        if text.startswith("/*", i):
            depth, i = depth + 1, i + 2
        elif text.startswith("*/", i):
            depth, i = depth - 1, i + 2
        else:
            i += 1
    return i
