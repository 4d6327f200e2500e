"""METER (PyTorch Lightning) as an hfport family: the one object the stages see. The work is done in `meter`
(checkpoint -> config, heads), `meter_verify` (probes, comparison, golden layout, trace names) and the recorder
backend `meter_live`."""

from __future__ import annotations

from hfport.converters import meter, meter_verify
from hfport.errors import ConfigError
from hfport.family import BaseFamily, RunInputs, register_family


class MeterFamily(BaseFamily):
    name = "meter"
    title = "METER (Lightning)"
    model_types = ("meter",)
    converter = meter  # detect, prepare, describe, export (BaseFamily forwards to it)
    state_key = meter.STATE_KEY
    mapping = meter.MAPPING
    regenerated = meter.REGENERATED
    recorder = "hfport.verify.backends.meter_live"
    # fp32 policy (lossless storage): METER's fixtures put the fp64 floor at <= 5.4e-6
    fp32_atol = 1e-5
    live_reference = "meter-live"
    checks_generation = False
    card = {
        "name": "METER",
        "paper": "[An Empirical Study of Training End-to-End Vision-and-Language Transformers]"
                 "(https://arxiv.org/abs/2111.02387)",
        "code": "https://github.com/zdou0830/METER",
        "license": "mit",
    }
    hub_tags = ("multimodal", "custom_code")
    processor_hint = "--tokenizer (METER)"
    # No tag: no transformers 5 pipeline runs METER (it has no visual-question-answering pipeline; feature-extraction
    # and fill-mask feed text alone, zero-shot-image-classification expects CLIP's logits_per_image). The card then
    # advertises nothing it cannot run; the usage snippet shows the Auto class.
    pipeline_tags = ()

    # -- verification ------------------------------------------------------------------------------------------
    def probes(self, folder, seed):
        return meter_verify.folder_probes(folder, seed)

    def user_inputs(self, folder, default, pixel, ids):
        return meter_verify.user_inputs(folder, default, pixel, ids)

    def compare_set(self, set_name, inputs, reference, converted, golden, atol, rtol, scale_rtol=0.0):
        return meter_verify.compare_set(set_name, inputs, reference, converted, golden, atol, rtol, scale_rtol)

    def trace(self, model, inputs):
        from hfport.verify.backends.hf_meter import hf_trace

        return hf_trace(model, inputs)

    def generate(self, model, inputs, num_beams, max_len_b, min_len):
        raise ConfigError("METER models do not generate text")

    def reads_golden(self, data):
        return meter_verify.reads_golden(data)

    def golden_from_dict(self, data, path, sha256):
        return meter_verify.golden_from_dict(data, path, sha256)

    def describe_trace(self, base, layer, variant=None):
        return meter_verify.describe_trace(base, layer, variant)

    def trace_variant(self, config):
        return meter_verify.trace_variant(config)

    def usage_code(self, repo_id, auto_class, model_class, preprocessor):
        from hfport.converters import usage_snippets

        return usage_snippets.meter(repo_id, auto_class, model_class) if preprocessor == "AutoProcessor" else None

    # -- hfport run --------------------------------------------------------------------------------------------
    def run(self, folder, inputs: RunInputs) -> dict:
        processor, model = folder.load_processor(), folder.load_model().eval()
        if inputs.text is None:
            raise ConfigError("METER models need --text")
        if inputs.answers:
            raise ConfigError("--answers constrains OFA's decoding; a METER head's answers come from its id2label "
                              "(hfport convert --labels)")
        return run_meter(folder.config, processor, model, inputs.images, inputs.text, inputs.top_k)


def run_meter(config, processor, model, images, text, top_k) -> dict:
    import torch

    architecture = (config.get("architectures") or [""])[0]
    pair = "VisualReasoning" in architecture
    if pair and len(images) != 2:
        raise ConfigError("an NLVR2 model compares two images: pass --image twice")
    if not pair and len(images) != 1:
        raise ConfigError("this METER model reads one image: pass --image once")
    inputs = processor(images=[tuple(images)] if pair else images[0], text=[text], return_tensors="pt")
    with torch.no_grad():
        outputs = model(**inputs)
    id2label = {int(k): v for k, v in (config.get("id2label") or {}).items()}
    result = {"head": architecture}
    mlm_logits = getattr(outputs, "mlm_logits", None)  # pre-training: both heads answer
    if mlm_logits is None and "MaskedLM" in architecture:
        mlm_logits = outputs.logits
    if mlm_logits is not None:  # the best tokens at each mask token of the text
        tokenizer = processor.tokenizer
        positions = (inputs["input_ids"][0] == tokenizer.mask_token_id).nonzero().flatten().tolist()
        if not positions and "MaskedLM" in architecture:
            raise ConfigError(f"a masked-LM model fills mask tokens: put {tokenizer.mask_token} in --text")
        fills = []
        for position in positions:
            scores, ids = mlm_logits[0, position].softmax(-1).topk(top_k)
            fills.append([{"token": tokenizer.convert_ids_to_tokens(int(i)), "score": float(s)}
                          for s, i in zip(scores, ids)])
        result["masks"] = fills
    itm_logits = getattr(outputs, "itm_logits", None)
    if itm_logits is None and "ImageTextMatching" in architecture:
        itm_logits = outputs.logits
    if itm_logits is not None:
        result["match_probability"] = float(itm_logits.softmax(-1)[0, 1])
    if getattr(outputs, "rank_scores", None) is not None:  # retrieval head: METER ranks candidates by this score
        result["retrieval_score"] = float(outputs.rank_scores[0, 0])
    if len(result) > 1:
        return result
    # METER trains VQA with a binary cross-entropy per answer: sigmoid scores; the other heads are softmax classifiers
    logits = outputs.logits[0]
    probabilities = logits.sigmoid() if "QuestionAnswering" in architecture else logits.softmax(-1)
    scores, indices = probabilities.topk(min(top_k, probabilities.numel()))
    result["answers"] = [{"label": id2label.get(int(i), int(i)), "score": float(s)} for s, i in zip(scores, indices)]
    return result


register_family(MeterFamily())
