"""fairseq BART with a classification head as an hfport family: stock ``BartForSequenceClassification`` (plus the
BART tokenizer with fairseq's ids). Conversion in `fairseq_bart_cls`; the recorder is
`verify/backends/fairseq_bart_cls_native`. No generation: the golden holds every layer's states and the class
logits."""

from __future__ import annotations

from collections import OrderedDict

import torch

from hfport.converters import fairseq_bart_cls as fc
from hfport.converters import fairseq_translation as ft
from hfport.converters.fairseq_translation_family import FairseqTranslationFamily
from hfport.family import register_family

PAD_ID = 1


@torch.no_grad()
def classifier_trace(model, inputs: dict) -> "OrderedDict[str, torch.Tensor]":
    """The converted classifier fed only the source, as users call it (it builds its decoder input itself)."""
    src = inputs["src_tokens"].to(model.device)
    out = model(input_ids=src, attention_mask=src.ne(PAD_ID).long(), use_cache=False, output_hidden_states=True,
                return_dict=True)
    n_enc, n_dec = model.config.encoder_layers, model.config.decoder_layers
    trace = OrderedDict()
    for i, state in enumerate(out.encoder_hidden_states[:n_enc]):
        trace[f"encoder_hidden_states.{i}"] = state.detach().cpu().float()
    trace["encoder_out"] = out.encoder_last_hidden_state.detach().cpu().float()
    trace["encoder_padding_mask"] = inputs["src_tokens"].eq(PAD_ID).float()
    for i, state in enumerate(out.decoder_hidden_states[:n_dec]):
        trace[f"decoder_inner_states.{i}"] = state.detach().cpu().float()
    trace["decoder_features"] = out.decoder_hidden_states[-1].detach().cpu().float()
    trace["classification_logits"] = out.logits.detach().cpu().float()
    return trace


class FairseqBartClassifierFamily(FairseqTranslationFamily):
    name = "fairseq_bart_cls"
    title = "fairseq BART classifier"
    converter = fc
    state_key = fc.STATE_KEY
    mapping = fc.MAPPING
    regenerated = fc.REGENERATED
    recorder = "hfport.verify.backends.fairseq_bart_cls_native"
    checks_generation = False
    card = {
        "name": "BART sentence classifier (fairseq)",
        "paper": "[BART: Denoising Sequence-to-Sequence Pre-training for Natural Language Generation, Translation, "
                 "and Comprehension](https://arxiv.org/abs/1910.13461)",
        "code": "https://github.com/facebookresearch/fairseq/tree/main/examples/bart",
        "license": "mit",
    }
    hub_tags = ("bart", "text-classification", "fairseq")
    processor_hint = "--bpe-dir (encoder.json, vocab.bpe) and --dict (input0/dict.txt)"
    auto_classes = {"BartForSequenceClassification": "AutoModelForSequenceClassification"}
    pipeline_tags = (((), "text-classification"),)

    def regenerator(self, config):
        return ft.regenerator(config)

    def trace(self, model, inputs):
        return classifier_trace(model, inputs)

    def generate(self, model, inputs, num_beams, max_len_b, min_len):
        raise NotImplementedError("a classifier does not generate")

    def describe_trace(self, base, layer, variant=None):
        if base == "classification_logits":
            return ("classification head", ("classification_heads",), ("classification_head",))
        return super().describe_trace(base, layer, variant)


register_family(FairseqBartClassifierFamily())
