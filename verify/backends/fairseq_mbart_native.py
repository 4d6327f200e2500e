"""fairseq's mBART (translation_from_pretrained_bart) as the reference: the recorder half, run in fairseq's
environment (torch + fairseq + sentencepiece, no transformers), Python >= 3.8.

Sources are encoded as fairseq's hub interface and the task do it: SentencePiece pieces through fairseq's
`SentencepieceBPE`, the dictionary (`</s>` appended), then `[src_lang]` (the task's build_dataset_for_inference).
Rows are padded on the right (stock MBart's positions need it). Generation is the task's own `build_generator`:
its eos is `[tgt_lang]`, which also starts decoding.
"""

import argparse
import json
import os
from collections import OrderedDict
from typing import Any, Dict, List

import torch

from hfport.verify.backends import fairseq_native as fn


def spm_model(data_dir: str) -> str:
    models = sorted(f for f in os.listdir(data_dir) if f.endswith(".model"))
    if len(models) != 1:
        raise ValueError("{}: needs exactly one SentencePiece *.model (found {})".format(data_dir, len(models)))
    return os.path.join(data_dir, models[0])


def encoder(data_dir: str):
    from fairseq.data.encoders.sentencepiece_bpe import SentencepieceBPE, SentencepieceConfig

    return SentencepieceBPE(SentencepieceConfig(sentencepiece_model=spm_model(data_dir)))


def encode(task: Any, bpe: Any, sentences: List[str]) -> List[List[int]]:
    d = task.source_dictionary
    lang = d.index("[{}]".format(task.args.source_lang))
    return [d.encode_line(bpe.encode(s), add_if_not_exist=False, append_eos=True).long().tolist() + [lang]
            for s in sentences]


def generate_run(model: Any, task: Any, inputs: Dict[str, torch.Tensor], beam: int, max_len_b: int) -> Dict[str, Any]:
    options = argparse.Namespace(beam=beam, max_len_a=0, max_len_b=max_len_b, min_len=1, lenpen=1, unkpen=0,
                                 temperature=1.0, match_source_len=False, no_repeat_ngram_size=0)
    generator = task.build_generator([model], options)
    net_input = {k: inputs[k] for k in ("src_tokens", "src_lengths")}
    with torch.no_grad():
        hypos = generator.generate([model], {"net_input": net_input})
    best = [sample[0] for sample in hypos]
    return {
        "settings": dict(fn.GENERATION_DEFAULTS, beam_size=beam, max_len_b=max_len_b, min_len=1,
                         search="BeamSearch", eos=generator.eos, pad=task.target_dictionary.pad(),
                         first_decoder_token=generator.eos,
                         call="task.build_generator([model], args).generate([model], {'net_input': ...})"),
        "tokens": [h["tokens"].tolist() for h in best],
        "scores": [float(h["score"]) for h in best],
        "positional_scores": [h["positional_scores"].tolist() for h in best],
    }


def record_mbart(checkpoint: str, data_dir: str, beams=(1, 4), max_len_b: int = 40) -> Dict[str, Any]:
    model, task, cfg = fn.load(checkpoint, data_dir)
    if not hasattr(task, "args"):  # fairseq 0.12's task reads self.args, which its base class no longer sets
        task.args = task.cfg
    bpe = encoder(data_dir)
    with open(os.path.join(data_dir, "probes.txt")) as f:
        sentences = [line.strip() for line in f if line.strip()]
    rows = encode(task, bpe, sentences)
    inputs = fn.translation_probes(task, rows, left=False)
    generation = OrderedDict()
    for beam in beams:
        generation["greedy" if beam == 1 else "beam{}".format(beam)] = generate_run(model, task, inputs, beam, max_len_b)
    start = generation["greedy"]["settings"]["eos"]
    width = max(len(h) for h in generation["greedy"]["tokens"])
    prev = [[start] + h[:-1] for h in generation["greedy"]["tokens"]]
    inputs["prev_output_tokens"] = torch.tensor([r + [task.target_dictionary.pad()] * (width - len(r)) for r in prev])
    generation["note"] = ("tokens exclude the leading decoder-start token ([tgt_lang]) and end with [tgt_lang] "
                          "(the generator's eos) unless the length limit forced it")
    strings_file = os.path.join(data_dir, "tokenizer_strings.json")
    strings = sentences
    if os.path.isfile(strings_file):
        with open(strings_file, encoding="utf-8") as f:
            strings = json.load(f)
    d = task.source_dictionary
    golden = OrderedDict([("format_version", 1), ("family", "fairseq_mbart"), ("pad_side", "right"),
                          ("inputs", inputs), ("outputs", fn.outputs(model, inputs)), ("generation", generation)])
    golden["meta"] = {
        "sentences": sentences,
        "tokenizer_ids": rows,
        "tokenizer_strings": strings,
        "tokenizer_strings_ids": encode(task, bpe, strings),  # what fairseq makes of each string
        "arch": getattr(cfg.model, "arch", None),
        "special_ids": {"bos": d.bos(), "pad": d.pad(), "eos": d.eos(), "unk": d.unk(),
                        "source_lang": d.index("[{}]".format(task.args.source_lang)),
                        "target_lang": d.index("[{}]".format(task.args.target_lang))},
        "dict_size": {"source": len(task.source_dictionary), "target": len(task.target_dictionary)},
        "outputs_computed_with": "checkpoint_utils.load_model_ensemble_and_task(...)[0].float().eval(), fp32, no_grad",
    }
    return golden


def looks_like(checkpoint: str) -> bool:
    from hfport.read.peek import peek_checkpoint

    arch = fn._arch(peek_checkpoint(checkpoint))
    return isinstance(arch, str) and arch.startswith("mbart")


def record_golden(checkpoint: str, data_dir: str, sets=None, options=None) -> Dict[str, Any]:
    """`data_dir` (--reference-code): dict.{src,tgt}.txt, the SentencePiece *.model, probes.txt,
    task_overrides.json (the language pair), optionally tokenizer_strings.json (a JSON list of strings)."""
    from hfport.read.torch_file import file_sha256
    from hfport.verify.record import RECORDER, _versions

    if sets is not None:
        raise ValueError("fairseq mBART goldens are recorded on the sentences of probes.txt, not --inputs")
    golden = record_mbart(checkpoint, data_dir)
    golden["meta"].update(recorder=RECORDER, checkpoint_sha256=file_sha256(checkpoint),
                          versions=_versions(["fairseq", "sentencepiece"]), torch_num_threads=torch.get_num_threads())
    return golden
