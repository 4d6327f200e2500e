"""Wall time of `hfport verify --golden` on a full-size OFA against loading the folder and running one forward pass.

    python benchmarks/verify_speed.py [--arch ofa_base] [--reps 3] [--golden FILE] [--compare-code TREE]

Writes a random checkpoint of an OFA preset (benchmarks/ofa_checkpoints.py, in --workdir), converts it and, unless
--golden is given, records a golden file from it with the original code (`hfport record` through --fairseq-python
and --ofa-root). Then times, each in a fresh process, interleaved, min of --reps:
  load + forward   import transformers, from_pretrained(folder), one forward pass over the golden's first input set
  verify           hfport verify FOLDER --golden FILE (everything: load, every input set with per-layer states,
                   every generation check, the report and its plot)
  verify (before)  the same with another hfport source tree on PYTHONPATH (--compare-code), if given
and prints verify's ratio to load + forward (goal: <= 2x).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from ofa_checkpoints import cached_checkpoint  # noqa: E402

LOAD_AND_FORWARD = """
import sys, time, torch
started = time.perf_counter()
from transformers import AutoModelForSeq2SeqLM
model = AutoModelForSeq2SeqLM.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
loaded = time.perf_counter()
inputs = torch.load(sys.argv[2], weights_only=True)["inputs"]  # the golden's first input set
src, prev = inputs["src_tokens"], inputs["prev_output_tokens"]
with torch.no_grad():
    model(input_ids=src, attention_mask=src.ne(1).long(), patch_images=inputs["patch_images"],
          patch_masks=inputs["patch_masks"], decoder_input_ids=prev, decoder_attention_mask=prev.ne(1).long(),
          use_cache=False)
print(f"INSIDE load {loaded - started:.2f} forward {time.perf_counter() - loaded:.2f}")
"""


def wall(argv: list[str], env: dict | None = None, cwd: Path | None = None) -> float:
    # cwd outside any source tree: `python -c` puts the working directory first on sys.path, ahead of PYTHONPATH
    started = time.perf_counter()
    result = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=cwd)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:4])} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return seconds


def verify_argv(folder: Path, golden: Path, report: Path) -> list[str]:
    code = "import sys; from hfport.cli import main; sys.exit(main(sys.argv[1:]))"
    return [sys.executable, "-c", code, "verify", str(folder), "--golden", str(golden), "--report", str(report)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="ofa_base")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/hfport-bench"))
    parser.add_argument("--golden", type=Path, help="a golden file recorded from the checkpoint (else recorded here)")
    parser.add_argument("--fairseq-python", default="/work/envs/fairseq/bin/python")
    parser.add_argument("--ofa-root", type=Path, default=Path("/work/upstream/OFA-Sys+OFA"))
    parser.add_argument("--bpe-dir", type=Path, help="OFA's utils/BPE (dict.txt, encoder.json, vocab.bpe) for "
                        "recording; default: ../shared/fixtures/ofa/bpe")
    parser.add_argument("--compare-code", type=Path, help="another hfport source tree (converters, mappings, verify "
                        "linked under hfport/, as in a checkout) whose verify to time as well")
    args = parser.parse_args()

    checkpoint = cached_checkpoint(args.arch, args.workdir)
    folder = checkpoint.parent.with_name(checkpoint.parent.name + "-hf")
    if not (folder / "model.safetensors").is_file():
        from hfport.converters import convert_checkpoint

        convert_checkpoint(checkpoint, folder, force=True)
    golden = args.golden or checkpoint.with_name("golden.pt")
    if not golden.is_file():
        bpe = args.bpe_dir or HERE.parent.parent / "shared" / "fixtures" / "ofa" / "bpe"
        print(f"recording {golden} with the original code ...", flush=True)
        wall([sys.executable, "-c", "import sys; from hfport.cli import main; sys.exit(main(sys.argv[1:]))", "record",
              str(checkpoint), "--reference-code", str(args.ofa_root), "--reference-python", args.fairseq_python,
              "--bpe-dir", str(bpe), "--out", str(golden)])

    sides = {"load + forward": [sys.executable, "-c", LOAD_AND_FORWARD, str(folder), str(golden)],
             "verify": verify_argv(folder, golden, args.workdir / "verify-report.json")}
    envs: dict[str, dict | None] = {name: None for name in sides}
    if args.compare_code:  # the other tree's harness on a copy of the folder holding that tree's model code
        old = folder.with_name(folder.name + "@old")
        shutil.rmtree(old, ignore_errors=True)
        shutil.copytree(folder, old)
        for name in ("configuration_ofa.py", "modeling_ofa.py"):
            shutil.copy2(args.compare_code / "hfport" / "models" / "ofa" / name, old / name)
        sides["verify (before)"] = verify_argv(old, golden, args.workdir / "verify-report-before.json") + [
            "--trust-remote-code"]  # its code digests no longer match hfport.json: that is the point of the copy
        envs["verify (before)"] = {**os.environ, "PYTHONPATH": str(args.compare_code)}
    load_before = os.getloadavg()[0]
    for name, argv in sides.items():  # warm-up: page cache, remote-code module cache
        wall(argv, envs[name], cwd=args.workdir)
    times: dict[str, list[float]] = {name: [] for name in sides}
    for rep in range(args.reps):
        for name, argv in sides.items():
            times[name].append(wall(argv, envs[name], cwd=args.workdir))
        print(f"rep {rep + 1}: " + ", ".join(f"{n} {t[-1]:.1f} s" for n, t in times.items()), flush=True)
    best = {name: min(values) for name, values in times.items()}
    print(f"\n{args.arch} fp32, golden {golden.name} ({golden.stat().st_size / 2**20:.0f} MiB), whole-process wall "
          f"time, min of {args.reps} after a warm-up, interleaved; load average {load_before:.1f} before, "
          f"{os.getloadavg()[0]:.1f} after")
    print("| case | seconds | x (load + forward) | goal |")
    print("|---|---|---|---|")
    base = best["load + forward"]
    print(f"| load + one forward pass | {base:.1f} | 1.00x | - |")
    for name in [n for n in best if n != "load + forward"]:
        print(f"| {name} | {best[name]:.1f} | {best[name] / base:.2f}x | <= 2x |")


if __name__ == "__main__":
    main()
