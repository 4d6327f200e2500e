"""Speed and memory of `hfport convert` on an optimizer-laden fairseq OFA checkpoint.

Writes a random OFA checkpoint of a real preset's size (default ofa_medium, 93M parameters) in fairseq's
layout with full Adam state (exp_avg + exp_avg_sq: twice the weights), then converts it in a fresh process
and prints wall time, peak resident memory, and how they compare with the file and the weights.

    python benchmarks/convert_memory.py [--arch ofa_medium|ofa_base|ofa_tiny] [--workdir /tmp/hfport-bench]

The claim it checks: conversion streams tensors from a memory-mapped file, so peak memory stays well below
the file size and never pays for the optimizer state it drops.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from ofa_checkpoints import PRESETS, make_checkpoint  # noqa: E402

# Peak RSS is read from VmHWM (ru_maxrss would be inherited from this process across exec).
_PEAK = "int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1]) * 1024"
_CONVERT = f"""
import sys, time
from hfport.converters import convert_checkpoint
start = time.perf_counter()
convert_checkpoint(sys.argv[1], sys.argv[2], force=True, max_shard_size=sys.argv[3])
print(time.perf_counter() - start, {_PEAK})
"""
_BASELINE = f"""
import hfport.converters.pipeline, hfport.converters.ofa, hfport.models.ofa.modeling_ofa
print({_PEAK})
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="ofa_medium", choices=sorted(PRESETS))
    parser.add_argument("--workdir", default="/tmp/hfport-bench", type=Path)
    parser.add_argument("--max-shard-size", default="200MB")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    source, output = args.workdir / f"{args.arch}.pt", args.workdir / f"{args.arch}-hf"

    started = time.perf_counter()
    facts = make_checkpoint(args.arch, source, adam=True)
    print(f"wrote {source}: {facts['parameters'] / 1e6:.1f}M parameters, file {source.stat().st_size / 2**20:,.0f} MiB "
          f"(weights {facts['weights_bytes'] / 2**20:,.0f} MiB + Adam state) in {time.perf_counter() - started:.0f} s")

    baseline = int(subprocess.run([sys.executable, "-c", _BASELINE], capture_output=True, text=True,
                                  check=True).stdout.split()[-1])
    result = subprocess.run([sys.executable, "-c", _CONVERT, str(source), str(output), args.max_shard_size],
                            capture_output=True, text=True, check=True)
    seconds, peak = result.stdout.split()[-2:]
    seconds, peak = float(seconds), int(peak)
    report = {
        "arch": args.arch, "file_mib": round(source.stat().st_size / 2**20), "weights_mib": round(facts["weights_bytes"] / 2**20),
        "convert_seconds": round(seconds, 1), "peak_rss_mib": round(peak / 2**20),
        "import_baseline_rss_mib": round(baseline / 2**20),
        "peak_above_baseline_mib": round((peak - baseline) / 2**20),
        "throughput_mib_per_s": round(facts["weights_bytes"] / 2**20 / seconds, 1),
    }
    print(json.dumps(report, indent=2))
    print(f"peak memory above the import baseline is {report['peak_above_baseline_mib']} MiB for a "
          f"{report['file_mib']} MiB file ({report['weights_mib']} MiB of weights): the optimizer state is never read")


if __name__ == "__main__":
    main()
