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

import contextlib
import json

import torch

from hfport.errors import CheckpointError, ConfigError
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
            tokens=[_token_list(t, name) for t in run["tokens"]],
        ))
    return out


def _token_list(tokens: Any, name: str) -> list[int]:
    values = tokens.tolist() if isinstance(tokens, torch.Tensor) else list(tokens)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise CheckpointError(f"golden generation {name!r} holds non-integer token ids")
    return values


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
    return Golden("ofa", sets, traces, gens, meta, path, sha256)




def load_golden(path: str | Path) -> Golden:
    """A golden file, read like any checkpoint (weights_only, one-line errors for missing/empty/broken files)."""
    data = load_checkpoint(path)
    return golden_from_dict(data, str(path), file_sha256(path))


def read_folder_config(folder: Path) -> dict:
    """A converted folder's config.json, or a one-line error when it is not JSON."""
    path = Path(folder) / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ConfigError(f"{path}: not a readable config ({type(err).__name__}: {str(err)[:120]})") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: not a config (a JSON {type(config).__name__}, expected an object)")
    return config


@contextlib.contextmanager
def folder_load_errors(folder: Path):
    """Loading weights that are missing, damaged or foreign is a one-line error, not a traceback."""
    from safetensors import SafetensorError

    try:
        yield
    except (OSError, ValueError, SafetensorError, json.JSONDecodeError) as err:
        message = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
        raise ConfigError(f"{folder}: cannot load the converted model ({type(err).__name__}: {message[:200]})") \
            from None


def _vocab_size(config: dict) -> int | None:
    for holder in (config, config.get("text_config") or {}):
        if isinstance(holder, dict) and isinstance(holder.get("vocab_size"), int):
            return holder["vocab_size"]
    return None


def check_token_ids(golden: Golden, config: dict) -> None:
    """Token ids in a golden file are integers inside the model's vocabulary."""
    vocab = _vocab_size(config)
    for set_name, inputs in golden.sets.items():
        for name, value in inputs.items():
            if not isinstance(value, torch.Tensor) or not ("tokens" in name or name.endswith("ids")):
                continue
            if value.dtype.is_floating_point or value.dtype.is_complex or value.dtype == torch.bool:
                raise CheckpointError(f"{golden.path}: {set_name}.{name} holds {str(value.dtype)[6:]} values, "
                                      "expected integer token ids")
            if value.numel() and (int(value.min()) < 0 or (vocab is not None and int(value.max()) >= vocab)):
                raise CheckpointError(f"{golden.path}: {set_name}.{name} has token ids in "
                                      f"[{int(value.min())}, {int(value.max())}], outside the vocabulary 0..{vocab - 1 if vocab else '?'}")
    for generation in golden.generations:
        for ids in generation.tokens:
            if vocab is not None and any(i < 0 or i >= vocab for i in ids):
                raise CheckpointError(f"{golden.path}: generation {generation.name} has token ids outside the "
                                      f"vocabulary 0..{vocab - 1}")
