"""Wall time of `hfport convert` against the disk's own speed (`cp`) and a naive torch.load + save_file script.

    python benchmarks/convert_speed.py [--reps 3] [--cases ofa_base-fp32,ofa_large-fp16,ofa_base-fp32-adam]
                                       [--compare-code /path/to/an/older/hfport/tree]

Writes random checkpoints of OFA's presets in --workdir (benchmarks/ofa_checkpoints.py; the page cache is warm for
every contender alike), then times, each in a fresh process, interleaved and min of --reps:
  floor   python -c "import torch"
  cp      cp SOURCE DEST
  naive   torch.load(mmap=True, weights_only) + the key renames + safetensors save_file (no checks, no config)
  hfport  convert_checkpoint(SOURCE, DEST) (this tree; and --compare-code's tree through PYTHONPATH, if given;
          and with --bpe-dir, also writing the tokenizer and processor)
and prints each above the floor, hfport's ratio to cp (goal <= 2x) and to naive (goal <= 1x), and hfport's peak
anonymous memory (sampled RssAnon; goal <= 400 MB on ofa_base).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from ofa_checkpoints import cached_checkpoint  # noqa: E402

_SAMPLER = """
import threading, time
_peak = [0]
def _sample():
    while True:
        with open('/proc/self/status') as f:
            anon = next(int(l.split()[1]) for l in f if l.startswith('RssAnon'))
        _peak[0] = max(_peak[0], anon)
        time.sleep(0.02)
threading.Thread(target=_sample, daemon=True).start()
"""
HFPORT = _SAMPLER + """
import sys
from hfport.converters import convert_checkpoint
convert_checkpoint(sys.argv[1], sys.argv[2], force=True, **({"bpe_dir": sys.argv[3]} if len(sys.argv) > 3 else {}))
print('PEAK_ANON_KB', _peak[0])
"""
NAIVE = """
import argparse, sys, torch
from safetensors.torch import save_file
with torch.serialization.safe_globals([argparse.Namespace]):
    state = torch.load(sys.argv[1], weights_only=True, mmap=True, map_location='cpu')['model']
renamed = {}
for key, tensor in state.items():
    if key.endswith(('rp_bucket', 'version', 'image_position_idx')) or key.startswith('decoder.output_projection'):
        continue
    if key == 'decoder.embed_tokens.weight':
        continue
    renamed[key.replace('.attn_ln.', '.self_attn_mid_layer_norm.')] = tensor.contiguous()
save_file(renamed, sys.argv[2] + '.safetensors')
"""


def timed(argv: list[str], env: dict | None = None, cwd: Path | None = None) -> tuple[float, str]:
    # cwd outside any source tree: `python -c` puts the working directory first on sys.path, ahead of PYTHONPATH,
    # so a run from a checkout would import that checkout's hfport instead of --compare-code's
    start = time.perf_counter()
    result = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=cwd)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{argv[:3]} failed: {result.stderr[-1500:]}")
    return seconds, result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="ofa_base-fp32,ofa_large-fp16,ofa_base-fp32-adam")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/hfport-bench"))
    parser.add_argument("--compare-code", type=Path, help="another hfport source tree, imported through PYTHONPATH "
                        "(package folders converters/mappings/verify linked under hfport/)")
    parser.add_argument("--bpe-dir", type=Path, help="also time hfport writing the tokenizer and processor from this "
                        "OFA utils/BPE folder (what `hfport convert --bpe-dir` does)")
    args = parser.parse_args()

    contenders = {"floor": lambda src, dst: [sys.executable, "-c", "import torch"],
                  "cp": lambda src, dst: ["cp", str(src), str(dst)],
                  "naive": lambda src, dst: [sys.executable, "-c", NAIVE, str(src), str(dst)],
                  "hfport": lambda src, dst: [sys.executable, "-c", HFPORT, str(src), str(dst)]}
    if args.bpe_dir:
        contenders["hfport+bpe"] = lambda src, dst: [sys.executable, "-c", HFPORT, str(src), str(dst), str(args.bpe_dir)]
    envs = {name: None for name in contenders}
    if args.compare_code:
        contenders["hfport@old"] = contenders["hfport"]
        envs["hfport@old"] = {**os.environ, "PYTHONPATH": str(args.compare_code)}

    print(f"load average {os.getloadavg()[0]:.1f}; {args.reps} reps each, interleaved, min; page cache warm")
    rows = []
    for case in args.cases.split(","):
        arch, dtype, *extra = case.split("-")
        source = cached_checkpoint(arch, args.workdir, dtype=getattr(torch, {"fp32": "float32", "fp16": "float16"}[dtype]),
                                   adam="adam" in extra)
        times = {name: [] for name in contenders}
        peaks = {name: [] for name in contenders}
        subprocess.run(["cat", str(source)], stdout=subprocess.DEVNULL, check=True)  # warm the page cache
        for _ in range(args.reps):
            for name, argv in contenders.items():
                dest = args.workdir / f"out-{name}"
                subprocess.run(["rm", "-rf", str(dest), str(dest) + ".safetensors"], check=True)
                seconds, out = timed(argv(source, dest), envs[name], cwd=args.workdir)
                times[name].append(seconds)
                if "PEAK_ANON_KB" in out:
                    peaks[name].append(int(out.split("PEAK_ANON_KB")[-1].split()[0]) / 1024)
        best = {name: min(values) for name, values in times.items()}
        floor = best["floor"]
        rows.append((case, source.stat().st_size / 2**20, best, floor, peaks))

    print("\n| checkpoint | file | import torch | cp | naive mmap script | hfport convert (above floor) "
          "| vs cp (goal <= 2x) | vs naive | peak anon |" + (" hfport@old |" if args.compare_code else "")
          + (" hfport --bpe-dir |" if args.bpe_dir else ""))
    print("|---|---|---|---|---|---|---|---|---|" + ("---|" if args.compare_code else "") + ("---|" if args.bpe_dir else ""))
    for case, mib, best, floor, peaks in rows:
        above = {name: best[name] - (floor if name not in ("cp",) else 0.0) for name in best}
        line = (f"| {case} | {mib:,.0f} MiB | {floor:.2f} s | {best['cp']:.2f} s | {above['naive']:.2f} s "
                f"| {above['hfport']:.2f} s | {above['hfport'] / best['cp']:.1f}x | {above['hfport'] / above['naive']:.2f}x "
                f"| {min(peaks['hfport']):.0f} MB |")
        if args.compare_code:
            line += f" {above['hfport@old']:.2f} s ({min(peaks['hfport@old']):.0f} MB) |"
        if args.bpe_dir:
            line += f" {above['hfport+bpe']:.2f} s ({min(peaks['hfport+bpe']):.0f} MB) |"
        print(line)
    print("times for naive and hfport are whole-process wall time minus the import-torch floor")


if __name__ == "__main__":
    main()
