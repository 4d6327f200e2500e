"""fairseq RoBERTa (``roberta``, ``roberta_base``, ``roberta_large``) and XLM-R (the same archs, or ``xlm``, trained
with ``--bpe sentencepiece``) into stock transformers classes, no remote code:

- no classification head -> ``RobertaForMaskedLM`` / ``XLMRobertaForMaskedLM`` (the masked-LM head: dense, GELU,
  LayerNorm, the tied embedding as the output matrix, a bias);
- ``classification_heads.<name>.*`` -> ``RobertaForSequenceClassification`` / ``XLMRobertaForSequenceClassification``
  with that head (``--head NAME`` when there are several). The masked-LM head is dropped, with the reason: the
  classification model never runs it.

What makes the stock classes compute fairseq's numbers: learned positions numbered from padding_idx + 1 over
non-pad tokens in both (the table has max_positions + 2 rows in both), post-norm layers, an embedding LayerNorm,
LayerNorm eps 1e-5, no embedding scale. transformers adds token-type embeddings fairseq does not have: one zero
row (type_vocab_size 1), so adding it changes nothing. Pre-norm RoBERTa (``roberta_prenorm``, XLM-R XL) and other
layouts no stock class computes are refused by name. XLM-R vs RoBERTa is the tokenizer: which class is chosen
follows the checkpoint's ``bpe`` setting (or the tokenizer files given with --bpe-dir).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from pathlib import Path

import torch

from hfport.converters.fairseq_translation import original_checkpoint as _translation_checkpoint
from hfport.converters.fairseq_translation import arch_name
from hfport.converters.fairseq_translation import regenerator  # noqa: F401  (the same version buffers)
from hfport.converters.ofa import _layer_count, model_arguments, task_arguments
from hfport.converters.pipeline import Prepared, reject_unused_options
from hfport.errors import ConfigError, UnsupportedCheckpointError

STATE_KEY = "model"
MAPPING = "fairseq_roberta"
REGENERATED = ("fairseq_version",)
ARCHS = re.compile(r"^(roberta(_base|_large)?|xlm|xlmr(\.\w+)?)$")
PREFIX = "encoder.sentence_encoder"
HEAD_KEY = "classification_head"  # the chosen head, renamed before mapping (its fairseq name is in hfport.json)
ACTIVATIONS = {"gelu": "gelu", "relu": "relu", "tanh": "tanh", "gelu_accurate": "gelu_new"}
UNSUPPORTED = {  # argument -> (value that is unsupported, what it means)
    "encoder_normalize_before": (True, "pre-norm layers (roberta_prenorm / XLM-R XL); stock RoBERTa is post-norm"),
    "untie_weights_roberta": (True, "an output matrix separate from the embedding"),
    "layernorm_embedding": (False, "no embedding LayerNorm; stock RoBERTa always has one"),
    "encoder_learned_pos": (False, "sinusoidal positions; stock RoBERTa learns them"),
    "no_token_positional_embeddings": (True, "no positional embeddings"),
    "adaptive_input": (True, "adaptive input embeddings"),
    "encoder_layers_to_keep": (..., "pruned layers (encoder_layers_to_keep)"),
    "spectral_norm_classification_head": (True, "a spectrally normalised classification head"),
}


def _bpe_kind(checkpoint: dict) -> str | None:
    cfg = checkpoint.get("cfg")
    bpe = cfg.get("bpe") if isinstance(cfg, dict) else None
    name = bpe.get("_name") if isinstance(bpe, dict) else getattr(bpe, "_name", None) if bpe is not None else None
    if name is None:
        try:
            name = model_arguments(checkpoint).get("bpe")
        except ConfigError:
            name = None
    return name if isinstance(name, str) else None


def matches(checkpoint: dict) -> bool:
    arch = arch_name(checkpoint)
    return arch is not None and bool(ARCHS.match(arch))


def head_names(state: dict) -> list[str]:
    return sorted({k.split(".")[1] for k in state if k.startswith("classification_heads.")})


def choose_head(state: dict, head: str | None) -> str | None:
    names = head_names(state)
    if head is not None and head not in names:
        raise ConfigError(f"--head {head}: the checkpoint's classification heads are {', '.join(names) or 'none'}")
    if head is None and len(names) > 1:
        raise ConfigError(f"the checkpoint has {len(names)} classification heads ({', '.join(names)}); "
                          "choose one with --head NAME")
    return head or (names[0] if names else None)


def derive_structure(state: dict, head: str | None) -> dict:
    legacy = [k for k in state if k.startswith("decoder.sentence_encoder.") or ".emb_layer_norm." in k]
    if legacy:
        raise UnsupportedCheckpointError(
            "a pre-0.10 fairseq RoBERTa layout (decoder.sentence_encoder.*, emb_layer_norm): load and save it once "
            "with fairseq >= 0.10 (which renames them), then convert")
    need = [f"{PREFIX}.embed_tokens.weight", f"{PREFIX}.embed_positions.weight",
            f"{PREFIX}.layernorm_embedding.weight", f"{PREFIX}.layers.0.fc1.weight"]
    missing = [k for k in need if k not in state]
    if missing:
        raise UnsupportedCheckpointError(f"not a complete fairseq RoBERTa state dict: missing {', '.join(missing)}")
    if f"{PREFIX}.layer_norm.weight" in state:
        raise UnsupportedCheckpointError("a final encoder LayerNorm (pre-norm RoBERTa); stock RoBERTa is post-norm")
    shape = lambda k: tuple(state[k].shape)  # noqa: E731
    vocab, width = shape(f"{PREFIX}.embed_tokens.weight")
    found = {
        "vocab_size": vocab, "hidden_size": width,
        "num_hidden_layers": _layer_count(state, PREFIX),
        "intermediate_size": shape(f"{PREFIX}.layers.0.fc1.weight")[0],
        "position_rows": shape(f"{PREFIX}.embed_positions.weight")[0],
    }
    if head is not None:
        dense, out = f"classification_heads.{head}.dense.weight", f"classification_heads.{head}.out_proj.weight"
        if dense not in state or out not in state:
            raise UnsupportedCheckpointError(f"classification head {head} lacks dense / out_proj weights")
        if shape(dense)[0] != width:
            raise UnsupportedCheckpointError(
                f"classification head {head} has an inner width of {shape(dense)[0]} (the model's is {width}); "
                "the stock head's dense layer keeps the model width")
        found["num_labels"] = shape(out)[0]
    elif "encoder.lm_head.dense.weight" not in state:
        raise UnsupportedCheckpointError("neither a masked-LM head (encoder.lm_head.*) nor a classification head")
    return found


def tokenizer_kind(checkpoint: dict, bpe_dir: Path | None) -> str:
    """"gpt2" (RoBERTa) or "sentencepiece" (XLM-R): the checkpoint's --bpe, else the files in --bpe-dir, else
    RoBERTa's GPT-2 BPE."""
    stated = _bpe_kind(checkpoint)
    if stated not in (None, "gpt2", "sentencepiece"):
        raise UnsupportedCheckpointError(f"--bpe {stated}: only gpt2 (RoBERTa) and sentencepiece (XLM-R) are converted")
    files = None
    if bpe_dir is not None:
        has_spm, has_gpt2 = sentencepiece_file(bpe_dir) is not None, (Path(bpe_dir) / "encoder.json").is_file()
        files = "sentencepiece" if has_spm and not has_gpt2 else "gpt2" if has_gpt2 and not has_spm else None
        if files is None:
            raise ConfigError(f"{bpe_dir}: expected either encoder.json + vocab.bpe (RoBERTa) or one "
                              "SentencePiece *.model (XLM-R)")
    if stated and files and stated != files:
        raise ConfigError(f"the checkpoint was trained with --bpe {stated} but {bpe_dir} holds {files} files")
    return stated or files or "gpt2"


def sentencepiece_file(bpe_dir: Path) -> Path | None:
    models = sorted(Path(bpe_dir).glob("*.model"))
    return models[0] if len(models) == 1 else None


def build_config(args: dict, structure: dict, kind: str):
    from transformers import RobertaConfig, XLMRobertaConfig

    refused = [what for name, (bad, what) in UNSUPPORTED.items()
               if (args.get(name) not in (None, False, "", 0) if bad is ... else args.get(name) is bad)]
    if refused:
        raise UnsupportedCheckpointError("this fairseq RoBERTa uses " + "; ".join(refused))
    activation = args.get("activation_fn") or "gelu"
    if activation not in ACTIVATIONS:
        raise UnsupportedCheckpointError(f"activation {activation!r} has no stock RoBERTa equivalent")
    if "num_labels" in structure and (args.get("pooler_activation_fn") or "tanh") != "tanh":
        raise UnsupportedCheckpointError(f"a classification head with {args.get('pooler_activation_fn')!r}; the "
                                         "stock head applies tanh")
    heads = int(args.get("encoder_attention_heads") or 0)
    if heads <= 0 or structure["hidden_size"] % heads:
        raise ConfigError(f"encoder_attention_heads={heads} does not divide the width {structure['hidden_size']}")
    stated = {"encoder_embed_dim": "hidden_size", "encoder_layers": "num_hidden_layers",
              "encoder_ffn_embed_dim": "intermediate_size"}
    wrong = [f"{a}={args[a]!r} but the tensors say {structure[s]!r}" for a, s in stated.items()
             if args.get(a) is not None and int(args[a]) != structure[s]]
    max_positions = args.get("max_positions")
    if max_positions is not None and int(max_positions) + 2 != structure["position_rows"]:
        wrong.append(f"max_positions={max_positions} but the position table has {structure['position_rows']} rows "
                     "(fairseq adds padding_idx + 1 = 2)")
    if wrong:
        raise ConfigError("hyper-parameters contradict the checkpoint's tensors: " + "; ".join(wrong))
    config_class = XLMRobertaConfig if kind == "sentencepiece" else RobertaConfig
    config = config_class(
        vocab_size=structure["vocab_size"], hidden_size=structure["hidden_size"],
        num_hidden_layers=structure["num_hidden_layers"], num_attention_heads=heads,
        intermediate_size=structure["intermediate_size"], hidden_act=ACTIVATIONS[activation],
        max_position_embeddings=structure["position_rows"],  # = max_positions + padding_idx + 1, as in fairseq
        type_vocab_size=1, layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0, eos_token_id=2,
        hidden_dropout_prob=float(args.get("dropout") or 0.0),
        attention_probs_dropout_prob=float(args.get("attention_dropout") or 0.0),
        classifier_dropout=float(args.get("pooler_dropout") or 0.0), tie_word_embeddings=True,
        **({"num_labels": structure["num_labels"]} if "num_labels" in structure else {}),
    )
    family = "XLMRoberta" if kind == "sentencepiece" else "Roberta"
    task = "SequenceClassification" if "num_labels" in structure else "MaskedLM"
    config.architectures = [f"{family}For{task}"]
    return config


def _renamed_state(state: dict, head: str | None) -> dict:
    """The chosen head under one fixed name, so the mapping stays data; other heads keep theirs (dropped)."""
    if head is None:
        return state
    prefix = f"classification_heads.{head}."
    return OrderedDict((f"{HEAD_KEY}.{k[len(prefix):]}" if k.startswith(prefix) else k, v) for k, v in state.items())


def class_labels(dictionary: Path, num_labels: int) -> list[str] | None:
    """The class names of a sentence_prediction head: class i is line i of the task's label/dict.txt (fairseq
    subtracts the four specials), found beside --dict when that is the task's input0/dict.txt."""
    from hfport.fairseq_text import DictionaryFormatError, read_dictionary

    label_dict = dictionary.parent.parent / "label" / "dict.txt"
    if dictionary.parent.name != "input0" or not label_dict.is_file():
        return None
    try:
        symbols = [e.symbol for e in read_dictionary(label_dict)]
    except DictionaryFormatError as err:
        raise ConfigError(str(err)) from None
    if len(symbols) < num_labels:
        raise ConfigError(f"{label_dict} names {len(symbols)} labels; the head has {num_labels} classes")
    return symbols[:num_labels]


def mapping_flags(classify: bool) -> dict[str, bool]:
    return {"classify": classify}


def export_flags(config) -> dict[str, bool]:
    return mapping_flags(bool(config.architectures) and config.architectures[0].endswith("SequenceClassification"))


def prepare(checkpoint: dict, path: Path, *, bpe_dir=None, dictionary=None, head=None, **unused) -> Prepared:
    reject_unused_options(unused, "fairseq RoBERTa / XLM-R")
    import transformers

    state = checkpoint["model"]
    args = model_arguments(checkpoint)
    task = task_arguments(checkpoint)
    chosen = choose_head(state, head)
    structure = derive_structure(state, chosen)
    kind = tokenizer_kind(checkpoint, Path(bpe_dir) if bpe_dir is not None else None)
    config = build_config(args, structure, kind)
    model_class = getattr(transformers, config.architectures[0])
    tokenizer = None
    if bpe_dir is not None or dictionary is not None:
        if bpe_dir is None or dictionary is None:
            raise ConfigError("a RoBERTa / XLM-R tokenizer needs both --bpe-dir (encoder.json + vocab.bpe, or the "
                              "SentencePiece model) and --dict (the task's dict.txt)")
        from hfport.converters.fairseq_roberta_tokenizer import roberta_tokenizer, xlmr_tokenizer

        if kind == "sentencepiece":
            model_file = sentencepiece_file(Path(bpe_dir))
            tokenizer = xlmr_tokenizer(model_file, Path(dictionary), config.vocab_size)
        else:
            tokenizer = roberta_tokenizer(Path(bpe_dir), Path(dictionary), config.vocab_size)
        # fairseq's max_positions: what `truncation=True` may keep (the table also holds the padding offset)
        tokenizer.model_max_length = config.max_position_embeddings - config.pad_token_id - 1
    labels = class_labels(Path(dictionary), structure["num_labels"]) if chosen and dictionary is not None else None
    if labels:
        config.id2label = dict(enumerate(labels))
        config.label2id = {label: i for i, label in enumerate(labels)}
    others = [n for n in head_names(state) if n != chosen]
    notes = [f"fairseq {'XLM-R' if kind == 'sentencepiece' else 'RoBERTa'} ({args.get('arch')}) -> stock "
             f"{model_class.__name__}",
             "token_type_embeddings: one zero row (fairseq has no token types; adding zeros changes nothing)"]
    if chosen:
        notes.append(f"classification head {chosen!r} -> classifier; the masked-LM head is dropped (the "
                     "classification model never runs it)")
    if others:
        notes.append(f"classification head(s) {', '.join(others)} dropped: --head chose {chosen}")
    hyper = {"model": args, "task": task, "bpe": kind}
    if chosen:
        hyper["classification_head"] = chosen

    def write_extras(folder: Path) -> list[str]:
        return [Path(p).name for p in tokenizer.save_pretrained(folder)] if tokenizer is not None else []

    return Prepared(
        config=config, model_class=model_class, state_dict=_renamed_state(state, chosen),
        flags=mapping_flags(chosen is not None), model_files=[],
        task="text-classification" if chosen else "fill-mask", source_format="fairseq", hyper_parameters=hyper,
        source_dtype=state[f"{PREFIX}.embed_tokens.weight"].dtype, notes=notes, write_extras=write_extras,
    )


def generator(config):
    """The token-type table fairseq lacks: one zero row (every token is type 0, adding zeros changes nothing)."""
    def build(name: str, key: str) -> torch.Tensor:
        if name != "zero_token_types":
            raise KeyError(name)
        return torch.zeros(config.type_vocab_size, config.hidden_size)

    return build


def original_checkpoint(config, state: dict, provenance: dict) -> dict:
    head = provenance.get("hyper_parameters", {}).get("classification_head")
    if head:
        prefix = HEAD_KEY + "."
        state = {(f"classification_heads.{head}.{k[len(prefix):]}" if k.startswith(prefix) else k): v
                 for k, v in state.items()}
    return _translation_checkpoint(config, state, provenance)


def describe(checkpoint: dict) -> dict:
    state = checkpoint["model"]
    args = model_arguments(checkpoint)
    names = head_names(state)
    return {
        "family": "fairseq RoBERTa / XLM-R",
        "arch": args.get("arch"),
        "bpe": _bpe_kind(checkpoint),
        "classification_heads": names,
        "structure": derive_structure(state, names[0] if len(names) == 1 else None),
        "stated": {k: args.get(k) for k in ("max_positions", "encoder_normalize_before", "layernorm_embedding",
                                             "untie_weights_roberta", "activation_fn", "pooler_activation_fn")
                   if k in args},
        "task": {k: v for k, v in task_arguments(checkpoint).items() if k in ("_name", "num_classes")},
        "weights": state,
        "baggage": {k: checkpoint[k] for k in ("last_optimizer_state", "optimizer_history", "extra_state", "criterion")
                    if checkpoint.get(k) is not None},
    }
