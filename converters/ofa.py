"""OFA (fairseq) checkpoints: recognise them, derive the HF config, say what travels with the weights.

Structure comes from the tensors wherever they can tell it (dims, layer counts, heads from the relative
position tables, bucket sizes, ResNet depth, which optional modules exist); the stored hyper-parameters fill
in what tensors cannot show (attention scale factor, entanglement, sync_bn, normalize-before) and must agree
with the tensors everywhere else.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import torch

from hfport.converters.pipeline import Prepared, first_unsupported, reject_unused_options
from hfport.errors import ConfigError, UnsupportedCheckpointError
from hfport.models import model_source_files

FAMILY = "ofa"
STATE_KEY = "model"
MAPPING = "ofa"
# derived buffers the backwards direction rebuilds (see regenerator())
REGENERATED = ("fairseq_version", "rp_bucket", "image_position_idx")

# keys whose presence reveals a structural flag
FLAG_KEYS = {
    "scale_attn": r"encoder\.layers\.0\.attn_ln\.weight",
    "scale_fc": r"encoder\.layers\.0\.ffn_layernorm\.weight",
    "scale_heads": r"encoder\.layers\.0\.self_attn\.c_attn",
    "scale_resids": r"encoder\.layers\.0\.w_resid",
    "layernorm_embedding": r"encoder\.layernorm_embedding\.weight",
    "patch_layernorm_embedding": r"encoder\.patch_layernorm_embedding\.weight",
    "code_layernorm_embedding": r"decoder\.code_layernorm_embedding\.weight",
    "add_type_embedding": r"encoder\.type_embedding\.weight",
    "encoder_normalize_before": r"encoder\.layer_norm\.weight",
    "decoder_normalize_before": r"decoder\.layer_norm\.weight",
}
RESNET_BY_BLOCKS = {(2, 2, 2): "resnet18", (3, 4, 6): "resnet50", (3, 4, 23): "resnet101", (3, 8, 36): "resnet152"}
# structure the port does not implement: refuse rather than drop weights silently
UNSUPPORTED_KEYS = {
    r"^classification_heads\.": "classification heads (fine-tuned with --pooler-classifier)",
    r"^encoder\.embed_images\.(patch_embed|blocks)": "a ViT image backbone (OFA-Sys ViT variants)",
    r"^encoder\.(embed_audios|audio_)": "speech inputs (OFA speech / MMSpeech)",
}


def matches(checkpoint: dict) -> bool:
    from hfport.verify.backends.fairseq_ofa import is_ofa_checkpoint  # the one test, shared with the recorder

    return is_ofa_checkpoint(checkpoint)


def model_arguments(checkpoint: dict) -> dict:
    """The model hyper-parameters: modern ``cfg["model"]`` (Namespace or dict) or legacy top-level ``args``."""
    cfg = checkpoint.get("cfg")
    source = None
    if isinstance(cfg, dict) and cfg.get("model") is not None:
        source = cfg["model"]
    elif checkpoint.get("args") is not None:
        source = checkpoint["args"]
    if source is None:
        raise ConfigError("the checkpoint has neither cfg['model'] nor args: no OFA hyper-parameters found")
    if isinstance(source, argparse.Namespace):
        return dict(vars(source))
    if isinstance(source, dict) or hasattr(source, "items"):  # dict, or an OmegaConf config under --trust-pickle
        return dict(source.items())
    raise ConfigError(f"cfg['model'] is a {type(source).__name__}, expected a Namespace or dict")


def task_arguments(checkpoint: dict) -> dict:
    cfg = checkpoint.get("cfg")
    if isinstance(cfg, dict) and isinstance(cfg.get("task"), dict):
        return dict(cfg["task"])
    if isinstance(cfg, dict) and isinstance(cfg.get("task"), argparse.Namespace):
        return dict(vars(cfg["task"]))
    return model_arguments(checkpoint)  # legacy files keep task options in args too


def _layer_count(keys, prefix: str) -> int:
    indices = {int(m.group(1)) for k in keys if (m := re.match(rf"{prefix}\.layers\.(\d+)\.", k))}
    # counted, never expanded into a range: an index in a key may be 10**8
    if indices and (min(indices) != 0 or max(indices) != len(indices) - 1):
        shown = sorted(indices)
        raise ConfigError(f"{prefix} layers are not numbered 0..N-1: "
                          + ", ".join(map(str, shown[:12])) + (f", ... ({len(shown)} in all)" if len(shown) > 12 else ""))
    return len(indices)


def derive_structure(state: dict[str, torch.Tensor]) -> dict:
    """Everything the tensor names and shapes say about the architecture."""
    keys = list(state)
    shape = lambda k: tuple(state[k].shape)  # noqa: E731
    need = ["encoder.embed_tokens.weight", "encoder.layers.0.fc1.weight", "encoder.token_rel_pos_table_list.0.weight",
            "encoder.embed_image_positions.weight", "encoder.embed_positions.weight", "decoder.embed_positions.weight"]
    missing = [k for k in need if k not in state]
    if missing:
        raise UnsupportedCheckpointError(f"not a complete OFA state dict: missing {', '.join(missing)}")
    found: dict = {
        "vocab_size": shape("encoder.embed_tokens.weight")[0],
        "encoder_embed_dim": shape("encoder.embed_tokens.weight")[1],
        "decoder_embed_dim": shape("decoder.embed_positions.weight")[1],
        "encoder_layers": _layer_count(keys, "encoder"),
        "decoder_layers": _layer_count(keys, "decoder"),
        "encoder_ffn_embed_dim": shape("encoder.layers.0.fc1.weight")[0],
        "encoder_attention_heads": shape("encoder.token_rel_pos_table_list.0.weight")[1],
        "token_bucket_size": (shape("encoder.token_rel_pos_table_list.0.weight")[0] + 1) // 2,
        "max_source_positions": shape("encoder.embed_positions.weight")[0] - 2,
    }
    image_rows = shape("encoder.embed_image_positions.weight")[0] - 1
    bucket = round(image_rows ** 0.5)
    if bucket * bucket != image_rows:
        raise ConfigError(f"encoder.embed_image_positions has {image_rows + 1} rows, not image_bucket_size²+1")
    found["image_bucket_size"] = bucket
    if found["decoder_layers"]:
        found["decoder_ffn_embed_dim"] = shape("decoder.layers.0.fc1.weight")[0]
        found["decoder_attention_heads"] = shape("decoder.token_rel_pos_table_list.0.weight")[1]
        found["max_target_positions"] = shape("decoder.embed_positions.weight")[0] - 2
    blocks = tuple(_layer_count_in(keys, f"encoder.embed_images.layer{s}") for s in (1, 2, 3))
    if blocks not in RESNET_BY_BLOCKS:
        raise UnsupportedCheckpointError(f"unknown ResNet depth: Bottleneck blocks per stage {blocks}")
    found["resnet_blocks"] = blocks
    for flag, pattern in FLAG_KEYS.items():
        found[flag] = any(re.fullmatch(pattern, k) for k in keys)
    for side in ("encoder", "decoder"):
        found.update(_prompt_structure(state, side, found))
    found.update(_adapter_structure(state, found))
    return found


def _prompt_structure(state: dict[str, torch.Tensor], side: str, found: dict) -> dict:
    """Prefix tuning: on/off, length and projection width from `{side}.{side}_prompt_encoder.*`."""
    prefix = f"{side}.{side}_prompt_encoder."
    if not any(k.startswith(prefix) for k in state):
        return {f"{side}_prompt": False}
    dim, layers = found[f"{side}_embed_dim"], found[f"{side}_layers"]
    table = state.get(prefix + "embedding.weight")
    if table is None or table.dim() != 2:
        raise UnsupportedCheckpointError(f"{prefix}embedding.weight is missing or not a table")
    out = {f"{side}_prompt": True, f"{side}_prompt_length": table.shape[0],
           f"{side}_prompt_projection": prefix + "trans.0.weight" in state}
    width = layers * 2 * dim  # one key and one value per layer
    if out[f"{side}_prompt_projection"]:
        out[f"{side}_prompt_dim"] = state[prefix + "trans.0.weight"].shape[0]
        produced = state[prefix + "trans.2.weight"].shape[0] if prefix + "trans.2.weight" in state else None
        shapes_ok = table.shape[1] == dim and produced == width
    else:
        shapes_ok = table.shape[1] == width
    if not shapes_ok:
        raise ConfigError(f"the {side} prompt encoder does not produce {layers} layers x (key, value) x {dim}")
    return out


def _adapter_structure(state: dict[str, torch.Tensor], found: dict) -> dict:
    """Adapters: on/off and bottleneck width from `{side}.layers.{i}.adapter.down_proj.weight` (OFA gives every
    layer of both sides one, all of the same width)."""
    widths = {state[k].shape[0] for k in state if re.fullmatch(r"(encoder|decoder)\.layers\.\d+\.adapter\.down_proj\.weight", k)}
    if not widths:
        return {"adapter": False}
    if len(widths) > 1:
        raise ConfigError(f"adapters of different widths {sorted(widths)}: OFA builds them all with one --adapter-dim")
    return {"adapter": True, "adapter_dim": widths.pop()}


def _layer_count_in(keys, prefix: str) -> int:
    return len({m.group(1) for k in keys if (m := re.match(rf"{re.escape(prefix)}\.(\d+)\.", k))})


def build_config(args: dict, structure: dict, state: dict[str, torch.Tensor]):
    # the config's values without importing transformers (seconds): the real OFAConfig is built by verify / load
    from hfport.converters.ofa_config_draft import OFAConfigDraft, declared

    fields, constants = declared()
    resnet_layers = constants["RESNET_LAYERS"]
    enabled = [flag for flag in constants["UNSUPPORTED_FLAGS"] if args.get(flag)]
    if enabled:
        raise UnsupportedCheckpointError(f"OFA option(s) {', '.join(enabled)} are set; hfport does not convert them yet")

    values = {k: v for k, v in args.items() if k in fields and v is not None}
    _check_value_types(values, OFAConfigDraft())
    contradictions = []
    for name, value in structure.items():
        if name == "resnet_blocks":
            continue
        if name in args and args[name] is not None and _differs(args[name], value):
            contradictions.append(f"{name}={args[name]!r} but the tensors say {value!r}")
        values[name] = value
    stated = args.get("resnet_type")
    if stated and resnet_layers.get(stated) != structure["resnet_blocks"]:
        contradictions.append(f"resnet_type={stated!r} but the image encoder has {structure['resnet_blocks']} blocks")
    values["resnet_type"] = stated if stated in resnet_layers and resnet_layers[stated] == structure[
        "resnet_blocks"] else RESNET_BY_BLOCKS[structure["resnet_blocks"]]
    if contradictions:
        raise ConfigError("hyper-parameters contradict the checkpoint's tensors: " + "; ".join(contradictions))
    # which embeddings are actually shared: the flags, checked later bit-exactly by the mapping's tie rules
    values["share_all_embeddings"] = bool(args.get("share_all_embeddings", False))
    values["share_decoder_input_output_embed"] = bool(
        args.get("share_decoder_input_output_embed", False) or values["share_all_embeddings"])
    if "decoder.output_projection.weight" not in state and not values["share_decoder_input_output_embed"]:
        raise ConfigError("decoder.output_projection.weight is missing and the embeddings are not shared")
    values["freeze_resnet"] = "encoder.embed_images.bn1.num_batches_tracked" not in state
    values["tie_word_embeddings"] = values["share_decoder_input_output_embed"]
    try:
        config = OFAConfigDraft(**values)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"unsupported OFA configuration: {err}") from None
    config.auto_map = {
        # through the modeling file: the config class (the Auto registry's key) then carries that file's hash, so a
        # folder named like one loaded earlier but holding other code never gets the earlier folder's classes
        "AutoConfig": "modeling_ofa.OFAConfig",
        "AutoModel": "modeling_ofa.OFAModel",
        "AutoModelForSeq2SeqLM": "modeling_ofa.OFAForConditionalGeneration",
        # what pipeline("image-text-to-text") loads: image + text in, generated text out
        "AutoModelForImageTextToText": "modeling_ofa.OFAForConditionalGeneration",
    }
    config.architectures = ["OFAForConditionalGeneration"]
    return config


def _check_value_types(values: dict, defaults) -> None:
    """A hyper-parameter the config takes as a number (or flag, or name) must be one: 'high' is no dropout."""
    wrong = []
    for name, value in values.items():
        default = getattr(defaults, name, None)
        if isinstance(default, bool):
            ok = isinstance(value, bool) or (isinstance(value, int) and value in (0, 1))
        elif isinstance(default, (int, float)):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        elif isinstance(default, str):
            ok = isinstance(value, str)
        else:
            continue
        if not ok:
            wrong.append(f"{name}={value!r} (expected {type(default).__name__})")
    if wrong:
        raise ConfigError("hyper-parameters of the wrong type: " + "; ".join(wrong[:6]))


def _differs(stated, derived) -> bool:
    if isinstance(derived, bool):
        return bool(stated) != derived
    try:
        return float(stated) != float(derived)
    except (TypeError, ValueError):
        return stated != derived


def tie_flags(config) -> dict[str, bool]:
    shared_io = bool(config.share_decoder_input_output_embed)
    return {
        "share_all_embeddings": bool(config.share_all_embeddings),
        "tie_output_to_encoder": shared_io and bool(config.share_all_embeddings),
        "tie_output_to_decoder": shared_io and not config.share_all_embeddings,
        "encoder_prompt": bool(getattr(config, "encoder_prompt", False)),
        "decoder_prompt": bool(getattr(config, "decoder_prompt", False)),
    }


def export_flags(config) -> dict[str, bool]:
    return tie_flags(config)


def floating_dtype(state: dict[str, torch.Tensor]) -> torch.dtype:
    return state["encoder.embed_tokens.weight"].dtype


def refuse_unsupported(state: dict) -> None:
    if (found := first_unsupported(state, UNSUPPORTED_KEYS)) is not None:
        what, keys = found
        raise UnsupportedCheckpointError(f"this OFA checkpoint uses {what}, which hfport does not convert yet: {keys}")


def prepare(checkpoint: dict, path: Path, *, bpe_dir=None, patch_image_size=None, bpe=None, **unused) -> Prepared:
    reject_unused_options(unused, "OFA")
    from hfport.converters.ofa_shapes import ofa_inventory

    state = checkpoint["model"]
    refuse_unsupported(state)
    args = model_arguments(checkpoint)
    task = task_arguments(checkpoint)
    config = build_config(args, derive_structure(state), state)
    notes = []
    if not args.get("disable_entangle", False):
        notes.append("disable_entangle is off: the decoder adds absolute positions to its token embeddings")
    preprocessing = None
    if bpe_dir is not None:
        from hfport.converters.ofa_preprocessing import check_ofa_preprocessing

        preprocessing = dict(
            bpe_dir=bpe_dir, bpe=bpe or task.get("bpe") or "gpt2", vocab_size=config.vocab_size,
            code_dict_size=int(task.get("code_dict_size") or 8192), num_bins=int(task.get("num_bins") or 1000),
            patch_image_size=int(patch_image_size or task.get("patch_image_size") or 480))
        check_ofa_preprocessing(**preprocessing)  # a wrong --bpe-dir fails before any weight is written

    def write_extras(folder: Path) -> list[str]:
        written = [_write_generation_config(folder, config)]
        if preprocessing is not None:
            from hfport.converters.ofa_preprocessing import save_ofa_preprocessing

            written += save_ofa_preprocessing(folder, **preprocessing, max_src_length=task.get("max_src_length"),
                                              max_source_positions=config.max_source_positions)
        return written

    return Prepared(
        config=config,
        model_class="OFAForConditionalGeneration",  # not imported: ofa_inventory states its shapes
        state_dict=state,
        flags=tie_flags(config),
        model_files=model_source_files("ofa"),
        task="image-to-text",
        source_format="fairseq",
        hyper_parameters={"model": args, "task": task},
        source_dtype=floating_dtype(state),
        notes=notes,
        write_extras=write_extras,
        inventory=lambda: ofa_inventory(config),
    )


def generation_settings(config) -> dict:
    """OFA's decoding defaults for generation_config.json (pad never generated, 5 beams like OFA's evaluation)."""
    return dict(bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id,
                decoder_start_token_id=config.decoder_start_token_id, suppress_tokens=[config.pad_token_id],
                num_beams=5, max_new_tokens=min(config.max_target_positions, 32))


def _write_generation_config(folder: Path, config) -> str:
    # what GenerationConfig(**settings).save_pretrained writes (held equal by a test), without importing transformers
    from importlib import metadata
    import json

    data = {**generation_settings(config), "transformers_version": metadata.version("transformers")}
    (folder / "generation_config.json").write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return "generation_config.json"






def describe(checkpoint: dict) -> dict:
    """For `hfport inspect`: the facts a user wants before converting."""
    state = checkpoint["model"]
    args = model_arguments(checkpoint)
    structure = derive_structure(state)
    return {
        "family": "OFA (fairseq)",
        "arch": args.get("arch") or args.get("_name"),
        "structure": structure,
        "stated": {k: args.get(k) for k in ("attn_scale_factor", "disable_entangle", "entangle_position_embedding",
                                             "share_all_embeddings", "share_decoder_input_output_embed", "sync_bn",
                                             "code_image_size", "resnet_type") if k in args},
        "task": {k: v for k, v in task_arguments(checkpoint).items()
                 if k in ("_name", "patch_image_size", "code_dict_size", "num_bins", "bpe", "max_src_length")},
        "weights": state,
        "baggage": {k: checkpoint[k] for k in ("last_optimizer_state", "optimizer_history", "extra_state", "criterion")
                    if checkpoint.get(k) is not None},
    }


# -- backwards: HF folder -> fairseq checkpoint ----------------------------------------------------------------------

def regenerator(config):
    """Rebuilds the buffers fairseq stores but the HF model recomputes (bit-exact with fairseq's own)."""
    from hfport.models.ofa import modeling_ofa as m

    def build(generator: str, key: str) -> torch.Tensor:
        if generator == "fairseq_version":  # a float buffer: fp16 checkpoints store it in fp16 too
            stored = getattr(torch, str(getattr(config, "dtype", None) or "float32").removeprefix("torch."))
            return torch.tensor([3.0], dtype=stored)
        if generator == "image_position_idx":
            return m.make_code_position_idx(config.code_image_size, config.image_bucket_size)
        if key.endswith("token_rp_bucket"):
            return m.make_token_bucket_position(config.token_bucket_size)
        distances = m.image_num_relative_distance(config.image_bucket_size)
        return m.make_image_bucket_position(config.image_bucket_size, distances)

    return build


def original_checkpoint(config, state: dict, provenance: dict) -> dict:
    """A fairseq-format checkpoint dict (``cfg`` with a ``model`` Namespace, ``model`` state dict)."""
    from collections import OrderedDict

    stated = dict(provenance.get("hyper_parameters", {}).get("model", {}))
    fields = set(getattr(type(config), "__annotations__", {}))
    model_args = {**stated, **{k: getattr(config, k) for k in fields if hasattr(config, k)
                               and k not in ("tie_word_embeddings", "is_encoder_decoder", "use_cache")}}
    model_args.setdefault("_name", "ofa")
    model_args.setdefault("arch", stated.get("arch", "ofa_tiny"))
    task = dict(provenance.get("hyper_parameters", {}).get("task", {})) or {"_name": "ofa"}
    fp16 = any(t.dtype == torch.float16 for t in state.values())
    return {
        "args": None,
        "cfg": {"_name": None, "common": {"fp16": fp16, "user_dir": None}, "model": argparse.Namespace(**model_args),
                "task": task, "criterion": None, "optimizer": None, "lr_scheduler": None},
        "model": OrderedDict(sorted(state.items())),
        "criterion": None,
        "optimizer_history": [],
        "task_state": {},
        "extra_state": {},
    }
