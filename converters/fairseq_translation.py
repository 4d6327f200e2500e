"""fairseq's translation transformer (``transformer``, ``transformer_iwslt_de_en``, ``transformer_wmt_en_de``, ...)
into stock transformers classes, no remote code.

Which class computes exactly what fairseq computes (checked against fairseq goldens, tests/test_fairseq_translation.py):

- post-norm (fairseq's default) -> ``FSMTForConditionalGeneration``: separate source / target vocabularies,
  sinusoidal positions counted from padding_idx + 1 over non-pad tokens, sqrt(d) embedding scale, relu, no
  embedding LayerNorm. Its sinusoidal table is a stored parameter, written from the same formula fairseq uses.
- pre-norm (``--encoder/decoder-normalize-before``) with one joined dictionary and ``--share-all-embeddings``
  -> ``M2M100ForConditionalGeneration`` (fairseq's M2M-100 is this architecture: pre-norm layers, a final
  LayerNorm on both stacks, the same sinusoidal positions, shared embeddings).

Anything else (pre-norm with separate dictionaries, learned positions, embedding LayerNorm, adaptive softmax,
mixed pre/post-norm, different encoder/decoder widths) has no stock class computing the same thing: refused by name.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import torch

from hfport.converters.ofa import model_arguments, task_arguments, _layer_count
from hfport.converters.pipeline import Prepared, first_unsupported, reject_unused_options
from hfport.errors import ConfigError, UnsupportedCheckpointError

FAMILY = "fairseq_translation"
STATE_KEY = "model"
MAPPING = "fairseq_translation"
REGENERATED = ("fairseq_version",)
ARCHS = re.compile(r"^transformer(_(iwslt|wmt|vaswani|tiny|base|big)\w*)?$")
# structure no stock class reproduces: refuse rather than drop or mis-compute
UNSUPPORTED_KEYS = {
    r"^(encoder|decoder)\.embed_positions\.weight$": "learned positional embeddings (--encoder-learned-pos)",
    r"^(encoder|decoder)\.layernorm_embedding\.": "an embedding LayerNorm (--layernorm-embedding)",
    r"^decoder\.adaptive_softmax\.": "an adaptive softmax",
    r"^decoder\.project_(in|out)_dim\.": "decoder input/output projections (embed dim != model dim)",
    r"\.(self_attn|encoder_attn)\.(k|v)_proj\.[^.]+\.": "quantised or pruned attention",
    r"\.alignment_": "alignment heads",
}


def arch_name(checkpoint: dict) -> str | None:
    """The arch a fairseq checkpoint (a `model` state dict beside `cfg` or `args`) names; None for anything else.
    Every fairseq family's `matches` starts here."""
    if not isinstance(checkpoint.get("model"), dict) or not ("cfg" in checkpoint or "args" in checkpoint):
        return None
    try:
        args = model_arguments(checkpoint)
    except ConfigError:
        return None
    arch = args.get("arch") or args.get("_name")
    return arch if isinstance(arch, str) else None


def matches(checkpoint: dict) -> bool:
    arch = arch_name(checkpoint)
    return arch is not None and bool(ARCHS.match(arch))


def _refuse_unsupported(state: dict) -> None:
    if (found := first_unsupported(state, UNSUPPORTED_KEYS)) is not None:
        what, keys = found
        raise UnsupportedCheckpointError(
            f"this fairseq transformer uses {what}; no stock transformers class computes it: {keys}")


def derive_structure(state: dict[str, torch.Tensor]) -> dict:
    need = ["encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "encoder.layers.0.fc1.weight",
            "decoder.layers.0.fc1.weight"]
    missing = [k for k in need if k not in state]
    if missing:
        raise UnsupportedCheckpointError(f"not a complete fairseq transformer state dict: missing {', '.join(missing)}")
    shape = lambda k: tuple(state[k].shape)  # noqa: E731
    found = {
        "src_vocab_size": shape("encoder.embed_tokens.weight")[0],
        "tgt_vocab_size": shape("decoder.embed_tokens.weight")[0],
        "encoder_embed_dim": shape("encoder.embed_tokens.weight")[1],
        "decoder_embed_dim": shape("decoder.embed_tokens.weight")[1],
        "encoder_ffn_embed_dim": shape("encoder.layers.0.fc1.weight")[0],
        "decoder_ffn_embed_dim": shape("decoder.layers.0.fc1.weight")[0],
        "encoder_layers": _layer_count(state, "encoder"),
        "decoder_layers": _layer_count(state, "decoder"),
        "encoder_normalize_before": "encoder.layer_norm.weight" in state,
        "decoder_normalize_before": "decoder.layer_norm.weight" in state,
    }
    return found


def _check(args: dict, structure: dict) -> None:
    wrong = []
    for name, value in structure.items():
        stated = args.get(name)
        if name.endswith("normalize_before"):
            stated = bool(stated)
            # fairseq drops the final LayerNorm of a pre-norm decoder with --no-decoder-final-norm
            if name == "decoder_normalize_before" and args.get("no_decoder_final_norm"):
                raise UnsupportedCheckpointError("--no-decoder-final-norm: no stock class drops the final LayerNorm")
        if stated is not None and stated != value and name in args:
            wrong.append(f"{name}={stated!r} but the tensors say {value!r}")
    if wrong:
        raise ConfigError("hyper-parameters contradict the checkpoint's tensors: " + "; ".join(wrong))
    if structure["encoder_embed_dim"] != structure["decoder_embed_dim"]:
        raise UnsupportedCheckpointError("encoder and decoder widths differ; no stock class has two model widths")
    if structure["encoder_normalize_before"] != structure["decoder_normalize_before"]:
        raise UnsupportedCheckpointError("one stack is pre-norm and the other post-norm; no stock class mixes them")
    if args.get("activation_fn", "relu") not in ("relu", "gelu"):
        raise UnsupportedCheckpointError(f"activation {args.get('activation_fn')!r} has no stock equivalent here")
    for flag in ("no_token_positional_embeddings", "cross_self_attention", "layernorm_embedding"):
        if args.get(flag):
            raise UnsupportedCheckpointError(f"--{flag.replace('_', '-')}: no stock class computes it")


def target_class(structure: dict, args: dict) -> str:
    if not structure["encoder_normalize_before"]:
        return "fsmt"
    if args.get("share_all_embeddings") and structure["src_vocab_size"] == structure["tgt_vocab_size"]:
        return "m2m100"
    raise UnsupportedCheckpointError(
        "a pre-norm transformer with separate source/target embeddings: the stock pre-norm class (M2M100) has one "
        "shared vocabulary; retrain with --share-all-embeddings or convert to a shipped class (not provided)")


def build_config(args: dict, structure: dict, task: dict, kind: str):
    common = dict(
        d_model=structure["encoder_embed_dim"],
        encoder_layers=structure["encoder_layers"], decoder_layers=structure["decoder_layers"],
        encoder_attention_heads=int(args.get("encoder_attention_heads") or 8),
        decoder_attention_heads=int(args.get("decoder_attention_heads") or 8),
        encoder_ffn_dim=structure["encoder_ffn_embed_dim"], decoder_ffn_dim=structure["decoder_ffn_embed_dim"],
        activation_function=args.get("activation_fn") or "relu",
        max_position_embeddings=int(args.get("max_source_positions") or 1024),
        scale_embedding=not args.get("no_scale_embedding", False),
        dropout=float(args.get("dropout") or 0.0), attention_dropout=float(args.get("attention_dropout") or 0.0),
        activation_dropout=float(args.get("activation_dropout") or args.get("relu_dropout") or 0.0),
        pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2, forced_eos_token_id=2,
    )
    for side in ("encoder", "decoder"):
        if structure[f"{side}_embed_dim"] % common[f"{side}_attention_heads"]:
            raise ConfigError(f"{side}_attention_heads={common[f'{side}_attention_heads']} does not divide the width")
    if int(args.get("max_target_positions") or 1024) != common["max_position_embeddings"]:
        raise UnsupportedCheckpointError("different source and target position limits; the stock classes have one")
    if kind == "fsmt":
        from transformers import FSMTConfig

        share_all = bool(args.get("share_all_embeddings"))
        config = FSMTConfig(
            langs=[str(task.get("source_lang") or "src"), str(task.get("target_lang") or "tgt")],
            src_vocab_size=structure["src_vocab_size"], tgt_vocab_size=structure["tgt_vocab_size"],
            tie_word_embeddings=share_all, **common)
        # stock FSMT builds no causal (nor decoder padding) mask when use_cache is on, also for a whole
        # teacher-forced target: a plain forward would see future tokens (logits 5.8 off fairseq's on the tiny
        # model). Off in config.json; generation turns it back on (generation_config.json), one token at a time.
        config.use_cache = False
        config.architectures = ["FSMTForConditionalGeneration"]
    else:
        from transformers import M2M100Config

        config = M2M100Config(vocab_size=structure["src_vocab_size"], tie_word_embeddings=True, **common)
        config.architectures = ["M2M100ForConditionalGeneration"]
    return config


def mapping_flags(kind: str, args: dict) -> dict[str, bool]:
    share_all = bool(args.get("share_all_embeddings"))
    return {"fsmt": kind == "fsmt", "m2m100": kind == "m2m100", "fsmt_shared": kind == "fsmt" and share_all}


def export_flags(config) -> dict[str, bool]:
    kind = "fsmt" if config.model_type == "fsmt" else "m2m100"
    return mapping_flags(kind, {"share_all_embeddings": bool(getattr(config, "tie_word_embeddings", False))})


def translation_tokenizers(dictionary, target_dictionary, config, kind: str) -> list:
    """[(subfolder, tokenizer)]: the source tokenizer in the folder itself (fairseq's source convention: words then
    </s>, left padding as the translation task pads), and, when the target vocabulary is another, a
    ``target_tokenizer/`` subfolder for decoding what the model generates. Built before anything is written."""
    from hfport.converters.fairseq_tokenizers import fairseq_tokenizer

    if dictionary is None:
        if target_dictionary is not None:
            raise ConfigError("--target-dict needs --dict (the source dictionary) too")
        return []
    source_size = config.src_vocab_size if kind == "fsmt" else config.vocab_size
    target_size = config.tgt_vocab_size if kind == "fsmt" else config.vocab_size
    made = [("", fairseq_tokenizer(Path(dictionary), source_size, "$A </s>", padding_side="left"))]
    if target_dictionary is not None and Path(target_dictionary).read_bytes() != Path(dictionary).read_bytes():
        made.append(("target_tokenizer", fairseq_tokenizer(Path(target_dictionary), target_size, "$A </s>")))
    elif target_dictionary is None and kind == "fsmt" and not config.tie_word_embeddings:
        raise ConfigError("the model has separate source and target vocabularies: give the target dictionary "
                          "(dict.TGT.txt) with --target-dict")
    return made


def prepare(checkpoint: dict, path: Path, *, dictionary=None, target_dictionary=None, **unused) -> Prepared:
    reject_unused_options(unused, "fairseq translation")
    from transformers import FSMTForConditionalGeneration, M2M100ForConditionalGeneration

    state = checkpoint["model"]
    _refuse_unsupported(state)
    args = model_arguments(checkpoint)
    task = task_arguments(checkpoint)
    structure = derive_structure(state)
    _check(args, structure)
    kind = target_class(structure, args)
    config = build_config(args, structure, task, kind)
    model_class = FSMTForConditionalGeneration if kind == "fsmt" else M2M100ForConditionalGeneration
    tokenizers = translation_tokenizers(dictionary, target_dictionary, config, kind)
    notes = [f"{'post' if kind == 'fsmt' else 'pre'}-norm fairseq transformer -> stock {model_class.__name__}",
             "decoding starts from </s> (decoder_start_token_id = eos), as fairseq's SequenceGenerator does",
             "fairseq's translation task left-pads the source; pass attention_mask (positions count non-pad tokens)"]

    def write_extras(folder: Path) -> list[str]:
        from transformers import GenerationConfig

        GenerationConfig(
            bos_token_id=0, eos_token_id=2, pad_token_id=1, decoder_start_token_id=2, forced_eos_token_id=2,
            suppress_tokens=[1], num_beams=5, length_penalty=1.0, early_stopping=True, use_cache=True,
            max_new_tokens=201,  # fairseq-generate's max_len_b=200, plus the </s> it forces at the limit
            min_new_tokens=1,  # fairseq-generate's --min-len 1: </s> may not be the first token
        ).save_pretrained(folder)
        written = ["generation_config.json"]
        for subfolder, tokenizer in tokenizers:
            saved = tokenizer.save_pretrained(folder / subfolder if subfolder else folder)
            written += [str(Path(subfolder, Path(p).name)) if subfolder else Path(p).name for p in saved]
        return written

    return Prepared(
        config=config, model_class=model_class, state_dict=state, flags=mapping_flags(kind, args),
        model_files=[], task="translation", source_format="fairseq",
        hyper_parameters={"model": args, "task": task}, source_dtype=state["encoder.embed_tokens.weight"].dtype,
        notes=notes, write_extras=write_extras,
    )


def generator(config):
    """Target tensors fairseq recomputes at load time and FSMT stores: its sinusoidal position tables."""
    def build(name: str, key: str) -> torch.Tensor:
        if name != "fairseq_sinusoidal_positions":
            raise KeyError(name)
        rows = config.max_position_embeddings + config.pad_token_id + 1
        return sinusoidal_table(rows, config.d_model, config.pad_token_id)

    return build


def sinusoidal_table(rows: int, dim: int, padding_idx: int) -> torch.Tensor:
    """fairseq's sinusoidal positions: sin over the first half of the channels, cos over the second, frequencies
    10000^(-j / (half - 1)); the padding row is zero."""
    half = dim // 2
    step = torch.exp(torch.arange(half, dtype=torch.float) * -(torch.log(torch.tensor(10000.0)) / (half - 1)))
    angles = torch.arange(rows, dtype=torch.float).unsqueeze(1) * step.unsqueeze(0)
    table = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    if dim % 2:
        table = torch.cat([table, torch.zeros(rows, 1)], dim=1)
    table[padding_idx] = 0
    return table


def regenerator(config):
    def build(name: str, key: str) -> torch.Tensor:
        return torch.tensor([3.0], dtype=getattr(torch, str(getattr(config, "dtype", None) or "float32").removeprefix("torch.")))

    return build


def original_checkpoint(config, state: dict, provenance: dict) -> dict:
    from collections import OrderedDict

    model_args = dict(provenance.get("hyper_parameters", {}).get("model", {}))
    task = dict(provenance.get("hyper_parameters", {}).get("task", {})) or {"_name": "translation"}
    return {
        "args": None,
        "cfg": {"_name": None, "common": {"fp16": False}, "model": argparse.Namespace(**model_args), "task": task,
                "criterion": None, "optimizer": None, "lr_scheduler": None},
        "model": OrderedDict(sorted(state.items())),
        "criterion": None, "optimizer_history": [], "task_state": {}, "extra_state": {},
    }


def describe(checkpoint: dict) -> dict:
    state = checkpoint["model"]
    args = model_arguments(checkpoint)
    structure = derive_structure(state)
    return {
        "family": "fairseq translation transformer",
        "arch": arch_name(checkpoint),
        "structure": structure,
        "stated": {k: args.get(k) for k in ("share_all_embeddings", "share_decoder_input_output_embed",
                                             "encoder_normalize_before", "decoder_normalize_before") if k in args},
        "task": {k: v for k, v in task_arguments(checkpoint).items()
                 if k in ("_name", "source_lang", "target_lang", "left_pad_source")},
        "weights": state,
        "baggage": {k: checkpoint[k] for k in ("last_optimizer_state", "optimizer_history", "extra_state", "criterion")
                    if checkpoint.get(k) is not None},
    }
