"""Name the first place where the converted model stops computing what the reference computes.

Traces are ordered in computation order (the golden adapter guarantees it), so the first failing entry of the
reference order is the first diverging layer; `human_name` turns a trace name into words a user can act on.
"""

from __future__ import annotations

import re
from typing import Any

_PASS_SUFFIX = re.compile(r"^(?P<base>[a-z0-9_]+?)_(?P<pass>\d)$")

# trace name (without layer index / pass suffix) -> (human name, module path in the HF-style layout or None)
_FIXED = {
    "encoder_position_embeddings": ("encoder position embeddings", "encoder.embed_positions"),
    "encoder_out": ("encoder final layer norm", "encoder.layer_norm"),
    "encoder_padding_mask": ("encoder padding mask", None),
    "decoder_features": ("decoder final layer norm", "decoder.layer_norm"),
    "logits": ("output projection (head)", "decoder.output_projection"),
    "text_embeddings": ("text embeddings", "text_model.embeddings"),
    "text_encoder_output": ("text encoder output", None),
    "image_embeddings": ("image embeddings", "vision_model.embeddings"),
    "image_encoder_output": ("image encoder output (final layer norm)", None),
    "fusion_text_input": ("fusion text input (projection + token type)", None),
    "fusion_image_input": ("fusion image input (projection + token type)", None),
    "text_feats": ("fusion text output", None),
    "image_feats": ("fusion image output", None),
    "cls_feats": ("poolers (cls features)", None),
    "vqa_logits": ("VQA head", None),
    "itm_logits": ("ITM head", None),
    "mlm_logits": ("MLM head", None),
    "nlvr2_logits": ("NLVR2 head", None),
    "snli_logits": ("SNLI-VE head", None),
    "rank_scores": ("retrieval rank head", None),
}


def _split(name: str) -> tuple[str, int | None, str | None]:
    """'fusion_image_layers_1.3' -> ('fusion_image_layers', 3, '1')."""
    base, _, index = name.partition(".")
    layer = int(index) if index.isdigit() else None
    pass_id = None
    if base not in _FIXED and not base.endswith(("_layers", "_states")):
        m = _PASS_SUFFIX.match(base)
        if m:
            base, pass_id = m.group("base"), m.group("pass")
    return base, layer, pass_id


def describe(name: str) -> dict[str, Any]:
    """Human name and (where known) module path of a trace entry."""
    base, layer, pass_id = _split(name)
    human, module = name, None
    if base in ("encoder_hidden_states", "decoder_inner_states") and layer is not None:
        side = "encoder" if base.startswith("encoder") else "decoder"
        if layer == 0:
            human, module = f"{side} embeddings", f"{side}.embed_tokens"
        else:  # entry i is the output of layer i (1-based); the module list is 0-based
            human, module = f"{side} layer {layer}", f"{side}.layers.{layer - 1}"
    elif base == "text_encoder_layers" and layer is not None:
        human, module = f"text encoder layer {layer}", f"text encoder layers.{layer}"
    elif base == "image_encoder_layers" and layer is not None:
        human, module = f"image encoder layer {layer}", f"image encoder layers.{layer}"
    elif base in ("fusion_text_layers", "fusion_image_layers") and layer is not None:
        stream = "text" if "text" in base else "image"
        human, module = f"fusion layer {layer} ({stream} stream)", f"cross-modal {stream} layers.{layer}"
    elif base in _FIXED:
        human, module = _FIXED[base]
    if pass_id is not None:
        human = f"{human}, pass {pass_id}"
    return {"layer": human, "module": module}


def human_name(name: str) -> str:
    return describe(name)["layer"]


def first_divergence(results: list[dict[str, Any]], order: list[str]) -> dict[str, Any] | None:
    """The earliest entry of `order` (computation order) that failed, per input set in the order sets appear."""
    sets: list[str] = []
    for r in results:
        if r["set"] not in sets:
            sets.append(r["set"])
    position = {name: i for i, name in enumerate(order)}
    for set_name in sets:
        failed = [r for r in results if r["set"] == set_name and not r["passed"]]
        if not failed:
            continue
        first = min(failed, key=lambda r: position.get(r["name"], len(position)))
        return {
            "name": first["name"],
            "set": set_name,
            **describe(first["name"]),
            "max_abs": first.get("max_abs"),
            "atol": first.get("atol"),
            "error": first.get("error"),
        }
    return None
