"""Shared test fixtures: the golden fixture root (never skipped silently) and converted fixture folders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("HFPORT_SHARED", REPO.parent / "shared"))
OFA_FIXTURE_NAMES = ("ofa-tiny-standard", "ofa-tiny-fp16-trained", "ofa-tiny-plain")
METER_FIXTURE_NAMES = ("meter-tiny-vqa-lightning", "meter-tiny-pretrain-released-style", "meter-tiny-nlvr2",
                       "meter-tiny-irtr", "meter-tiny-snli")


def _require_shared() -> Path:
    if not (SHARED / "fixtures").is_dir():
        pytest.fail(f"the shared golden fixtures are missing: expected {SHARED}/fixtures beside the repo "
                    "(set HFPORT_SHARED to point elsewhere); the equivalence tests cannot be skipped")
    return SHARED


@pytest.fixture(scope="session")
def shared_root() -> Path:
    return _require_shared()


def ofa_fixture_dirs() -> list[Path]:
    return [SHARED / "fixtures" / "ofa" / name for name in OFA_FIXTURE_NAMES]


def meter_fixture_dirs() -> list[Path]:
    return [SHARED / "fixtures" / "meter" / name for name in METER_FIXTURE_NAMES]


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
