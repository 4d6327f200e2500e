"""The habits people bring to a command line: a fast `--help`, `--json` everywhere (errors too), `--max-new-tokens`,
quiet library progress bars, a warning for a folder that cannot tokenize, progress in bytes."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import click
import pytest

from hfport.cli import COMMANDS, cli
from hfport.cli import main as cli_main

from helpers import fresh_process_env

DATA = Path(__file__).parent / "data"
IMAGE = str(DATA / "images" / "rgb_37x23.png")

_HELP_IN_A_FRESH_PROCESS = """
import json, sys
from hfport.cli import main
code = main(["--help"])
print(json.dumps({"code": code, "heavy": sorted(m for m in ("torch", "transformers", "safetensors", "huggingface_hub",
                                                             "numpy", "PIL") if m in sys.modules)}))
"""


def test_top_level_help_lists_every_command_without_importing_torch_or_transformers(tmp_path):
    result = subprocess.run([sys.executable, "-c", _HELP_IN_A_FRESH_PROCESS], capture_output=True, text=True,
                            env=fresh_process_env(tmp_path), timeout=120)
    assert result.returncode == 0, result.stderr
    facts = json.loads(result.stdout.strip().splitlines()[-1])
    assert facts == {"code": 0, "heavy": []}
    for name in COMMANDS:
        assert f"  {name} " in result.stdout


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_the_listed_short_help_is_the_commands_own_first_line(name):
    module, short = COMMANDS[name]
    command = importlib.import_module(f"hfport.commands.{module}").command
    first = command.help.strip().split("\n\n")[0].replace("\n", " ")
    assert first.startswith(short.removesuffix("...")), (short, first)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_takes_json(name):
    command = cli.get_command(click.Context(cli), name)
    assert "--json" in {opt for param in command.params for opt in getattr(param, "opts", [])}


@pytest.mark.parametrize("argv, code", [
    (["inspect", "missing.pt", "--json"], 2),
    (["convert", "missing.pt", "out", "--json"], 2),
    (["verify", "missing-folder", "--golden", "g.pt", "--json"], 2),
    (["export", "missing-folder", "out.pt", "--json"], 2),
    (["push", "missing-folder", "org/name", "--dry-run", "--json"], 2),
    (["run", "--json", "missing-folder", "--image", "x.png"], 2),  # a click usage error
])
def test_errors_with_json_are_one_json_object_on_stdout_and_the_exit_code(argv, code, tmp_path, capsys,
                                                                          monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli_main(argv) == code
    captured = capsys.readouterr()
    payload = json.loads(captured.out)
    assert payload["exit_code"] == code and payload["error"] and "\n" not in payload["error"]
    assert captured.err.startswith("error: ")


def test_a_failing_verify_with_json_prints_only_the_report_on_stdout(tmp_path, capsys, converted_fixtures,
                                                                     shared_root):
    import shutil

    from safetensors.torch import load_file, save_file

    bad = tmp_path / "bad"
    shutil.copytree(converted_fixtures("ofa-tiny-plain"), bad)
    tensors = load_file(bad / "model.safetensors")
    key = sorted(k for k in tensors if k.endswith("fc2.weight"))[-1]
    tensors[key] = tensors[key] * 1.5
    save_file(tensors, bad / "model.safetensors", metadata={"format": "pt"})
    golden = shared_root / "fixtures" / "ofa" / "ofa-tiny-plain" / "reference.pt"
    assert cli_main(["verify", str(bad), "--golden", str(golden), "--json"]) == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out)["passed"] is False  # one JSON document: the report
    assert captured.err.splitlines()[-1].startswith("error: ") or "error: " in captured.err


def test_convert_with_json_reports_the_folder_and_warns_when_it_has_no_tokenizer(tmp_path, capsys, shared_root):
    source = shared_root / "fixtures" / "ofa" / "ofa-tiny-plain" / "checkpoint.pt"
    assert cli_main(["convert", str(source), str(tmp_path / "out"), "--json"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["folder"] == str((tmp_path / "out").resolve()) or Path(summary["folder"]).name == "out"
    assert summary["model_class"] == "OFAForConditionalGeneration" and summary["weight_bytes"] > 0
    assert summary["tokenizer"] is None
    assert any("without a tokenizer" in w for w in summary["warnings"])
    assert "warning: " in captured.err and "without a tokenizer" in captured.err and "--bpe-dir" in captured.err


def test_convert_progress_counts_bytes_up_to_the_weight_total(tmp_path, shared_root):
    from hfport.converters import convert_checkpoint

    seen = []
    source = shared_root / "fixtures" / "ofa" / "ofa-tiny-plain" / "checkpoint.pt"
    folder = convert_checkpoint(source, tmp_path / "out",
                                progress=lambda key, done, total, nbytes=0, total_bytes=None:
                                seen.append((done, total, nbytes, total_bytes)))
    assert sum(n for _, _, n, _ in seen) == seen[-1][3] > 0
    assert seen[-1][0] == seen[-1][1]
    weights = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    assert 0.9 * weights < seen[-1][3] <= weights


def test_run_takes_max_new_tokens_like_generate(capsys, tmp_path_factory, shared_root):
    from hfport.converters import convert_checkpoint

    root = tmp_path_factory.mktemp("habits_ofa")
    bpe_dir = root / "bpe"
    bpe_dir.mkdir()
    (bpe_dir / "dict.txt").symlink_to(shared_root / "fixtures" / "ofa" / "bpe_tiny" / "dict.txt")
    for name in ("encoder.json", "vocab.bpe"):
        (bpe_dir / name).symlink_to(shared_root / "fixtures" / "ofa" / "bpe" / name)
    source = shared_root / "fixtures" / "ofa" / "ofa-tiny-standard" / "checkpoint.pt"
    folder = convert_checkpoint(source, root / "out", bpe_dir=bpe_dir, patch_image_size=64)
    capsys.readouterr()
    assert cli_main(["run", str(folder), "--image", IMAGE, "--greedy", "--max-new-tokens", "3", "--json"]) == 0
    captured = capsys.readouterr()
    assert 1 <= len(json.loads(captured.out)["ids"]) <= 3
    assert "Loading weights" not in captured.err and "it/s" not in captured.err
