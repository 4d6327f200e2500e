"""fairseq's RoBERTa and XLM-R as an hfport family: stock (XLM)RobertaForMaskedLM / ...ForSequenceClassification and
a stock tokenizer with fairseq's ids. Conversion in `fairseq_roberta`, tokenizers in `fairseq_roberta_tokenizer`,
the recorder is `verify/backends/fairseq_roberta_native`."""

from __future__ import annotations

from collections import OrderedDict

import torch

from hfport.converters import fairseq_roberta as fr
from hfport.errors import CheckpointError, ConfigError
from hfport.family import BaseFamily, register_family
from hfport.verify.compare import compare_tensors, missing_from_trace
from hfport.verify.golden import Golden, add_to_trace

PAD_ID = 1


class FairseqRobertaFamily(BaseFamily):
    name = "fairseq_roberta"
    title = "fairseq RoBERTa / XLM-R"
    model_types = ()  # stock roberta / xlm-roberta folders are not claimed without hfport.json
    converter = fr
    state_key = fr.STATE_KEY
    mapping = fr.MAPPING
    regenerated = fr.REGENERATED
    recorder = "hfport.verify.backends.fairseq_roberta_native"
    fp32_atol = 1e-5
    live_reference = "fairseq-live"
    checks_generation = False
    card = {
        "name": "RoBERTa / XLM-R (fairseq)",
        "paper": "[RoBERTa: A Robustly Optimized BERT Pretraining Approach](https://arxiv.org/abs/1907.11692)",
        "code": "https://github.com/facebookresearch/fairseq/tree/main/examples/roberta",
        "license": "mit",
    }
    hub_tags = ("roberta", "fairseq")
    processor_hint = "--bpe-dir (encoder.json + vocab.bpe, or the SentencePiece model) and --dict (dict.txt)"
    auto_classes = {f"{m}For{t}": f"AutoModelFor{t}" for m in ("Roberta", "XLMRoberta")
                    for t in ("MaskedLM", "SequenceClassification")}
    pipeline_tags = ((("classification",), "text-classification"), ((), "fill-mask"))

    def regenerator(self, config):  # fairseq's bookkeeping buffers are the translation model's
        return fr.regenerator(config)

    # -- verification: golden files only (the live reference needs the task's data folder) -----------------------
    def probes(self, folder, seed):
        raise ConfigError("fairseq RoBERTa models are verified against a golden file (hfport record --family "
                          "fairseq_roberta, in fairseq's environment)")

    def user_inputs(self, folder, default, pixel, ids):
        return self.probes(folder, 0)

    def compare_set(self, set_name, inputs, reference, converted, golden, atol, rtol, scale_rtol=0.0):
        """Per-position entries on non-pad positions; the classification logits whole."""
        keep = inputs["src_tokens"] != PAD_ID
        results = []
        for name, ref in reference.items():
            got = converted.get(name)
            if got is None:
                results.append(missing_from_trace(name, set_name, ref, atol))
                continue
            mask = keep if ref.dim() >= 2 and tuple(ref.shape[:2]) == tuple(keep.shape) else None
            results.append(compare_tensors(name, set_name, ref, got.detach().cpu(), atol, rtol, mask, scale_rtol))
        return results

    @torch.no_grad()
    def trace(self, model, inputs):
        tokens = inputs["src_tokens"].to(model.device)
        out = model(input_ids=tokens, attention_mask=tokens.ne(PAD_ID).long(), output_hidden_states=True,
                    return_dict=True)
        trace = OrderedDict()
        add_to_trace(trace, "hidden_states", [s.detach().cpu().float() for s in out.hidden_states])
        name = "classification_logits" if model.config.architectures[0].endswith("SequenceClassification") else "logits"
        trace[name] = out.logits.detach().cpu().float()
        return trace

    def reads_golden(self, data):
        return data.get("family") == self.name

    def golden_from_dict(self, data, path, sha256):
        if data.get("format_version") != 1 or "inputs" not in data or "outputs" not in data:
            raise CheckpointError(f"{path or 'golden data'}: not a fairseq RoBERTa golden (format_version 1, inputs, "
                                  "outputs)")
        trace = OrderedDict()
        for name, value in data["outputs"].items():
            add_to_trace(trace, name, value)
        return Golden(self.name, OrderedDict(inputs=data["inputs"]), OrderedDict(inputs=trace), [],
                      dict(data.get("meta", {})), path, sha256)

    def describe_trace(self, base, layer, variant=None):
        if base == "hidden_states" and layer is not None:
            if layer == 0:
                return ("embeddings", ("encoder.sentence_encoder.embed_tokens",
                                       "encoder.sentence_encoder.embed_positions",
                                       "encoder.sentence_encoder.layernorm_embedding"), ("roberta.embeddings",))
            return (f"output of layer {layer - 1}", (f"encoder.sentence_encoder.layers.{layer - 1}",),
                    (f"roberta.encoder.layer.{layer - 1}",))
        return {"logits": ("masked-LM head", ("encoder.lm_head",), ("lm_head",)),
                "classification_logits": ("classification head", ("classification_heads",), ("classifier",))}.get(base)


register_family(FairseqRobertaFamily())
