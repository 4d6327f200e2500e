"""METER (PyTorch Lightning) checkpoints: recognise them, derive the HF config, pick the task class.

Structure comes from tensor shapes (vision tower kind, width, patch, blocks, grid, Swin windows and heads,
fusion width and depth, token types, heads and label counts). ``hyper_parameters["config"]`` is a hint for
what shapes cannot tell (fusion head count, image size, text length) and must agree with the shapes
elsewhere. The text tower's config is not in the checkpoint: the user supplies it (``--text-config``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from hfport.converters.pipeline import Prepared, reject_unused_options
from hfport.errors import ConfigError, UnsupportedCheckpointError
from hfport.models import model_source_files

FAMILY = "meter"
STATE_KEY = "state_dict"
MAPPING = "meter"
REGENERATED = ("position_ids",)  # derived buffers the backwards direction rebuilds (see regenerator())

HEADS = ("vqa_classifier", "nlvr2_classifier", "snli_classifier", "itm_score", "mlm_score", "rank_output")
# which class a set of heads becomes; --head picks one when a checkpoint carries several
HEAD_CLASSES = {
    "vqa": ("MeterForQuestionAnswering", {"vqa_classifier"}, "visual-question-answering"),
    "nlvr2": ("MeterForVisualReasoning", {"nlvr2_classifier"}, "visual-reasoning"),
    "snli": ("MeterForVisualEntailment", {"snli_classifier"}, "visual-entailment"),
    "pretraining": ("MeterForPreTraining", {"mlm_score", "itm_score"}, "pretraining"),
    "itm": ("MeterForImageTextMatching", {"itm_score", "rank_output"}, "image-text-matching"),
    "mlm": ("MeterForMaskedLM", {"mlm_score"}, "fill-mask"),
}


# tensors every METER checkpoint has, whatever its towers and heads (their shapes define the fusion stack)
REQUIRED = ("cross_modal_text_transform.weight", "cross_modal_image_transform.weight", "token_type_embeddings.weight",
            "cross_modal_text_layers.0.intermediate.dense.weight")
REQUIRED_CLIP = ("vit_model.visual.conv1.weight", "vit_model.visual.positional_embedding",
                 "vit_model.visual.transformer.resblocks.0.mlp.c_fc.weight")
REQUIRED_SWIN = ("vit_model.patch_embed.proj.weight", "vit_model.layers.0.blocks.0.attn.relative_position_bias_table",
                 "vit_model.layers.0.blocks.0.mlp.fc1.weight")


def require(state: dict, keys) -> None:
    missing = [k for k in keys if k not in state]
    if missing:
        raise UnsupportedCheckpointError(f"not a complete METER state dict: missing {', '.join(missing)}")


def matches(checkpoint: dict) -> bool:
    from hfport.verify.backends.meter_live import is_meter_checkpoint  # the one test, shared with the recorder

    return is_meter_checkpoint(checkpoint)


def _count(keys, pattern: str) -> int:
    return len({m.group(1) for k in keys if (m := re.match(pattern, k))})


def hyper_parameters(checkpoint: dict) -> dict:
    hp = checkpoint.get("hyper_parameters") or {}
    config = hp.get("config", hp) if isinstance(hp, dict) else {}
    return dict(config) if isinstance(config, dict) else {}


def choose_head(state: dict, head: str | None) -> tuple[str, set[str], str]:
    present = {h for h in HEADS if any(k.startswith(h + ".") for k in state)}
    if head is not None:
        if head not in HEAD_CLASSES:
            raise ConfigError(f"unknown --head '{head}' (choose from {', '.join(HEAD_CLASSES)})")
        name, wanted, task = HEAD_CLASSES[head]
        needed = wanted - {"rank_output"}
        if not needed <= present:
            raise ConfigError(f"--head {head} needs {', '.join(sorted(needed - present))}, which the checkpoint lacks")
        return name, wanted & present, task
    candidates = [key for key, (_, wanted, _) in HEAD_CLASSES.items() if (wanted - {"rank_output"}) <= present]
    # the class that keeps the most heads wins (MLM+ITM -> pretraining rather than MLM alone)
    candidates.sort(key=lambda k: -len(HEAD_CLASSES[k][1] & present))
    if not candidates:
        raise UnsupportedCheckpointError(
            "no METER task head found (vqa_classifier, nlvr2_classifier, snli_classifier, itm_score, mlm_score)")
    best = candidates[0]
    kept = HEAD_CLASSES[best][1] & present
    leftover = present - kept
    if leftover:
        raise ConfigError(
            f"the checkpoint carries heads for several tasks ({', '.join(sorted(present))}); "
            f"pass --head to choose one ({', '.join(candidates)})",
            hint="the heads not chosen are dropped explicitly and listed in hfport.json")
    return HEAD_CLASSES[best][0], kept, HEAD_CLASSES[best][2]


def load_text_config(text_config, tokenizer=None):
    """The user's text-tower config: a config.json, a model folder, or a Hub id transformers can resolve."""
    from transformers import AutoConfig

    source = text_config or tokenizer
    if source is None:
        raise ConfigError("METER checkpoints do not contain the text encoder's config; pass --text-config "
                          "(e.g. roberta-base, bert-base-uncased, a folder or a config.json)")
    path = Path(str(source))
    try:
        if path.is_file():
            data = json.loads(path.read_text())
            config = AutoConfig.for_model(data.pop("model_type", None) or "unknown", **data)
        else:
            config = AutoConfig.from_pretrained(str(source))
    except (OSError, ValueError, TypeError, json.JSONDecodeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"cannot load the text config '{source}': {first}") from None
    if config.model_type not in ("roberta", "bert"):
        raise ConfigError(f"text config '{source}' is a {config.model_type} config; METER's text tower is roberta or bert")
    return config


def vision_config(state: dict, hp: dict):
    from transformers import CLIPVisionConfig, SwinConfig

    keys = list(state)
    require(state, REQUIRED)
    if "vit_model.visual.conv1.weight" in state:
        require(state, REQUIRED_CLIP)
        width, _, patch, _ = state["vit_model.visual.conv1.weight"].shape
        rows = state["vit_model.visual.positional_embedding"].shape[0] - 1
        grid = round(rows ** 0.5)
        if grid * grid != rows:
            raise ConfigError(f"CLIP position table has {rows + 1} rows, not grid²+1")
        if width % 64:
            raise ConfigError(f"CLIP width {width} is not a multiple of 64 (CLIP uses width/64 heads)")
        blocks = _count(keys, r"vit_model\.visual\.transformer\.resblocks\.(\d+)\.")
        stated_patch = hp.get("patch_size")
        if stated_patch is not None and int(stated_patch) != patch:
            raise ConfigError(f"config says patch_size={stated_patch} but conv1 has patch {patch}")
        return CLIPVisionConfig(
            hidden_size=width, intermediate_size=state["vit_model.visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
            num_hidden_layers=blocks, num_attention_heads=width // 64, image_size=grid * patch, patch_size=patch,
            hidden_act="quick_gelu", layer_norm_eps=1e-5, num_channels=3), "clip"
    if "vit_model.patch_embed.proj.weight" in state:
        require(state, REQUIRED_SWIN)
        embed_dim, _, patch, _ = state["vit_model.patch_embed.proj.weight"].shape
        stages = _count(keys, r"vit_model\.layers\.(\d+)\.")
        depths = [_count(keys, rf"vit_model\.layers\.{s}\.blocks\.(\d+)\.") for s in range(stages)]
        heads, windows = [], set()
        require(state, [f"vit_model.layers.{s}.blocks.0.attn.relative_position_bias_table" for s in range(stages)])
        for s in range(stages):
            table = state[f"vit_model.layers.{s}.blocks.0.attn.relative_position_bias_table"]
            heads.append(table.shape[1])
            windows.add((round(table.shape[0] ** 0.5) + 1) // 2)
        if len(windows) != 1:
            raise ConfigError(f"Swin stages disagree on the window size: {sorted(windows)}")
        image_size = int(hp.get("image_size") or 0) or 32 * windows.copy().pop()
        fc1 = state["vit_model.layers.0.blocks.0.mlp.fc1.weight"].shape[0]
        return SwinConfig(
            image_size=image_size, patch_size=patch, embed_dim=embed_dim, depths=depths, num_heads=heads,
            window_size=windows.pop(), mlp_ratio=fc1 / embed_dim,
            use_absolute_embeddings="vit_model.absolute_pos_embed" in state, layer_norm_eps=1e-5,
            hidden_act="gelu"), "swin"
    raise UnsupportedCheckpointError("unknown METER image encoder (neither CLIP `vit_model.visual.*` nor Swin)")


def build_config(state: dict, hp: dict, text, head_class: str, kept: set[str]):
    from hfport.models.meter.configuration_meter import MeterConfig

    keys = list(state)
    vision, kind = vision_config(state, hp)
    hidden, text_in = state["cross_modal_text_transform.weight"].shape
    image_in = state["cross_modal_image_transform.weight"].shape[1]
    problems = []
    vision_width = vision.hidden_size if kind == "clip" else int(vision.embed_dim * 2 ** (len(vision.depths) - 1))
    if image_in != vision_width:
        problems.append(f"cross_modal_image_transform takes {image_in} features but the vision tower gives {vision_width}")
    word = state.get("text_transformer.embeddings.word_embeddings.weight")
    if word is not None and tuple(word.shape) != (text.vocab_size, text.hidden_size):
        problems.append(f"text embeddings are {list(word.shape)} but the text config says "
                        f"vocab {text.vocab_size} x hidden {text.hidden_size}")
    text_layers = _count(keys, r"text_transformer\.encoder\.layer\.(\d+)\.")
    if text_layers != text.num_hidden_layers:
        problems.append(f"the checkpoint has {text_layers} text layers but the text config says {text.num_hidden_layers}")
    positions = state.get("text_transformer.embeddings.position_embeddings.weight")
    if positions is not None and positions.shape[0] != text.max_position_embeddings:
        problems.append(f"text position table has {positions.shape[0]} rows, text config says {text.max_position_embeddings}")
    types = state.get("text_transformer.embeddings.token_type_embeddings.weight")
    if types is not None and types.shape[0] != text.type_vocab_size:
        problems.append(f"text token-type table has {types.shape[0]} rows, text config says {text.type_vocab_size}")
    if text_in != text.hidden_size:
        problems.append(f"cross_modal_text_transform takes {text_in} features, the text tower gives {text.hidden_size}")
    stated_tokenizer = str(hp.get("tokenizer", ""))
    if stated_tokenizer and ("roberta" in stated_tokenizer) != (text.model_type == "roberta"):
        problems.append(f"the checkpoint was trained with tokenizer '{stated_tokenizer}' but the text config is {text.model_type}")
    for name, derived in (("hidden_size", hidden), ("num_top_layer", _count(keys, r"cross_modal_text_layers\.(\d+)\.")),
                          ("input_image_embed_size", image_in), ("input_text_embed_size", text_in)):
        if hp.get(name) is not None and int(hp[name]) != int(derived):
            problems.append(f"config says {name}={hp[name]} but the tensors say {derived}")
    heads = int(hp.get("num_heads") or 0)
    if not heads:
        raise ConfigError("the checkpoint's config lacks num_heads (the fusion head count cannot be read from shapes)")
    if hidden % heads:
        problems.append(f"num_heads={heads} does not divide the fusion width {hidden}")
    if "vqa_classifier" in kept and hp.get("vqav2_label_size") is not None:
        rows = state["vqa_classifier.3.weight"].shape[0]
        if rows != int(hp["vqav2_label_size"]):
            problems.append(f"config says vqav2_label_size={hp['vqav2_label_size']} but the VQA head has {rows} outputs")
    if problems:
        raise ConfigError("config and checkpoint disagree: " + "; ".join(problems))

    num_labels = None
    for name in ("vqa_classifier", "nlvr2_classifier", "snli_classifier"):
        if name in kept:
            num_labels = state[f"{name}.3.weight"].shape[0]
    values = dict(
        vision_config=vision.to_dict(), text_config=text.to_dict(), hidden_size=hidden, num_attention_heads=heads,
        num_top_layer=_count(keys, r"cross_modal_text_layers\.(\d+)\."),
        intermediate_size=state["cross_modal_text_layers.0.intermediate.dense.weight"].shape[0],
        num_image_token_types=state["token_type_embeddings.weight"].shape[0],
        input_image_embed_size=image_in, input_text_embed_size=text_in,
        max_text_len=int(hp.get("max_text_len", 40)), image_size=int(hp.get("image_size") or vision.image_size),
        use_rank_output="rank_output" in kept,
    )
    if "mlm_score" in kept:
        values["vocab_size"] = state["mlm_score.decoder.weight"].shape[0]
    if num_labels is not None:
        values["num_labels"] = num_labels
    config = MeterConfig(**values)
    # the head's own config class, from the modeling file: see "folder configs" in modeling_meter.py
    auto = {"AutoConfig": f"modeling_meter.{head_class}Config", "AutoModel": f"modeling_meter.{head_class}"}
    task_auto = {"MeterForMaskedLM": "AutoModelForMaskedLM", "MeterForPreTraining": "AutoModelForPreTraining",
                 "MeterForQuestionAnswering": "AutoModelForVisualQuestionAnswering",
                 "MeterForVisualEntailment": "AutoModelForSequenceClassification",
                 "MeterForVisualReasoning": "AutoModelForSequenceClassification",
                 "MeterForImageTextMatching": "AutoModelForSequenceClassification"}
    auto[task_auto[head_class]] = f"modeling_meter.{head_class}"
    config.auto_map = auto
    config.architectures = [head_class]
    return config


def prepare(checkpoint: dict, path: Path, *, text_config=None, tokenizer=None, head=None, labels=None,
            **unused) -> Prepared:
    reject_unused_options(unused, "METER")
    from hfport.models.meter import modeling_meter

    state = checkpoint["state_dict"]
    hp = hyper_parameters(checkpoint)
    head_class, kept, task = choose_head(state, head)
    text = load_text_config(text_config, tokenizer)
    config = build_config(state, hp, text, head_class, kept)
    if labels is not None:
        apply_label_file(config, labels, head_class, task)
    elif len(FIXED_LABELS.get(head_class, ())) == config.num_labels:
        from hfport.labels import apply_labels

        apply_labels(config, FIXED_LABELS[head_class], task)
    flags = {f"keep_{h}": h in kept for h in HEADS}
    notes = []
    if config.image_size != config.vision_config.image_size:
        notes.append(f"position table at {config.vision_config.image_size}px, checkpoint config image_size "
                     f"{config.image_size}px: positions are interpolated at run time")

    loaded_tokenizer = None
    if tokenizer is not None:  # resolved and checked against the embedding before anything is written
        from hfport.converters.meter_preprocessing import load_meter_tokenizer

        loaded_tokenizer = load_meter_tokenizer(tokenizer, config.text_config.vocab_size)

    def write_extras(folder: Path) -> list[str]:
        if loaded_tokenizer is None:
            return []
        from hfport.converters.meter_preprocessing import save_meter_preprocessing

        transform = (hp.get("val_transform_keys") or ["clip"])[0]
        return save_meter_preprocessing(folder, tokenizer_source=loaded_tokenizer, max_text_len=config.max_text_len,
                                        image_size=config.image_size, transform=transform,
                                        vocab_size=config.text_config.vocab_size)

    dtype = state["cross_modal_text_transform.weight"].dtype
    return Prepared(
        config=config, model_class=getattr(modeling_meter, head_class), state_dict=state, flags=flags,
        model_files=model_source_files("meter"), task=task,
        source_format="lightning", hyper_parameters={"config": hp, "text_config": text.to_dict()},
        source_dtype=dtype, notes=notes, write_extras=write_extras)




CLASSIFIER_HEADS = {"MeterForQuestionAnswering", "MeterForVisualEntailment", "MeterForVisualReasoning"}
# label orders METER's data preparation fixes, so no --labels is needed: SNLI-VE's label2id (write_snli.py) and
# NLVR2's answer (1 when the statement is "True")
FIXED_LABELS = {"MeterForVisualEntailment": ["contradiction", "neutral", "entailment"],
                "MeterForVisualReasoning": ["False", "True"]}


def apply_label_file(config, path, head_class: str, task: str) -> None:
    """`--labels`: the answer vocabulary of a classifier head becomes the config's id2label / label2id."""
    from hfport.labels import apply_labels, read_labels

    if head_class not in CLASSIFIER_HEADS:
        raise ConfigError(f"--labels names the answers of a classifier head; this checkpoint's {head_class} has none")
    apply_labels(config, read_labels(path), task)


def describe(checkpoint: dict) -> dict:
    state = checkpoint["state_dict"]
    hp = hyper_parameters(checkpoint)
    vision, kind = vision_config(state, hp)  # checks the required tensors first
    present = sorted(h for h in HEADS if any(k.startswith(h + ".") for k in state))
    return {
        "family": "METER (PyTorch Lightning)",
        "arch": f"{kind} + {hp.get('tokenizer', '?')}",
        "structure": {
            "vision": kind, "vision_width": getattr(vision, "hidden_size", getattr(vision, "embed_dim", None)),
            "vision_layers": getattr(vision, "num_hidden_layers", getattr(vision, "depths", None)),
            "patch_size": vision.patch_size, "position_table_image_size": vision.image_size,
            "fusion_hidden": state["cross_modal_text_transform.weight"].shape[0],
            "fusion_layers": _count(list(state), r"cross_modal_text_layers\.(\d+)\."),
            "token_types": state["token_type_embeddings.weight"].shape[0], "heads": present,
        },
        "stated": {k: hp.get(k) for k in ("vit", "tokenizer", "image_size", "num_heads", "hidden_size", "num_top_layer",
                                          "max_text_len", "vqav2_label_size", "loss_names") if k in hp},
        "task": {},
        "weights": state,
        "baggage": {k: checkpoint[k] for k in ("optimizer_states", "lr_schedulers", "callbacks") if checkpoint.get(k)},
    }


# -- backwards: HF folder -> METER Lightning checkpoint --------------------------------------------------------------

def regenerator(config):
    """Rebuilds the text tower's position-id buffer that transformers 4.6 stored in METER checkpoints."""

    def build(generator: str, key: str) -> torch.Tensor:
        return torch.arange(config.text_config.max_position_embeddings)[None]

    return build


def export_flags(config) -> dict[str, bool]:
    head_class = (config.architectures or [""])[0]
    kept = next((heads for name, heads, _ in HEAD_CLASSES.values() if name == head_class), set())
    return {f"keep_{h}": h in kept and (h != "rank_output" or config.use_rank_output) for h in HEADS}


def original_checkpoint(config, state: dict, provenance: dict) -> dict:
    """A Lightning-layout METER checkpoint; weights only (no optimizer, no callbacks)."""
    from collections import OrderedDict

    return {
        "epoch": 0,
        "global_step": 0,
        "pytorch-lightning_version": "1.3.2",
        "state_dict": OrderedDict(sorted(state.items())),
        "hparams_name": "kwargs",
        "hyper_parameters": {"config": dict(provenance.get("hyper_parameters", {}).get("config", {}))},
    }
