"""`hfport convert … --tokenizer X` for METER: X must resolve to a real tokenizer that fits the text embedding,
checked before any weight is written (transformers alone quietly builds a tokenizer of special tokens only)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import run_cli
from hfport.cli import main

METER = "fixtures/meter/meter-tiny-snli"
DATA = Path(__file__).parent / "data"


@pytest.fixture
def no_weight_writes(monkeypatch):
    from hfport.write import safetensors_shards

    def never(*args, **kwargs):
        raise AssertionError("weights were written before the tokenizer was checked")
    monkeypatch.setattr(safetensors_shards.ShardedSafetensorsWriter, "add", never)


def _convert_error(capsys, shared_root, out, tokenizer) -> str:
    fixture = shared_root / METER
    code = main(["convert", str(fixture / "checkpoint.ckpt"), str(out), "--quiet",
                 "--text-config", str(fixture / "text_config.json"), "--tokenizer", str(tokenizer)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and "Traceback" not in err
    assert len(err.strip().splitlines()) <= 2
    assert not out.exists()
    return err


def test_an_unresolvable_hub_tokenizer_offline_is_one_error_line_exit_2_and_nothing_written(shared_root, tmp_path):
    fixture = shared_root / METER
    out = tmp_path / "out"
    result = run_cli(["convert", fixture / "checkpoint.ckpt", out, "--quiet", "--text-config",
                      fixture / "text_config.json", "--tokenizer", "no-such-org/model"], tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("error: ") and "no-such-org/model" in lines[0], lines
    assert "cannot resolve the tokenizer" in lines[0]
    assert len(lines) <= 2 and "Traceback" not in result.stderr
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]


def test_a_tokenizer_folder_that_does_not_exist_says_so_not_a_repo_id_error(shared_root, tmp_path, capsys,
                                                                           no_weight_writes):
    missing = tmp_path / "models" / "my-roberta"
    err = _convert_error(capsys, shared_root, tmp_path / "out", missing)
    assert f"{missing}: the folder does not exist" in err
    assert "repo id" not in err.lower() and "repo_id" not in err
    err = _convert_error(capsys, shared_root, tmp_path / "out", "./relative/tiny-roberta")
    assert "./relative/tiny-roberta: the folder does not exist" in err


def test_a_tokenizer_with_more_ids_than_text_embedding_rows_is_refused_before_any_weight(shared_root, tmp_path,
                                                                                         capsys, no_weight_writes):
    tokenizer = DATA / "meter_tokenizers" / "tiny-roberta"  # 290 tokens, the fixture's text embedding has 100 rows
    err = _convert_error(capsys, shared_root, tmp_path / "out", tokenizer)
    assert "has 290 tokens but the checkpoint's text embedding has 100 rows" in err


def test_a_folder_without_vocabulary_files_is_refused_before_any_weight(shared_root, tmp_path, capsys,
                                                                        no_weight_writes):
    empty = tmp_path / "empty-roberta"
    empty.mkdir()
    (empty / "config.json").write_text(json.dumps({"model_type": "roberta"}))
    err = _convert_error(capsys, shared_root, tmp_path / "out", empty)
    assert "holds neither vocab.json + merges.txt nor tokenizer.json" in err


def test_a_fitting_tokenizer_is_still_written_beside_the_weights(shared_root, tmp_path):
    fixture = shared_root / METER
    out = tmp_path / "out"
    code = main(["convert", str(fixture / "checkpoint.ckpt"), str(out), "--quiet", "--text-config",
                 str(fixture / "text_config.json"), "--tokenizer", str(DATA / "meter_tokenizers" / "tiny-bert-uncased")])
    assert code == 0
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(out))
    assert 80 < len(tokenizer) <= 100
    assert tokenizer("a cat")["input_ids"][0] == tokenizer.cls_token_id
