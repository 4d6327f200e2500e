"""`hfport export` reports exactly the source keys the conversion dropped: from the folder's own record, not from
the mapping's templates (which miss open-placeholder keys and name keys a source never had)."""

from __future__ import annotations

import pytest
import torch

from hfport.cli import main as cli_main
from hfport.converters import convert_checkpoint
from hfport.converters.pipeline import export_folder
from hfport.read.torch_file import load_checkpoint

POSITION_IDS = "text_transformer.embeddings.position_ids"


def _meter_source(shared_root, name: str) -> dict:
    return load_checkpoint(shared_root / "fixtures/meter" / name / "checkpoint.ckpt")["state_dict"]


@pytest.mark.parametrize("name, leftovers", [
    # the VQA fixture has no token_embedding: it must not be reported; ln_final.* must be
    ("meter-tiny-vqa-lightning", {"vit_model.positional_embedding", "vit_model.ln_final.weight",
                                  "vit_model.ln_final.bias"}),
    ("meter-tiny-pretrain-released-style", {"vit_model.token_embedding.weight", "vit_model.positional_embedding",
                                            "vit_model.ln_final.weight", "vit_model.ln_final.bias"}),
])
def test_meter_export_lists_exactly_the_clip_leftovers_its_source_had(name, leftovers, converted_fixtures,
                                                                      shared_root, tmp_path, capsys):
    source = _meter_source(shared_root, name)
    assert leftovers <= set(source)
    assert cli_main(["export", str(converted_fixtures(name)), str(tmp_path / "back.ckpt")]) == 0
    printed = {line.split(" ", 2)[2].split(" (")[0] for line in capsys.readouterr().out.splitlines()
               if line.startswith("not restored: ")}
    assert printed == leftovers
    result = export_folder(converted_fixtures(name), tmp_path / "again.ckpt")
    assert set(result["not_restored"]) == leftovers and result["regenerated"] == [POSITION_IDS]
    restored = load_checkpoint(result["written"])["state_dict"]
    assert set(restored) == set(source) - leftovers  # what is reported missing is all that is missing


def test_a_head_dropped_by_the_chosen_class_is_reported_key_by_key(shared_root, tmp_path):
    name = "meter-tiny-pretrain-released-style"
    fixture = shared_root / "fixtures/meter" / name
    folder = convert_checkpoint(fixture / "checkpoint.ckpt", tmp_path / "itm", text_config=fixture / "text_config.json",
                                head="itm")
    source = _meter_source(shared_root, name)
    result = export_folder(folder, tmp_path / "back.ckpt")
    mlm = {k for k in source if k.startswith("mlm_score.")}
    assert mlm and mlm <= set(result["not_restored"])
    assert all("--head" in result["not_restored"][k] for k in mlm)
    restored = load_checkpoint(result["written"])["state_dict"]
    assert set(restored) == set(source) - set(result["not_restored"])


def test_ofa_export_regenerates_only_the_buffers_its_source_stored(shared_root, tmp_path):
    checkpoint = load_checkpoint(shared_root / "fixtures/ofa/ofa-tiny-plain/checkpoint.pt")
    absent = {"decoder.image_position_idx", "encoder.version"}  # an older fairseq save without them
    for key in absent:
        del checkpoint["model"][key]
    torch.save(checkpoint, tmp_path / "older.pt")
    folder = convert_checkpoint(tmp_path / "older.pt", tmp_path / "hf")
    result = export_folder(folder, tmp_path / "back.pt")
    assert result["not_restored"] == {}
    assert absent.isdisjoint(result["regenerated"]) and "decoder.version" in result["regenerated"]
    restored = load_checkpoint(result["written"])["model"]
    assert set(restored) == set(checkpoint["model"])
    for key, tensor in checkpoint["model"].items():
        assert torch.equal(restored[key], tensor), key
