"""METER Lightning checkpoints -> HF folders: head class from the checkpoint, strict, self-contained."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import METER_FIXTURE_NAMES
from helpers import load_in_fresh_process, run_cli
from hfport.converters import convert_checkpoint
from hfport.converters.pipeline import export_folder
from hfport.errors import ConfigError
from hfport.read.torch_file import load_checkpoint

EXPECTED_CLASS = {
    "meter-tiny-vqa-lightning": "MeterForQuestionAnswering",
    "meter-tiny-pretrain-released-style": "MeterForPreTraining",
    "meter-tiny-nlvr2": "MeterForVisualReasoning",
    "meter-tiny-irtr": "MeterForImageTextMatching",
    "meter-tiny-snli": "MeterForVisualEntailment",
}


@pytest.mark.parametrize("name", METER_FIXTURE_NAMES)
def test_auto_model_gives_the_head_class_the_checkpoint_carries_in_a_fresh_process(name, converted_fixtures, tmp_path):
    info = load_in_fresh_process(converted_fixtures(name), "AutoModel", tmp_path)
    assert info["class"] == EXPECTED_CLASS[name]
    assert info["module"].startswith("transformers_modules.")
    assert info["missing_keys"] == [] and info["unexpected_keys"] == [] and info["mismatched_keys"] == []


@pytest.mark.parametrize("name", METER_FIXTURE_NAMES)
def test_lightning_to_hf_to_lightning_restores_every_kept_tensor_bit_exactly(name, converted_fixtures, shared_root,
                                                                              tmp_path):
    original = load_checkpoint(shared_root / "fixtures/meter" / name / "checkpoint.ckpt")["state_dict"]
    result = export_folder(converted_fixtures(name), tmp_path / "back.ckpt")
    restored = load_checkpoint(result["written"])["state_dict"]
    leftovers = {"vit_model.token_embedding.weight", "vit_model.positional_embedding", "vit_model.ln_final.weight",
                 "vit_model.ln_final.bias"}
    assert set(original) - set(restored) <= leftovers  # the CLIP text-tower leftovers, dropped with a reason
    assert result["regenerated"] == ["text_transformer.embeddings.position_ids"]
    assert set(restored) <= set(original)
    for key, tensor in restored.items():
        assert torch.equal(tensor, original[key]), key


def test_rank_output_is_stored_as_its_own_tensor_although_it_shares_storage_in_the_source(converted_fixtures):
    from safetensors import safe_open

    folder = converted_fixtures("meter-tiny-irtr")
    with safe_open(str(folder / "model.safetensors"), framework="pt") as handle:
        rank, itm = handle.get_tensor("rank_output.weight"), handle.get_tensor("itm_score.fc.weight")
    assert rank.shape == (1, 128) and torch.equal(rank, itm[1:])
    assert json.loads((folder / "config.json").read_text())["use_rank_output"] is True


def test_the_text_tower_eps_comes_from_the_users_text_config_and_fusion_eps_stays_1e_12(converted_fixtures):
    config = json.loads((converted_fixtures("meter-tiny-snli") / "config.json").read_text())
    assert config["text_config"]["layer_norm_eps"] == 1e-5
    assert config["layer_norm_eps"] == 1e-12
    assert config["vision_config"]["hidden_act"] == "quick_gelu"
    assert config["vision_config"]["num_hidden_layers"] == 2  # METER keeps one CLIP block fewer


def test_nlvr2_gets_three_token_types_and_the_classifier_on_two_images(converted_fixtures):
    config = json.loads((converted_fixtures("meter-tiny-nlvr2") / "config.json").read_text())
    assert config["num_image_token_types"] == 3 and config["architectures"] == ["MeterForVisualReasoning"]


def test_a_checkpoint_with_heads_for_several_tasks_needs_head_and_drops_the_rest_explicitly(shared_root, tmp_path):
    source = shared_root / "fixtures/meter/meter-tiny-pretrain-released-style"
    folder = convert_checkpoint(source / "checkpoint.ckpt", tmp_path / "itm", head="itm",
                                text_config=source / "text_config.json")
    info = json.loads((folder / "hfport.json").read_text())
    assert info["model_class"] == "MeterForImageTextMatching"
    assert "mlm_score.decoder.weight" in info["dropped"]
    assert "head the chosen model class does not carry" in info["dropped"]["mlm_score.decoder.weight"]
    with pytest.raises(ConfigError, match="needs nlvr2_classifier"):
        convert_checkpoint(source / "checkpoint.ckpt", tmp_path / "nlvr2", head="nlvr2",
                           text_config=source / "text_config.json")


@pytest.mark.parametrize("name", METER_FIXTURE_NAMES)
def test_fresh_process_verification_matches_every_recorded_output_and_layer(name, converted_fixtures, shared_root,
                                                                           tmp_path):
    report_path = tmp_path / "report.json"
    golden = shared_root / "fixtures/meter" / name / "reference.pt"
    result = run_cli(["verify", converted_fixtures(name), "--golden", golden, "--report", report_path], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(report_path.read_text())
    reference = torch.load(golden, weights_only=True)
    heads = [k for k in reference["outputs"] if k.endswith(("_logits", "_scores")) or k.startswith("nlvr2")]
    compared = {o["name"] for o in report["outputs"]}
    assert set(heads) <= compared and any(n.startswith("fusion_image_layers") for n in compared)
    assert all(o["passed"] and o["max_abs"] <= 1e-5 for o in report["outputs"])
