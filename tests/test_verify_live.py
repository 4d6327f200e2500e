"""The live-original paths: fairseq + an OFA checkout (OFA_ROOT), METER in its legacy environment (METER_ROOT).

Skipped unless the original code is there and importable; run them in an environment that has fairseq too
(e.g. `OFA_ROOT=~/src/OFA /path/to/fairseq-venv/bin/pytest tests/test_verify_live.py`). METER runs in its own
interpreter: `METER_ROOT=~/src/METER METER_PYTHON=/path/to/meter-venv/bin/python pytest tests/test_verify_live.py`
(METER_PYTHON unset: METER must import in the Python running pytest).
"""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path

import pytest

from conftest import METER_FIXTURE_NAMES, OFA_FIXTURE_NAMES, SHARED
import torch

from hfport.verify.golden import load_golden

OFA_ROOT = os.environ.get("OFA_ROOT")
METER_ROOT = os.environ.get("METER_ROOT")
METER_PYTHON = os.environ.get("METER_PYTHON")  # METER's legacy environment (transformers 4.6, pytorch_lightning 1.3)
HAS_FAIRSEQ = importlib.util.find_spec("fairseq") is not None

needs_ofa = pytest.mark.skipif(not (OFA_ROOT and HAS_FAIRSEQ),
                               reason="needs OFA_ROOT (an OFA checkout) and fairseq importable")
needs_meter = pytest.mark.skipif(not METER_ROOT, reason="needs METER_ROOT (a METER checkout) and METER_PYTHON (the python "
                                 "of METER's legacy environment: transformers 4.6, pytorch_lightning 1.3, timm 0.4, sacred)")
pytestmark = pytest.mark.live


def _fixture(family: str, name: str) -> Path:
    return SHARED / "fixtures" / family / name


OFA_FIXTURES = OFA_FIXTURE_NAMES


@pytest.fixture(scope="module")
def converted_ofa(tmp_path_factory):
    from hfport.converters import convert_checkpoint

    made = {}

    def get(name):
        if name not in made:
            made[name] = convert_checkpoint(_fixture("ofa", name) / "checkpoint.pt", tmp_path_factory.mktemp("c") / name)
        return made[name]

    return get


@needs_ofa
@pytest.mark.parametrize("name", OFA_FIXTURES)
def test_live_fairseq_reproduces_the_golden_fixture(name):
    from hfport.verify.backends import fairseq_ofa

    golden = load_golden(_fixture("ofa", name) / "reference.pt")
    model, task, _ = fairseq_ofa.load_ofa(str(_fixture("ofa", name) / "checkpoint.pt"), OFA_ROOT)
    worst = 0.0
    for set_name, inputs in golden.sets.items():
        trace = fairseq_ofa.ofa_trace(model, inputs)
        for key, ref in golden.traces[set_name].items():
            if ref.dtype == torch.bool:
                assert torch.equal(trace[key], ref), key
            else:
                worst = max(worst, (trace[key] - ref).abs().max().item())
    print(f"{name}: live fairseq vs golden max abs {worst:.3g}")
    assert worst < 1e-5
    greedy = next(g for g in golden.generations if g.name == "greedy")
    assert fairseq_ofa.ofa_generate(model, task, golden.sets["inputs"], 1, greedy.max_len_b, greedy.min_len) == greedy.tokens


@needs_ofa
@pytest.mark.parametrize("name", OFA_FIXTURES)
def test_converted_folder_passes_against_live_fairseq_on_probes(converted_ofa, name):
    from hfport.verify.harness import verify_folder

    folder = converted_ofa(name)
    started = time.time()
    report = verify_folder(folder, against=_fixture("ofa", name) / "checkpoint.pt", reference_code=OFA_ROOT, write=False)
    worst = max(o["max_abs"] for o in report["outputs"])
    print(f"{name}: converted vs live fairseq max abs {worst:.3g}, {time.time() - started:.1f} s")
    assert report["passed"], report["first_divergence"]
    assert report["reference"]["kind"] == "fairseq-live"
    assert [g["name"] for g in report["generation"]] == ["greedy", "beam3", "greedy_masked", "beam3_masked"]


@needs_ofa
def test_recorded_golden_file_reads_like_a_fixture_and_verifies(converted_ofa, tmp_path):
    from hfport.cli import main as cli_main

    name = "ofa-tiny-standard"
    out = tmp_path / "golden.pt"
    assert cli_main(["record", str(_fixture("ofa", name) / "checkpoint.pt"), "--reference-code", OFA_ROOT, "--out", str(out)]) == 0
    data = torch.load(out, weights_only=True)
    fixture = torch.load(_fixture("ofa", name) / "reference.pt", weights_only=True)
    assert set(fixture) <= set(data) and set(data["outputs"]) == set(fixture["outputs"])
    assert cli_main(["verify", str(converted_ofa(name)), "--golden", str(out), "--report", str(tmp_path / "r.json")]) == 0


@needs_ofa
def test_recorder_runs_in_another_python_without_hfport_installed(converted_ofa, tmp_path):
    import sys

    from hfport.verify.reference import record_reference

    path = record_reference(_fixture("ofa", "ofa-tiny-plain") / "checkpoint.pt", OFA_ROOT, None, "ofa",
                            reference_python=sys.executable, workdir=str(tmp_path))
    assert load_golden(path).family == "ofa"


@needs_ofa
def test_a_checkpoint_missing_a_key_is_refused_before_fairseq_random_fills_it(tmp_path):
    import argparse

    from hfport.verify.backends import fairseq_ofa

    with torch.serialization.safe_globals([argparse.Namespace]):
        ckpt = torch.load(_fixture("ofa", "ofa-tiny-plain") / "checkpoint.pt", weights_only=True)
    del ckpt["model"]["decoder.layers.0.fc1.weight"]
    bad = tmp_path / "checkpoint.pt"
    torch.save(ckpt, bad)
    (tmp_path / "dict.txt").write_text((_fixture("ofa", "ofa-tiny-plain") / "dict.txt").read_text())
    with pytest.raises(fairseq_ofa.ReferenceError_, match="decoder.layers.0.fc1.weight"):
        fairseq_ofa.load_ofa(str(bad), OFA_ROOT)


def _record_meter(name: str, sets: dict | None, tmp_path: Path, checkpoint: Path | None = None) -> Path:
    from hfport.verify.reference import record_reference

    fixture = _fixture("meter", name)
    return record_reference(checkpoint or fixture / "checkpoint.ckpt", METER_ROOT, sets, "meter", METER_PYTHON,
                            text_config=str(fixture / "text_config.json"), workdir=str(tmp_path))


@needs_meter
@pytest.mark.parametrize("name", METER_FIXTURE_NAMES)
def test_live_meter_reproduces_the_golden_fixture(name, tmp_path):
    fixture = _fixture("meter", name)
    golden = load_golden(fixture / "reference.pt")
    live = load_golden(_record_meter(name, dict(golden.sets), tmp_path))
    assert live.order == golden.order
    worst = max((live.traces["inputs"][key] - ref).abs().max().item() for key, ref in golden.traces["inputs"].items())
    print(f"{name}: live METER vs golden max abs {worst:.3g}")
    # not bit-exact across machines: the CPU's GEMM kernels move fp32 results by ~2e-6 (the fixture's fp64 floor)
    assert worst < 1e-5


@needs_meter
@pytest.mark.parametrize("name", ["meter-tiny-vqa-lightning", "meter-tiny-nlvr2"])
def test_converted_folder_passes_against_live_meter_on_probes(converted_fixtures, name):
    from hfport.verify.harness import verify_folder

    fixture = _fixture("meter", name)
    started = time.time()
    report = verify_folder(converted_fixtures(name), against=fixture / "checkpoint.ckpt", reference_code=METER_ROOT,
                           reference_python=METER_PYTHON, text_config=str(fixture / "text_config.json"), write=False)
    worst = max(o["max_abs"] for o in report["outputs"])
    print(f"{name}: converted vs live METER max abs {worst:.3g}, {time.time() - started:.1f} s")
    assert report["passed"], report["first_divergence"]
    assert report["reference"]["kind"] == "meter-live"
    assert any(o["name"].startswith("fusion_image_layers") for o in report["outputs"])


@needs_meter
def test_a_meter_checkpoint_missing_a_key_is_refused_before_meter_random_fills_it(tmp_path):
    from hfport.errors import CheckpointError

    ckpt = torch.load(_fixture("meter", "meter-tiny-snli") / "checkpoint.ckpt", weights_only=True)
    del ckpt["state_dict"]["cross_modal_text_layers.0.output.dense.weight"]
    bad = tmp_path / "checkpoint.ckpt"
    torch.save(ckpt, bad)
    with pytest.raises(CheckpointError, match="cross_modal_text_layers.0.output.dense.weight"):
        _record_meter("meter-tiny-snli", None, tmp_path, checkpoint=bad)
