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
    live_reference = "live fairseq"
    checks_generation = True
    card = {
        "name": "fairseq transformer (translation)",
        "paper": "[Attention Is All You Need](https://arxiv.org/abs/1706.03762)",
        "code": "https://github.com/facebookresearch/fairseq",
        "license": "mit",
    }
    hub_tags = ("translation", "fairseq")
    processor_hint = "--dict dict.SRC.txt [--target-dict dict.TGT.txt] (the task's dictionaries)"
    auto_classes = {"FSMTForConditionalGeneration": "AutoModelForSeq2SeqLM",
                    "M2M100ForConditionalGeneration": "AutoModelForSeq2SeqLM"}
    pipeline_tags = (((), "translation"),)
    target_tokenizer_subfolder: str | None = "target_tokenizer"  # written when the vocabularies are separate

    def usage_code(self, repo_id, auto_class, model_class, preprocessor):
        from hfport.converters import usage_snippets

        return usage_snippets.fairseq_seq2seq(repo_id, auto_class, preprocessor == "AutoTokenizer",
                                              self.target_tokenizer_subfolder)

    # -- verification: golden files, or fairseq live on token probes (--reference-code: the task's data folder) --
    source_start: tuple = ()  # BART's sources start with <s>
    pad_left = True
    takes_images = False  # the translation task left-pads sources (BART's hub interface pads right)

    def probes(self, folder, seed):
        """One batch of three source rows of random ids (4 .. source vocabulary - 1) ending in </s>, padded as
        the task pads them; the recorder generates from it and teacher-forces its greedy output."""
        from collections import OrderedDict

        from hfport.verify.probes import _generator, _random_ids

        config = folder.config
        vocab = int(config.get("src_vocab_size") or config["vocab_size"])
        g = _generator(seed)
        rows = [list(self.source_start) + _random_ids(g, n, 4, vocab, [0, 1, 2, 3]) + [2] for n in (6, 3, 4)]
        return OrderedDict([("inputs", self._batch(rows))])

    def _batch(self, rows):
        import torch

        width = max(len(r) for r in rows)
        pad = [[1] * (width - len(r)) for r in rows]
        tokens = torch.tensor([p + r if self.pad_left else r + p for p, r in zip(pad, rows)])
        return {"src_tokens": tokens, "src_lengths": tokens.ne(1).sum(1)}

    def user_inputs(self, folder, default, pixel, ids):
        from collections import OrderedDict

        if pixel is not None:
            raise ConfigError(f"a {self.title} takes no --image")
        ids = list(ids) if ids else default["src_tokens"][0][default["src_tokens"][0] != 1].tolist()
        if not ids or ids[-1] != 2:
            ids.append(2)
        return OrderedDict([("inputs", self._batch([ids]))])

    def run(self, folder, inputs):
        """Source text -> fairseq's source ids (the folder's tokenizer) -> beam search -> target text."""
        import torch
        from transformers import AutoTokenizer

        if not folder.path.joinpath("tokenizer.json").is_file() and not folder.path.joinpath("vocab.json").is_file():
            raise ConfigError(f"{folder} has no tokenizer; convert again with {self.processor_hint}")
        if not inputs.text:
            raise ConfigError("give the source sentence with --text")
        source = AutoTokenizer.from_pretrained(str(folder.path))
        target_dir = folder.path / "target_tokenizer"
        target = AutoTokenizer.from_pretrained(str(target_dir)) if target_dir.is_dir() else source
        batch = source(inputs.text, return_tensors="pt")
        model = folder.load_model().eval()
        with torch.no_grad():
            out = model.generate(**batch, num_beams=inputs.num_beams, max_new_tokens=inputs.max_length)
        tokens = out[0, 1:].tolist()  # without the decoder-start </s>
        return {"text": target.decode(tokens, skip_special_tokens=True), "source": inputs.text,
                "tokens": tokens}

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
