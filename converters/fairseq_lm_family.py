"""fairseq's language model (transformer_lm*) as an hfport family: stock XGLMForCausalLM (sinusoidal positions) or
BioGptForCausalLM (learned positions), no remote code; the task's dict.txt (+ GPT-2 BPE) becomes a stock
tokenizer with fairseq's ids. Conversion in `fairseq_lm`; the recorder is `verify/backends/fairseq_lm_native`; the
converted side runs through `verify/backends/hf_fairseq_lm`."""

from __future__ import annotations

from collections import OrderedDict

import torch

from hfport.converters import fairseq_lm as flm
from hfport.converters import fairseq_translation as ft
from hfport.converters.fairseq_translation_family import FairseqTranslationFamily
from hfport.errors import ConfigError
from hfport.family import BaseFamily, RunInputs, register_family
from hfport.verify.compare import compare_tensors, missing_from_trace
from hfport.verify.probes import _generator, _pad_batch, _random_ids

PAD_ID = 1


def lm_probes(vocab_size: int, start: int, seed: int) -> "OrderedDict[str, dict]":
    """A right-padded scoring batch of three rows, one prompt (greedy) and the start token alone (greedy and beam):
    the sets fairseq_lm_native generates on. Ids from 4 .. vocab_size-1."""
    g = _generator(seed)
    rows = [[start] + _random_ids(g, n, 4, vocab_size, [start, PAD_ID, 2]) for n in (7, 2, 5)]
    prompt = [start] + _random_ids(g, 3, 4, vocab_size, [start, PAD_ID, 2])
    return OrderedDict([("inputs", {"src_tokens": _pad_batch(rows, PAD_ID)}),
                        ("inputs_p0", {"src_tokens": torch.tensor([prompt])}),
                        ("inputs_bos", {"src_tokens": torch.tensor([[start]])})])


class FairseqLanguageModelFamily(BaseFamily):
    name = "fairseq_lm"
    title = "fairseq language model"
    model_types = ()  # stock xglm / biogpt folders are not claimed without hfport.json
    converter = flm
    state_key = flm.STATE_KEY
    mapping = flm.MAPPING
    regenerated = flm.REGENERATED
    recorder = "hfport.verify.backends.fairseq_lm_native"
    fp32_atol = 1e-5
    live_reference = "live fairseq"
    checks_generation = True
    card = {
        "name": "fairseq transformer language model",
        "paper": "[Adaptive Input Representations for Neural Language Modeling](https://arxiv.org/abs/1809.10853)",
        "code": "https://github.com/facebookresearch/fairseq/tree/main/examples/language_model",
        "license": "mit",
    }
    hub_tags = ("text-generation", "fairseq")
    processor_hint = "--dict (the task's dict.txt) [and --bpe-dir (encoder.json, vocab.bpe) for GPT-2 BPE]"
    auto_classes = {"XGLMForCausalLM": "AutoModelForCausalLM", "BioGptForCausalLM": "AutoModelForCausalLM"}
    pipeline_tags = (((), "text-generation"),)
    takes_images = False

    def usage_code(self, repo_id, auto_class, model_class, preprocessor):
        from hfport.converters import usage_snippets

        return usage_snippets.causal_lm(repo_id, auto_class) if preprocessor == "AutoTokenizer" else None

    def regenerator(self, config):
        return ft.regenerator(config)

    # -- verification ----------------------------------------------------------------------------------------
    def probes(self, folder, seed):
        config = folder.config
        return lm_probes(int(config["vocab_size"]), int(config.get("bos_token_id", 2)), seed)

    def user_inputs(self, folder, default, pixel, ids):
        if pixel is not None:
            raise ConfigError("a language model takes no --image")
        start = int(folder.config.get("bos_token_id", 2))
        ids = [start] + [i for i in ids if i != start] if ids else default["src_tokens"][0].tolist()
        return OrderedDict([("inputs", {"src_tokens": torch.tensor([ids])})])

    def compare_set(self, set_name, inputs, reference, converted, golden, atol, rtol, scale_rtol=0.0):
        """Every reference entry on the non-pad positions of the rows."""
        keep = inputs["src_tokens"] != PAD_ID
        results = []
        for name, ref in reference.items():
            got = converted.get(name)
            if got is None:
                results.append(missing_from_trace(name, set_name, ref, atol))
                continue
            results.append(compare_tensors(name, set_name, ref, got.detach().cpu(), atol, rtol, keep, scale_rtol))
        return results

    def trace(self, model, inputs):
        from hfport.verify.backends.hf_fairseq_lm import hf_trace

        return hf_trace(model, inputs)

    def generate(self, model, inputs, num_beams, max_len_b, min_len):
        from hfport.verify.backends.hf_fairseq_lm import hf_generate

        return hf_generate(model, inputs, num_beams, max_len_b, min_len)

    # the recorder writes the translation transformer's golden layout, tagged with this family's name
    reads_golden = FairseqTranslationFamily.reads_golden
    golden_from_dict = FairseqTranslationFamily.golden_from_dict

    def describe_trace(self, base, layer, variant=None):
        """(what, fairseq modules, converted modules); entry i of `decoder_inner_states` is the input of layer i."""
        prefix = "biogpt" if variant == "biogpt" else "model"
        if base == "decoder_inner_states" and layer is not None:
            if layer == 0:
                return ("decoder embeddings", ("decoder.embed_tokens", "decoder.embed_positions"),
                        (f"{prefix}.embed_tokens", f"{prefix}.embed_positions"))
            return f"output of decoder layer {layer - 1}", (f"decoder.layers.{layer - 1}",), (
                f"{prefix}.layers.{layer - 1}",)
        return {"decoder_features": ("decoder final LayerNorm", ("decoder.layer_norm",), (f"{prefix}.layer_norm",)),
                "logits": ("output projection", ("decoder.output_projection",),
                           ("output_projection" if prefix == "biogpt" else "lm_head",))}.get(base)

    def trace_variant(self, config):
        return "biogpt" if config.get("model_type") == "biogpt" else None

    # -- running ---------------------------------------------------------------------------------------------
    def run(self, folder, inputs: RunInputs) -> dict:
        from transformers import AutoTokenizer

        if not folder.path.joinpath("tokenizer.json").is_file():
            raise ConfigError(f"{folder} has no tokenizer; convert again with {self.processor_hint}")
        if not inputs.text:
            raise ConfigError("give the prompt with --text")
        tokenizer = AutoTokenizer.from_pretrained(str(folder.path))
        model = folder.load_model().eval()
        ids = tokenizer(inputs.text, return_tensors="pt").input_ids
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), num_beams=1, do_sample=False,
                                 max_new_tokens=inputs.max_length, eos_token_id=2, pad_token_id=PAD_ID)
        continuation = out[0, ids.shape[1]:].tolist()
        return {"text": inputs.text + " " + tokenizer.decode(continuation, skip_special_tokens=True), "prompt": inputs.text,
                "tokens": continuation}


register_family(FairseqLanguageModelFamily())
