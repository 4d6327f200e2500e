"""What checking every archive member's CRC-32 adds to the source hash pass (hfport.read.torch_file.file_sha256).

    python benchmarks/crc_overhead.py [--mib 300] [--repeat 3]

Writes a torch checkpoint of about --mib MiB (many tensors, like a real one), then times, best of --repeat
(after one warm-up read, so both passes read from the page cache): SHA-256 alone, and SHA-256 + CRC-32.
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
import time
from pathlib import Path

import torch

from hfport.read.torch_file import file_sha256


def sha256_only(path: Path, chunk: int = 1 << 24) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def best(function, path: Path, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        function(path)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "big.pt"
        rows = args.mib * 2**20 // (4 * 1024 * 200)
        torch.save({"model": {f"layers.{i}.weight": torch.randn(rows, 1024) for i in range(200)}}, path)
        size = path.stat().st_size
        assert sha256_only(path) == file_sha256(path)  # warm-up, and the same digest
        plain = best(sha256_only, path, args.repeat)
        checked = best(file_sha256, path, args.repeat)
        print(f"file {size / 2**20:.0f} MiB: sha256 {plain:.2f} s ({size / 2**20 / plain:.0f} MiB/s); "
              f"sha256 + CRC-32 of every member {checked:.2f} s ({size / 2**20 / checked:.0f} MiB/s); "
              f"overhead {100 * (checked / plain - 1):+.0f}%")


if __name__ == "__main__":
    main()
