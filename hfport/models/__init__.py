"""Model code shipped inside every converted folder (trust_remote_code)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def model_source_files(family: str) -> list[Path]:
    """The configuration and modeling modules copied beside a family's weights, found through the installed
    package (a wheel install has no source tree to walk)."""
    folder = resources.files(f"hfport.models.{family}")
    files = [Path(str(folder / f"{kind}_{family}.py")) for kind in ("configuration", "modeling")]
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"hfport is installed without its model code: {', '.join(missing)}")
    return files
