"""Hostile inputs (made on the fly by tests/hostile/corpus.py): every one ends in one clean `error:` line (or a
clean success where the input is legitimate), nothing written at the output, nothing of anyone else's lost,
no pickle code run."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest
import torch

from hfport.cli import main, printable
from tests.hostile.corpus import CASES, Builder, by_id
from tests.hostile.runner import run_case
from tests.helpers import fresh_process_env

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("case_id", [case.id for case in CASES])
def test_each_hostile_input_ends_cleanly(case_id, tmp_path, shared_root):
    outcome = run_case(by_id()[case_id], tmp_path, shared_root)
    assert not outcome.code_run, "the planted pickle code ran"
    assert not outcome.data_lost, outcome.problems
    assert not outcome.internal, outcome.stderr[-2000:]
    assert outcome.clean, (outcome.problems, outcome.stderr[-2000:])


def test_two_concurrent_converts_into_one_output_exactly_one_wins(tmp_path, shared_root):
    builder = Builder(tmp_path, shared_root, tmp_path / "work")
    source, out = builder.checkpoint(), tmp_path / "out"
    command = [sys.executable, "-m", "hfport.cli", "convert", str(source), str(out), "--quiet"]
    env = fresh_process_env(tmp_path)
    runs = [subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO) for _ in range(2)]
    results = [(run.wait(timeout=300), run.stderr.read()) for run in runs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    loser = next(err for code, err in results if code == 2)
    assert [line for line in loser.splitlines() if line.strip()][0].startswith("error: ")
    assert len([line for line in loser.splitlines() if line.strip()]) <= 2
    assert (out / "hfport.json").is_file() and (out / "model.safetensors").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")], "staging debris left behind"


def test_a_staging_folder_is_never_taken_for_an_output(tmp_path, shared_root, capsys):
    builder = Builder(tmp_path, shared_root, tmp_path / "work")
    staging = tmp_path / ".out.partial-x"
    staging.mkdir()
    (staging / ".hfport-staging").write_text(f"pid {os.getpid()}\n")
    code = main(["convert", str(builder.checkpoint()), str(staging), "--quiet", "--force"])
    assert code == 2 and "staging folder" in capsys.readouterr().err
    assert staging.is_dir(), "a live run's staging folder was removed"


def test_a_live_runs_staging_folder_is_not_cleaned(tmp_path, shared_root):
    from hfport.converters import convert_checkpoint

    builder = Builder(tmp_path, shared_root, tmp_path / "work")
    live = tmp_path / ".out.partial-live"
    live.mkdir()
    (live / ".hfport-staging").write_text(f"pid {os.getpid()}\n")  # this process: alive
    convert_checkpoint(builder.checkpoint(), tmp_path / "out")
    assert live.is_dir()


def test_error_lines_escape_newlines_and_terminal_escapes():
    assert printable("a\nerror: forged\x1b[31m") == "a\\nerror: forged\\x1b[31m"
    from hfport.mappings.templates import collapse_keys

    assert "\x1b" not in collapse_keys(["encoder.x\x1b[31m", "b\nerror: x"])
    assert "\n" not in collapse_keys(["encoder.x\x1b[31m", "b\nerror: x"])


def test_collapsing_keys_with_a_huge_layer_index_does_not_build_a_range():
    from hfport.mappings.templates import collapse_keys

    tracemalloc.start()
    text = collapse_keys(["encoder.layers.0.fc1.weight", "encoder.layers.1.fc1.weight",
                          "encoder.layers.10000000.fc1.weight"])
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert "10000000" in text
    assert peak < 5 * 2**20, f"collapse_keys used {peak / 2**20:.0f} MiB"


def test_counting_layers_with_a_huge_index_does_not_build_a_range():
    from hfport.converters.ofa import _layer_count
    from hfport.errors import ConfigError

    keys = ["encoder.layers.0.fc1.weight", "encoder.layers.1.fc1.weight", "encoder.layers.10000000.fc1.weight"]
    tracemalloc.start()
    with pytest.raises(ConfigError, match="not numbered 0..N-1"):
        _layer_count(keys, "encoder")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 5 * 2**20, f"layer counting used {peak / 2**20:.0f} MiB"


def test_nonfinite_weights_allowed_are_named_in_the_provenance(tmp_path, shared_root):
    import json

    from hfport.converters import convert_checkpoint

    builder = Builder(tmp_path, shared_root, tmp_path / "work")
    source = builder.checkpoint(lambda c: c["model"]["encoder.layers.0.fc1.weight"].__setitem__((0, 0), float("inf")))
    folder = convert_checkpoint(source, tmp_path / "out", allow_nonfinite=True)
    notes = json.loads((folder / "hfport.json").read_text())["notes"]
    assert any("encoder.layers.0.fc1.weight (0 NaN, 1 inf)" in note for note in notes)


def test_a_float16_cast_that_overflows_is_reported_as_nonfinite(tmp_path, shared_root, capsys):
    builder = Builder(tmp_path, shared_root, tmp_path / "work")
    source = builder.checkpoint(lambda c: c["model"]["encoder.layers.0.fc1.weight"].__setitem__((0, 0), 1e6))
    code = main(["convert", str(source), str(tmp_path / "out"), "--quiet", "--dtype", "float16"])
    assert code == 2 and "encoder.layers.0.fc1.weight (0 NaN, 1 inf)" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_integer_buffers_the_target_expects_are_not_refused(shared_root, tmp_path):
    """num_batches_tracked (int64) maps to an int64 buffer: the dtype check concerns float parameters only."""
    from hfport.converters import convert_checkpoint

    folder = convert_checkpoint(shared_root / "fixtures/ofa/ofa-tiny-standard/checkpoint.pt", tmp_path / "out")
    assert (folder / "model.safetensors").is_file()


def test_every_flipped_byte_in_tensor_data_is_caught_by_crc(tmp_path, shared_root):
    from hfport.errors import CheckpointError
    from hfport.read.torch_file import file_sha256
    from tests.hostile.corpus import flip_byte

    builder = Builder(tmp_path, shared_root, tmp_path / "work")
    caught = 0
    for index, fraction in enumerate((0.0, 0.1, 0.37, 0.5, 0.99)):
        path = flip_byte(builder.checkpoint(name=f"c{index}.pt"), fraction)
        with pytest.raises(CheckpointError, match="CRC-32"):
            file_sha256(path)
        caught += 1
    assert caught == 5
    file_sha256(builder.checkpoint(name="intact.pt"))  # an intact file passes
