"""METER's part of verification: probes shaped for a converted folder, user inputs, how traces compare (padded
text positions), the golden file layout (`inputs` / `outputs` / `layers` / `meta`) and METER's trace names."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch

from hfport.verify.compare import compare_tensors, missing_from_trace
from hfport.verify.golden import Golden, add_to_trace
from hfport.verify.probes import PROBE_SEED, _first, meter_probes

METER_TOWERS = (
    "text_embeddings", "text_encoder_layers", "text_encoder_output",
    "image_embeddings", "image_encoder_layers", "image_encoder_output",
    "fusion_text_input", "fusion_image_input",
)
METER_FEATURES = ("text_feats", "image_feats", "cls_feats")
METER_HEADS = ("vqa_logits", "itm_logits", "mlm_logits", "snli_logits", "rank_scores", "nlvr2_logits")
METER_TEXT_STREAMS = ("text_embeddings", "text_encoder", "fusion_text", "text_feats", "mlm_logits")

# trace name (without layer index / pass suffix) -> (human name, module path in the HF-style layout or None)
# trace name -> (what it is, modules in the original checkpoint, modules in the converted model or None = same)
TRACE_NAMES = {
    "text_embeddings": ("text embeddings", ("text_transformer.embeddings",), ("meter.text_model.embeddings",)),
    "text_encoder_output": ("text encoder output, its last layer", (), None),
    "fusion_text_input": ("fusion text input: projection + token type",
                          ("cross_modal_text_transform", "token_type_embeddings"),
                          ("meter.cross_modal_text_transform", "meter.token_type_embeddings")),
    "fusion_image_input": ("fusion image input: projection + token type",
                           ("cross_modal_image_transform", "token_type_embeddings"),
                           ("meter.cross_modal_image_transform", "meter.token_type_embeddings")),
    "text_feats": ("fusion text output, its last layer", (), None),
    "image_feats": ("fusion image output, its last layer", (), None),
    "cls_feats": ("poolers: cls features", ("cross_modal_text_pooler", "cross_modal_image_pooler"),
                  ("meter.cross_modal_text_pooler", "meter.cross_modal_image_pooler")),
    "vqa_logits": ("VQA head", ("vqa_classifier",), None),
    "itm_logits": ("ITM head", ("itm_score",), None),
    "mlm_logits": ("MLM head", ("mlm_score",), None),
    "nlvr2_logits": ("NLVR2 head", ("nlvr2_classifier",), None),
    "snli_logits": ("SNLI-VE head", ("snli_classifier",), None),
    "rank_scores": ("retrieval rank head", ("rank_output",), None),
}
# the image tower by kind: embeddings, one layer (block or stage), final norm; (original, converted)
VISION_MODULES = {
    "clip": {
        "embeddings": (("vit_model.visual.conv1", "vit_model.visual.class_embedding",
                        "vit_model.visual.positional_embedding", "vit_model.visual.ln_pre"),
                       ("meter.vision_model.embeddings", "meter.vision_model.pre_layrnorm")),
        "layer": ("vit_model.visual.transformer.resblocks.{i}", "meter.vision_model.encoder.layers.{i}"),
        "output": (("vit_model.visual.ln_post",), ("meter.vision_model.post_layernorm",)),
    },
    "swin": {
        "embeddings": (("vit_model.patch_embed", "vit_model.absolute_pos_embed"), ("meter.vision_model.embeddings",)),
        "layer": ("vit_model.layers.{i}", "meter.vision_model.encoder.layers.{i}"),
        "output": (("vit_model.norm",), ("meter.vision_model.layernorm",)),
    },
}


def vision_kind(model_type: str | None) -> str:
    """The image tower kind from a vision config's `model_type` (or METER's own `vit` name)."""
    return "swin" if model_type and "swin" in str(model_type).lower() else "clip"


# -- probes and user inputs ------------------------------------------------------------------------------------

def is_nlvr2_folder(folder) -> bool:
    """Whether a converted folder (a ConvertedFolder) holds METER's NLVR2 model (two images per sample)."""
    prov, config = folder.provenance, folder.config
    names = [str(prov.get("model_class", "")), str(prov.get("task", ""))] + [str(a) for a in config.get("architectures") or []]
    if any("nlvr2" in n.lower() or "visualreasoning" in n.lower().replace("_", "") for n in names):
        return True
    if config.get("num_image_token_types") == 3:  # NLVR2 adds a third token type for the second image
        return True
    loss_names = (prov.get("hyper_parameters", {}).get("config", {}) or {}).get("loss_names", {})
    return bool(loss_names.get("nlvr2"))


def folder_probes(folder, seed: int = PROBE_SEED) -> "OrderedDict[str, dict[str, torch.Tensor]]":
    """METER probes shaped for the converted folder (a ConvertedFolder), from config.json + hfport.json."""
    config = folder.config
    hyper = folder.hyper_parameters
    text = config.get("text_config") or {}
    meter_cfg = hyper.get("config", {}) or {}
    size = _first(config.get("image_size"), meter_cfg.get("image_size"), (config.get("vision_config") or {}).get("image_size"), 224)
    roberta = "roberta" in str(text.get("model_type", ""))
    pad = _first(text.get("pad_token_id"), 1 if roberta else 0)
    cls = _first(text.get("bos_token_id"), 0 if roberta else 101)
    sep = _first(text.get("eos_token_id"), 2 if roberta else 102)
    if not roberta and text.get("vocab_size", 30522) < 1000:  # tiny BERT-style vocabularies (tests)
        cls, sep = 1, 2
    text_len = min(12, int(_first(config.get("max_text_len"), meter_cfg.get("max_text_len"), 40)))
    return meter_probes(int(text.get("vocab_size", 30522)), int(size), int(cls), int(sep), int(pad),
                        text_len, is_nlvr2_folder(folder), seed)


def user_inputs(folder, default: dict, pixel: torch.Tensor | None, ids: list[int] | None) -> dict:
    """One METER input set from the user's image (preprocessed, or None) and token ids (or None: the probe's)."""
    ids = ids if ids is not None else default["text_ids"][0].tolist()
    inputs = {"text_ids": torch.tensor([ids]), "text_masks": torch.ones(1, len(ids), dtype=torch.long)}
    image_keys = [k for k in default if k.startswith("image")]
    for key in image_keys:
        inputs[key] = pixel.unsqueeze(0) if pixel is not None else default[key][:1]
    return {"inputs": inputs}


# -- comparing ---------------------------------------------------------------------------------------------------

def _is_text_stream(name: str) -> bool:
    return name.startswith(METER_TEXT_STREAMS)


def compare_set(set_name: str, inputs: dict, reference: dict, converted: dict, golden: Golden,
                atol: float, rtol: float, scale_rtol: float = 0.0) -> list[dict[str, Any]]:
    """Every reference entry of one input set on all positions; a text-stream entry that differs only at padded
    text positions is judged on the real tokens (both results reported)."""
    results = []
    text_keep = inputs["text_masks"].to(torch.bool) if "text_masks" in inputs else None
    for name, ref in reference.items():
        got = converted.get(name)
        if got is None:
            results.append(missing_from_trace(name, set_name, ref, atol))
            continue
        got = got.detach().cpu()
        result = compare_tensors(name, set_name, ref, got, atol, rtol, scale_rtol=scale_rtol)
        if not result["passed"] and text_keep is not None and _is_text_stream(name) and "error" not in result:
            masked = compare_tensors(name, set_name, ref, got, atol, rtol, text_keep, scale_rtol)
            if masked["passed"]:  # only padded text positions differ: report both, judge the real tokens
                masked["all_positions"] = {k: result.get(k) for k in ("max_abs", "mean_abs", "worst_index", "min_atol_to_pass")}
                masked["note"] = "differs only at padded text positions"
                result = masked
        results.append(result)
    return results


# -- golden files --------------------------------------------------------------------------------------------------

def meter_trace(outputs: dict[str, Any], layers: dict[str, Any], suffixes: list[str]) -> "OrderedDict[str, torch.Tensor]":
    """METER `layers` + `outputs` as one ordered trace: per pass the towers, fusion (text/image interleaved per
    layer), features and per-pass heads; then heads over both passes (NLVR2)."""
    trace: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    merged = {**layers, **outputs}
    for s in suffixes:
        for name in METER_TOWERS:
            add_to_trace(trace, name + s, merged.get(name + s))
        text_layers = merged.get("fusion_text_layers" + s) or []
        image_layers = merged.get("fusion_image_layers" + s) or []
        for i in range(max(len(text_layers), len(image_layers))):
            if i < len(text_layers):
                trace[f"fusion_text_layers{s}.{i}"] = text_layers[i]
            if i < len(image_layers):
                trace[f"fusion_image_layers{s}.{i}"] = image_layers[i]
        for name in METER_FEATURES:
            add_to_trace(trace, name + s, merged.get(name + s))
        if s:
            for name in METER_HEADS:
                add_to_trace(trace, name + s, merged.get(name + s))
    for name in METER_HEADS:
        add_to_trace(trace, name, merged.get(name))
    for name, value in merged.items():  # anything not named above keeps its place at the end
        flat = [f"{name}.{i}" for i in range(len(value))] if isinstance(value, (list, tuple)) else [name]
        if not all(n in trace for n in flat):
            add_to_trace(trace, name, value)
    return trace


def reads_golden(data: dict) -> bool:
    return "layers" in data


def golden_from_dict(data: dict[str, Any], path: str | None = None, sha256: str | None = None) -> Golden:
    meta = data.get("meta", {})
    suffixes = [p.get("suffix", "") for p in meta.get("passes", [])] or [""]
    trace = meter_trace(data["outputs"], data["layers"], suffixes)
    return Golden("meter", OrderedDict(inputs=data["inputs"]), OrderedDict(inputs=trace), [], meta, path, sha256)


# -- localisation --------------------------------------------------------------------------------------------------

def describe_trace(base: str, layer: int | None, variant: str | None = None):
    """(what, original modules, converted modules or None) of a METER trace entry, or None when not METER's.

    METER's per-layer lists have no embedding entry: entry i is the output of layer i. `variant` is the image
    tower kind ("clip", the default, or "swin")."""
    vision = VISION_MODULES.get(variant or "clip", VISION_MODULES["clip"])
    if base == "text_encoder_layers" and layer is not None:
        return (f"output of text encoder layer {layer}", (f"text_transformer.encoder.layer.{layer}",),
                (f"meter.text_model.encoder.layer.{layer}",))
    if base == "image_encoder_layers" and layer is not None:
        original, converted = vision["layer"]
        unit = "stage" if variant == "swin" else "block"
        return f"output of image encoder {unit} {layer}", (original.format(i=layer),), (converted.format(i=layer),)
    if base in ("image_embeddings", "image_encoder_output"):
        part = "embeddings" if base == "image_embeddings" else "output"
        original, converted = vision[part]
        what = "image embeddings" if part == "embeddings" else "image encoder output: final layer norm"
        return what, original, converted
    if base in ("fusion_text_layers", "fusion_image_layers") and layer is not None:
        stream = "text" if "text" in base else "image"
        module = f"cross_modal_{stream}_layers.{layer}"
        return f"output of fusion layer {layer}, {stream} stream", (module,), (f"meter.{module}",)
    return TRACE_NAMES.get(base)


def trace_variant(config: dict) -> str:
    return vision_kind(((config or {}).get("vision_config") or {}).get("model_type"))
