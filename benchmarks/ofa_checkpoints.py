"""Large random OFA checkpoints for the benchmarks, written in /tmp (never committed).

The shapes are those of OFA's architecture presets (``ofa_base`` = upstream ``ofa_base_architecture``: d 768,
ffn 3072, 6+6 layers, 12 heads, ResNet-101; ``ofa_large``: d 1024, ffn 4096, 12+12 layers, 16 heads, ResNet-152
... as listed below). The weights are random: a model of that preset is built (seeded) and written in fairseq's
layout by running hfport's mapping backwards, which is what fairseq's loader reads (the fairseq side of the
benchmarks loads the same file through OFA's own code, keys checked strictly).
"""

from __future__ import annotations

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
    "ofa_large": dict(encoder_embed_dim=1024, decoder_embed_dim=1024, encoder_ffn_embed_dim=4096,
                      decoder_ffn_embed_dim=4096, encoder_layers=12, decoder_layers=12, encoder_attention_heads=16,
                      decoder_attention_heads=16, resnet_type="resnet152"),
}
COMMON = dict(vocab_size=59457, scale_attn=True, scale_fc=True, scale_heads=True, disable_entangle=True)
# OFA's task dictionary: 4 specials, 50260 GPT-2 BPE symbols, <mask>, 8192 image codes, 1000 location bins
CODE_DICT_SIZE, NUM_BINS = 8192, 1000
TASK = {"_name": "ofa", "patch_image_size": 384, "code_dict_size": CODE_DICT_SIZE, "num_bins": NUM_BINS, "bpe": "gpt2",
        "bpe_dir": "../../utils/BPE"}


def write_task_dictionary(path: Path, vocab_size: int) -> None:
    """A full task dictionary of `vocab_size` symbols (what converted folders and fixtures carry as dict.txt)."""
    text = vocab_size - 4 - 1 - CODE_DICT_SIZE - NUM_BINS
    lines = ["<s> 1", "<pad> 1", "</s> 1", "<unk> 1", *(f"tok{i} 1" for i in range(text)), "<mask> 1",
             *(f"<code_{i}> 1" for i in range(CODE_DICT_SIZE)), *(f"<bin_{i}> 1" for i in range(NUM_BINS))]
    path.write_text("\n".join(lines) + "\n")


def make_checkpoint(arch: str, path: Path, *, dtype: torch.dtype = torch.float32, adam: bool = False,
                    seed: int = 0) -> dict:
    """Write a random `arch` checkpoint at `path` (+ dict.txt beside it); returns facts about it."""
    from hfport.converters import ofa
    from hfport.mappings.engine import Mapping
    from hfport.models.ofa.configuration_ofa import OFAConfig
    from hfport.models.ofa.modeling_ofa import OFAForConditionalGeneration

    started = time.perf_counter()
    torch.manual_seed(seed)
    model = OFAForConditionalGeneration(OFAConfig(**PRESETS[arch], **COMMON)).eval()
    with torch.no_grad():  # HF init leaves LayerNorms at 1/0 and BatchNorm statistics at identity: move them
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point() and ("norm" in name or "bn" in name or "downsample.1" in name):
                tensor.add_(torch.rand_like(tensor) * 0.1)
    state = {k: v.detach() for k, v in model.state_dict().items()}
    plan = Mapping.load(ofa.MAPPING).plan({k: tuple(v.shape) for k, v in state.items()}, None,
                                          ofa.tie_flags(model.config), direction="backward",
                                          regenerators=ofa.REGENERATED)
    fairseq_state = dict(Mapping.run(plan, state.__getitem__, arch, ofa.regenerator(model.config)))
    if dtype != torch.float32:
        fairseq_state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in fairseq_state.items()}
    model_args = {**PRESETS[arch], **COMMON, "arch": arch, "_name": arch, "patch_image_size": TASK["patch_image_size"]}
    checkpoint = ofa.original_checkpoint(model.config, fairseq_state, {"hyper_parameters": {"model": model_args,
                                                                                            "task": TASK}})
    checkpoint["cfg"]["common"]["fp16"] = dtype == torch.float16
    # fairseq's loader upgrades from the last training state it finds
    checkpoint["optimizer_history"] = [{"criterion_name": "AdjustLabelSmoothedCrossEntropyCriterion",
                                        "optimizer_name": "Adam", "lr_scheduler_state": {"best": None},
                                        "num_updates": 0}]
    if adam:
        unique = {t.untyped_storage().data_ptr(): t for t in fairseq_state.values() if t.is_floating_point()}
        params = list(unique.values())
        checkpoint["last_optimizer_state"] = {
            "state": {i: {"step": torch.tensor(10.0), "exp_avg": torch.randn_like(t, dtype=torch.float32),
                          "exp_avg_sq": torch.rand_like(t, dtype=torch.float32)} for i, t in enumerate(params)},
            "param_groups": [{"lr": 1e-4, "params": list(range(len(params)))}],
        }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)
    write_task_dictionary(path.parent / "dict.txt", model.config.vocab_size)
    weights = sum(t.numel() * t.element_size() for t in fairseq_state.values())
    parameters = sum(t.numel() for t in {t.untyped_storage().data_ptr(): t for t in fairseq_state.values()
                                         if t.is_floating_point()}.values())  # shared embeddings counted once
    return {"seconds": time.perf_counter() - started, "weights_bytes": weights, "file_bytes": path.stat().st_size,
            "parameters": parameters}


def cached_checkpoint(arch: str, workdir: Path, *, dtype: torch.dtype = torch.float32, adam: bool = False) -> Path:
    """The checkpoint for (arch, dtype, adam) in `workdir/<name>/checkpoint.pt`, written once."""
    name = f"{arch}-{str(dtype).removeprefix('torch.')}" + ("-adam" if adam else "")
    path = workdir / name / "checkpoint.pt"
    if not path.is_file() or not (path.parent / "dict.txt").is_file():
        facts = make_checkpoint(arch, path, dtype=dtype, adam=adam)
        print(f"wrote {path} ({facts['file_bytes'] / 2**20:,.0f} MiB) in {facts['seconds']:.0f} s", flush=True)
    return path
