"""OFA fairseq checkpoints -> HF folders: strict, invertible, self-contained, equal to upstream."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from conftest import OFA_FIXTURE_NAMES
from helpers import load_in_fresh_process, run_cli
from hfport.converters import convert_checkpoint
from hfport.converters.pipeline import export_folder
from hfport.read.torch_file import load_checkpoint

RECOMPUTED = {"encoder.version", "decoder.version", "encoder.token_rp_bucket", "encoder.image_rp_bucket",
              "decoder.token_rp_bucket", "decoder.image_rp_bucket", "decoder.image_position_idx"}


@pytest.mark.parametrize("name", OFA_FIXTURE_NAMES)
def test_converted_folder_loads_in_a_fresh_process_without_hfport_and_with_no_missing_keys(
        name, converted_fixtures, tmp_path):
    info = load_in_fresh_process(converted_fixtures(name), "AutoModelForSeq2SeqLM", tmp_path)
    assert info["class"] == "OFAForConditionalGeneration"
    assert info["module"].startswith("transformers_modules.")
    assert info["missing_keys"] == [] and info["unexpected_keys"] == [] and info["mismatched_keys"] == []


@pytest.mark.parametrize("name", OFA_FIXTURE_NAMES)
def test_fairseq_to_hf_to_fairseq_reproduces_every_tensor_bit_exactly(name, converted_fixtures, shared_root, tmp_path):
    original = load_checkpoint(shared_root / "fixtures/ofa" / name / "checkpoint.pt")["model"]
    result = export_folder(converted_fixtures(name), tmp_path / "back.pt")
    restored = load_checkpoint(result["written"])["model"]
    assert set(restored) == set(original)
    # the buffers HF recomputes are regenerated backwards, and must match fairseq's own bit for bit too
    assert set(result["regenerated"]) == RECOMPUTED and result["not_restored"] == {}
    for key, tensor in original.items():
        assert restored[key].dtype == tensor.dtype, key
        assert torch.equal(restored[key], tensor), key


def test_source_dtype_is_kept_unless_asked_and_fp16_weights_stay_fp16(converted_fixtures):
    folder = converted_fixtures("ofa-tiny-fp16-trained")
    with safe_open(str(folder / "model.safetensors"), framework="pt") as handle:
        dtypes = {handle.get_slice(k).get_dtype() for k in handle.keys()}
    assert dtypes == {"F16", "I64"}  # weights and BatchNorm counters
    assert json.loads((folder / "config.json").read_text())["dtype"] == "float16"


def test_dtype_option_casts_floats_only_and_shards_get_an_index(shared_root, tmp_path):
    folder = convert_checkpoint(shared_root / "fixtures/ofa/ofa-tiny-standard/checkpoint.pt", tmp_path / "bf16",
                                dtype="bfloat16", max_shard_size="4MB")
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) >= 3 and all((folder / s).is_file() for s in shards)
    assert not (folder / "model.safetensors").exists()
    for shard in shards:
        with safe_open(str(folder / shard), framework="pt") as handle:
            for key in handle.keys():
                dtype = handle.get_slice(key).get_dtype()
                assert dtype == ("I64" if key.endswith("num_batches_tracked") else "BF16"), key


def test_sharded_folder_loads_with_stock_transformers(shared_root, tmp_path):
    folder = convert_checkpoint(shared_root / "fixtures/ofa/ofa-tiny-plain/checkpoint.pt", tmp_path / "sharded",
                                max_shard_size="2MB")
    info = load_in_fresh_process(folder, "AutoModelForSeq2SeqLM", tmp_path)
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []


def test_provenance_records_source_hash_mapping_hash_and_every_drop_reason(converted_fixtures, shared_root):
    info = json.loads((converted_fixtures("ofa-tiny-standard") / "hfport.json").read_text())
    from hfport.read.torch_file import file_sha256

    assert info["source"]["sha256"] == file_sha256(shared_root / "fixtures/ofa/ofa-tiny-standard/checkpoint.pt")
    assert info["mapping"]["file"] == "ofa.toml" and len(info["mapping"]["sha256"]) == 64
    assert set(info["dropped"]) == RECOMPUTED and all(info["dropped"].values())
    assert info["tied"] == {"decoder.embed_tokens.weight": "encoder.embed_tokens.weight",
                            "decoder.output_projection.weight": "encoder.embed_tokens.weight"}


def test_generation_config_starts_from_bos_and_never_emits_pad(converted_fixtures):
    generation = json.loads((converted_fixtures("ofa-tiny-standard") / "generation_config.json").read_text())
    assert generation["decoder_start_token_id"] == 0 and generation["eos_token_id"] == 2
    assert generation["suppress_tokens"] == [1]


@pytest.mark.parametrize("name", OFA_FIXTURE_NAMES)
def test_fresh_process_verification_matches_upstream_logits_hidden_states_and_greedy_tokens(
        name, converted_fixtures, shared_root, tmp_path):
    """The folder is loaded through transformers' Auto classes in a new interpreter and fed the recorded inputs."""
    report_path = tmp_path / "report.json"
    result = run_cli(["verify", converted_fixtures(name), "--golden",
                      shared_root / "fixtures/ofa" / name / "reference.pt", "--report", report_path], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(report_path.read_text())
    compared = {(o["name"], o["set"]) for o in report["outputs"]}
    reference = torch.load(shared_root / "fixtures/ofa" / name / "reference.pt", weights_only=True)
    for set_name in ("inputs", "inputs_masked"):
        layers = len(reference["outputs"]["decoder_inner_states"])
        assert ("logits", set_name) in compared and (f"decoder_inner_states.{layers - 1}", set_name) in compared
        assert (f"encoder_hidden_states.{len(reference['outputs']['encoder_hidden_states']) - 1}", set_name) in compared
    assert all(o["passed"] and o["max_abs"] <= 1e-4 for o in report["outputs"])
    greedy = {g["name"]: g["exact"] for g in report["generation"]}
    assert greedy["greedy"] and greedy["greedy_masked"]


def test_a_legacy_checkpoint_with_top_level_args_instead_of_cfg_converts(shared_root, tmp_path):
    from hfport.read.torch_file import ALLOWED_GLOBALS

    with torch.serialization.safe_globals(ALLOWED_GLOBALS):
        checkpoint = torch.load(shared_root / "fixtures/ofa/ofa-tiny-plain/checkpoint.pt", weights_only=True)
    checkpoint["args"] = checkpoint.pop("cfg")["model"]
    torch.save(checkpoint, tmp_path / "legacy.pt")
    folder = convert_checkpoint(tmp_path / "legacy.pt", tmp_path / "out")
    config = json.loads((folder / "config.json").read_text())
    assert config["attn_scale_factor"] == 1 and config["disable_entangle"] is False and config["token_bucket_size"] == 32


def test_tied_copies_left_out_of_the_file_are_derived_by_tying(shared_root, tmp_path):
    from hfport.read.torch_file import ALLOWED_GLOBALS

    with torch.serialization.safe_globals(ALLOWED_GLOBALS):
        checkpoint = torch.load(shared_root / "fixtures/ofa/ofa-tiny-plain/checkpoint.pt", weights_only=True)
    del checkpoint["model"]["decoder.output_projection.weight"], checkpoint["model"]["decoder.embed_tokens.weight"]
    torch.save(checkpoint, tmp_path / "slim.pt")
    folder = convert_checkpoint(tmp_path / "slim.pt", tmp_path / "out")
    info = json.loads((folder / "hfport.json").read_text())
    assert info["tied"] == {"decoder.embed_tokens.weight": "encoder.embed_tokens.weight",
                            "decoder.output_projection.weight": "encoder.embed_tokens.weight"}
    load = load_in_fresh_process(folder, "AutoModelForSeq2SeqLM", tmp_path)
    assert load["missing_keys"] == []


def test_export_command_writes_the_original_format_and_will_not_overwrite(converted_fixtures, tmp_path, capsys):
    from hfport.cli import main

    out = tmp_path / "back.pt"
    assert main(["export", str(converted_fixtures("ofa-tiny-plain")), str(out)]) == 0
    assert "rebuilt 7 derived buffers" in capsys.readouterr().out
    assert "cfg" in load_checkpoint(out) and main(["export", str(converted_fixtures("ofa-tiny-plain")), str(out)]) == 2
    assert "pass --force" in capsys.readouterr().err
