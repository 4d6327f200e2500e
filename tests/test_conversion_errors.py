"""Bad input through the CLI: one clear line, a non-zero exit, nothing written at the output path."""

from __future__ import annotations

import os

import torch

from hfport.cli import main
from hfport.read.torch_file import ALLOWED_GLOBALS

OFA = "fixtures/ofa/ofa-tiny-plain/checkpoint.pt"
METER = "fixtures/meter/meter-tiny-snli"


def _load_plain(path):
    with torch.serialization.safe_globals(ALLOWED_GLOBALS):
        return torch.load(path, weights_only=True, map_location="cpu")


def _modified_ofa(shared_root, tmp_path, change):
    checkpoint = _load_plain(shared_root / OFA)
    change(checkpoint)
    path = tmp_path / "modified.pt"
    torch.save(checkpoint, path)
    return path


def _modified_meter(shared_root, tmp_path, change):
    checkpoint = _load_plain(shared_root / METER / "checkpoint.ckpt")
    change(checkpoint)
    path = tmp_path / "modified.ckpt"
    torch.save(checkpoint, path)
    return path


def _convert_fails(capsys, tmp_path, source, *extra):
    out = tmp_path / "out"
    code = main(["convert", str(source), str(out), "--quiet", *map(str, extra)])
    err = capsys.readouterr().err
    assert code != 0
    assert err.startswith("error: ")
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) <= 2  # the fact, and at most one line of advice
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")], "staging debris left behind"
    return err


def test_a_missing_source_tensor_is_named_and_nothing_is_written(shared_root, tmp_path, capsys):
    source = _modified_ofa(shared_root, tmp_path, lambda c: c["model"].pop("decoder.layers.0.fc2.weight"))
    err = _convert_fails(capsys, tmp_path, source)
    assert "decoder.layers.0.fc2.weight" in err and "would not be produced" in err


def test_an_extra_source_tensor_is_named_and_nothing_is_written(shared_root, tmp_path, capsys):
    def add(c):
        # not OFA's adapter layout (down_proj/up_proj): an unknown module in existing layers
        c["model"]["encoder.layers.0.adapter.fc1.weight"] = torch.zeros(4, 48)
        c["model"]["encoder.layers.1.adapter.fc1.weight"] = torch.zeros(4, 48)
    err = _convert_fails(capsys, tmp_path, _modified_ofa(shared_root, tmp_path, add))
    assert "encoder.layers.{0..1}.adapter.fc1.weight" in err


def test_a_wrongly_shaped_tensor_is_named_with_both_shapes(shared_root, tmp_path, capsys):
    def reshape(c):
        c["model"]["encoder.layers.1.fc1.weight"] = torch.zeros(95, 48)
    err = _convert_fails(capsys, tmp_path, _modified_ofa(shared_root, tmp_path, reshape))
    assert "encoder.layers.1.fc1.weight [95, 48]" in err and "[96, 48]" in err


def test_untied_embeddings_in_a_checkpoint_that_claims_sharing_are_refused(shared_root, tmp_path, capsys):
    def untie(c):
        c["model"]["decoder.output_projection.weight"] = c["model"]["decoder.output_projection.weight"] + 1
    err = _convert_fails(capsys, tmp_path, _modified_ofa(shared_root, tmp_path, untie))
    assert "tied" in err and "decoder.output_projection.weight" in err


def test_hyper_parameters_that_contradict_the_tensors_are_refused(shared_root, tmp_path, capsys):
    def lie(c):
        c["cfg"]["model"].encoder_layers = 6
    err = _convert_fails(capsys, tmp_path, _modified_ofa(shared_root, tmp_path, lie))
    assert "encoder_layers=6" in err


class TrainerState:
    """Stands for any class a training framework pickles into a checkpoint."""


def test_an_unknown_pickle_global_is_refused_by_name(shared_root, tmp_path, capsys):
    checkpoint = _load_plain(shared_root / OFA)
    checkpoint["extra_state"] = {"trainer": TrainerState()}
    path = tmp_path / "unknown.pt"
    torch.save(checkpoint, path)
    err = _convert_fails(capsys, tmp_path, path)
    assert f"'{TrainerState.__module__}.TrainerState'" in err and "--trust-pickle" in err


def test_a_truncated_file_is_refused(shared_root, tmp_path, capsys):
    whole = (shared_root / OFA).read_bytes()
    path = tmp_path / "truncated.pt"
    path.write_bytes(whole[: len(whole) // 2])
    err = _convert_fails(capsys, tmp_path, path)
    assert "truncated" in err


def test_an_existing_output_is_not_replaced_without_force(shared_root, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["convert", str(shared_root / OFA), str(out), "--quiet"]) == 2
    assert "pass --force" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"
    assert main(["convert", str(shared_root / OFA), str(out), "--quiet", "--force"]) == 0
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").exists()


def test_meter_config_that_contradicts_the_shapes_is_refused(shared_root, tmp_path, capsys):
    def lie(c):
        c["hyper_parameters"]["config"]["hidden_size"] = 768
    source = _modified_meter(shared_root, tmp_path, lie)
    err = _convert_fails(capsys, tmp_path, source, "--text-config", shared_root / METER / "text_config.json")
    assert "hidden_size=768" in err


def test_meter_text_config_that_does_not_fit_the_tower_is_refused(shared_root, tmp_path, capsys):
    bert = shared_root / "fixtures/meter/meter-tiny-nlvr2/text_config.json"
    text = tmp_path / "bert.json"
    text.write_text(bert.read_text().replace('"num_hidden_layers": 2', '"num_hidden_layers": 3'))
    err = _convert_fails(capsys, tmp_path, shared_root / METER / "checkpoint.ckpt", "--text-config", text)
    assert "text layers" in err


def test_meter_missing_head_tensor_is_named(shared_root, tmp_path, capsys):
    source = _modified_meter(shared_root, tmp_path, lambda c: c["state_dict"].pop("snli_classifier.1.weight"))
    err = _convert_fails(capsys, tmp_path, source, "--text-config", shared_root / METER / "text_config.json")
    assert "snli_classifier.1.weight" in err


def test_meter_without_text_config_says_how_to_supply_it(shared_root, tmp_path, capsys):
    err = _convert_fails(capsys, tmp_path, shared_root / METER / "checkpoint.ckpt")
    assert "--text-config" in err


def test_meter_unknown_pickled_class_is_refused(shared_root, tmp_path, capsys):
    checkpoint = _load_plain(shared_root / METER / "checkpoint.ckpt")
    checkpoint["callbacks"] = {os.getcwd: {}}  # a builtin function object: not on the allowlist
    path = tmp_path / "callbacks.ckpt"
    torch.save(checkpoint, path)
    err = _convert_fails(capsys, tmp_path, path, "--text-config", shared_root / METER / "text_config.json")
    assert "posix.getcwd" in err


def test_a_state_dict_holding_non_tensors_is_refused(shared_root, tmp_path, capsys):
    def spoil(c):
        c["model"]["encoder.layers.0.fc1.weight"] = "not a tensor"
    err = _convert_fails(capsys, tmp_path, _modified_ofa(shared_root, tmp_path, spoil))
    assert "non-tensor values at encoder.layers.0.fc1.weight" in err


def test_a_file_of_another_kind_is_refused_naming_its_top_level_keys(tmp_path, capsys):
    path = tmp_path / "bare.pt"
    torch.save({"weight": torch.zeros(2), "bias": torch.zeros(2)}, path)
    err = _convert_fails(capsys, tmp_path, path)
    assert "not an " in err and "OFA (fairseq) or METER (Lightning) checkpoint" in err and "bias, weight" in err


def test_replacing_a_folder_that_holds_the_input_checkpoint_is_refused_even_with_force(shared_root, tmp_path, capsys):
    import shutil

    folder = tmp_path / "work dir"
    folder.mkdir()
    source = folder / "my checkpoint.pt"
    shutil.copy(shared_root / OFA, source)
    assert main(["convert", str(source), str(folder), "--quiet", "--force"]) == 2
    assert "holds the input my checkpoint.pt" in capsys.readouterr().err
    assert source.is_file()


def test_converting_into_the_current_folder_with_force_replaces_it_whole(shared_root, tmp_path, monkeypatch, capsys):
    target = tmp_path / "here"
    target.mkdir()
    (target / "old.txt").write_text("old")
    monkeypatch.chdir(target)
    assert main(["convert", str(shared_root / OFA), ".", "--quiet", "--force"]) == 0
    names = sorted(p.name for p in target.iterdir())
    assert "model.safetensors" in names and "old.txt" not in names
    assert not [n for n in names if n.startswith(".")] and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_partial_meter_state_dict_is_a_one_line_error(shared_root, tmp_path, capsys):
    source = _modified_meter(shared_root, tmp_path, lambda c: c["state_dict"].pop("cross_modal_text_transform.weight"))
    err = _convert_fails(capsys, tmp_path, source, "--text-config", shared_root / METER / "text_config.json")
    assert "not a complete METER state dict: missing cross_modal_text_transform.weight" in err


def test_a_text_config_of_another_model_type_is_refused(shared_root, tmp_path, capsys):
    import json

    (tmp_path / "gpt2").mkdir()
    (tmp_path / "gpt2" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    err = _convert_fails(capsys, tmp_path, shared_root / METER / "checkpoint.ckpt", "--text-config", tmp_path / "gpt2")
    assert "is a gpt2 config" in err


def test_a_wrong_bpe_dir_fails_before_any_weight_is_written(shared_root, tmp_path, capsys, monkeypatch):
    from hfport.write import safetensors_shards

    def never(*args, **kwargs):
        raise AssertionError("weights were written before the dictionary was checked")
    monkeypatch.setattr(safetensors_shards.ShardedSafetensorsWriter, "add", never)
    bpe = tmp_path / "bpe"
    bpe.mkdir()
    for name in ("dict.txt", "encoder.json", "vocab.bpe"):
        (bpe / name).write_bytes((shared_root / "fixtures/ofa/bpe" / name).read_bytes())  # the full 59457 dictionary
    err = _convert_fails(capsys, tmp_path, shared_root / OFA, "--bpe-dir", bpe)
    assert "50297 entries" in err and "77 rows" in err  # 4 + 50260 BPE symbols + <mask> + the tiny 16 codes + 16 bins


def test_export_to_an_existing_folder_is_refused(converted_fixtures, tmp_path, capsys):
    (tmp_path / "dir").mkdir()
    assert main(["export", str(converted_fixtures("ofa-tiny-plain")), str(tmp_path / "dir"), "--force"]) == 2
    assert "is a folder" in capsys.readouterr().err
