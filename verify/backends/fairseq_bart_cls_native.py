"""fairseq's BART sentence classifier (sentence_prediction task) as the reference: the recorder half, run in
fairseq's environment (torch + fairseq, no transformers), Python >= 3.8.

Sources as the task builds them: `<s>` (--init-token 0) + GPT-2 BPE ids + `</s>`, right-padded; the decoder input
is each row rolled by one (--add-prev-output-tokens), right-padded. The class logits are the model's forward with
`classification_head_name`, which reads the decoder state at the last `</s>` of each row.
"""

import os
from collections import OrderedDict
from typing import Any, Dict

import torch

from hfport.verify.backends import fairseq_native as fn


def record_classifier(checkpoint: str, data_dir: str) -> Dict[str, Any]:
    model, task, cfg = fn.load(checkpoint, data_dir)
    with open(os.path.join(data_dir, "probes.txt")) as f:
        sentences = [line.strip() for line in f if line.strip()]
    bpe = fn.gpt2_bpe(data_dir)
    rows = fn.encode_sentences(task, sentences, bpe)  # <s> + BPE ids + </s>
    d = task.source_dictionary
    inputs = fn.translation_probes(task, rows, left=False)
    width = inputs["src_tokens"].shape[1]
    rolled = [[r[-1]] + r[:-1] for r in rows]
    inputs["prev_output_tokens"] = torch.tensor([r + [d.pad()] * (width - len(r)) for r in rolled])
    outputs = fn.outputs(model, inputs)
    del outputs["logits"]  # the language-model projection: not part of a classifier
    heads = sorted(model.classification_heads)
    with torch.no_grad():
        logits, _ = model(inputs["src_tokens"], inputs["src_lengths"], inputs["prev_output_tokens"],
                          features_only=True, classification_head_name=heads[0])
    outputs["classification_logits"] = logits.float().clone()
    golden = OrderedDict([("format_version", 1), ("family", "fairseq_bart_cls"), ("pad_side", "right"),
                          ("inputs", inputs), ("outputs", outputs), ("generation", OrderedDict())])
    golden["meta"] = {
        "sentences": sentences,
        "tokenizer_ids": rows,
        "classification_head": heads[0],
        "predicted": logits.argmax(-1).tolist(),
        "arch": getattr(cfg.model, "arch", None),
        "special_ids": {"bos": d.bos(), "pad": d.pad(), "eos": d.eos(), "unk": d.unk()},
        "dict_size": {"source": len(d), "labels": len(task.label_dictionary)},
        "outputs_computed_with": "checkpoint_utils.load_model_ensemble_and_task(...)[0].float().eval(), fp32, no_grad",
    }
    return golden


def looks_like(checkpoint: str) -> bool:
    return False  # the peek cannot tell a classifier from BART: pass --family fairseq_bart_cls


def record_golden(checkpoint: str, data_dir: str, sets=None, options=None) -> Dict[str, Any]:
    """`data_dir` (--reference-code): input0/dict.txt, label/dict.txt, encoder.json + vocab.bpe, probes.txt."""
    from hfport.read.torch_file import file_sha256
    from hfport.verify.record import RECORDER, _versions

    if sets is not None:
        raise ValueError("fairseq BART classifier goldens are recorded on the sentences of probes.txt, not --inputs")
    golden = record_classifier(checkpoint, data_dir)
    golden["meta"].update(recorder=RECORDER, checkpoint_sha256=file_sha256(checkpoint), versions=_versions(["fairseq"]),
                          torch_num_threads=torch.get_num_threads())
    return golden
