"""What `hfport verify` leaves for people and CI besides verification.json: a per-layer plot the card embeds and
push uploads (bound to the report by its sha256), a Markdown table that lists failing layers one by one, JUnit XML,
and an example GitHub Actions workflow that fails the build on a divergence."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from hfport.cli import main as cli_main
from hfport.folder_files import model_digests

from conftest import SHARED
from helpers import fresh_process_env

REPO = Path(__file__).resolve().parents[1]
FIXTURE = "ofa-tiny-plain"
GOLDEN = SHARED / "fixtures" / "ofa" / FIXTURE / "reference.pt"


def _corrupt_folder(folder: Path, dest: Path) -> str:
    from safetensors.torch import load_file, save_file

    shutil.copytree(folder, dest)
    tensors = load_file(dest / "model.safetensors")
    key = sorted(k for k in tensors if k.startswith("decoder.layers.") and k.endswith("fc2.weight"))[0]
    tensors[key] = tensors[key] * 1.5
    save_file(tensors, dest / "model.safetensors", metadata={"format": "pt"})
    return key


@pytest.fixture(scope="module")
def verified(tmp_path_factory, converted_fixtures):
    """A good folder and a corrupted copy, each verified once through the CLI (report, plot, JUnit)."""
    root = tmp_path_factory.mktemp("proof")
    good = root / "good"
    shutil.copytree(converted_fixtures(FIXTURE), good)  # the session's conversion, not written into
    bad = root / "bad"
    key = _corrupt_folder(good, bad)
    codes = {name: cli_main(["verify", str(folder), "--golden", str(GOLDEN), "--junit", str(root / f"{name}.xml")])
             for name, folder in (("good", good), ("bad", bad))}
    return {"good": good, "bad": bad, "key": key, "codes": codes, "root": root}


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


def test_verify_draws_a_png_beside_the_report_and_records_its_sha256(verified):
    assert verified["codes"] == {"good": 0, "bad": 1}
    for name in ("good", "bad"):
        folder = verified[name]
        report = json.loads((folder / "verification.json").read_text())
        plot = folder / "verification.png"
        width, height = _png_size(plot)
        assert width >= 600 and height >= 200 and plot.stat().st_size < 400_000
        from hfport.folder_files import file_sha256

        assert report["plot"] == {"file": "verification.png", "sha256": file_sha256(plot)}
        assert "verification.png" not in report["files"]  # a picture of the proof, not a judged model file


def test_the_plot_marks_the_first_divergence_and_the_tolerance(verified, monkeypatch):
    import matplotlib.figure

    report = json.loads((verified["bad"] / "verification.json").read_text())
    texts, lines = [], []
    real_savefig = matplotlib.figure.Figure.savefig

    def spy(figure, *args, **kwargs):
        for axis in figure.axes:
            texts.extend(t.get_text() for t in axis.texts)
            lines.extend(line.get_label() for line in axis.get_lines())
        return real_savefig(figure, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", spy)
    from hfport.verify.plot import write_plot

    write_plot(report, verified["root"] / "again.png")
    assert f"first divergence: {report['first_divergence']['module']}" in texts
    assert any(label.startswith("atol ") for label in lines) and "fails" in lines


def test_without_matplotlib_verify_still_reports_and_the_table_carries_the_proof(verified, tmp_path, monkeypatch):
    from hfport.verify.harness import verify_folder
    from hfport.verify.report import report_markdown

    folder = tmp_path / "copy"
    shutil.copytree(verified["good"], folder)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now fails, as when not installed
    report = verify_folder(folder, golden=GOLDEN)
    assert report["passed"] and "plot" not in report
    assert not (folder / "verification.png").exists()  # the stale picture of the earlier run is gone too
    assert "plot" not in json.loads((folder / "verification.json").read_text())
    assert "| `logits` |" in report_markdown(report)


def test_the_markdown_table_lists_each_layer_of_a_failing_output(verified):
    from hfport.verify.report import report_markdown

    report = json.loads((verified["bad"] / "verification.json").read_text())
    markdown = report_markdown(report)
    layer = int(verified["key"].split("layers.")[1].split(".")[0])
    failing = f"decoder_inner_states.{layer + 1}"
    assert f"| `{failing}` |" in markdown and "`decoder_inner_states.*`" not in markdown
    assert f"| `decoder_inner_states.{layer}` |" in markdown  # the passing layer before it, on its own row
    assert "`encoder_inner_states.*`" in markdown or "`encoder_hidden_states.*`" in markdown or \
        "`encoder_states.*`" in markdown  # passing groups stay collapsed
    row = next(line for line in markdown.splitlines() if line.startswith(f"| `{failing}` |"))
    assert "❌ FAIL; first at `decoder.layers." in row


def test_push_uploads_the_recorded_plot_and_the_card_embeds_it(verified, tmp_path):
    from hfport.push.publish import plan_push

    plan = plan_push(verified["good"], "org/model")
    names = {f.path_in_repo: f for f in plan.files}
    assert "verification.png" in names and names["verification.png"].lfs
    assert "](verification.png)" in plan.card
    # a picture that is not the one the report recorded is neither uploaded nor shown
    folder = tmp_path / "swapped"
    shutil.copytree(verified["good"], folder)
    shutil.copy(verified["bad"] / "verification.png", folder / "verification.png")
    plan = plan_push(folder, "org/model")
    assert "verification.png" not in {f.path_in_repo for f in plan.files} and "verification.png" not in plan.card
    assert model_digests(folder) == model_digests(verified["good"])  # the plot never changes what was judged


def test_junit_has_one_case_per_output_and_generation_and_failures_carry_the_numbers(verified):
    good = ET.parse(verified["root"] / "good.xml").getroot()
    bad = ET.parse(verified["root"] / "bad.xml").getroot()
    report = json.loads((verified["bad"] / "verification.json").read_text())
    cases = bad.findall(".//testcase")
    assert len(cases) == len(report["outputs"]) + len(report["generation"])
    assert good.get("failures") == "0" and int(bad.get("failures")) >= 1
    layer = int(verified["key"].split("layers.")[1].split(".")[0])
    failure = next(c for c in cases if c.get("name") == f"decoder_inner_states.{layer + 1}").find("failure")
    assert failure.get("message").startswith("max abs diff ")
    assert f"at module decoder.layers.{layer}" in failure.get("message") and "> tolerance 1.000e-04" in failure.get("message")
    assert "max_abs: " in failure.text and "atol: 0.0001" in failure.text
    assert any(c.get("classname", "").endswith(".generation") for c in cases)


# -- the example workflow, run as written -------------------------------------------------------------------------
def _workflow_steps() -> tuple[dict, list[dict]]:
    import yaml

    workflow = yaml.safe_load((REPO / "examples" / "ci" / "verify.yml").read_text())
    job = next(iter(workflow["jobs"].values()))
    return job.get("env") or {}, [s for s in job["steps"] if "run" in s and "pip install" not in s["run"]]


def _run_workflow(env_values: dict, workdir: Path) -> list[int]:
    """The workflow's own run steps, in order, as GitHub runs them (bash -e), until one fails."""
    _, steps = _workflow_steps()
    env = fresh_process_env(workdir)
    env.update(env_values)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    codes = []
    for step in steps:
        result = subprocess.run(["bash", "-e", "-c", step["run"]], cwd=workdir, env=env, capture_output=True,
                                text=True, timeout=600)
        codes.append(result.returncode)
        if result.returncode:
            break
    return codes


@pytest.mark.slow  # four fresh hfport processes (convert + verify, twice)
@pytest.mark.skipif(shutil.which("bash") is None, reason="the workflow's steps are bash")
def test_the_example_workflow_passes_on_a_good_golden_and_fails_the_build_on_a_corrupted_weight(tmp_path,
                                                                                               shared_root):
    import torch

    from hfport.read.torch_file import load_checkpoint

    env, steps = _workflow_steps()
    assert set(env) == {"CHECKPOINT", "GOLDEN", "CONVERTED"}
    assert [s["name"] for s in steps] == ["Convert", "Verify against the golden file"]
    if not Path(sys.executable).with_name("hfport").exists():
        pytest.skip("the hfport console script is not installed beside this Python")
    source = shared_root / "fixtures" / "ofa" / FIXTURE / "checkpoint.pt"
    good = tmp_path / "good"
    good.mkdir()
    assert _run_workflow({"CHECKPOINT": str(source), "GOLDEN": str(GOLDEN), "CONVERTED": "converted"}, good) == [0, 0]
    assert ET.parse(good / "verification-junit.xml").getroot().get("failures") == "0"

    checkpoint = load_checkpoint(source)
    key = sorted(k for k in checkpoint["model"] if k.startswith("decoder.layers.") and k.endswith("fc1.weight"))[0]
    checkpoint["model"][key] = checkpoint["model"][key] * 1.01
    bad = tmp_path / "bad"
    bad.mkdir()
    torch.save(checkpoint, bad / "checkpoint.pt")
    assert _run_workflow({"CHECKPOINT": str(bad / "checkpoint.pt"), "GOLDEN": str(GOLDEN),
                          "CONVERTED": "converted"}, bad) == [0, 1]
    junit = ET.parse(bad / "verification-junit.xml").getroot()
    assert int(junit.get("failures")) >= 1
