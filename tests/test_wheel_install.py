"""hfport as `pip install hfport` gives it: a built wheel, installed non-editable into a fresh environment, run
from outside the checkout. Catches code that finds its files through the source-tree layout.

The fresh environment borrows the test interpreter's third-party packages (torch, transformers, ...) through a
path entry, without processing that site's .pth files, so the editable install of the checkout stays invisible;
nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SOURCE_ITEMS = ("setup.cfg", "pyproject.toml", "README.md", "hfport", "converters", "mappings", "verify")


def _run(args, cwd, env=None, timeout=600) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(map(str, args))}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


def _build_wheel(workdir: Path) -> Path:
    source = workdir / "src"
    source.mkdir()
    for item in SOURCE_ITEMS:  # a copy, so the build leaves no build/ or egg-info in the checkout
        if (REPO / item).is_dir():
            shutil.copytree(REPO / item, source / item, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(REPO / item, source / item)
    dist = workdir / "dist"
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", dist, source]
    # the test interpreter's own setuptools when it can build (no download); else pip's isolated build (PyPI)
    offline = subprocess.run(build[:5] + ["--no-build-isolation", "--no-index"] + build[5:], cwd=workdir,
                             capture_output=True, text=True, timeout=600)
    if offline.returncode != 0:
        _run(build, cwd=workdir)
    wheels = list(dist.glob("hfport-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def _fresh_environment(workdir: Path, wheel: Path) -> tuple[Path, dict]:
    env_dir = workdir / "env"
    _run([sys.executable, "-m", "venv", "--without-pip", env_dir], cwd=workdir)
    python = env_dir / "bin" / "python"
    purelib = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                        cwd=workdir).stdout.strip())
    dependencies = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (purelib / "zz_test_dependencies.pth").write_text("".join(f"{p}\n" for p in sorted(dependencies)))
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q", wheel],
         cwd=workdir)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(HF_HOME=str(workdir / "hf_home"), HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error",
               HF_HUB_DISABLE_TELEMETRY="1")
    return env_dir, env


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("wheel")
    wheel = _build_wheel(workdir)
    env_dir, env = _fresh_environment(workdir, wheel)
    return workdir, env_dir, env


@pytest.mark.slow
def test_the_wheel_carries_the_model_code_mappings_and_every_subpackage(installed):
    workdir, env_dir, env = installed
    probe = ("import json, hfport, hfport.converters, hfport.mappings, hfport.verify, hfport.models.ofa,"
             " hfport.models.meter\n"
             "from hfport.models import model_source_files\n"
             "from importlib import resources\n"
             "print(json.dumps({'hfport': hfport.__file__, 'converters': hfport.converters.__file__,"
             " 'files': [str(p) for p in model_source_files('ofa') + model_source_files('meter')],"
             " 'tomls': sorted(p.name for p in resources.files('hfport.mappings').iterdir() if p.name.endswith('.toml'))}))")
    found = json.loads(_run([env_dir / "bin" / "python", "-c", probe], cwd=workdir, env=env).stdout)
    site = str(env_dir.resolve())
    for key in ("hfport", "converters"):
        assert found[key].startswith(site) and "site-packages" in found[key], found  # not the checkout
        assert not found[key].startswith(str(REPO))
    assert [Path(p).name for p in found["files"]] == ["configuration_ofa.py", "modeling_ofa.py",
                                                       "configuration_meter.py", "modeling_meter.py"]
    assert all(p.startswith(site) for p in found["files"])
    assert found["tomls"] == sorted(p.name for p in (REPO / "mappings").glob("*.toml"))
    assert {"meter.toml", "ofa.toml"} <= set(found["tomls"])


@pytest.mark.slow
@pytest.mark.parametrize("family, name", [("ofa", "ofa-tiny-standard"), ("meter", "meter-tiny-vqa-lightning")])
def test_the_installed_cli_converts_and_verifies_a_golden_fixture_from_outside_the_checkout(
        installed, shared_root, family, name):
    workdir, env_dir, env = installed
    hfport_cli = env_dir / "bin" / "hfport"
    fixture = shared_root / "fixtures" / family / name
    out = workdir / f"{name}-hf"
    if family == "ofa":
        bpe_dir = workdir / "bpe_tiny"  # the fixture's dictionary beside OFA's GPT-2 files: the tokenizer is written too
        if not bpe_dir.exists():
            bpe_dir.mkdir()
            (bpe_dir / "dict.txt").symlink_to(shared_root / "fixtures" / "ofa" / "bpe_tiny" / "dict.txt")
            for file in ("encoder.json", "vocab.bpe"):
                (bpe_dir / file).symlink_to(shared_root / "fixtures" / "ofa" / "bpe" / file)
        convert = [hfport_cli, "convert", fixture / "checkpoint.pt", out, "--bpe-dir", bpe_dir]
    else:
        convert = [hfport_cli, "convert", fixture / "checkpoint.ckpt", out, "--text-config", fixture / "text_config.json"]
    _run(convert, cwd=workdir, env=env)
    report = workdir / f"{name}.verification.json"
    _run([hfport_cli, "verify", out, "--golden", fixture / "reference.pt", "--report", report], cwd=workdir, env=env)
    result = json.loads(report.read_text())
    assert result["passed"] is True
    copied = {"ofa": ("configuration_ofa.py", "modeling_ofa.py", "processing_ofa.py", "tokenizer.json"),
              "meter": ("configuration_meter.py", "modeling_meter.py")}[family]
    assert all((out / f).is_file() for f in copied)
