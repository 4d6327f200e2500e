"""OFA's part of verification: probes shaped for a converted folder, user inputs, how traces compare, the golden
file layout (format_version 1) and the human names of OFA's trace entries."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch

from hfport.errors import CheckpointError
from hfport.verify.compare import compare_tensors, missing_from_trace
from hfport.verify.golden import Generation, Golden, add_to_trace
from hfport.verify.probes import PROBE_SEED, _first, ofa_inputs_from_tokens, ofa_probes

OFA_ENCODER_ORDER = ("encoder_position_embeddings", "encoder_hidden_states", "encoder_out", "encoder_padding_mask")
OFA_DECODER_ORDER = ("decoder_inner_states", "decoder_features", "logits")

# trace name (without layer index) -> (human name, module path in the HF-style layout or None)
# trace name -> (what it is, modules in the original checkpoint, modules in the converted model or None = same)
TRACE_NAMES = {
    "encoder_position_embeddings": (
        "encoder position embeddings",
        ("encoder.embed_positions", "encoder.embed_image_positions", "encoder.pos_ln", "encoder.image_pos_ln"), None),
    "encoder_out": ("encoder final layer norm", ("encoder.layer_norm",), None),
    "encoder_padding_mask": ("encoder padding mask", (), None),
    "decoder_features": ("decoder final layer norm", ("decoder.layer_norm",), None),
    "logits": ("output projection, the head", ("decoder.output_projection",), None),
}
# the embedding outputs (entry 0 of the per-layer lists); fairseq and the converted model share these names
EMBEDDING_MODULES = {
    "encoder": ("encoder.embed_tokens", "encoder.embed_images", "encoder.image_proj", "encoder.type_embedding",
                "encoder.layernorm_embedding", "encoder.patch_layernorm_embedding"),
    "decoder": ("decoder.embed_tokens", "decoder.embed_positions", "decoder.layernorm_embedding",
                "decoder.code_layernorm_embedding"),
}


# -- probes and user inputs ------------------------------------------------------------------------------------

def _preprocessor_size(folder) -> int | None:
    for name in ("preprocessor_config.json", "processor_config.json"):
        cfg = folder.read_json(name)
        cfg = cfg.get("image_processor", cfg)
        size = cfg.get("size") or cfg.get("crop_size")
        if isinstance(size, dict):
            size = size.get("height") or size.get("shortest_edge")
        if isinstance(size, int):
            return size
    return None


def folder_probes(folder, seed: int = PROBE_SEED) -> "OrderedDict[str, dict[str, torch.Tensor]]":
    """OFA probes shaped for the converted folder (a ConvertedFolder), from config.json + hfport.json + processor."""
    config = folder.config
    hyper = folder.hyper_parameters
    # fairseq keeps model and task arguments in separate groups; older files have them flat
    merged = dict(hyper)
    merged.update(hyper.get("model") or {})
    merged.update(hyper.get("task") or {})
    hyper = merged
    size = _first(_preprocessor_size(folder), config.get("patch_image_size"), hyper.get("patch_image_size"), 480)
    vocab = int(config.get("vocab_size", 59457))
    code = int(_first(hyper.get("code_dict_size"), 8192))
    bins = int(_first(hyper.get("num_bins"), 1000))
    text_vocab = vocab - code - bins - 1 if vocab - code - bins - 1 > 4 else vocab
    return ofa_probes(vocab, int(size), _first(config.get("bos_token_id"), 0), _first(config.get("pad_token_id"), 1),
                      _first(config.get("eos_token_id"), 2), seed, text_vocab)


def user_inputs(folder, default: dict, pixel: torch.Tensor | None, ids: list[int] | None) -> dict:
    """One OFA input set from the user's image (preprocessed, or None) and token ids (or None: the probe's)."""
    config = folder.config
    size = default["patch_images"].shape[-1] if pixel is None else pixel.shape[-1]
    ids = ids if ids is not None else default["src_tokens"][0].tolist()
    return ofa_inputs_from_tokens(ids, pixel, size, config.get("bos_token_id", 0) or 0,
                                  config.get("pad_token_id", 1), config.get("eos_token_id", 2))


# -- comparing ---------------------------------------------------------------------------------------------------

def _pad_id(golden: Golden) -> int:
    special = golden.meta.get("special_ids") or {}
    return int(special.get("pad", 1))


def compare_set(set_name: str, inputs: dict, reference: dict, converted: dict, golden: Golden,
                atol: float, rtol: float, scale_rtol: float = 0.0) -> list[dict[str, Any]]:
    """Every reference entry of one input set, encoder entries on non-padded source positions, decoder entries
    on non-padded target positions."""
    results = []
    enc_keep = dec_keep = None
    if "encoder_padding_mask" in reference:
        enc_keep = ~reference["encoder_padding_mask"].to(torch.bool)
    if "prev_output_tokens" in inputs:
        dec_keep = inputs["prev_output_tokens"] != _pad_id(golden)
    for name, ref in reference.items():
        got = converted.get(name)
        if got is None:
            results.append(missing_from_trace(name, set_name, ref, atol))
            continue
        got = got.detach().cpu()
        mask = None
        if name.startswith("encoder_") and name != "encoder_padding_mask":
            mask = enc_keep
        elif name.startswith(("decoder_", "logits")):
            mask = dec_keep
        results.append(compare_tensors(name, set_name, ref, got, atol, rtol, mask, scale_rtol))
    return results


# -- golden files --------------------------------------------------------------------------------------------------

def ofa_trace(outputs: dict[str, Any]) -> "OrderedDict[str, torch.Tensor]":
    """An OFA `outputs` dict (lists for the per-layer states) as an ordered, flattened trace."""
    trace: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    for name in OFA_ENCODER_ORDER + OFA_DECODER_ORDER:
        add_to_trace(trace, name, outputs.get(name))
    for name, value in outputs.items():  # anything newer, after the known entries
        if name not in OFA_ENCODER_ORDER + OFA_DECODER_ORDER:
            add_to_trace(trace, name, value)
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


def reads_golden(data: dict) -> bool:
    """OFA's layout: `inputs[_suffix]` / `outputs[_suffix]` pairs and a top-level `format_version` (METER's files
    have `layers`)."""
    return "layers" not in data and ("format_version" in data or any(str(k).startswith("outputs") for k in data))


def golden_from_dict(data: dict[str, Any], path: str | None = None, sha256: str | None = None) -> Golden:
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


# -- localisation --------------------------------------------------------------------------------------------------

def describe_trace(base: str, layer: int | None, variant: str | None = None):
    """(what, original modules, converted modules or None) of an OFA trace entry, or None when not OFA's.

    `encoder_hidden_states` / `decoder_inner_states` start with the embedding output: entry i > 0 is the output of
    `layers.{i-1}`."""
    if base in ("encoder_hidden_states", "decoder_inner_states") and layer is not None:
        side = "encoder" if base.startswith("encoder") else "decoder"
        if layer == 0:
            return f"{side} embeddings", EMBEDDING_MODULES[side], None
        return f"output of {side} layer {layer - 1}", (f"{side}.layers.{layer - 1}",), None
    return TRACE_NAMES.get(base)
