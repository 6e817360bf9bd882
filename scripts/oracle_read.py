#!/usr/bin/env python3
"""Another implementation's read-through of VMDK disks, for the tests that compare ours with it:
for each DISK, one line `BYTES SHA256` of everything the reader returns from the disk (a delta
through its parents). Prints `missing` and exits 0 when the reader's Python module is not
installed (the tests then skip that comparison); exits 1 when the reader fails on a disk.
usage: scripts/oracle_read.py dissect|pyvmdk DISK...
  dissect: dissect.hypervisor, read by sectors (its stream interface reads the last 8 KiB block
           whole and fails when the capacity is not a multiple of 8 KiB)
  pyvmdk:  libvmdk's Python binding, with the extent data files opened
"""
import hashlib
import sys

CHUNK_SECTORS = 2048


def read_dissect(path):
    from dissect.hypervisor.disk.vmdk import VMDK

    v = VMDK(path)
    for s in range(0, v.sector_count, CHUNK_SECTORS):
        yield v.read_sectors(s, min(CHUNK_SECTORS, v.sector_count - s))


def read_pyvmdk(path):
    import pyvmdk

    h = pyvmdk.handle()
    h.open(path)
    h.open_extent_data_files()
    size, off = h.get_media_size(), 0
    while off < size:
        b = h.read_buffer(min(CHUNK_SECTORS * 512, size - off))
        if not b:
            raise SystemExit(f"{path}: pyvmdk read nothing at offset {off} of {size}")
        off += len(b)
        yield b


READERS = {"dissect": ("dissect.hypervisor.disk.vmdk", read_dissect), "pyvmdk": ("pyvmdk", read_pyvmdk)}


def main():
    if len(sys.argv) < 3 or sys.argv[1] not in READERS:
        sys.exit(__doc__)
    module, read = READERS[sys.argv[1]]
    try:
        __import__(module)
    except ImportError:
        print("missing")
        return
    for path in sys.argv[2:]:
        h, n = hashlib.sha256(), 0
        for b in read(path):
            h.update(b)
            n += len(b)
        print(n, h.hexdigest())


if __name__ == "__main__":
    main()
