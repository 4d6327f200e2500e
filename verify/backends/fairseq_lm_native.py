"""fairseq's language model (transformer_lm*) as the reference: load, score, generate.

Runs in the original environment (torch + fairseq, no transformers), Python >= 3.8. Loading is fairseq's
`checkpoint_utils.load_model_ensemble_and_task` with the task's data folder (dict.txt) as `data`.

Inputs follow fairseq's language_modeling inference convention (`build_dataset_for_inference`): every row is
``</s>`` (``<s>`` with --add-bos-token) + the sentence's ids, no trailing ``</s>``, right-padded. Generation is
fairseq's `SequenceGenerator` with the prompt as prefix tokens, exactly what the task's `inference_step` (and so
`hub_utils`' `sample`/`generate`) does: the prompt is forced, the continuation searched, and a hypothesis's tokens
are the prompt + continuation + ``</s>`` (the leading ``</s>`` excluded).

Sets: ``inputs`` (a scoring batch), ``inputs_p<k>`` (one prompt each, greedy), ``inputs_bos`` (only the start
token, greedy and beam 4). Beam search runs from the start token only: with a prompt, fairseq scores a hypothesis by
the log-probabilities of prompt + continuation over their joint length, transformers by the continuation's alone,
so the best hypothesis can differ (it does on this repository's tiny LM: "a small cat likes", beam 4).
"""

import os
from collections import OrderedDict
from typing import Any, Dict, List

import torch

from hfport.verify.backends.fairseq_native import GENERATION_DEFAULTS, _t, load


def _start(task: Any) -> int:
    d = task.source_dictionary
    return d.bos() if getattr(task.cfg, "add_bos_token", False) else d.eos()


def encode(task: Any, sentences: List[str]) -> List[List[int]]:
    """Each sentence as the task feeds it: start token + dictionary ids (fairseq's encode_line, no </s>)."""
    d = task.source_dictionary
    return [[_start(task)] + d.encode_line(s, add_if_not_exist=False, append_eos=False).long().tolist()
            for s in sentences]


def batch(task: Any, rows: List[List[int]]) -> Dict[str, torch.Tensor]:
    pad = task.source_dictionary.pad()
    width = max(len(r) for r in rows)
    tokens = torch.tensor([r + [pad] * (width - len(r)) for r in rows], dtype=torch.long)
    return {"src_tokens": tokens, "src_lengths": tokens.ne(pad).sum(1)}


def outputs(model: Any, inputs: Dict[str, torch.Tensor]) -> "OrderedDict[str, Any]":
    decoder = model.decoder
    with torch.no_grad():
        logits, extra = decoder(inputs["src_tokens"], return_all_hiddens=True)
        features, _ = decoder(inputs["src_tokens"], features_only=True)
    n = len(decoder.layers)
    return OrderedDict([
        ("decoder_inner_states", [_t(s) for s in extra["inner_states"][:n]]),  # the input of every layer
        ("decoder_features", features.float().clone()),  # after the final LayerNorm, before the projection
        ("logits", logits.float().clone()),
    ])


def generate_run(model: Any, task: Any, inputs: Dict[str, torch.Tensor], beam_size: int, max_len_b: int,
                 min_len: int = 1) -> Dict[str, Any]:
    from fairseq.sequence_generator import SequenceGenerator

    kwargs = dict(GENERATION_DEFAULTS, beam_size=beam_size, max_len_b=max_len_b, min_len=min_len)
    generator = SequenceGenerator([model], task.target_dictionary, **kwargs)
    sample = {"net_input": {k: inputs[k] for k in ("src_tokens", "src_lengths")}}
    prefix = inputs["src_tokens"][:, 1:]
    with torch.no_grad():
        # the task's own inference step: it drops the start token and forces the rest as the prefix
        hypos = task.inference_step(generator, [model], sample, prefix_tokens=prefix if prefix.numel() else None)
    best = [h[0] for h in hypos]
    return {
        "settings": dict(kwargs, search="BeamSearch", start=_start(task), eos=task.target_dictionary.eos(),
                         call="task.inference_step(SequenceGenerator([model], dict, **kwargs), [model], sample, "
                              "prefix_tokens=src_tokens[:, 1:])"),
        "tokens": [h["tokens"].tolist() for h in best],
        "scores": [float(h["score"]) for h in best],
    }


def _read_lines(path: str) -> List[str]:
    with open(path) as f:
        return [line.strip() for line in f if line.strip()]


def record_language_model(checkpoint: str, data_dir: str, sets=None, max_len_b: int = 12) -> Dict[str, Any]:
    model, task, cfg = load(checkpoint, data_dir)
    meta: Dict[str, Any] = {}
    if sets is None:
        sentences = _read_lines(os.path.join(data_dir, "probes.txt"))
        prompts = _read_lines(os.path.join(data_dir, "prompts.txt")) if os.path.isfile(
            os.path.join(data_dir, "prompts.txt")) else []
        rows = encode(task, sentences)
        sets = OrderedDict([("inputs", batch(task, rows))])
        for k, row in enumerate(encode(task, prompts)):
            sets["inputs_p{}".format(k)] = batch(task, [row])
        sets["inputs_bos"] = batch(task, [[_start(task)]])
        meta.update(sentences=sentences, tokenizer_ids=rows, prompts=prompts)
    golden = OrderedDict([("format_version", 1), ("family", "fairseq_lm"), ("pad_side", "right")])
    generation = OrderedDict()
    for name, inputs in sets.items():
        inputs = {"src_tokens": inputs["src_tokens"],
                  "src_lengths": inputs["src_tokens"].ne(task.source_dictionary.pad()).sum(1)}
        suffix = name[len("inputs"):]
        golden[name] = inputs
        golden["outputs" + suffix] = outputs(model, inputs)
        if inputs["src_tokens"].shape[0] == 1:  # generation runs one prompt at a time
            generation["greedy" + suffix] = generate_run(model, task, inputs, 1, max_len_b)
            if inputs["src_tokens"].shape[1] == 1:
                generation["beam4" + suffix] = generate_run(model, task, inputs, 4, max_len_b)
    generation["note"] = ("tokens are the prompt + continuation + </s> (the leading start token excluded); fairseq "
                          "forces </s> at max_len_b + 1 tokens")
    golden["generation"] = generation
    d = task.source_dictionary
    meta.update({
        "arch": getattr(cfg.model, "arch", None) or getattr(cfg.model, "_name", None),
        "special_ids": {"bos": d.bos(), "pad": d.pad(), "eos": d.eos(), "unk": d.unk(), "start": _start(task)},
        "dict_size": {"source": len(d), "target": len(task.target_dictionary)},
        "outputs_computed_with": "checkpoint_utils.load_model_ensemble_and_task(...)[0].float().eval(), fp32, no_grad",
    })
    golden["meta"] = meta
    return golden


LM_ARCH_PREFIX = "transformer_lm"


def looks_like(checkpoint: str) -> bool:
    from hfport.read.peek import peek_checkpoint
    from hfport.verify.backends.fairseq_native import _arch

    arch = _arch(peek_checkpoint(checkpoint))
    return isinstance(arch, str) and arch.startswith(LM_ARCH_PREFIX)


def record_golden(checkpoint: str, data_dir: str, sets=None, options=None) -> Dict[str, Any]:
    """The recorder's entry point: `data_dir` (--reference-code) is the task's data folder (dict.txt, and
    probes.txt / prompts.txt when no input sets are given)."""
    from hfport.read.torch_file import file_sha256
    from hfport.verify.record import RECORDER, _versions

    golden = record_language_model(checkpoint, data_dir, sets)
    golden["meta"].update(recorder=RECORDER, checkpoint_sha256=file_sha256(checkpoint), versions=_versions(["fairseq"]),
                          torch_num_threads=torch.get_num_threads())
    return golden
