"""fairseq's mBART as an hfport family: stock ``MBartForConditionalGeneration``; the SentencePiece model + fairseq
dictionary + the task's language tokens become a stock fast tokenizer whose ids are fairseq's. Conversion in
`fairseq_mbart`; the recorder is `verify/backends/fairseq_mbart_native`; traces are the translation family's,
generation stops at the target language token (translation_from_pretrained_bart's eos)."""

from __future__ import annotations

import torch

from hfport.converters import fairseq_mbart as fm
from hfport.converters import fairseq_translation as ft
from hfport.converters.fairseq_translation_family import FairseqTranslationFamily
from hfport.family import register_family

PAD_ID = 1


@torch.no_grad()
def generate_until_language_token(model, inputs: dict, num_beams: int, max_len_b: int, min_len: int) -> list:
    """fairseq's SequenceGenerator with eos = the target language token: start from it, stop at it (forced as token
    `max_len_b + 1`), never pad, scores divided by length, a beam done when `num_beams` hypotheses are."""
    stop = int(model.generation_config.decoder_start_token_id)
    src = inputs["src_tokens"].to(model.device)
    sequences = model.generate(
        input_ids=src, attention_mask=src.ne(PAD_ID).long(), num_beams=num_beams, num_return_sequences=1,
        do_sample=False, max_new_tokens=max_len_b + 1, min_new_tokens=min_len, forced_eos_token_id=stop,
        suppress_tokens=[PAD_ID], decoder_start_token_id=stop, eos_token_id=stop, pad_token_id=PAD_ID,
        **({"length_penalty": 1.0, "early_stopping": True} if num_beams > 1 else {}),
        no_repeat_ngram_size=0, repetition_penalty=1.0, temperature=None, top_k=None, top_p=None, use_cache=True,
    )
    out = []
    for row in sequences.tolist():
        tokens = row[1:]
        out.append(tokens[: tokens.index(stop) + 1] if stop in tokens else tokens)
    return out


class FairseqMBartFamily(FairseqTranslationFamily):
    name = "fairseq_mbart"
    title = "fairseq mBART"
    converter = fm
    state_key = fm.STATE_KEY
    mapping = fm.MAPPING
    regenerated = fm.REGENERATED
    recorder = "hfport.verify.backends.fairseq_mbart_native"
    card = {
        "name": "mBART (fairseq)",
        "paper": "[Multilingual Denoising Pre-training for Neural Machine Translation](https://arxiv.org/abs/2001.08210)",
        "code": "https://github.com/facebookresearch/fairseq/tree/main/examples/mbart",
        "license": "mit",
    }
    hub_tags = ("mbart", "translation", "fairseq")
    processor_hint = "--bpe-dir (the folder with the SentencePiece *.model) and --dict (dict.txt)"
    auto_classes = {"MBartForConditionalGeneration": "AutoModelForSeq2SeqLM"}
    pipeline_tags = (((), "translation"),)
    target_tokenizer_subfolder = None  # one vocabulary for source and target

    def regenerator(self, config):  # fairseq's bookkeeping buffers are the translation model's
        return ft.regenerator(config)

    def generate(self, model, inputs, num_beams, max_len_b, min_len):
        return generate_until_language_token(model, inputs, num_beams, max_len_b, min_len)


register_family(FairseqMBartFamily())
