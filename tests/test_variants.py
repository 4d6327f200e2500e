"""Checkpoints the shared fixtures do not cover: other OFA flag combinations and presets, fp16 storage, METER with
a Swin tower or a BERT text tower. Each source is written in the original format by running the mapping backwards
over a seeded HF model; converting it must rebuild the same model (same config flags, same logits)."""

from __future__ import annotations

import json

import pytest
import torch

from hfport.converters import convert_checkpoint
from hfport.demo import perturb, seeded_model, write_fairseq_checkpoint
from hfport.mappings.engine import Mapping

TINY = dict(encoder_layers=1, decoder_layers=1, encoder_embed_dim=32, decoder_embed_dim=32,
            encoder_ffn_embed_dim=64, decoder_ffn_embed_dim=64, encoder_attention_heads=2, decoder_attention_heads=2,
            token_bucket_size=16, image_bucket_size=6)

OFA_VARIANTS = {
    "scale_resids": dict(scale_resids=True),
    "entangled_positions": dict(entangle_position_embedding=True, disable_entangle=False),
    "sync_bn": dict(sync_bn=True),
    "frozen_resnet": dict(freeze_resnet=True),
    "decoder_only_sharing": dict(share_all_embeddings=False, share_decoder_input_output_embed=True),
    "no_sharing": dict(share_all_embeddings=False, share_decoder_input_output_embed=False),
    "post_layernorm": dict(encoder_normalize_before=False, decoder_normalize_before=False),
    "no_normformer_no_extras": dict(scale_attn=False, scale_fc=False, scale_heads=False, layernorm_embedding=False,
                                    patch_layernorm_embedding=False, code_layernorm_embedding=False,
                                    add_type_embedding=False),
    "resnet50_scale_factor_1": dict(resnet_type="resnet50", attn_scale_factor=1.0),
}


def _ofa_inputs(vocab: int):
    generator = torch.Generator().manual_seed(1)
    src = torch.randint(4, vocab, (2, 6), generator=generator)
    src[:, 0], src[:, -1], src[1, 4:] = 0, 2, 1
    src[1, 3] = 2
    return dict(input_ids=src, patch_images=torch.rand(2, 3, 64, 64, generator=generator) * 2 - 1,
                patch_masks=torch.tensor([True, False]),
                decoder_input_ids=torch.tensor([[0, 9, 11, 13], [0, 17, 1, 1]]))


def _load(folder, auto_class):
    import transformers

    return getattr(transformers, auto_class).from_pretrained(folder, trust_remote_code=True, dtype=torch.float32).eval()


@pytest.mark.parametrize("name", list(OFA_VARIANTS))
def test_ofa_flag_combination_survives_fairseq_format_and_conversion(name, tmp_path):
    overrides = {**TINY, **OFA_VARIANTS[name]}
    source = seeded_model(seed=3, **overrides)
    checkpoint = write_fairseq_checkpoint(source, tmp_path / f"{name}.pt")
    folder = convert_checkpoint(checkpoint, tmp_path / "hf")
    config = json.loads((folder / "config.json").read_text())
    for field, value in overrides.items():
        assert config[field] == value, field
    converted = _load(folder, "AutoModelForSeq2SeqLM")
    inputs = _ofa_inputs(source.config.vocab_size)
    with torch.no_grad():
        expected, got = source(**inputs).logits, converted(**inputs).logits
    assert torch.equal(expected, got)


def test_fp16_fairseq_weights_stay_fp16_and_upcast_on_request(tmp_path):
    source = seeded_model(seed=4, **TINY).half()
    checkpoint = write_fairseq_checkpoint(source, tmp_path / "fp16.pt")
    kept = convert_checkpoint(checkpoint, tmp_path / "kept")
    upcast = convert_checkpoint(checkpoint, tmp_path / "fp32", dtype="float32")
    assert json.loads((kept / "config.json").read_text())["dtype"] == "float16"
    assert json.loads((upcast / "config.json").read_text())["dtype"] == "float32"
    reference = source.float()
    inputs = _ofa_inputs(source.config.vocab_size)
    with torch.no_grad():
        expected = reference(**inputs).logits
        for folder in (kept, upcast):  # fp16 -> fp32 is exact, so both rebuild the upcast source exactly
            assert torch.equal(_load(folder, "AutoModelForSeq2SeqLM")(**inputs).logits, expected)


# -- METER: other towers ---------------------------------------------------------------------------------------------

def _meter_model(vision: str, text: str):
    from transformers import BertConfig, CLIPVisionConfig, RobertaConfig, SwinConfig

    from hfport.models.meter.configuration_meter import MeterConfig
    from hfport.models.meter.modeling_meter import MeterForQuestionAnswering

    if vision == "swin":
        vision_config = SwinConfig(image_size=64, patch_size=4, embed_dim=16, depths=[1, 2], num_heads=[1, 2],
                                   window_size=2, mlp_ratio=2.0, layer_norm_eps=1e-5)
    else:
        vision_config = CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=1, image_size=64, patch_size=32,
                                         hidden_act="quick_gelu", layer_norm_eps=1e-5)
    common = dict(vocab_size=60, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    text_config = (BertConfig(max_position_embeddings=20, type_vocab_size=2, pad_token_id=0, **common)
                   if text == "bert" else RobertaConfig(max_position_embeddings=22, type_vocab_size=1,
                                                       layer_norm_eps=1e-5, pad_token_id=1, **common))
    torch.manual_seed(5)
    config = MeterConfig(vision_config=vision_config.to_dict(), text_config=text_config.to_dict(), hidden_size=32,
                         num_attention_heads=2, num_top_layer=1, intermediate_size=64, max_text_len=8, image_size=64,
                         num_labels=5)
    return perturb(MeterForQuestionAnswering(config).eval()), text_config


def _write_meter_checkpoint(model, vision: str, text: str, path):
    from hfport.converters import meter

    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    mapping = Mapping.load(meter.MAPPING)
    plan = mapping.plan({k: tuple(v.shape) for k, v in state.items()}, None, meter.export_flags(model.config),
                        direction="backward")
    original = dict(Mapping.run(plan, state.__getitem__))
    hp = {"vit": "swin_base_patch4_window7_224" if vision == "swin" else "ViT-B/32", "patch_size": 32,
          "tokenizer": "bert-base-uncased" if text == "bert" else "roberta-base", "image_size": 64, "num_heads": 2,
          "hidden_size": 32, "num_top_layer": 1, "max_text_len": 8, "vqav2_label_size": 5, "mlp_ratio": 2,
          "loss_names": {"vqa": 1}}
    torch.save(meter.original_checkpoint(model.config, original, {"hyper_parameters": {"config": hp}}), path)
    return path


@pytest.mark.parametrize("vision, text", [("swin", "roberta"), ("swin", "bert"), ("clip", "bert")])
def test_meter_with_other_towers_survives_lightning_format_and_conversion(vision, text, tmp_path):
    source, text_config = _meter_model(vision, text)
    checkpoint = _write_meter_checkpoint(source, vision, text, tmp_path / "meter.ckpt")
    text_config.to_json_file(tmp_path / "text_config.json")
    folder = convert_checkpoint(checkpoint, tmp_path / "hf", text_config=tmp_path / "text_config.json")
    config = json.loads((folder / "config.json").read_text())
    assert config["vision_config"]["model_type"] == ("swin" if vision == "swin" else "clip_vision_model")
    assert config["text_config"]["model_type"] == text
    converted = _load(folder, "AutoModel")
    generator = torch.Generator().manual_seed(2)
    ids = torch.randint(3, 60, (2, 8), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    ids[1, 5:] = text_config.pad_token_id
    pixels = torch.randn(2, 3, 64, 64, generator=generator)
    with torch.no_grad():
        expected = source(input_ids=ids, attention_mask=mask, pixel_values=pixels).logits
        got = converted(input_ids=ids, attention_mask=mask, pixel_values=pixels).logits
    assert torch.equal(expected, got)
