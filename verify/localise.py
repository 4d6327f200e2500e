"""Name the first place where the converted model stops computing what the reference computes.

Traces are ordered in computation order (the golden adapter guarantees it), so the first failing entry of the
reference order is the first diverging layer. `describe` names the module that produced a trace entry by the
parameter names the user has: `module` in the original checkpoint, `converted_module` in the converted folder
(OFA keeps fairseq's names; METER's converted classes add `meter.` and rename the towers).

Index conventions of the traces (shared fixtures' READMEs): OFA's `encoder_hidden_states` and
`decoder_inner_states` start with the embedding output, so entry i > 0 is the output of `layers.{i-1}`; METER's
per-layer lists have no embedding entry, so entry i is the output of layer i.
"""

from __future__ import annotations

import re
from typing import Any

_PASS_SUFFIX = re.compile(r"^(?P<base>[a-z0-9_]+?)_(?P<pass>\d)$")

# trace name -> (what it is, modules in the original checkpoint, modules in the converted model or None = same)
_FIXED: dict[str, tuple[str, tuple[str, ...], tuple[str, ...] | None]] = {
    "encoder_position_embeddings": (
        "encoder position embeddings",
        ("encoder.embed_positions", "encoder.embed_image_positions", "encoder.pos_ln", "encoder.image_pos_ln"), None),
    "encoder_out": ("encoder final layer norm", ("encoder.layer_norm",), None),
    "encoder_padding_mask": ("encoder padding mask", (), None),
    "decoder_features": ("decoder final layer norm", ("decoder.layer_norm",), None),
    "logits": ("output projection, the head", ("decoder.output_projection",), None),
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

# OFA's embedding outputs (entry 0 of the per-layer lists); fairseq and the converted model share these names
_OFA_EMBEDDINGS = {
    "encoder": ("encoder.embed_tokens", "encoder.embed_images", "encoder.image_proj", "encoder.type_embedding",
                "encoder.layernorm_embedding", "encoder.patch_layernorm_embedding"),
    "decoder": ("decoder.embed_tokens", "decoder.embed_positions", "decoder.layernorm_embedding",
                "decoder.code_layernorm_embedding"),
}

# METER's image tower by kind: embeddings, one layer (block or stage), final norm; (original, converted)
_METER_VISION = {
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
    """METER's image tower kind from a vision config's `model_type` (or METER's own `vit` name)."""
    return "swin" if model_type and "swin" in str(model_type).lower() else "clip"


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


def _modules(name: str, vision: str) -> tuple[str, tuple[str, ...], tuple[str, ...] | None] | None:
    """(what, original modules, converted modules or None when the same) for one trace entry, or None."""
    base, layer, _ = _split(name)
    if base in ("encoder_hidden_states", "decoder_inner_states") and layer is not None:
        side = "encoder" if base.startswith("encoder") else "decoder"
        if layer == 0:
            return f"{side} embeddings", _OFA_EMBEDDINGS[side], None
        return f"output of {side} layer {layer - 1}", (f"{side}.layers.{layer - 1}",), None
    if base == "text_encoder_layers" and layer is not None:
        return (f"output of text encoder layer {layer}", (f"text_transformer.encoder.layer.{layer}",),
                (f"meter.text_model.encoder.layer.{layer}",))
    if base == "image_encoder_layers" and layer is not None:
        original, converted = _METER_VISION[vision]["layer"]
        unit = "stage" if vision == "swin" else "block"
        return (f"output of image encoder {unit} {layer}", (original.format(i=layer),),
                (converted.format(i=layer),))
    if base in ("image_embeddings", "image_encoder_output"):
        part = "embeddings" if base == "image_embeddings" else "output"
        original, converted = _METER_VISION[vision][part]
        what = "image embeddings" if part == "embeddings" else "image encoder output: final layer norm"
        return what, original, converted
    if base in ("fusion_text_layers", "fusion_image_layers") and layer is not None:
        stream = "text" if "text" in base else "image"
        module = f"cross_modal_{stream}_layers.{layer}"
        return f"output of fusion layer {layer}, {stream} stream", (module,), (f"meter.{module}",)
    return _FIXED.get(base)


def describe(name: str, vision: str = "clip") -> dict[str, Any]:
    """What a trace entry is and which module computed it.

    `module`: the module(s) in the original checkpoint's parameter names (comma-separated when several make one
    step, None when no module of its own does); `converted_module`: the same in the converted folder;
    `what`: what the entry is, in words; `layer`: one line for people, leading with the module name.
    """
    found = _modules(name, vision)
    _, _, pass_id = _split(name)
    if found is None:
        return {"layer": name, "what": name, "module": None, "converted_module": None}
    what, original, converted = found
    module = ", ".join(original) or None
    converted_module = ", ".join(converted) if converted is not None else module
    if pass_id is not None:
        what = f"{what}, pass {pass_id}"
    if module is None:
        line = what
    elif converted_module == module:
        line = f"{module} ({what})"
    else:
        line = f"{module} ({what}; converted: {converted_module})"
    return {"layer": line, "what": what, "module": module, "converted_module": converted_module}


def human_name(name: str, vision: str = "clip") -> str:
    return describe(name, vision)["layer"]


def first_divergence(results: list[dict[str, Any]], order: list[str], vision: str = "clip") -> dict[str, Any] | None:
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
            **describe(first["name"], vision),
            "max_abs": first.get("max_abs"),
            "atol": first.get("atol"),
            "error": first.get("error"),
        }
    return None
