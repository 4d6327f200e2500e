"""Behaviour of the OFA model classes on tiny random configurations (no fixtures needed)."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from hfport.models.ofa import OFAConfig, OFAForConditionalGeneration, OFAModel
from hfport.models.ofa.modeling_ofa import OFAFrozenBatchNorm2d

PAD = 1


def tiny_config(**overrides) -> OFAConfig:
    values = dict(
        vocab_size=40,
        encoder_layers=2,
        decoder_layers=2,
        encoder_embed_dim=32,
        decoder_embed_dim=32,
        encoder_ffn_embed_dim=64,
        decoder_ffn_embed_dim=64,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        resnet_type="resnet18",
        token_bucket_size=16,
        image_bucket_size=8,
        max_source_positions=64,
        max_target_positions=64,
        scale_attn=True,
        scale_fc=True,
        scale_heads=True,
        disable_entangle=True,
    )
    values.update(overrides)
    return OFAConfig(**values)


def randomised(model: nn.Module, seed: int = 0) -> nn.Module:
    """Move every parameter away from its (often trivial) initial value so that each one matters."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.1)
    return model.eval()


def tiny_model(**overrides) -> OFAForConditionalGeneration:
    torch.manual_seed(0)
    return randomised(OFAForConditionalGeneration(tiny_config(**overrides)))


def batch(patch_masks=(True, True)) -> dict:
    generator = torch.Generator().manual_seed(1)
    return {
        "input_ids": torch.tensor([[0, 5, 9, 12, 7, 2], [0, 8, 11, 2, PAD, PAD]]),
        "patch_images": torch.rand(2, 3, 32, 32, generator=generator) * 2 - 1,
        "patch_masks": torch.tensor(patch_masks),
    }


DECODER_INPUT_IDS = torch.tensor([[0, 6, 14, 3, 9], [0, 21, 4, 17, 5]])


@pytest.mark.parametrize(
    "overrides, code_masks",
    [
        ({}, None),
        ({"disable_entangle": False, "entangle_position_embedding": True, "attn_scale_factor": 1.0}, None),
        ({"code_image_size": 64, "disable_entangle": False}, torch.tensor([True, False])),
    ],
    ids=["standard", "entangled", "image_codes"],
)
def test_incremental_decoding_with_cache_gives_the_full_forward_logits(overrides, code_masks):
    model = tiny_model(**overrides)
    inputs = batch(patch_masks=(True, False))
    with torch.no_grad():
        full = model(**inputs, decoder_input_ids=DECODER_INPUT_IDS, code_masks=code_masks, use_cache=False).logits
        encoder_outputs = model.get_encoder()(**inputs)
        past, steps = None, []
        for t in range(DECODER_INPUT_IDS.shape[1]):
            out = model(
                encoder_outputs=encoder_outputs,
                decoder_input_ids=DECODER_INPUT_IDS[:, t : t + 1],
                code_masks=code_masks,
                past_key_values=past,
                use_cache=True,
            )
            past = out.past_key_values
            steps.append(out.logits)
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-5)


def test_text_only_sample_ignores_its_image_and_matches_a_run_without_images():
    model = tiny_model()
    masked = batch(patch_masks=(True, False))
    with torch.no_grad():
        with_image = model(**masked, decoder_input_ids=DECODER_INPUT_IDS).logits[1]
        other_image = dict(masked, patch_images=torch.randn(2, 3, 32, 32))
        with_other_image = model(**other_image, decoder_input_ids=DECODER_INPUT_IDS).logits[1]
        no_image = model(input_ids=masked["input_ids"][1:], decoder_input_ids=DECODER_INPUT_IDS[1:]).logits[0]
    assert torch.allclose(with_image, with_other_image, atol=1e-6)
    assert torch.allclose(with_image, no_image, atol=1e-5)


def test_patch_masks_change_the_output_of_the_sample_they_mask():
    model = tiny_model()
    with torch.no_grad():
        seen = model(**batch((True, True)), decoder_input_ids=DECODER_INPUT_IDS).logits
        masked = model(**batch((True, False)), decoder_input_ids=DECODER_INPUT_IDS).logits
    assert torch.equal(seen[0], masked[0])
    assert (seen[1] - masked[1]).abs().max() > 1e-3


def test_decoder_padding_mask_is_derived_from_pad_ids():
    model = tiny_model()
    padded = torch.tensor([[0, 6, 14, PAD, PAD]])
    inputs = {key: value[:1] for key, value in batch().items()}
    with torch.no_grad():
        implicit = model(**inputs, decoder_input_ids=padded).logits
        explicit = model(**inputs, decoder_input_ids=padded, decoder_attention_mask=padded.ne(PAD)).logits
        unpadded = model(**inputs, decoder_input_ids=padded[:, :3]).logits
    assert torch.equal(implicit, explicit)
    assert torch.allclose(implicit[:, :3], unpadded, atol=1e-6)


def test_shared_embeddings_tie_decoder_input_and_output_to_the_encoder_embedding():
    model = OFAForConditionalGeneration(tiny_config(share_all_embeddings=True))
    shared = model.encoder.embed_tokens.weight
    assert model.decoder.embed_tokens.weight is shared
    assert model.decoder.output_projection.weight is shared
    assert model.all_tied_weights_keys == {
        "decoder.embed_tokens.weight": "encoder.embed_tokens.weight",
        "decoder.output_projection.weight": "encoder.embed_tokens.weight",
    }


def test_decoder_only_sharing_ties_the_output_projection_to_the_decoder_embedding():
    model = OFAForConditionalGeneration(
        tiny_config(share_all_embeddings=False, share_decoder_input_output_embed=True)
    )
    assert model.decoder.output_projection.weight is model.decoder.embed_tokens.weight
    assert model.decoder.embed_tokens.weight is not model.encoder.embed_tokens.weight
    assert model.all_tied_weights_keys == {"decoder.output_projection.weight": "decoder.embed_tokens.weight"}


def test_unshared_embeddings_are_three_independent_parameters():
    config = tiny_config(share_all_embeddings=False, share_decoder_input_output_embed=False)
    model = OFAForConditionalGeneration(config)
    weights = [
        model.encoder.embed_tokens.weight,
        model.decoder.embed_tokens.weight,
        model.decoder.output_projection.weight,
    ]
    assert config.tie_word_embeddings is False
    assert len({id(weight) for weight in weights}) == 3
    assert model.all_tied_weights_keys == {}


def test_bare_model_shares_embeddings_and_has_no_output_projection():
    model = OFAModel(tiny_config())
    assert model.decoder.output_projection is None
    assert model.all_tied_weights_keys == {"decoder.embed_tokens.weight": "encoder.embed_tokens.weight"}
    with torch.no_grad():
        out = model(**batch(), decoder_input_ids=DECODER_INPUT_IDS)
    assert out.last_hidden_state.shape == (2, 5, 32)


@pytest.mark.parametrize(
    "overrides, expected_keys",
    [
        ({"scale_resids": True}, ["encoder.layers.0.w_resid", "decoder.layers.1.w_resid"]),
        ({"entangle_position_embedding": True, "disable_entangle": False}, []),
        ({"sync_bn": True}, ["encoder.embed_images.bn1.num_batches_tracked"]),
        ({"share_all_embeddings": False, "share_decoder_input_output_embed": False}, []),
        ({"scale_attn": False, "scale_fc": False, "scale_heads": False, "layernorm_embedding": False}, []),
        ({"encoder_normalize_before": False, "decoder_normalize_before": False, "no_scale_embedding": False}, []),
        ({"add_type_embedding": False, "patch_layernorm_embedding": False, "activation_fn": "relu"}, []),
        ({"decoder_output_dim": 24, "share_all_embeddings": False, "share_decoder_input_output_embed": False},
         ["decoder.project_out_dim.weight"]),
    ],
    ids=["scale_resids", "entangle", "sync_bn", "unshared", "no_normformer", "post_ln", "no_type_embedding",
         "output_dim"],
)
def test_structural_variants_build_and_run(overrides, expected_keys):
    model = tiny_model(**overrides)
    with torch.no_grad():
        logits = model(**batch(), decoder_input_ids=DECODER_INPUT_IDS).logits
    assert logits.shape == (2, 5, 40)
    assert torch.isfinite(logits).all()
    assert set(expected_keys) <= set(model.state_dict())


def test_sync_bn_uses_batchnorm_eps_1e_3():
    model = OFAForConditionalGeneration(tiny_config(sync_bn=True))
    assert model.encoder.embed_images.bn1.eps == 1e-3
    assert OFAForConditionalGeneration(tiny_config()).encoder.embed_images.bn1.eps == 1e-5


def test_frozen_resnet_has_no_num_batches_tracked():
    model = OFAForConditionalGeneration(tiny_config(freeze_resnet=True))
    assert isinstance(model.encoder.embed_images.bn1, OFAFrozenBatchNorm2d)
    assert not any(key.endswith("num_batches_tracked") for key in model.state_dict())


def test_mid_layer_norm_names_follow_the_published_layout():
    keys = set(OFAForConditionalGeneration(tiny_config()).state_dict())
    assert {
        "encoder.layers.0.self_attn_mid_layer_norm.weight",
        "decoder.layers.0.self_attn_mid_layer_norm.weight",
        "decoder.layers.0.cross_attn_mid_layer_norm.weight",
        "decoder.layers.0.ffn_layer_norm.weight",
        "decoder.layers.0.cross_attn_layer_norm.weight",
        "decoder.layers.0.cross_attn.c_attn",
        "encoder.token_rel_pos_table_list.1.weight",
        "encoder.embed_images.layer1.0.downsample.1.running_var",
    } <= keys
    assert not any("rp_bucket" in key or "image_position_idx" in key or "version" in key for key in keys)


def test_labels_give_a_cross_entropy_loss():
    model = tiny_model()
    labels = torch.tensor([[6, 14, 3, 9, 2], [21, 4, 2, -100, -100]])
    out = model(**batch(), labels=labels)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)


def test_greedy_generation_with_cache_equals_argmax_of_full_forwards():
    model = tiny_model()
    inputs = batch((True, False))
    with torch.no_grad():
        generated = model.generate(**inputs, max_new_tokens=6, do_sample=False, num_beams=1, suppress_tokens=[PAD])
        tokens = torch.zeros(2, 1, dtype=torch.long)
        for _ in range(6):
            logits = model(**inputs, decoder_input_ids=tokens, use_cache=False).logits[:, -1]
            logits[:, PAD] = float("-inf")
            tokens = torch.cat([tokens, logits.argmax(-1, keepdim=True)], dim=1)
    finished = generated[:, 1:].eq(2).cumsum(1).gt(0)
    assert torch.equal(generated[:, :1], tokens[:, :1])
    expected = tokens[:, 1 : generated.shape[1]]
    observed = generated[:, 1:]
    # after eos transformers pads; compare up to and including the first eos
    keep = ~(finished & observed.ne(2)) | observed.eq(2)
    assert torch.equal(observed[keep], expected[keep])


RELOAD_SCRIPT = textwrap.dedent(
    """
    import json, sys, torch
    from transformers import AutoModelForSeq2SeqLM
    folder, inputs_path, out_path = sys.argv[1:4]
    model, info = AutoModelForSeq2SeqLM.from_pretrained(folder, trust_remote_code=True, output_loading_info=True)
    inputs = torch.load(inputs_path)
    with torch.no_grad():
        logits = model.eval()(**inputs).logits
    torch.save(logits, out_path)
    print(json.dumps({k: sorted(map(str, v)) for k, v in info.items()}))
    print(type(model).__module__)
    """
)


def test_saved_folder_reloads_through_automodel_with_remote_code_in_a_fresh_process(tmp_path):
    OFAConfig.register_for_auto_class()
    OFAForConditionalGeneration.register_for_auto_class("AutoModelForSeq2SeqLM")
    OFAModel.register_for_auto_class("AutoModel")
    model = tiny_model()
    folder = tmp_path / "ofa-tiny"
    model.save_pretrained(folder)
    inputs = dict(batch((True, False)), decoder_input_ids=DECODER_INPUT_IDS)
    torch.save(inputs, tmp_path / "inputs.pt")
    with torch.no_grad():
        expected = model(**inputs).logits

    result = subprocess.run(
        [sys.executable, "-c", RELOAD_SCRIPT, str(folder), str(tmp_path / "inputs.pt"), str(tmp_path / "out.pt")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    info = json.loads(lines[-2])
    assert "hfport" not in lines[-1]  # loaded from the folder's own copy of the code
    assert info["missing_keys"] == [] and info["unexpected_keys"] == [] and info["mismatched_keys"] == []
    assert json.loads((folder / "config.json").read_text())["auto_map"]["AutoModelForSeq2SeqLM"].endswith(
        "OFAForConditionalGeneration"
    )
    assert torch.equal(torch.load(tmp_path / "out.pt"), expected)
