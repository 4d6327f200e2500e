"""HF side of a METER trace: fixture-format inputs through the converted model, named like the golden fixtures."""

from __future__ import annotations

import torch

# base-model output field -> trace name, in METER's computation order
_PASS_FIELDS = (
    "text_embeddings",
    "text_encoder_layers",
    "text_encoder_output",
    "image_embeddings",
    "image_encoder_layers",
    "image_encoder_output",
    "fusion_text_input",
    "fusion_image_input",
    "fusion_text_layers",
    "fusion_image_layers",
    "text_feats",
    "image_feats",
    "cls_feats",
)

# head class -> {output field: trace name}
_HEAD_OUTPUTS = {
    "MeterForQuestionAnswering": {"logits": "vqa_logits"},
    "MeterForVisualEntailment": {"logits": "snli_logits"},
    "MeterForVisualReasoning": {"logits": "nlvr2_logits"},
    "MeterForImageTextMatching": {"logits": "itm_logits", "rank_scores": "rank_scores"},
    "MeterForMaskedLM": {"logits": "mlm_logits"},
    "MeterForPreTraining": {"itm_logits": "itm_logits", "mlm_logits": "mlm_logits"},
}


def _add_pass(trace: dict, outputs, suffix: str) -> None:
    for field in _PASS_FIELDS:
        value = getattr(outputs, field)
        if isinstance(value, (tuple, list)):
            for index, item in enumerate(value):
                trace[f"{field}{suffix}.{index}"] = item.detach().float()
        else:
            trace[f"{field}{suffix}"] = value.detach().float()


@torch.no_grad()
def hf_trace(model, inputs: dict) -> dict[str, torch.Tensor]:
    """
    `inputs`: `text_ids`, `text_masks` and `image` (or NLVR2's `image_0`, `image_1`), as in a fixture's
    `reference.pt`. `model`: a `MeterModel` or one of its head classes. Returns name -> fp32 tensor.
    """
    model.eval()
    class_name = type(model).__name__
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    text_ids = inputs["text_ids"].to(device)
    text_masks = inputs["text_masks"].to(device)
    if "image" in inputs:
        pixel_values = inputs["image"]
    else:
        pixel_values = torch.stack([inputs["image_0"], inputs["image_1"]], dim=1)
    pixel_values = pixel_values.to(device=device, dtype=dtype)

    trace: dict[str, torch.Tensor] = {}
    if class_name == "MeterModel":
        if pixel_values.dim() == 5:
            for index in range(pixel_values.shape[1]):
                outputs = model(text_ids, text_masks, pixel_values[:, index], image_token_type_idx=index + 1,
                                output_hidden_states=True, return_dict=True)
                _add_pass(trace, outputs, f"_{index}")
        else:
            _add_pass(trace, model(text_ids, text_masks, pixel_values, output_hidden_states=True, return_dict=True), "")
        return trace

    if class_name not in _HEAD_OUTPUTS:
        raise TypeError(f"no METER trace recipe for {class_name}")
    outputs = model(input_ids=text_ids, attention_mask=text_masks, pixel_values=pixel_values,
                    output_hidden_states=True, return_dict=True)
    if class_name == "MeterForVisualReasoning":
        _add_pass(trace, outputs.meter_outputs_0, "_0")
        _add_pass(trace, outputs.meter_outputs_1, "_1")
    else:
        _add_pass(trace, outputs.meter_outputs, "")
    for field, name in _HEAD_OUTPUTS[class_name].items():
        value = getattr(outputs, field)
        if value is not None:
            trace[name] = value.detach().float()
    return trace
