"""fairseq RoBERTa / XLM-R as the reference: load with fairseq's own code, encode text as its hub interface does,
record every hidden state and the masked-LM or classification logits.

Runs in the original environment (torch + fairseq, no transformers), Python >= 3.8. `--reference-code` is the
task's data folder: `input0/dict.txt` (and `label/dict.txt` for sentence_prediction checkpoints), the tokenizer
files (`encoder.json` + `vocab.bpe`, or one SentencePiece `*.model`), `probes.txt` (one sentence a line) and
optionally `tokenizer_sentences.json` (strings whose fairseq ids the converted tokenizer must reproduce).

Golden layout (format_version 1, family "fairseq_roberta"): inputs {src_tokens} right-padded as the hub interface
batches them (`<s> … </s>`, the last probe row with a `<mask>`); outputs {hidden_states: [embedding output, output
of each layer], logits (masked LM, every position) | classification_logits}.
"""

import glob
import json
import os
from collections import OrderedDict
from typing import Any, Dict, List

import torch

from hfport.verify.backends.fairseq_native import load


def _data_folder(data_dir: str, task_name: str) -> str:
    """sentence_prediction reads data/input0/dict.txt itself; masked_lm reads data/dict.txt."""
    if task_name != "sentence_prediction" and os.path.isfile(os.path.join(data_dir, "input0", "dict.txt")):
        return os.path.join(data_dir, "input0")
    return data_dir


def fairseq_bpe(data_dir: str):
    """fairseq's own BPE object for the tokenizer files in the data folder."""
    spm = glob.glob(os.path.join(data_dir, "*.model"))
    if len(spm) == 1:
        from fairseq.data.encoders.sentencepiece_bpe import SentencepieceBPE, SentencepieceConfig

        return SentencepieceBPE(SentencepieceConfig(sentencepiece_model=spm[0]))
    from fairseq.data.encoders.gpt2_bpe import GPT2BPE, GPT2BPEConfig

    return GPT2BPE(GPT2BPEConfig(gpt2_encoder_json=os.path.join(data_dir, "encoder.json"),
                                 gpt2_vocab_bpe=os.path.join(data_dir, "vocab.bpe")))


def hub_encoder(model: Any, task: Any, cfg: Any, bpe: Any):
    """RobertaHubInterface.encode, the call users make (`<s> ` + BPE + ` </s>` through the dictionary), without the
    interface's own BPE construction (whose paths point at the training machine)."""
    from fairseq.models.roberta.hub_interface import RobertaHubInterface

    hub = RobertaHubInterface.__new__(RobertaHubInterface)
    torch.nn.Module.__init__(hub)
    hub.cfg, hub.task, hub.bpe, hub.model = cfg, task, bpe, model
    return lambda sentence: hub.encode(sentence).tolist()


def _padded(rows: List[List[int]], pad: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([r + [pad] * (width - len(r)) for r in rows], dtype=torch.long)


def record_roberta(checkpoint: str, data_dir: str, head: Any = None) -> Dict[str, Any]:
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    cfg_task = (state.get("cfg") or {}).get("task") or {}
    task_name = cfg_task.get("_name") if isinstance(cfg_task, dict) else getattr(cfg_task, "_name", None)
    heads = sorted({k.split(".")[1] for k in state["model"] if k.startswith("classification_heads.")})
    del state
    if head is None and len(heads) > 1:
        raise ValueError("the checkpoint has heads {}; pass the head to record".format(", ".join(heads)))
    head = head or (heads[0] if heads else None)
    model, task, cfg = load(checkpoint, _data_folder(data_dir, task_name))
    encode = hub_encoder(model, task, cfg, fairseq_bpe(data_dir))
    d = task.source_dictionary
    with open(os.path.join(data_dir, "probes.txt")) as f:
        sentences = [line.strip() for line in f if line.strip()]
    rows = [encode(s) for s in sentences]
    masked = list(rows[0])
    masked[2] = d.index("<mask>")  # a masked position, what the MLM head is for
    tokens = _padded(rows + [masked], d.pad())
    with torch.no_grad():
        features, extra = model(tokens, features_only=True, return_all_hiddens=True)
        outputs = OrderedDict([("hidden_states", [s.transpose(0, 1).float().clone() for s in extra["inner_states"]])])
        if head is None:
            outputs["logits"] = model.encoder.output_layer(features).float().clone()
        else:
            outputs["classification_logits"] = model.classification_heads[head](features).float().clone()
    corpus_file = os.path.join(data_dir, "tokenizer_sentences.json")
    corpus = json.load(open(corpus_file, encoding="utf-8")) if os.path.isfile(corpus_file) else []
    golden = OrderedDict([
        ("format_version", 1), ("family", "fairseq_roberta"), ("pad_side", "right"),
        ("inputs", {"src_tokens": tokens}), ("outputs", outputs),
    ])
    golden["meta"] = {
        "sentences": sentences, "tokenizer_ids": rows,
        "tokenizer_corpus": {"sentences": corpus, "ids": [encode(s) for s in corpus]},
        "head": head, "task": task_name, "mask_row": len(rows), "mask_position": 2,
        "arch": getattr(cfg.model, "arch", None) or getattr(cfg.model, "_name", None),
        "special_ids": {"bos": d.bos(), "pad": d.pad(), "eos": d.eos(), "unk": d.unk(), "mask": d.index("<mask>")},
        "dict_size": len(d),
        "outputs_computed_with": "checkpoint_utils.load_model_ensemble_and_task(...)[0].float().eval(), fp32, "
                                 "no_grad; model(tokens, features_only=True, return_all_hiddens=True), then "
                                 "encoder.output_layer or classification_heads[head]",
    }
    return golden


# -- the recorder's entry points (hfport.family.BUILTIN_FAMILIES names this module) ------------------------------

ARCHS = ("roberta", "roberta_base", "roberta_large", "xlm")


def looks_like(checkpoint: str) -> bool:
    from hfport.read.peek import peek_checkpoint
    from hfport.verify.backends.fairseq_native import _arch

    return _arch(peek_checkpoint(checkpoint)) in ARCHS


def record_golden(checkpoint: str, data_dir: str, sets=None, options=None) -> Dict[str, Any]:
    from hfport.read.torch_file import file_sha256
    from hfport.verify.record import RECORDER, _versions

    if sets is not None:
        raise ValueError("fairseq RoBERTa goldens are recorded on the sentences of probes.txt, not --inputs")
    golden = record_roberta(checkpoint, data_dir, (options or {}).get("head"))
    golden["meta"].update(recorder=RECORDER, checkpoint_sha256=file_sha256(checkpoint), versions=_versions(["fairseq"]),
                          torch_num_threads=torch.get_num_threads())
    return golden
