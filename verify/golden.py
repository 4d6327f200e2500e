"""Read golden files (the shared fixtures' `reference.pt` and what `hfport record` writes) into one shape.

Two layouts exist, both plain containers + tensors (`torch.load(weights_only=True)`):
- OFA, `format_version` 1: `inputs[_suffix]` / `outputs[_suffix]` pairs and `generation` runs;
- METER: `inputs`, `outputs`, `layers`, `meta` (`meta['passes']` says which image each pass used).
`load_golden` turns either into a `Golden`: named input sets, one ordered trace per set (the trace names of the
brief, computation order), and generation runs.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hfport.errors import CheckpointError
from hfport.read.torch_file import file_sha256, load_checkpoint

OFA_ENCODER_ORDER = ("encoder_position_embeddings", "encoder_hidden_states", "encoder_out", "encoder_padding_mask")
OFA_DECODER_ORDER = ("decoder_inner_states", "decoder_features", "logits")
METER_TOWERS = (
    "text_embeddings", "text_encoder_layers", "text_encoder_output",
    "image_embeddings", "image_encoder_layers", "image_encoder_output",
    "fusion_text_input", "fusion_image_input",
)
METER_FEATURES = ("text_feats", "image_feats", "cls_feats")
METER_HEADS = ("vqa_logits", "itm_logits", "mlm_logits", "snli_logits", "rank_scores", "nlvr2_logits")


@dataclass
class Generation:
    name: str  # e.g. "greedy", "beam3_masked"
    set: str  # the input set it ran on
    num_beams: int
    max_len_b: int
    min_len: int
    tokens: list[list[int]]


@dataclass
class Golden:
    family: str  # "ofa" | "meter"
    sets: "OrderedDict[str, dict[str, torch.Tensor]]"
    traces: "OrderedDict[str, OrderedDict[str, torch.Tensor]]"
    generations: list[Generation] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    path: str | None = None
    sha256: str | None = None

    @property
    def order(self) -> list[str]:
        """Trace names in computation order (the same for every set)."""
        first = next(iter(self.traces.values()), {})
        return list(first)


def _add(trace: "OrderedDict[str, torch.Tensor]", name: str, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            trace[f"{name}.{i}"] = item
    else:
        trace[name] = value


def ofa_trace(outputs: dict[str, Any]) -> "OrderedDict[str, torch.Tensor]":
    """An OFA `outputs` dict (lists for the per-layer states) as an ordered, flattened trace."""
    trace: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    for name in OFA_ENCODER_ORDER + OFA_DECODER_ORDER:
        _add(trace, name, outputs.get(name))
    for name, value in outputs.items():  # anything newer, after the known entries
        if name not in OFA_ENCODER_ORDER + OFA_DECODER_ORDER:
            _add(trace, name, value)
    return trace


def meter_trace(outputs: dict[str, Any], layers: dict[str, Any], suffixes: list[str]) -> "OrderedDict[str, torch.Tensor]":
    """METER `layers` + `outputs` as one ordered trace: per pass the towers, fusion (text/image interleaved per
    layer), features and per-pass heads; then heads over both passes (NLVR2)."""
    trace: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    merged = {**layers, **outputs}
    for s in suffixes:
        for name in METER_TOWERS:
            _add(trace, name + s, merged.get(name + s))
        text_layers = merged.get("fusion_text_layers" + s) or []
        image_layers = merged.get("fusion_image_layers" + s) or []
        for i in range(max(len(text_layers), len(image_layers))):
            if i < len(text_layers):
                trace[f"fusion_text_layers{s}.{i}"] = text_layers[i]
            if i < len(image_layers):
                trace[f"fusion_image_layers{s}.{i}"] = image_layers[i]
        for name in METER_FEATURES:
            _add(trace, name + s, merged.get(name + s))
        if s:
            for name in METER_HEADS:
                _add(trace, name + s, merged.get(name + s))
    for name in METER_HEADS:
        _add(trace, name, merged.get(name))
    for name, value in merged.items():  # anything not named above keeps its place at the end
        flat = [f"{name}.{i}" for i in range(len(value))] if isinstance(value, (list, tuple)) else [name]
        if not all(n in trace for n in flat):
            _add(trace, name, value)
    return trace


def _generations(runs: dict[str, Any]) -> list[Generation]:
    out = []
    for name, run in runs.items():
        if not isinstance(run, dict) or "tokens" not in run:
            continue
        settings = run.get("settings", {})
        base, _, suffix = name.partition("_")
        out.append(Generation(
            name=name,
            set="inputs" + (f"_{suffix}" if suffix else ""),
            num_beams=int(settings.get("beam_size", 1)),
            max_len_b=int(settings.get("max_len_b", 8)),
            min_len=int(settings.get("min_len", 1)),
            tokens=[list(map(int, t)) for t in run["tokens"]],
        ))
    return out


def golden_from_dict(data: dict[str, Any], path: str | None = None, sha256: str | None = None) -> Golden:
    """Adapt a loaded golden dict (either layout) into a `Golden`."""
    if not isinstance(data, dict) or "inputs" not in data:
        raise CheckpointError(f"{path or 'golden data'} is not a golden file (no 'inputs')")
    if "layers" in data:  # METER
        meta = data.get("meta", {})
        suffixes = [p.get("suffix", "") for p in meta.get("passes", [])] or [""]
        trace = meter_trace(data["outputs"], data["layers"], suffixes)
        return Golden("meter", OrderedDict(inputs=data["inputs"]), OrderedDict(inputs=trace), [], meta, path, sha256)
    if data.get("format_version") != 1:
        raise CheckpointError(f"{path or 'golden data'}: unsupported OFA golden format_version {data.get('format_version')!r}")
    sets: "OrderedDict[str, dict]" = OrderedDict()
    traces: "OrderedDict[str, OrderedDict]" = OrderedDict()
    for key in data:
        if key.startswith("inputs"):
            out_key = "outputs" + key[len("inputs"):]
            if out_key not in data:
                raise CheckpointError(f"{path or 'golden data'}: '{key}' has no '{out_key}'")
            sets[key] = data[key]
            traces[key] = ofa_trace(data[out_key])
    gens = _generations(data.get("generation", {}))
    meta = dict(data.get("meta", {}))
    meta.setdefault("variant", data.get("variant"))
    return Golden(str(data.get("family", "ofa")), sets, traces, gens, meta, path, sha256)




def load_golden(path: str | Path) -> Golden:
    """A golden file, read like any checkpoint (weights_only, one-line errors for missing/empty/broken files)."""
    data = load_checkpoint(path)
    return golden_from_dict(data, str(path), file_sha256(path))
