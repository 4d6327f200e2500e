"""Inference speed of a converted OFA against the original fairseq + OFA code, in one run.

    python benchmarks/ofa_inference.py [--arch ofa_base] [--reps 5] [--compare-code /path/to/older/hfport/tree]

Writes a random checkpoint of an OFA preset (benchmarks/ofa_checkpoints.py, in --workdir), converts it, and starts
two long-lived processes holding the same weights: the converted folder through transformers (this Python) and
the original through fairseq + an OFA checkout (--fairseq-python, --ofa-root; skipped with a note when absent).
Each case runs once per side as a warm-up, then --reps times with the two sides interleaved (the machine may be
shared); the table shows the minimum per side. --compare-code adds a third side: the same folder with the model code
of another hfport tree (what this tree's changes gained, measured in the same run). Then a greedy-token check on a trained fixture
(../shared/fixtures/ofa/ofa-tiny-standard, converted with the same options): both sides must emit the same tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _line_worker import LineWorker  # noqa: E402
from ofa_checkpoints import cached_checkpoint  # noqa: E402

WORKER = HERE / "_ofa_worker.py"
CASES = [("forward", 1), ("greedy", 1), ("forward", 8), ("greedy", 8)]
CASE_NAMES = {"forward": "forward", "greedy": "greedy 20 tokens"}
GOALS = {"forward": 1.3, "greedy": 1.5}
SOURCE_TOKENS = 12


class Worker(LineWorker):
    def tokens(self, set_name: str) -> list[list[int]]:
        self.send(f"tokens {set_name}")
        return json.loads(self.read("tokens", whole=True)[0])  # one JSON value, spaces included


def make_inputs(path: Path, vocab_text: int, image_size: int) -> None:
    generator = torch.Generator().manual_seed(0)
    sets = {}
    for batch in (1, 8):
        src = torch.randint(4, vocab_text, (batch, SOURCE_TOKENS), generator=generator)
        src[:, -1] = 2
        prev = torch.randint(4, vocab_text, (batch, SOURCE_TOKENS), generator=generator)
        prev[:, 0] = 0
        sets[f"batch{batch}"] = {
            "src_tokens": src, "src_lengths": torch.full((batch,), SOURCE_TOKENS),
            "patch_images": torch.randn(batch, 3, image_size, image_size, generator=generator),
            "patch_masks": torch.ones(batch, dtype=torch.bool), "prev_output_tokens": prev,
        }
    torch.save(sets, path)


def convert(checkpoint: Path, folder: Path, options: dict) -> None:
    from hfport.converters import convert_checkpoint

    convert_checkpoint(checkpoint, folder, force=True, **options)


def with_old_code(folder: Path, tree: Path) -> Path:
    """A copy of `folder` whose model code comes from another hfport source tree."""
    import shutil

    old = folder.with_name(folder.name + "@old")
    shutil.rmtree(old, ignore_errors=True)
    shutil.copytree(folder, old)
    for name in ("configuration_ofa.py", "modeling_ofa.py"):
        shutil.copy2(tree / "hfport" / "models" / "ofa" / name, old / name)
    return old


def start_workers(args, folder: Path, checkpoint: Path, inputs: Path, compare: bool = False) -> dict[str, Worker]:
    import hfport
    import hfport.verify

    threads = str(args.threads)
    workers = {}
    if args.fairseq:
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        workers["fairseq"] = Worker([args.fairseq_python, str(WORKER), "fairseq", str(checkpoint), str(inputs), threads,
                                     str(args.ofa_root), os.path.dirname(hfport.__file__),
                                     os.path.dirname(hfport.verify.__file__)], env)
    if compare and args.compare_code:
        env = {**os.environ, "PYTHONPATH": str(args.compare_code)}
        workers["hf@old"] = Worker([sys.executable, str(WORKER), "hf", str(with_old_code(folder, args.compare_code)),
                                    str(inputs), threads], env)
    workers["hf"] = Worker([sys.executable, str(WORKER), "hf", str(folder), str(inputs), threads])
    return workers


def token_check(args, options: dict) -> str:
    """Greedy tokens of both sides on a trained fixture's own inputs."""
    fixture = args.shared / "fixtures" / "ofa" / "ofa-tiny-standard"
    if not (fixture / "checkpoint.pt").is_file():
        return f"token check skipped: no fixture at {fixture}"
    folder = args.workdir / "ofa-tiny-standard-hf"
    convert(fixture / "checkpoint.pt", folder, options)
    reference = torch.load(fixture / "reference.pt", weights_only=True)
    sets = {k: v for k, v in reference.items() if k.startswith("inputs") and isinstance(v, dict)}
    inputs = args.workdir / "fixture-inputs.pt"
    torch.save(sets, inputs)
    workers = start_workers(args, folder, fixture / "checkpoint.pt", inputs)
    try:
        tokens = {side: {name: worker.tokens(name) for name in sets} for side, worker in workers.items()}
    finally:
        for worker in workers.values():
            worker.close()
    if "fairseq" not in tokens:
        return "token check: fairseq absent, HF tokens only"
    same = tokens["hf"] == tokens["fairseq"]
    count = sum(len(row) for rows in tokens["hf"].values() for row in rows)
    return (f"token check on {fixture.name} ({len(sets)} input sets, {count} greedy tokens): "
            + ("identical" if same else f"DIFFERENT\n  hf: {tokens['hf']}\n  fairseq: {tokens['fairseq']}"))


def parse_options(values: list[str]) -> dict:
    options = {}
    for item in values:
        key, _, value = item.partition("=")
        options[key] = {"true": True, "false": False}.get(value.lower(), value)
    return options


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="ofa_base")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/hfport-bench"))
    parser.add_argument("--fairseq-python", default="/work/envs/fairseq/bin/python")
    parser.add_argument("--ofa-root", type=Path, default=Path("/work/upstream/OFA-Sys+OFA"))
    parser.add_argument("--shared", type=Path, default=Path(os.environ.get("HFPORT_SHARED", HERE.parent.parent / "shared")))
    parser.add_argument("--convert-option", action="append", default=[],
                        help="NAME=VALUE passed to the conversion (e.g. fold_batchnorm=false)")
    parser.add_argument("--skip-token-check", action="store_true")
    parser.add_argument("--compare-code", type=Path, help="another hfport source tree (folders converters, mappings, "
                        "verify linked under hfport/): its model code runs as a third side")
    args = parser.parse_args()
    args.fairseq = Path(args.fairseq_python).is_file() and (args.ofa_root / "models" / "ofa").is_dir()
    options = parse_options(args.convert_option)

    checkpoint = cached_checkpoint(args.arch, args.workdir)
    folder = args.workdir / f"{args.arch}-hf"
    convert(checkpoint, folder, options)
    inputs = args.workdir / "inputs.pt"
    make_inputs(inputs, vocab_text=50000, image_size=384)
    load = os.getloadavg()
    workers = start_workers(args, folder, checkpoint, inputs, compare=True)
    times: dict[tuple, dict[str, list[float]]] = {case: {side: [] for side in workers} for case in CASES}
    try:
        for case in CASES:  # warm-up
            for worker in workers.values():
                worker.ask(f"{case[0]} {case[1]}")
        for rep in range(args.reps):
            for case in CASES:
                for side, worker in workers.items():
                    times[case][side].append(worker.ask(f"{case[0]} {case[1]}"))
                print(f"rep {rep + 1} {case}: " + ", ".join(f"{side} {times[case][side][-1]:.0f} ms" for side in workers),
                      file=sys.stderr, flush=True)
    finally:
        for worker in workers.values():
            worker.close()
    load_after = os.getloadavg()

    print(f"\n{args.arch} fp32, 384 px, source {SOURCE_TOKENS} tokens, {args.threads} threads, min of {args.reps} "
          f"after a warm-up, sides interleaved; conversion options {options or '{}'}; "
          f"load average {load[0]:.1f} before, {load_after[0]:.1f} after")
    old = "hf@old" in workers
    print("| case | fairseq + OFA |" + (" converted, old code | speed-up |" if old else "")
          + " converted (this tree) | speed-up | goal |")
    print("|---|---|" + ("---|---|" if old else "") + "---|---|---|")
    for kind, batch in CASES:
        ref = min(times[(kind, batch)]["fairseq"]) if "fairseq" in workers else None
        cells = []
        for side in (["hf@old"] if old else []) + ["hf"]:
            hf = min(times[(kind, batch)][side])
            cells.append(f"{hf:.0f} ms | {f'{ref / hf:.2f}x' if ref else '-'}")
        print(f"| {CASE_NAMES[kind]}, batch {batch} | {f'{ref:.0f} ms' if ref else 'absent'} | " + " | ".join(cells)
              + f" | >= {GOALS[kind]}x |")
    ref = workers.get("fairseq")
    loads = [f"{workers[s].load_seconds:.1f} s, {workers[s].rss_mb:.0f} MB RSS | -" for s in (["hf@old"] if old else []) + ["hf"]]
    print(f"| load | {f'{ref.load_seconds:.1f} s, {ref.rss_mb:.0f} MB RSS' if ref else 'absent'} | "
          + " | ".join(loads) + " | keep |")
    if not args.skip_token_check:
        print(token_check(args, options))


if __name__ == "__main__":
    main()
