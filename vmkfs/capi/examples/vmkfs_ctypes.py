#!/usr/bin/env python3
"""Using libvmkfs.so from Python with ctypes: a disk's info, its allocated and changed ranges,
its first sector, and a clone with a progress callback.

    python3 vmkfs_ctypes.py LIBVMKFS.so DISK [SINCE] [--clone DST FORMAT]

DISK is a disk or the top of a chain; SINCE a link of its chain (default: the base). Prints
`info ...`, `allocated OFFSET LENGTH`, `changed OFFSET LENGTH`, `sector0 SHA256`, and with
--clone `progress DONE TOTAL` lines then `cloned DST`. Exits 1 with vmkfs's error text on failure.
(tests/c_abi.rs runs it.)
"""
import ctypes
import hashlib
import sys

VMKFS_OK = 0
VMKFS_SECTOR_SIZE = 512


class Info(ctypes.Structure):
    _fields_ = [
        ("capacity", ctypes.c_uint64),
        ("sectors", ctypes.c_uint64),
        ("allocated", ctypes.c_uint64),
        ("cid", ctypes.c_uint32),
        ("parent_cid", ctypes.c_uint32),
        ("chain_depth", ctypes.c_uint32),
        ("format", ctypes.c_char * 64),
        ("adapter", ctypes.c_char * 32),
    ]


class Range(ctypes.Structure):
    _fields_ = [("offset", ctypes.c_uint64), ("length", ctypes.c_uint64)]


class RangeList(ctypes.Structure):
    _fields_ = [("ranges", ctypes.POINTER(Range)), ("count", ctypes.c_size_t)]


PROGRESS = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint64)


class VmkfsError(Exception):
    pass


def load(path):
    """The library with every function used here declared (argument and result types)."""
    lib = ctypes.CDLL(path)
    disk_p = ctypes.c_void_p
    sigs = {
        "vmkfs_open": ([ctypes.c_char_p, ctypes.c_uint32, ctypes.POINTER(disk_p)], ctypes.c_int),
        "vmkfs_close": ([disk_p], ctypes.c_int),
        "vmkfs_get_info": ([disk_p, ctypes.POINTER(Info)], ctypes.c_int),
        "vmkfs_read": ([disk_p, ctypes.c_uint64, ctypes.c_uint64, ctypes.c_char_p], ctypes.c_int),
        "vmkfs_query_allocated": ([disk_p, ctypes.POINTER(RangeList)], ctypes.c_int),
        "vmkfs_changed_since": ([disk_p, ctypes.c_char_p, ctypes.c_uint64, ctypes.POINTER(RangeList)], ctypes.c_int),
        "vmkfs_free_ranges": ([ctypes.POINTER(RangeList)], None),
        "vmkfs_clone": (
            [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, PROGRESS, ctypes.c_void_p, ctypes.c_void_p],
            ctypes.c_int,
        ),
        "vmkfs_last_error": ([], ctypes.c_char_p),
        "vmkfs_version": ([], ctypes.c_char_p),
    }
    for name, (args, res) in sigs.items():
        f = getattr(lib, name)
        f.argtypes, f.restype = args, res
    return lib


def check(lib, status):
    if status != VMKFS_OK:
        raise VmkfsError(f"status {status}: {lib.vmkfs_last_error().decode(errors='replace')}")


def ranges(lib, fill):
    """Calls `fill(RangeList)` and returns its ranges as (offset, length) tuples, freeing the list."""
    lst = RangeList()
    check(lib, fill(ctypes.byref(lst)))
    try:
        return [(lst.ranges[i].offset, lst.ranges[i].length) for i in range(lst.count)]
    finally:
        lib.vmkfs_free_ranges(ctypes.byref(lst))


def main(argv):
    args = argv[1:]
    clone = None
    if "--clone" in args:
        i = args.index("--clone")
        clone = (args[i + 1], args[i + 2])
        del args[i : i + 3]
    libpath, disk_path = args[0], args[1]
    since = args[2].encode() if len(args) > 2 else None
    lib = load(libpath)
    print("version", lib.vmkfs_version().decode())
    disk = ctypes.c_void_p()
    check(lib, lib.vmkfs_open(disk_path.encode(), 0, ctypes.byref(disk)))
    try:
        info = Info()
        check(lib, lib.vmkfs_get_info(disk, ctypes.byref(info)))
        print(
            f"info capacity={info.capacity} allocated={info.allocated} links={info.chain_depth} "
            f"cid={info.cid:08x} format={info.format.decode()}"
        )
        for off, length in ranges(lib, lambda out: lib.vmkfs_query_allocated(disk, out)):
            print("allocated", off, length)
        for off, length in ranges(lib, lambda out: lib.vmkfs_changed_since(disk, since, 0, out)):
            print("changed", off, length)
        sector = ctypes.create_string_buffer(VMKFS_SECTOR_SIZE)
        check(lib, lib.vmkfs_read(disk, 0, 1, sector))
        print("sector0", hashlib.sha256(sector.raw).hexdigest())
    finally:
        check(lib, lib.vmkfs_close(disk))
    if clone:

        @PROGRESS
        def progress(_user, done, total):
            print("progress", done, total)
            return 1

        dst, fmt = clone
        check(lib, lib.vmkfs_clone(disk_path.encode(), dst.encode(), fmt.encode(), progress, None, None))
        print("cloned", dst)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv))
    except VmkfsError as e:
        print("vmkfs_ctypes:", e, file=sys.stderr)
        sys.exit(1)
