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

import torch

PRESETS = {
    "ofa_tiny": dict(encoder_embed_dim=256, decoder_embed_dim=256, encoder_ffn_embed_dim=1024,
                     decoder_ffn_embed_dim=1024, encoder_layers=4, decoder_layers=4, encoder_attention_heads=4,
                     decoder_attention_heads=4, resnet_type="resnet50"),
    "ofa_medium": dict(encoder_embed_dim=512, decoder_embed_dim=512, encoder_ffn_embed_dim=2048,
                       decoder_ffn_embed_dim=2048, encoder_layers=4, decoder_layers=4, encoder_attention_heads=8,
                       decoder_attention_heads=8, resnet_type="resnet101"),
    "ofa_base": dict(encoder_embed_dim=768, decoder_embed_dim=768, encoder_ffn_embed_dim=3072,
                     decoder_ffn_embed_dim=3072, encoder_layers=6, decoder_layers=6, encoder_attention_heads=12,
                     decoder_attention_heads=12, resnet_type="resnet101"),
}
COMMON = dict(vocab_size=59457, scale_attn=True, scale_fc=True, scale_heads=True, disable_entangle=True)

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


def make_checkpoint(arch: str, path: Path) -> dict:
    from hfport.demo import write_fairseq_checkpoint
    from hfport.models.ofa.configuration_ofa import OFAConfig
    from hfport.models.ofa.modeling_ofa import OFAForConditionalGeneration

    torch.manual_seed(0)
    model = OFAForConditionalGeneration(OFAConfig(**PRESETS[arch], **COMMON)).eval()
    write_fairseq_checkpoint(model, path)
    checkpoint = torch.load(path, weights_only=False, mmap=True)
    unique = {t.untyped_storage().data_ptr(): t for t in checkpoint["model"].values() if t.is_floating_point()}
    params = list(unique.values())  # shared embeddings: one parameter, one set of Adam moments
    checkpoint["last_optimizer_state"] = {
        "state": {i: {"step": torch.tensor(10.0), "exp_avg": torch.randn_like(t), "exp_avg_sq": torch.rand_like(t)}
                  for i, t in enumerate(params)},
        "param_groups": [{"lr": 1e-4, "params": list(range(len(params)))}],
    }
    staging = path.with_suffix(".tmp")  # the mapped original must stay intact while it is read
    torch.save(checkpoint, staging)
    staging.replace(path)
    weights = sum(t.numel() * t.element_size() for t in checkpoint["model"].values())
    return {"weights_bytes": weights, "parameters": sum(t.numel() for t in params)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="ofa_medium", choices=sorted(PRESETS))
    parser.add_argument("--workdir", default="/tmp/hfport-bench", type=Path)
    parser.add_argument("--max-shard-size", default="200MB")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    source, output = args.workdir / f"{args.arch}.pt", args.workdir / f"{args.arch}-hf"

    started = time.perf_counter()
    facts = make_checkpoint(args.arch, source)
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
