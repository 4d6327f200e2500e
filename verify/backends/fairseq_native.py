"""fairseq's own model families (translation transformer, ...) as the reference: load, trace, generate.

Runs in the original environment (torch + fairseq, no transformers), Python >= 3.8. The model is loaded the way
fairseq users load it, `checkpoint_utils.load_model_ensemble_and_task`, with the task's data folder (the one
holding dict.*.txt) passed as `data`; generation is fairseq's `SequenceGenerator`.

Golden layout: format_version 1 (as OFA's), plus "family". Traces hold what both sides compute: the input of
every encoder / decoder layer (`encoder_hidden_states.i`, `decoder_inner_states.i`), the encoder output (after the
final LayerNorm of pre-norm models), the decoder features before the output projection, and the logits.
"""

import os
from collections import OrderedDict
from typing import Any, Dict, List

import torch

GENERATION_DEFAULTS = dict(max_len_a=0, normalize_scores=True, len_penalty=1.0, unk_penalty=0.0, temperature=1.0,
                           match_source_len=False, no_repeat_ngram_size=0)


def load(checkpoint: str, data_dir: str):
    import argparse

    from fairseq import checkpoint_utils

    overrides = {"data": data_dir}
    extra = os.path.join(data_dir, "task_overrides.json")  # e.g. the language pair a data folder cannot tell
    if os.path.isfile(extra):
        import json

        with open(extra) as f:
            overrides.update(json.load(f))
    # fairseq 0.12 calls torch.load without weights_only; torch >= 2.6 then allows only allowlisted globals
    with torch.serialization.safe_globals([argparse.Namespace]):
        models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([checkpoint], arg_overrides=overrides)
    return models[0].float().eval(), task, cfg


def _t(x: torch.Tensor) -> torch.Tensor:
    """fairseq's time-first (T, B, C) as batch-first fp32."""
    return x.transpose(0, 1).float().clone()


def gpt2_bpe(data_dir: str):
    """fairseq's GPT-2 BPE encoder when the data folder holds encoder.json + vocab.bpe, else None."""
    files = [os.path.join(data_dir, f) for f in ("encoder.json", "vocab.bpe")]
    if not all(os.path.isfile(f) for f in files):
        return None
    from fairseq.data.encoders.gpt2_bpe_utils import get_encoder

    return get_encoder(*files)


def encode_sentences(task: Any, sentences: List[str], bpe=None) -> List[List[int]]:
    """Token ids as fairseq makes them: word-level dictionary lookup, or (BPE) BART's hub interface encoding,
    `<s> ` + GPT-2 BPE ids + ` </s>` through the dictionary."""
    d = task.source_dictionary
    if bpe is None:
        return [d.encode_line(s, add_if_not_exist=False, append_eos=True).long().tolist() for s in sentences]
    return [[d.bos()] + d.encode_line(" ".join(map(str, bpe.encode(s))), add_if_not_exist=False,
                                      append_eos=True).long().tolist() for s in sentences]


def translation_probes(task: Any, rows: List[List[int]], left: bool) -> Dict[str, torch.Tensor]:
    """Token rows padded the way the model is fed: the translation task left-pads (`left_pad_source`); BART's
    hub interface pads right."""
    src_dict = task.source_dictionary
    rows = [torch.tensor(r) for r in rows]
    width = max(len(r) for r in rows)
    tokens = torch.full((len(rows), width), src_dict.pad(), dtype=torch.long)
    for i, r in enumerate(rows):
        if left:
            tokens[i, width - len(r):] = r
        else:
            tokens[i, :len(r)] = r
    return {"src_tokens": tokens, "src_lengths": torch.tensor([len(r) for r in rows])}


def teacher_forcing_inputs(task: Any, hypotheses: List[List[int]]) -> torch.Tensor:
    """prev_output_tokens for a forward pass: </s> then the hypothesis without its final </s>, right-padded
    (fairseq's `left_pad_target` default)."""
    d = task.target_dictionary
    rows = [[d.eos()] + h[:-1] for h in hypotheses]
    width = max(len(r) for r in rows)
    return torch.tensor([r + [d.pad()] * (width - len(r)) for r in rows], dtype=torch.long)


def outputs(model: Any, inputs: Dict[str, torch.Tensor]) -> "OrderedDict[str, Any]":
    if hasattr(model, "set_beam_size"):  # a SequenceGenerator run leaves its beam size in the attention modules
        model.set_beam_size(1)
    with torch.no_grad():
        enc = model.encoder(inputs["src_tokens"], src_lengths=inputs["src_lengths"], return_all_hiddens=True)
        logits, extra = model.decoder(inputs["prev_output_tokens"], encoder_out=enc, return_all_hiddens=True)
        features, _ = model.decoder(inputs["prev_output_tokens"], encoder_out=enc, features_only=True)
    n_enc = len(model.encoder.layers)
    n_dec = len(model.decoder.layers)
    return OrderedDict([
        ("encoder_hidden_states", [_t(s) for s in enc["encoder_states"][:n_enc]]),
        ("encoder_out", _t(enc["encoder_out"][0])),
        ("encoder_padding_mask", enc["encoder_padding_mask"][0].clone()),
        ("decoder_inner_states", [_t(s) for s in extra["inner_states"][:n_dec]]),
        ("decoder_features", features.float().clone()),
        ("logits", logits.float().clone()),
    ])


def generate_run(model: Any, task: Any, inputs: Dict[str, torch.Tensor], beam_size: int, max_len_b: int,
                 min_len: int = 1) -> Dict[str, Any]:
    from fairseq.sequence_generator import SequenceGenerator

    kwargs = dict(GENERATION_DEFAULTS, beam_size=beam_size, max_len_b=max_len_b, min_len=min_len)
    generator = SequenceGenerator([model], task.target_dictionary, **kwargs)
    net_input = {k: inputs[k] for k in ("src_tokens", "src_lengths")}
    with torch.no_grad():
        hypos = generator.generate([model], {"net_input": net_input})
    best = [sample[0] for sample in hypos]
    d = task.target_dictionary
    return {
        "settings": dict(kwargs, search="BeamSearch", eos=d.eos(), pad=d.pad(), first_decoder_token=d.eos(),
                         call="SequenceGenerator([model], tgt_dict, **kwargs).generate([model], {'net_input': ...})"),
        "tokens": [h["tokens"].tolist() for h in best],
        "scores": [float(h["score"]) for h in best],
        "positional_scores": [h["positional_scores"].tolist() for h in best],
    }


def record_translation(checkpoint: str, data_dir: str, beams=(1, 4), max_len_b: int = 12, sets=None) -> Dict[str, Any]:
    """The golden dict of a fairseq translation checkpoint on the sentences in `data_dir`/probes.txt, or on the
    source token rows of `sets["inputs"]` (a live verification's probes; padded as the task pads them)."""
    model, task, cfg = load(checkpoint, data_dir)
    is_bart = type(model).__name__.startswith("BART")
    left = bool(getattr(task.cfg, "left_pad_source", True)) and not is_bart
    if sets is None:
        with open(os.path.join(data_dir, "probes.txt")) as f:
            sentences = [line.strip() for line in f if line.strip()]
        bpe = gpt2_bpe(data_dir)
        rows = encode_sentences(task, sentences, bpe)
    else:
        if list(sets) != ["inputs"]:
            raise ValueError("fairseq translation input sets: one set named 'inputs', not {}".format(list(sets)))
        pad = task.source_dictionary.pad()
        sentences = None
        rows = [[int(t) for t in row if int(t) != pad] for row in sets["inputs"]["src_tokens"]]
    inputs = translation_probes(task, rows, left)
    generation = OrderedDict()
    for beam in beams:
        name = "greedy" if beam == 1 else "beam{}".format(beam)
        generation[name] = generate_run(model, task, inputs, beam, max_len_b)
    inputs["prev_output_tokens"] = teacher_forcing_inputs(task, generation["greedy"]["tokens"])
    generation["note"] = ("tokens exclude the leading decoder-start token (</s>) and end with </s> unless the "
                          "length limit forced it")
    d = task.source_dictionary
    golden = OrderedDict([
        ("format_version", 1), ("family", "fairseq_bart" if is_bart else "fairseq_translation"),
        ("pad_side", "left" if left else "right"),
        ("inputs", inputs), ("outputs", outputs(model, inputs)), ("generation", generation),
    ])
    golden["meta"] = {
        "sentences": sentences,
        "tokenizer_ids": rows if sentences is not None else None,  # what fairseq makes of each sentence (the converted tokenizer must agree)
        "arch": getattr(cfg.model, "arch", None) or getattr(cfg.model, "_name", None),
        "special_ids": {"bos": d.bos(), "pad": d.pad(), "eos": d.eos(), "unk": d.unk()},
        "dict_size": {"source": len(task.source_dictionary), "target": len(task.target_dictionary)},
        "outputs_computed_with": "checkpoint_utils.load_model_ensemble_and_task(...)[0].float().eval(), fp32, no_grad",
    }
    return golden


# -- the recorder's entry points (hfport.family.BUILTIN_FAMILIES names this module) ------------------------------

TRANSLATION_ARCHS = ("transformer", "transformer_iwslt_de_en", "transformer_wmt_en_de", "transformer_vaswani_wmt_en_de_big",
                     "transformer_vaswani_wmt_en_fr_big", "transformer_wmt_en_de_big", "transformer_wmt_en_de_big_t2t",
                     "transformer_tiny")


def _arch(peeked: Any) -> Any:
    if not isinstance(peeked, dict):
        return None
    cfg = peeked.get("cfg")
    model = cfg.get("model") if isinstance(cfg, dict) else None
    if isinstance(model, dict):
        return model.get("arch") or model.get("_name")
    return None  # a Namespace is opaque to the peek: pass --family


def looks_like(checkpoint: str) -> bool:
    from hfport.read.peek import peek_checkpoint

    return _arch(peek_checkpoint(checkpoint)) in TRANSLATION_ARCHS


def record_golden(checkpoint: str, data_dir: str, sets=None, options=None) -> Dict[str, Any]:
    """The recorder's entry point: `data_dir` (--reference-code) is the task's data folder (dict.*.txt,
    probes.txt, one source sentence a line)."""
    from hfport.read.torch_file import file_sha256
    from hfport.verify.record import RECORDER, _versions

    golden = record_translation(checkpoint, data_dir, sets=sets)
    golden["meta"].update(recorder=RECORDER, checkpoint_sha256=file_sha256(checkpoint), versions=_versions(["fairseq"]),
                          torch_num_threads=torch.get_num_threads())
    return golden
