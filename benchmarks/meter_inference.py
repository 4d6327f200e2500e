"""Inference speed of a converted METER against the original METER code, in one run.

    python benchmarks/meter_inference.py [--reps 5] [--threads 2] [--image-size 288]
        [--meter-python /work/envs/meter/bin/python] [--meter-root /work/upstream/zdou0830+METER]

Writes (once, cached in --workdir) a full-size random METER VQA checkpoint in the original's own format: METER's
`METERTransformerSS` built in METER's legacy environment with the shapes of meter_clip16_288_roberta (CLIP ViT-B/16,
RoBERTa-base text tower, 6 co-attention layers per stream, hidden 768, 3129 VQAv2 answers), saved as a
pytorch_lightning 1.3 checkpoint. It is converted with hfport, then two long-lived processes hold the same weights:
the converted folder through transformers (this Python) and the original METER through
hfport.verify.backends.meter_live (what `hfport verify --against` runs), in METER's legacy Python. Each case (one
VQA forward: both towers, fusion, poolers and head; an image plus a 40-token question) runs once per side as a
warm-up, then --reps times with the sides interleaved (the machine may be shared); the table shows the minimum per
side. Before the timing, both sides' VQA logits on the same inputs are compared (that run is the warm-up);
--profile then prints each side's top operators (torch.profiler, one forward of batch 1).

METER's legacy environment as built on Python 3.11 for this benchmark (and for `hfport verify --against` on METER):

    python3.11 -m venv ENV && ENV/bin/pip install torch==2.13.0      # the CPU wheel
    ENV/bin/pip install "numpy<2" transformers==4.6.0 pytorch_lightning==1.3.2 timm==0.4.12 einops==0.3.0 \
        sacred==0.8.2 ftfy tqdm Pillow --no-deps
    ENV/bin/pip install filelock regex requests sacremoses packaging future PyYAML fsspec tensorboard \
        torchmetrics==0.3.2 docopt jsonpickle munch wrapt py-cpuinfo colorama GitPython wcwidth
    ENV/bin/pip install "jsonpickle<2" "munch<3" "wrapt<2"                              # sacred 0.8.2's pins
    ENV/bin/pip install "setuptools>=77,<81" pyDeprecate==0.3.0 huggingface_hub==0.0.8 torchvision==0.28.0 --no-deps

PyPI's torchvision 0.28.0 is a CUDA build whose two fake-kernel registrations (`torchvision::nms`, `qnms` in
torchvision/_meta_registrations.py) fail beside CPU torch; METER only needs `torchvision.transforms`, which imports
once those two decorators are disabled in that throwaway environment. `tokenizers` is not needed (0.10 has no
Python 3.11 wheel).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _line_worker import LineWorker  # noqa: E402

WORKER = HERE / "_meter_worker.py"
BATCHES = (1, 8)
GOAL = 1.3
QUESTION_TOKENS = 40
VQA_LABELS = 3129
TOLERANCE = 1e-3  # max abs difference of the VQA logits accepted as "same model"

# roberta-base's config.json (the text tower METER's text_roberta loads)
ROBERTA_BASE = {
    "model_type": "roberta", "architectures": ["RobertaForMaskedLM"], "vocab_size": 50265, "hidden_size": 768,
    "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072, "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1, "max_position_embeddings": 514,
    "type_vocab_size": 1, "initializer_range": 0.02, "layer_norm_eps": 1e-05, "pad_token_id": 1, "bos_token_id": 0,
    "eos_token_id": 2,
}
# ViT-B/16's visual tower as METER keeps it: 12 blocks in the archive, the last one dropped
CLIP_B16 = {"width": 768, "patch_size": 16, "grid": 14, "blocks": 11, "text_width": 512}


def meter_config(image_size: int) -> dict:
    """METER's sacred config for task_finetune_vqa_clip_bert + clip16 + text_roberta (the released VQA model's)."""
    losses = dict.fromkeys(("itm", "mlm", "mpp", "vqa", "vcr", "vcr_qar", "nlvr2", "irtr", "contras", "snli"), 0)
    losses["vqa"] = 1
    return {
        "exp_name": "finetune_vqa", "seed": 0, "datasets": ["vqa"], "loss_names": losses, "batch_size": 512,
        "train_transform_keys": ["clip"], "val_transform_keys": ["clip"], "image_size": image_size,
        "patch_size": 16, "draw_false_image": 0, "image_only": False, "resolution_before": 224,
        "vqav2_label_size": VQA_LABELS, "max_text_len": 50, "tokenizer": "roberta-base", "vocab_size": 50265,
        "whole_word_masking": False, "mlm_prob": 0.15, "draw_false_text": 0, "num_top_layer": 6,
        "input_image_embed_size": 768, "input_text_embed_size": 768, "vit": "ViT-B/16", "hidden_size": 768,
        "num_heads": 12, "num_layers": 6, "mlp_ratio": 4, "drop_rate": 0.1, "optim_type": "adamw",
        "learning_rate": 5e-06, "weight_decay": 0.01, "decay_power": 1, "max_epoch": 10, "max_steps": None,
        "warmup_steps": 0.1, "end_lr": 0, "lr_mult_head": 50, "lr_mult_cross_modal": 5, "get_recall_metric": False,
        "resume_from": None, "fast_dev_run": False, "val_check_interval": 0.1, "test_only": False, "data_root": "",
        "log_dir": "result", "per_gpu_batchsize": 32, "num_gpus": 1, "num_nodes": 1, "load_path": "",
        "num_workers": 8, "precision": 32,
    }


def hfport_dirs() -> list[str]:
    import hfport
    import hfport.verify

    return [os.path.dirname(hfport.__file__), os.path.dirname(hfport.verify.__file__)]


class Worker(LineWorker):
    def __init__(self, argv: list[str], env: dict | None = None):
        super().__init__(argv, env, close_timeout=120)

    def forward_ms(self, batch: int) -> float:
        return self.ask(f"forward {batch}")

    def logits(self, batch: int, path: Path) -> torch.Tensor:
        self.send(f"logits {batch} {path}")
        self.read("saved")
        return torch.load(path, weights_only=True)

    def profile(self, batch: int, path: Path) -> str:
        self.send(f"profile {batch} {path}")
        self.read("saved")
        return path.read_text()

    def peak_mb(self) -> float:
        self.send("peak")
        return float(self.read("peak")[0])


def cached_checkpoint(args) -> tuple[Path, Path]:
    """(checkpoint, text config) in --workdir, written by METER's own class when absent or of another preset."""
    args.workdir.mkdir(parents=True, exist_ok=True)
    text_config = args.workdir / "roberta-base-config.json"
    text_config.write_text(json.dumps(ROBERTA_BASE, indent=1))
    preset = {"config": meter_config(args.image_size), "clip": CLIP_B16}
    preset_file = args.workdir / f"meter-vqa-{args.image_size}.preset.json"
    checkpoint = args.workdir / f"meter-vqa-{args.image_size}.ckpt"
    if checkpoint.is_file() and preset_file.is_file() and json.loads(preset_file.read_text()) == preset:
        return checkpoint, text_config
    preset_file.write_text(json.dumps(preset, indent=1))
    print(f"writing {checkpoint} with METER's own class ...", file=sys.stderr, flush=True)
    subprocess.run([args.meter_python, str(WORKER), "make", str(checkpoint), str(preset_file), str(text_config),
                    str(args.meter_root), *hfport_dirs()], check=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    return checkpoint, text_config


def make_inputs(path: Path, image_size: int) -> None:
    """A 40-token RoBERTa question (<s> ... </s>) and a normalised-range image per row, batches 1 and 8."""
    generator = torch.Generator().manual_seed(0)
    sets = {}
    for batch in BATCHES:
        ids = torch.randint(3, ROBERTA_BASE["vocab_size"], (batch, QUESTION_TOKENS), generator=generator)
        ids[:, 0], ids[:, -1] = 0, 2
        sets[f"batch{batch}"] = {"text_ids": ids, "text_masks": torch.ones_like(ids),
                                 "image": torch.randn(batch, 3, image_size, image_size, generator=generator)}
    torch.save(sets, path)


def convert(checkpoint: Path, folder: Path, text_config: Path) -> None:
    from hfport.converters import convert_checkpoint

    convert_checkpoint(checkpoint, folder, force=True, text_config=str(text_config))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=288, help="288 (METER pre-training), 576 (its VQA runs)")
    parser.add_argument("--profile", action="store_true", help="print each side's top operators after the timing")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/hfport-bench-meter"))
    parser.add_argument("--meter-python", default=os.environ.get("METER_PYTHON", "/work/envs/meter/bin/python"))
    parser.add_argument("--meter-root", type=Path,
                        default=Path(os.environ.get("METER_ROOT", "/work/upstream/zdou0830+METER")))
    args = parser.parse_args()
    if not (Path(args.meter_python).is_file() and (args.meter_root / "meter" / "modules").is_dir()):
        sys.exit(f"error: needs METER's legacy Python ({args.meter_python}) and a METER checkout ({args.meter_root}): "
                 "the checkpoint is written by METER's own class")

    checkpoint, text_config = cached_checkpoint(args)
    folder = args.workdir / f"meter-vqa-{args.image_size}-hf"
    convert(checkpoint, folder, text_config)
    inputs = args.workdir / "inputs.pt"
    make_inputs(inputs, args.image_size)

    load = os.getloadavg()
    threads = str(args.threads)
    meter_env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    workers = {
        "meter": Worker([args.meter_python, str(WORKER), "meter", str(checkpoint), str(inputs), threads,
                         str(args.meter_root), *hfport_dirs(), str(text_config)], meter_env),
        "hf": Worker([sys.executable, str(WORKER), "hf", str(folder), str(inputs), threads]),
    }
    times = {batch: {side: [] for side in workers} for batch in BATCHES}
    try:
        differences = {}
        for batch in BATCHES:  # the output check doubles as the warm-up
            got = {side: w.logits(batch, args.workdir / f"logits-{side}-{batch}.pt") for side, w in workers.items()}
            differences[batch] = (got["hf"] - got["meter"]).abs().max().item()
        for rep in range(args.reps):
            for batch in BATCHES:
                for side, worker in workers.items():
                    times[batch][side].append(worker.forward_ms(batch))
                print(f"rep {rep + 1} batch {batch}: "
                      + ", ".join(f"{side} {times[batch][side][-1]:.0f} ms" for side in workers),
                      file=sys.stderr, flush=True)
        peaks = {side: w.peak_mb() for side, w in workers.items()}
        profiles = {side: w.profile(1, args.workdir / f"profile-{side}.txt") for side, w in workers.items()} \
            if args.profile else {}
    finally:
        for worker in workers.values():
            worker.close()
    load_after = os.getloadavg()

    print(f"\nMETER VQA (CLIP ViT-B/16 + RoBERTa-base + 6 fusion layers, {VQA_LABELS} answers) fp32, "
          f"{args.image_size} px, question {QUESTION_TOKENS} tokens, {args.threads} threads, min of {args.reps} "
          f"after a warm-up, sides interleaved; load average {load[0]:.1f} before, {load_after[0]:.1f} after")
    print("| case | original METER | converted | speed-up | goal |")
    print("|---|---|---|---|---|")
    for batch in BATCHES:
        ref, hf = min(times[batch]["meter"]), min(times[batch]["hf"])
        print(f"| VQA forward, batch {batch} | {ref:.0f} ms | {hf:.0f} ms | {ref / hf:.2f}x | >= {GOAL}x |")
    ref, hf = workers["meter"], workers["hf"]
    print(f"| load | {ref.load_seconds:.1f} s, {ref.rss_mb:.0f} MB RSS | {hf.load_seconds:.1f} s, "
          f"{hf.rss_mb:.0f} MB RSS | - | keep |")
    print(f"| peak RSS after batch 8 | {peaks['meter']:.0f} MB | {peaks['hf']:.0f} MB | - | keep |")
    worst = max(differences.values())
    print("output check, VQA logits max abs difference: "
          + ", ".join(f"batch {b} {d:.2e}" for b, d in differences.items())
          + (" (same model)" if worst <= TOLERANCE else f" DIFFERENT (over {TOLERANCE})"))
    print("the METER side's load includes writing the random text tower that METER's from_pretrained reads "
          "(hfport's meter_live stand-in for the roberta-base download) and building CLIP from the checkpoint's shapes")
    for side, table in profiles.items():
        print(f"\ntop operators, {side}, forward batch 1 (self CPU time):\n{table}")


if __name__ == "__main__":
    main()
