"""fairseq BART with a sentence classification head (``sentence_prediction`` task, ``classification_heads.NAME.*``)
into the stock ``BartForSequenceClassification``, no remote code.

Both classify from the decoder's hidden state at the last ``</s>`` of each row, the decoder reading the source
shifted right behind a ``</s>`` (fairseq: ``--add-prev-output-tokens`` rolls the row; transformers shifts it in
the model). Rows are padded on the right, where the two agree (positions; the decoder is causal, so what the shift
puts after the last ``</s>`` is never seen by it).

Stock BART holds one head. A checkpoint with several needs ``--head NAME``; the others are dropped with that
reason. The picked head is read under transformers' name (``classification_head.*``) and written back under its
own on export.
"""

from __future__ import annotations

import re
from pathlib import Path

from hfport.converters import fairseq_bart as fb
from hfport.converters.fairseq_translation import original_checkpoint as translation_checkpoint
from hfport.converters.fairseq_translation import regenerator  # noqa: F401  (same format)
from hfport.converters.ofa import model_arguments, task_arguments
from hfport.converters.pipeline import Prepared, reject_unused_options
from hfport.errors import ConfigError, UnsupportedCheckpointError

STATE_KEY = "model"
MAPPING = "fairseq_bart_cls"
REGENERATED = ("fairseq_version",)
HEAD = "classification_heads."
PICKED = "classification_head."  # transformers' module name, under which the picked head is read
HEAD_TENSORS = {"dense.weight", "dense.bias", "out_proj.weight", "out_proj.bias"}


def matches(checkpoint: dict) -> bool:
    if not fb.matches(checkpoint):
        return False
    state = checkpoint["model"]
    return any(k.startswith(HEAD) for k in state) and "encoder.layer_norm.weight" not in state


def head_names(state: dict) -> list[str]:
    return sorted({k[len(HEAD):].split(".", 1)[0] for k in state if k.startswith(HEAD)})


def pick_head(state: dict, head: str | None) -> str:
    names = head_names(state)
    if head is None and len(names) > 1:
        raise ConfigError(f"the checkpoint has {len(names)} classification heads ({', '.join(names)}); pass --head NAME "
                          "to pick the one BartForSequenceClassification keeps")
    picked = head if head is not None else names[0]
    if picked not in names:
        raise ConfigError(f"--head {picked}: the checkpoint's classification heads are {', '.join(names)}")
    parts = {k[len(HEAD) + len(picked) + 1:] for k in state if k.startswith(f"{HEAD}{picked}.")}
    if parts != HEAD_TENSORS:
        extra, lacking = sorted(parts - HEAD_TENSORS), sorted(HEAD_TENSORS - parts)
        raise UnsupportedCheckpointError(
            f"classification head {picked} is not a plain dense-tanh-out_proj head (" +
            "; ".join(s for s in (f"unexpected {', '.join(extra)}" if extra else "",
                                  f"lacking {', '.join(lacking)}" if lacking else "") if s) +
            "; spectral-norm heads are not converted)")
    return picked


def head_view(state: dict, picked: str) -> dict:
    """The state dict with the picked head under transformers' name; the other heads stay (the mapping drops them)."""
    prefix = f"{HEAD}{picked}."
    return {(PICKED + k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state.items()}


def label_names(dictionary: Path | None, count: int) -> dict[int, str] | None:
    """Class i is the i-th symbol of fairseq's label/dict.txt (the data-bin layout: input0/dict.txt beside it)."""
    if dictionary is None or Path(dictionary).parent.name != "input0":
        return None
    labels = Path(dictionary).parent.parent / "label" / "dict.txt"
    if not labels.is_file():
        return None
    symbols = fb.read_fairseq_dictionary(labels)[len(fb.SPECIALS):]
    if len(symbols) < count:
        raise ConfigError(f"{labels} lists {len(symbols)} labels; the head has {count} classes")
    return {i: symbols[i] for i in range(count)}


def build_config(args: dict, state: dict, picked: str, labels: dict[int, str] | None):
    body = {k: v for k, v in state.items() if not k.startswith(HEAD)}
    structure = fb.derive_structure(body)
    config = fb.build_config(args, structure)
    dense = tuple(state[f"{HEAD}{picked}.dense.weight"].shape)
    if dense != (structure["d_model"], structure["d_model"]):
        raise UnsupportedCheckpointError(f"classification head {picked}: inner dim {dense[0]} differs from d_model "
                                         f"{structure['d_model']} (stock BART's head is d_model wide)")
    if (args.get("pooler_activation_fn") or "tanh") != "tanh":
        raise UnsupportedCheckpointError(f"pooler activation {args['pooler_activation_fn']!r}: stock BART's head "
                                         "uses tanh")
    classes = int(state[f"{HEAD}{picked}.out_proj.weight"].shape[0])
    config.num_labels = classes
    config.id2label = labels or {i: f"LABEL_{i}" for i in range(classes)}
    config.label2id = {v: k for k, v in config.id2label.items()}
    config.classifier_dropout = float(args.get("pooler_dropout") or 0.0)
    config.architectures = ["BartForSequenceClassification"]
    return config


def prepare(checkpoint: dict, path: Path, *, bpe_dir=None, dictionary=None, head=None, **unused) -> Prepared:
    reject_unused_options(unused, "fairseq BART classifier")
    from transformers import BartForSequenceClassification

    state = checkpoint["model"]
    args = model_arguments(checkpoint)
    task = task_arguments(checkpoint)
    picked = pick_head(state, head)
    config = build_config(args, state, picked, label_names(dictionary, 0 if dictionary is None else
                                                         int(state[f"{HEAD}{picked}.out_proj.weight"].shape[0])))
    tokenizer = None
    if bpe_dir is not None or dictionary is not None:
        if bpe_dir is None or dictionary is None:
            raise ConfigError("a BART tokenizer needs both --bpe-dir (encoder.json, vocab.bpe) and --dict (dict.txt)")
        # sentence_prediction (and BART's other tasks) add <mask> after loading the dictionary
        appended = ("<mask>",) if task.get("_name") in ("sentence_prediction", "denoising") else ()
        tokenizer = fb.bart_tokenizer(Path(bpe_dir), Path(dictionary), config.vocab_size, appended)
    others = [n for n in head_names(state) if n != picked]
    notes = [f"fairseq BART + classification head {picked} -> stock BartForSequenceClassification",
             "classifies from the decoder state at the last </s>; pad on the right, every row with the same number of </s>"]
    if others:
        notes.append(f"other heads dropped ({', '.join(others)}): stock BART holds one")

    def write_extras(folder: Path) -> list[str]:
        return [Path(p).name for p in tokenizer.save_pretrained(folder)] if tokenizer is not None else []

    return Prepared(
        config=config, model_class=BartForSequenceClassification, state_dict=head_view(state, picked),
        flags={}, model_files=[], task="text-classification", source_format="fairseq",
        hyper_parameters={"model": args, "task": task, "classification_head": picked},
        source_dtype=state["encoder.embed_tokens.weight"].dtype, notes=notes, write_extras=write_extras,
    )


def original_checkpoint(config, state: dict, provenance: dict) -> dict:
    picked = provenance.get("hyper_parameters", {}).get("classification_head")
    if not isinstance(picked, str) or not re.fullmatch(r"[\w\-]+", picked):
        raise ConfigError("hfport.json does not name the fairseq classification head (hyper_parameters."
                          "classification_head)")
    renamed = {(f"{HEAD}{picked}." + k[len(PICKED):] if k.startswith(PICKED) else k): v for k, v in state.items()}
    return translation_checkpoint(config, renamed, provenance)


def describe(checkpoint: dict) -> dict:
    state = checkpoint["model"]
    body = {k: v for k, v in state.items() if not k.startswith(HEAD)}
    return {
        "family": "fairseq BART classifier",
        "arch": model_arguments(checkpoint).get("arch"),
        "structure": fb.derive_structure(body),
        "heads": {n: list(state[f"{HEAD}{n}.out_proj.weight"].shape)[:1] if f"{HEAD}{n}.out_proj.weight" in state
                  else None for n in head_names(state)},
        "task": {k: v for k, v in task_arguments(checkpoint).items()
                 if k in ("_name", "num_classes", "classification_head_name", "init_token", "separator_token")},
        "weights": state,
        "baggage": {k: checkpoint[k] for k in ("last_optimizer_state", "optimizer_history", "extra_state", "criterion")
                    if checkpoint.get(k) is not None},
    }
