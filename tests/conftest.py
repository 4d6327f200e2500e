"""Shared test fixtures: the golden fixture root (never skipped silently) and converted fixture folders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("HFPORT_SHARED", REPO.parent / "shared"))


def _discover(family: str, known: tuple[str, ...]) -> tuple[str, ...]:
    """Every fixture set in the shared folder (new ones join the tests automatically)."""
    folder = SHARED / "fixtures" / family
    found = tuple(sorted(p.name for p in folder.iterdir() if (p / "reference.pt").is_file())) if folder.is_dir() else ()
    return found or known  # absent: the known names, whose tests then fail loudly through shared_root


OFA_FIXTURE_NAMES = _discover("ofa", ("ofa-tiny-standard", "ofa-tiny-fp16-trained", "ofa-tiny-plain"))
METER_FIXTURE_NAMES = _discover("meter", ("meter-tiny-vqa-lightning", "meter-tiny-pretrain-released-style",
                                          "meter-tiny-nlvr2", "meter-tiny-irtr", "meter-tiny-snli"))


def _require_shared() -> Path:
    if not (SHARED / "fixtures").is_dir():
        pytest.fail(f"the shared golden fixtures are missing: expected {SHARED}/fixtures beside the repo "
                    "(set HFPORT_SHARED to point elsewhere); the equivalence tests cannot be skipped")
    return SHARED


@pytest.fixture(scope="session")
def shared_root() -> Path:
    return _require_shared()


@pytest.fixture(scope="session")
def converted_fixtures(tmp_path_factory, shared_root):
    """Fixture name -> converted folder, converted once per test session (each on first use)."""
    from hfport.converters import convert_checkpoint

    root = tmp_path_factory.mktemp("converted")
    cache: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in cache:
            if name.startswith("ofa"):
                source = shared_root / "fixtures" / "ofa" / name
                cache[name] = convert_checkpoint(source / "checkpoint.pt", root / name)
            else:
                source = shared_root / "fixtures" / "meter" / name
                cache[name] = convert_checkpoint(source / "checkpoint.ckpt", root / name,
                                                 text_config=source / "text_config.json")
        return cache[name]

    return get
