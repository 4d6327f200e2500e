"""fairseq's translation transformer as an hfport family: stock FSMT (post-norm) or M2M100 (pre-norm, shared
embeddings), no remote code. Conversion in `fairseq_translation`; the recorder is `verify/backends/fairseq_native`;
the converted side runs through `verify/backends/hf_fairseq`."""

from __future__ import annotations

from hfport.converters import fairseq_translation as ft
from hfport.converters import ofa_verify
from hfport.errors import ConfigError
from hfport.family import BaseFamily, register_family
from hfport.verify.golden import Golden


class FairseqTranslationFamily(BaseFamily):
    name = "fairseq_translation"
    title = "fairseq translation transformer"
    model_types = ()  # stock fsmt / m2m_100 folders are not claimed without hfport.json
    converter = ft  # detect, prepare, describe, export (BaseFamily forwards to it)
    state_key = ft.STATE_KEY
    mapping = ft.MAPPING
    regenerated = ft.REGENERATED
    recorder = "hfport.verify.backends.fairseq_native"
    fp32_atol = 1e-5
    live_reference = "fairseq-live"
    checks_generation = True
    card = {
        "name": "fairseq transformer (translation)",
        "paper": "[Attention Is All You Need](https://arxiv.org/abs/1706.03762)",
        "code": "https://github.com/facebookresearch/fairseq",
        "license": "mit",
    }
    hub_tags = ("translation", "fairseq")
    processor_hint = "(none: fairseq's word/subword dictionaries are not shipped as a tokenizer yet)"
    auto_classes = {"FSMTForConditionalGeneration": "AutoModelForSeq2SeqLM",
                    "M2M100ForConditionalGeneration": "AutoModelForSeq2SeqLM"}
    pipeline_tags = (((), "translation"),)

    def usage_code(self, repo_id, auto_class, model_class, preprocessor):
        from hfport.converters import usage_snippets

        return usage_snippets.fairseq_seq2seq(repo_id, auto_class, preprocessor == "AutoTokenizer")

    # -- verification: golden files only (the live reference needs the task's data folder) -----------------------
    def probes(self, folder, seed):
        raise ConfigError("fairseq translation models are verified against a golden file (hfport record --family "
                          "fairseq_translation, in fairseq's environment)")

    def user_inputs(self, folder, default, pixel, ids):
        return self.probes(folder, 0)

    def compare_set(self, set_name, inputs, reference, converted, golden, atol, rtol, scale_rtol=0.0):
        return ofa_verify.compare_set(set_name, inputs, reference, converted, golden, atol, rtol, scale_rtol)

    def trace(self, model, inputs):
        from hfport.verify.backends.hf_fairseq import hf_trace

        return hf_trace(model, inputs)

    def generate(self, model, inputs, num_beams, max_len_b, min_len):
        from hfport.verify.backends.hf_fairseq import hf_generate

        return hf_generate(model, inputs, num_beams, max_len_b, min_len)

    def reads_golden(self, data):
        return data.get("family") == self.name

    def golden_from_dict(self, data, path, sha256):
        golden = ofa_verify.golden_from_dict(data, path, sha256)  # same layout (format_version 1)
        return Golden(self.name, golden.sets, golden.traces, golden.generations, golden.meta, path, sha256)

    def describe_trace(self, base, layer, variant=None):
        """(what, fairseq modules, converted modules); entry i > 0 of the per-layer lists is `layers.{i-1}`."""
        if base in ("encoder_hidden_states", "decoder_inner_states") and layer is not None:
            side = "encoder" if base.startswith("encoder") else "decoder"
            if layer == 0:
                return f"{side} embeddings", (f"{side}.embed_tokens",), (f"model.{side}.embed_tokens",)
            return (f"output of {side} layer {layer - 1}", (f"{side}.layers.{layer - 1}",),
                    (f"model.{side}.layers.{layer - 1}",))
        return {"encoder_out": ("encoder output", ("encoder",), ("model.encoder",)),
                "decoder_features": ("decoder output before the projection", ("decoder",), ("model.decoder",)),
                "logits": ("output projection", ("decoder.output_projection",), None)}.get(base)


register_family(FairseqTranslationFamily())
