#!/usr/bin/env python3
"""Writes a realistic sparse raw disk image for benchmarks.

The image is SIZE bytes of virtual disk in which a fraction FILL holds data: runs (64 KiB to 8 MiB)
of pseudo-random bytes (incompressible), text-like bytes (compressible) and explicitly written zeros
(as a guest that zeroed a file leaves them), separated by holes. Deterministic for a given seed.

usage: gen_image.py OUT SIZE_MIB FILL [SEED]
"""
import os
import random
import sys


def main():
    out, size_mib, fill = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    seed = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    rng = random.Random(seed)
    size = size_mib << 20
    words = b"the quick brown fox jumps over the lazy dog; lorem ipsum dolor sit amet 0123456789 \n"
    text = (words * (1 + (8 << 20) // len(words)))[: 8 << 20]
    noise = rng.randbytes(8 << 20)
    zeros = bytes(8 << 20)
    with open(out, "wb") as f:
        f.truncate(size)
        pos = 0
        while pos < size:
            run = min(rng.choice([64, 128, 256, 1024, 2048, 4096, 8192]) << 10, size - pos)
            if rng.random() < fill:
                kind = rng.random()
                f.seek(pos)
                if kind < 0.5:
                    start = rng.randrange(0, len(noise) - run + 1, 4096)
                    f.write(noise[start : start + run])
                elif kind < 0.9:
                    start = rng.randrange(0, len(text) - run + 1)
                    f.write(text[start : start + run])
                else:
                    f.write(zeros[:run])
            pos += run


if __name__ == "__main__":
    main()
