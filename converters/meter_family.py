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
    # The Hub has no visual-entailment / visual-reasoning task: NLVR2 and SNLI-VE give a fixed-choice verdict on an
    # (image, sentence) pair, which is closest to visual question answering.
    pipeline_tags = (
        (("vqa", "question"), "visual-question-answering"),
        (("irtr", "retrieval", "itm", "matching"), "zero-shot-image-classification"),
        (("nlvr", "reasoning", "snli", "entail"), "visual-question-answering"),
        (("fill-mask", "maskedlm"), "fill-mask"),
        ((), "feature-extraction"),  # pre-trained METER (MLM + ITM heads)
    )

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
    if getattr(outputs, "itm_logits", None) is not None or "ImageTextMatching" in architecture:
        logits = outputs.itm_logits if getattr(outputs, "itm_logits", None) is not None else outputs.logits
        return {"head": architecture, "match_probability": float(logits.softmax(-1)[0, 1])}
    logits = outputs.logits[0]
    if logits.dim() == 2:  # masked LM: the best tokens at each <mask>
        mask_positions = (inputs["input_ids"][0] == processor.tokenizer.mask_token_id).nonzero().flatten().tolist()
        fills = []
        for position in mask_positions:
            scores, ids = logits[position].softmax(-1).topk(top_k)
            fills.append([{"token": processor.tokenizer.convert_ids_to_tokens(int(i)), "score": float(s)}
                          for s, i in zip(scores, ids)])
        return {"head": architecture, "masks": fills}
    # METER trains VQA with a binary cross-entropy per answer: sigmoid scores; the other heads are softmax classifiers
    probabilities = logits.sigmoid() if "QuestionAnswering" in architecture else logits.softmax(-1)
    scores, indices = probabilities.topk(min(top_k, probabilities.numel()))
    answers = [{"label": id2label.get(int(i), int(i)), "score": float(s)} for s, i in zip(scores, indices)]
    return {"head": architecture, "answers": answers}


register_family(MeterFamily())
