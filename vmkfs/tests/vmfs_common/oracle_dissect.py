"""Oracle for the VMFS tests: reads a volume with dissect.vmfs (a separate implementation) and prints
JSON. Run as a separate process by the Rust tests; nothing here is linked into vmkfs.

usage: oracle_dissect.py list  [--hash-limit N] DEV[@OFFSET]...
       oracle_dissect.py ranges JSON DEV[@OFFSET]...   (JSON: [[path, offset, length], ...])
       oracle_dissect.py blocks PATH DEV[@OFFSET]...
"""
import hashlib
import io
import json
import os
import sys

from dissect.vmfs import LVM, VMFS


class Slice(io.RawIOBase):
    """A read-only view of part of a file (a partition of a whole-disk image)."""

    def __init__(self, path, offset):
        self.f = open(path, "rb")
        self.base = offset
        self.size = os.path.getsize(path) - offset
        self.pos = 0

    def readable(self):
        return True

    def seekable(self):
        return True

    def seek(self, off, whence=0):
        self.pos = off if whence == 0 else (self.pos + off if whence == 1 else self.size + off)
        return self.pos

    def tell(self):
        return self.pos

    def readinto(self, b):
        self.f.seek(self.base + self.pos)
        n = self.f.readinto(b)
        self.pos += n
        return n


def open_fs(specs):
    fhs = []
    for s in specs:
        path, _, off = s.partition("@")
        fhs.append(Slice(path, int(off or 0)) if off else open(path, "rb"))
    lvm = LVM(fhs)
    return VMFS(lvm.volumes[0].open())


def lookup(fs, path):
    """Resolves a path by scanning directories (no name hashes needed)."""
    node = fs.get("/")
    for c in [c for c in path.split("/") if c]:
        for e in node.iterdir():
            if e.name == c:
                node = e.file_descriptor
                break
        else:
            raise FileNotFoundError(path)
    return node


def kind(f):
    if f.is_symlink():
        return "symlink"
    if f.is_dir():
        return "dir"
    if f.is_rdm():
        return "rdm"
    if f.is_system():
        return "sysfile"
    return "file"


def main():
    cmd = sys.argv[1]
    args = sys.argv[2:]
    if cmd == "list":
        limit = 1 << 62
        if args[0] == "--hash-limit":
            limit = int(args[1])
            args = args[2:]
        fs = open_fs(args)

        def walk(path, fd, depth):
            for e in fd.iterdir():
                if e.name in (".", ".."):
                    continue
                p = path.rstrip("/") + "/" + e.name
                out = {"path": p}
                try:
                    f = e.file_descriptor
                    out.update(type=kind(f), size=f.size, mtime=int(f.metadata.mtime), fd=e.address)
                    if f.is_symlink():
                        out["target"] = f.link
                    elif not f.is_dir() and not f.is_rdm() and f.size <= limit:
                        h = hashlib.sha256()
                        s = f.open()
                        while True:
                            b = s.read(1 << 20)
                            if not b:
                                break
                            h.update(b)
                        out["sha256"] = h.hexdigest()
                except Exception as ex:  # report, the test decides
                    out["error"] = repr(ex)
                print(json.dumps(out), flush=True)
                if out.get("type") == "dir" and depth < 8:
                    walk(p, f, depth + 1)

        walk("/", fs.get("/"), 0)
    elif cmd == "ranges":
        fs = open_fs(args[1:])
        out = []
        for path, off, ln in json.loads(args[0]):
            s = lookup(fs, path).open()
            s.seek(off)
            h = hashlib.sha256()
            left = ln
            while left:
                b = s.read(min(left, 1 << 20))
                if not b:
                    break
                h.update(b)
                left -= len(b)
            out.append(h.hexdigest())
        print(json.dumps(out))
    elif cmd == "blocks":
        fs = open_fs(args[1:])
        f = lookup(fs, args[0])
        print(json.dumps({"blocks": [int(b) for b in f.blocks], "zla": int(f.zla)}))
    else:
        sys.exit("unknown command " + cmd)


if __name__ == "__main__":
    main()
