"""`hfport verify --against CKPT` for fairseq's own families: fairseq itself runs the original, in its own
interpreter, on token probes shaped for the converted folder.

Skipped unless fairseq can run: set FAIRSEQ_PYTHON to an interpreter that imports fairseq (e.g.
`FAIRSEQ_PYTHON=/path/to/fairseq-venv/bin/python .venv/bin/python -m pytest tests/test_fairseq_live.py`), or run
pytest in an environment that has fairseq itself. `--reference-code` is the task's data folder (dict*.txt).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hfport.converters.pipeline import convert_checkpoint
from hfport.verify.harness import verify_folder

DATA = Path(__file__).parent / "data" / "fairseq"


def _fairseq_python() -> str | None:
    given = os.environ.get("FAIRSEQ_PYTHON")
    if given:
        ok = subprocess.run([given, "-c", "import fairseq"], capture_output=True).returncode == 0
        return given if ok else None
    return sys.executable if importlib.util.find_spec("fairseq") is not None else None


FAIRSEQ_PYTHON = _fairseq_python()
pytestmark = [pytest.mark.live, pytest.mark.skipif(
    FAIRSEQ_PYTHON is None, reason="needs fairseq: set FAIRSEQ_PYTHON to an interpreter that imports it")]

CASES = {  # case -> convert options
    "translation_postnorm_tied": {},
    "translation_prenorm_shared": {},
    "bart_translation": {},
    "lm_prenorm_tied": {},
    "lm_prenorm_learned_gpt": {},
}


@pytest.mark.parametrize("case", CASES)
def test_converted_fairseq_model_passes_against_fairseq_run_live_on_token_probes(case, tmp_path):
    folder = convert_checkpoint(DATA / case / "checkpoint.pt", tmp_path / "hf", **CASES[case])
    report = verify_folder(folder, against=DATA / case / "checkpoint.pt", reference_code=DATA / case,
                           reference_python=FAIRSEQ_PYTHON, check_beam=True, write=False)
    assert report["passed"], report["problems"] or report["first_divergence"]
    assert report["reference"]["kind"] == "live fairseq"
    assert max(r["max_abs"] for r in report["outputs"] if r["name"] == "logits") <= 1e-5
    runs = {g["name"]: g for g in report["generation"]}
    assert all(g["exact"] for g in runs.values()) and any(g["num_beams"] > 1 and g["required"] for g in runs.values())


def test_a_language_model_passes_against_fairseq_live_on_the_users_own_text(tmp_path):
    case = "lm_prenorm_tied"
    folder = convert_checkpoint(DATA / case / "checkpoint.pt", tmp_path / "hf", dictionary=DATA / case / "dict.txt")
    report = verify_folder(folder, against=DATA / case / "checkpoint.pt", reference_code=DATA / case,
                           reference_python=FAIRSEQ_PYTHON, text="the big dog", write=False)
    assert report["passed"], report["problems"] or report["first_divergence"]
    assert [g["name"] for g in report["generation"]] == ["greedy"] and report["generation"][0]["exact"]
