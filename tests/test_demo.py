"""The quick start's first command: the whole job on the built-in model, end to end."""

from __future__ import annotations

import json

from helpers import run_cli


def test_demo_writes_a_fairseq_checkpoint_converts_verifies_and_dry_runs_the_push(tmp_path):
    workdir = tmp_path / "demo"
    result = run_cli(["demo", "--workdir", workdir], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "-> PASS" in result.stdout and "lfs" in result.stdout and "model.safetensors" in result.stdout
    report = json.loads((workdir / "verification.json").read_text())
    assert report["passed"] and report["generation"] and all(g["exact"] for g in report["generation"])
    from hfport.read.torch_file import load_checkpoint

    checkpoint = load_checkpoint(workdir / "ofa-tiny-demo.pt")
    assert type(checkpoint["cfg"]["model"]).__name__ == "Namespace" and "decoder.image_position_idx" in checkpoint["model"]
    assert (workdir / "model_card.md").read_text().startswith("---\n")
    assert run_cli(["demo", "--workdir", workdir], tmp_path).returncode == 2  # no overwrite without --force
