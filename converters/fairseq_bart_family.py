"""fairseq's BART (``bart_base`` / ``bart_large`` and models fine-tuned from them) as an hfport family: stock
``BartForConditionalGeneration``; the GPT-2 BPE + fairseq dictionary become a stock BART tokenizer whose ids are
fairseq's. Conversion in `fairseq_bart`; shares the recorder and the converted-side runner with the translation
transformer."""

from __future__ import annotations

from hfport.converters import fairseq_bart as fb
from hfport.converters import fairseq_translation as ft
from hfport.converters.fairseq_translation_family import FairseqTranslationFamily
from hfport.family import register_family


class FairseqBartFamily(FairseqTranslationFamily):
    name = "fairseq_bart"
    title = "fairseq BART"
    converter = fb
    state_key = fb.STATE_KEY
    mapping = fb.MAPPING
    regenerated = fb.REGENERATED
    card = {
        "name": "BART (fairseq)",
        "paper": "[BART: Denoising Sequence-to-Sequence Pre-training for Natural Language Generation, Translation, "
                 "and Comprehension](https://arxiv.org/abs/1910.13461)",
        "code": "https://github.com/facebookresearch/fairseq/tree/main/examples/bart",
        "license": "mit",
    }
    hub_tags = ("bart", "fairseq")
    processor_hint = "--bpe-dir (encoder.json, vocab.bpe) and --dict (dict.txt)"
    auto_classes = {"BartForConditionalGeneration": "AutoModelForSeq2SeqLM"}
    pipeline_tags = (((), "text2text-generation"),)
    target_tokenizer_subfolder = None  # one vocabulary for source and target
    source_start = (0,)  # BART's hub interface: <s> ... </s>, padded right
    pad_left = False

    def regenerator(self, config):  # fairseq's bookkeeping buffers are the translation model's
        return ft.regenerator(config)


register_family(FairseqBartFamily())
