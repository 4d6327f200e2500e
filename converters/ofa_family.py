"""OFA (fairseq) as an hfport family: the one object the stages see. The work is done in `ofa` (checkpoint ->
config), `ofa_verify` (probes, comparison, golden layout, trace names) and the recorder backend `fairseq_ofa`."""

from __future__ import annotations

from hfport.converters import ofa, ofa_verify
from hfport.errors import ConfigError
from hfport.family import BaseFamily, RunInputs, register_family

OFA_TASKS = ("caption", "vqa", "grounding", "none")


class OFAFamily(BaseFamily):
    name = "ofa"
    title = "OFA (fairseq)"
    model_types = ("ofa",)
    converter = ofa  # detect, prepare, describe, export (BaseFamily forwards to it)
    state_key = ofa.STATE_KEY
    mapping = ofa.MAPPING
    regenerated = ofa.REGENERATED
    recorder = "hfport.verify.backends.fairseq_ofa"
    # fp32 policy (lossless storage): the issues' demands
    fp32_atol = 1e-4
    live_reference = "fairseq-live"
    checks_generation = True
    card = {
        "name": "OFA",
        "paper": "[OFA: Unifying Architectures, Tasks, and Modalities Through a Simple Sequence-to-Sequence "
                 "Learning Framework](https://arxiv.org/abs/2202.03052)",
        "code": "https://github.com/OFA-Sys/OFA",
        "license": "apache-2.0",
    }
    hub_tags = ("multimodal", "custom_code")
    # the released checkpoints whose HF-style ports OFA-Sys published on the Hub
    base_models = {f"ofa_{size}.pt": f"OFA-Sys/ofa-{size}" for size in ("tiny", "medium", "base", "large", "huge")}
    processor_hint = "--bpe-dir (OFA)"
    pipeline_tags = (
        (("vqa", "question"), "visual-question-answering"),
        (("caption",), "image-to-text"),
        (("refcoco", "grounding"), "zero-shot-object-detection"),
        (("snli", "entail"), "visual-question-answering"),
        (("gigaword", "summar"), "summarization"),
        ((), "image-to-text"),  # pre-trained OFA: image + instruction in, text out
    )

    # -- verification ------------------------------------------------------------------------------------------
    def probes(self, folder, seed):
        return ofa_verify.folder_probes(folder, seed)

    def user_inputs(self, folder, default, pixel, ids):
        return ofa_verify.user_inputs(folder, default, pixel, ids)

    def compare_set(self, set_name, inputs, reference, converted, golden, atol, rtol, scale_rtol=0.0):
        return ofa_verify.compare_set(set_name, inputs, reference, converted, golden, atol, rtol, scale_rtol)

    def trace(self, model, inputs):
        from hfport.verify.backends.hf_ofa import hf_trace

        return hf_trace(model, inputs)

    def generate(self, model, inputs, num_beams, max_len_b, min_len):
        from hfport.verify.backends.hf_ofa import hf_generate

        return hf_generate(model, inputs, num_beams, max_len_b, min_len)

    def reads_golden(self, data):
        return ofa_verify.reads_golden(data)

    def golden_from_dict(self, data, path, sha256):
        return ofa_verify.golden_from_dict(data, path, sha256)

    def describe_trace(self, base, layer, variant=None):
        return ofa_verify.describe_trace(base, layer, variant)

    def usage_code(self, repo_id, auto_class, model_class, preprocessor):
        from hfport.converters import usage_snippets

        return usage_snippets.ofa(repo_id, auto_class) if preprocessor == "AutoProcessor" else None

    # -- hfport run --------------------------------------------------------------------------------------------
    def run(self, folder, inputs: RunInputs) -> dict:
        processor, model = folder.load_processor(), folder.load_model().eval()
        if len(inputs.images) != 1:
            raise ConfigError("OFA reads one image: pass --image once")
        return run_ofa(processor, model, inputs.images[0], inputs.text, inputs.task, inputs.num_beams, inputs.max_length)


def run_ofa(processor, model, image, text, task, num_beams, max_length) -> dict:
    import torch

    task = task or ("caption" if text is None else "none")
    inputs = processor(images=image, text=text, task=task, return_tensors="pt")
    with torch.no_grad():
        sequences = model.generate(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
            patch_images=inputs["patch_images"], patch_masks=inputs["patch_masks"],
            num_beams=num_beams, max_new_tokens=max_length, do_sample=False,
        )
    ids = [int(i) for i in sequences[0]]
    if ids and ids[0] == model.config.decoder_start_token_id:
        ids = ids[1:]  # like OFA's generator output: no leading <s>
    result = {"task": task, "prompt": processor.format_text(text, task), "text": processor.decode(ids), "ids": ids}
    box = processor.post_process_boxes([ids], [image.size])[0]
    if box is not None:
        result["box"] = [round(v, 1) for v in box]
    return result


register_family(OFAFamily())
