"""METER model classes on tiny random configs: construction, the semantics METER needs, and remote-code round trips."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from hfport.models.meter import (
    MeterConfig,
    MeterForImageTextMatching,
    MeterForMaskedLM,
    MeterForPreTraining,
    MeterForQuestionAnswering,
    MeterForVisualEntailment,
    MeterForVisualReasoning,
    MeterModel,
)
from hfport.verify.backends.hf_meter import hf_trace

BATCH, TEXT_LEN, IMAGE_SIZE = 2, 7, 32

ROBERTA = dict(model_type="roberta", vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
               intermediate_size=64, max_position_embeddings=20, type_vocab_size=1, layer_norm_eps=1e-5,
               pad_token_id=1)
BERT = dict(model_type="bert", vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
            intermediate_size=64, max_position_embeddings=20, layer_norm_eps=1e-12, pad_token_id=0)
CLIP = dict(model_type="clip_vision_model", hidden_size=48, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=2, image_size=IMAGE_SIZE, patch_size=16)
SWIN = dict(model_type="swin", image_size=IMAGE_SIZE, patch_size=4, embed_dim=8, depths=[2, 2], num_heads=[2, 2],
            window_size=2)


def tiny_config(vision=CLIP, text=ROBERTA, **overrides) -> MeterConfig:
    fields = dict(vision_config=dict(vision), text_config=dict(text), hidden_size=16, num_attention_heads=2,
                  num_top_layer=2, intermediate_size=32)
    fields.update(overrides)
    return MeterConfig(**fields)


def tiny_inputs(config: MeterConfig, seed: int = 0, pairs: bool = False) -> dict:
    generator = torch.Generator().manual_seed(seed)
    pad = config.text_config.pad_token_id
    input_ids = torch.randint(3, config.text_config.vocab_size, (BATCH, TEXT_LEN), generator=generator)
    input_ids[0, -2:] = pad
    image_shape = (BATCH, 2, 3, IMAGE_SIZE, IMAGE_SIZE) if pairs else (BATCH, 3, IMAGE_SIZE, IMAGE_SIZE)
    return {"input_ids": input_ids, "attention_mask": (input_ids != pad).long(),
            "pixel_values": torch.randn(image_shape, generator=generator)}


def build(model_class, config: MeterConfig, seed: int = 0):
    torch.manual_seed(seed)
    model = model_class(config).eval()
    with torch.no_grad():  # LayerNorm gains/biases start at 1/0; randomise them so they matter
        for name, parameter in model.named_parameters():
            if parameter.dim() == 1:
                parameter.add_(0.1 * torch.randn_like(parameter))
    return model


HEAD_CASES = [
    (MeterForQuestionAnswering, dict(num_labels=5), "logits", (BATCH, 5)),
    (MeterForVisualEntailment, dict(num_labels=3), "logits", (BATCH, 3)),
    (MeterForVisualReasoning, dict(num_labels=2, num_image_token_types=3), "logits", (BATCH, 2)),
    (MeterForImageTextMatching, dict(use_rank_output=True), "rank_scores", (BATCH, 1)),
    (MeterForMaskedLM, {}, "logits", (BATCH, TEXT_LEN, 50)),
    (MeterForPreTraining, {}, "mlm_logits", (BATCH, TEXT_LEN, 50)),
]


@pytest.mark.parametrize("model_class, overrides, field, shape", HEAD_CASES, ids=lambda c: getattr(c, "__name__", None))
def test_each_head_class_builds_and_returns_its_logits(model_class, overrides, field, shape):
    config = tiny_config(**overrides)
    model = build(model_class, config)
    inputs = tiny_inputs(config, pairs=model_class is MeterForVisualReasoning)
    with torch.no_grad():
        outputs = model(**inputs)
    assert tuple(getattr(outputs, field).shape) == shape
    assert torch.isfinite(getattr(outputs, field)).all()


@pytest.mark.parametrize(
    "model_class, overrides, labels",
    [
        (MeterForQuestionAnswering, dict(num_labels=5), lambda: torch.rand(BATCH, 5)),
        (MeterForVisualEntailment, dict(num_labels=3), lambda: torch.tensor([0, 2])),
        (MeterForImageTextMatching, {}, lambda: torch.tensor([0, 1])),
        (MeterForMaskedLM, {}, lambda: torch.full((BATCH, TEXT_LEN), -100).index_fill_(1, torch.tensor([1]), 7)),
    ],
    ids=lambda c: getattr(c, "__name__", None),
)
def test_head_classes_return_a_positive_loss_when_given_labels(model_class, overrides, labels):
    config = tiny_config(**overrides)
    outputs = build(model_class, config)(**tiny_inputs(config), labels=labels())
    assert outputs.loss.item() > 0


def test_clip_tower_pools_the_first_image_token_and_normalises_every_token():
    config = tiny_config()
    model = build(MeterModel, config)
    with torch.no_grad():
        outputs = model(**tiny_inputs(config), output_hidden_states=True)
    assert outputs.image_feats.shape[1] == 1 + (IMAGE_SIZE // 16) ** 2
    expected_image_half = model.cross_modal_image_pooler(outputs.image_feats[:, 0])
    torch.testing.assert_close(outputs.cls_feats[:, config.hidden_size:], expected_image_half, atol=0, rtol=0)
    post_ln = model.vision_model.post_layernorm(outputs.image_encoder_layers[-1])
    torch.testing.assert_close(outputs.image_encoder_output, post_ln, atol=0, rtol=0)


def test_swin_tower_runs_and_pools_the_mean_of_the_image_tokens():
    config = tiny_config(vision=SWIN, text=BERT)
    model = build(MeterModel, config)
    with torch.no_grad():
        outputs = model(**tiny_inputs(config), output_hidden_states=True)
    assert config.input_image_embed_size == 16  # embed_dim * 2 ** (stages - 1)
    assert outputs.image_feats.shape == (BATCH, (IMAGE_SIZE // 8) ** 2, config.hidden_size)
    assert outputs.image_embeddings.shape == (BATCH, (IMAGE_SIZE // 4) ** 2, 8)
    assert len(outputs.image_encoder_layers) == 2
    expected_image_half = model.cross_modal_image_pooler(outputs.image_feats.mean(dim=1))
    torch.testing.assert_close(outputs.cls_feats[:, config.hidden_size:], expected_image_half, atol=0, rtol=0)


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_image_stream_attends_to_every_image_token_not_causally(attn_implementation):
    config = tiny_config()
    model = build(MeterModel, config)
    model.set_attn_implementation(attn_implementation)
    inputs = tiny_inputs(config)

    def nudge_last_image_token(module, args, output):
        output = output.clone()
        output[:, -1] += 1.0
        return output

    with torch.no_grad():
        before = model(**inputs, output_hidden_states=True)
        hook = model.cross_modal_image_transform.register_forward_hook(nudge_last_image_token)
        after = model(**inputs, output_hidden_states=True)
        hook.remove()
    # in layer 0, image token 0 can only see the last image token through bidirectional self-attention
    assert (after.fusion_image_input[:, 0] - before.fusion_image_input[:, 0]).abs().max() == 0
    assert (after.fusion_image_layers[0][:, 0] - before.fusion_image_layers[0][:, 0]).abs().max() > 1e-3


def test_sdpa_and_eager_attention_agree():
    config = tiny_config()
    model = build(MeterForPreTraining, config)
    inputs = tiny_inputs(config)
    with torch.no_grad():
        model.set_attn_implementation("sdpa")
        sdpa = model(**inputs).mlm_logits
        model.set_attn_implementation("eager")
        eager = model(**inputs).mlm_logits
    assert (sdpa - eager).abs().max() < 1e-5


def test_padded_text_tokens_do_not_change_the_other_tokens():
    config = tiny_config()
    model = build(MeterModel, config)
    inputs = tiny_inputs(config)
    with torch.no_grad():
        before = model(**inputs)
        inputs["input_ids"][0, -2:] = 5  # different ids under the same padding mask
        after = model(**inputs)
    assert (after.text_feats[0, :-2] - before.text_feats[0, :-2]).abs().max() < 1e-6
    assert (after.cls_feats - before.cls_feats).abs().max() < 1e-6


def test_visual_reasoning_adds_token_type_one_then_two_to_the_image_passes():
    config = tiny_config(num_labels=2, num_image_token_types=3)
    model = build(MeterForVisualReasoning, config)
    inputs = tiny_inputs(config, pairs=True)
    inputs["pixel_values"][:, 1] = inputs["pixel_values"][:, 0]
    with torch.no_grad():
        outputs = model(**inputs, output_hidden_states=True)
    shift = outputs.meter_outputs_1.fusion_image_input - outputs.meter_outputs_0.fusion_image_input
    rows = model.meter.token_type_embeddings.weight
    torch.testing.assert_close(shift, (rows[2] - rows[1]).expand_as(shift), atol=1e-6, rtol=0)


def test_clip_runs_at_another_resolution_by_interpolating_positions():
    config = tiny_config()
    model = build(MeterModel, config)
    inputs = tiny_inputs(config)
    inputs["pixel_values"] = torch.randn(BATCH, 3, 2 * IMAGE_SIZE, 2 * IMAGE_SIZE)
    with torch.no_grad():
        outputs = model(**inputs)
    assert outputs.image_feats.shape[1] == 1 + (2 * IMAGE_SIZE // 16) ** 2


def test_config_round_trips_through_json_with_nested_tower_configs(tmp_path):
    config = tiny_config(vision={k: v for k, v in SWIN.items() if k != "model_type"}, vision_model_type="swin",
                         text=BERT, num_labels=3)
    config.save_pretrained(tmp_path)
    stored = json.loads((tmp_path / "config.json").read_text())
    assert (stored["vision_config"]["model_type"], stored["text_config"]["model_type"]) == ("swin", "bert")
    reloaded = MeterConfig.from_pretrained(tmp_path)
    assert (reloaded.vision_model_type, reloaded.num_labels, reloaded.layer_norm_eps) == ("swin", 3, 1e-12)
    assert reloaded.text_config.layer_norm_eps == 1e-12 and reloaded.vision_config.window_size == 2


def test_config_rejects_an_unknown_image_encoder():
    with pytest.raises(ValueError, match="CLIP or Swin"):
        tiny_config(vision=dict(model_type="vit"))


def test_trace_names_follow_the_fixture_layout_with_per_pass_suffixes():
    config = tiny_config(num_labels=2, num_image_token_types=3)
    model = build(MeterForVisualReasoning, config)
    inputs = tiny_inputs(config, pairs=True)
    trace = hf_trace(model, {"text_ids": inputs["input_ids"], "text_masks": inputs["attention_mask"],
                             "image_0": inputs["pixel_values"][:, 0], "image_1": inputs["pixel_values"][:, 1]})
    names = list(trace)
    assert names[0] == "text_embeddings_0" and names[-1] == "nlvr2_logits"
    assert {"fusion_image_layers_1.1", "image_encoder_layers_0.1", "cls_feats_1"} <= set(names)
    assert len(names) == 2 * 16 + 1  # per pass: 1 + 1 + 1 text, 1 + 2 + 1 image, 2 inputs, 2 + 2 fusion, 3 feats


ROUND_TRIP_CASES = [
    (MeterForPreTraining, "AutoModelForPreTraining", dict(vision=CLIP, text=ROBERTA), "mlm_logits"),
    (MeterForImageTextMatching, "AutoModelForSequenceClassification",
     dict(vision=SWIN, text=BERT, use_rank_output=True), "rank_scores"),
]


@pytest.mark.parametrize("model_class, auto_class, config_fields, field", ROUND_TRIP_CASES,
                         ids=lambda c: getattr(c, "__name__", None))
def test_saved_folder_reloads_with_remote_code_without_key_changes(
    tmp_path, model_class, auto_class, config_fields, field
):
    config = tiny_config(**config_fields)
    model = build(model_class, config)
    # one attention kernel on both sides: a directly built Swin tower runs eager while from_pretrained picks SDPA,
    # and on some CPUs the two differ in the last bit
    model.set_attn_implementation("eager")
    inputs = tiny_inputs(config)
    with torch.no_grad():
        expected = getattr(model(**inputs), field)
    MeterConfig.register_for_auto_class()
    model_class.register_for_auto_class(auto_class)
    model.save_pretrained(tmp_path / "model")
    # a head built from a plain MeterConfig saves its own config class (the Auto registry's key is the head's)
    stored = json.loads((tmp_path / "model" / "config.json").read_text())
    assert stored["auto_map"]["AutoConfig"] == f"modeling_meter.{model_class.__name__}Config"
    torch.save({"inputs": inputs, "expected": expected}, tmp_path / "io.pt")

    script = textwrap.dedent(f"""
        import sys, torch, transformers
        folder = sys.argv[1]
        io = torch.load(folder + "/../io.pt", weights_only=True)
        model, info = getattr(transformers, "{auto_class}").from_pretrained(
            folder, trust_remote_code=True, output_loading_info=True, attn_implementation="eager")
        # the bare model loads from a task folder too
        base, base_info = sys.modules[type(model).__module__].MeterModel.from_pretrained(
            folder, output_loading_info=True)
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        with torch.no_grad():
            got = getattr(model.eval()(**io["inputs"]), "{field}")
        print(sorted(info["missing_keys"]), sorted(info["unexpected_keys"]), sorted(base_info["missing_keys"]),
              float((got - io["expected"]).abs().max()))
    """)
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path / "model")], capture_output=True, text=True,
                            cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[] [] [] 0.0"
