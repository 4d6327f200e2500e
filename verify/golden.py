"""Read golden files (the shared fixtures' `reference.pt` and what `hfport record` writes) into one shape.

Each family has its own layout (plain containers + tensors, `torch.load(weights_only=True)`), read by the family
(`reads_golden` / `golden_from_dict`; a top-level `family` key names it outright). `load_golden` turns any of them
into a `Golden`: named input sets, one ordered trace per set (computation order), and generation runs.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hfport.errors import CheckpointError
from hfport.read.torch_file import file_sha256, load_checkpoint


@dataclass
class Generation:
    name: str  # e.g. "greedy", "beam3_masked"
    set: str  # the input set it ran on
    num_beams: int
    max_len_b: int
    min_len: int
    tokens: list[list[int]]


@dataclass
class Golden:
    family: str  # the registered family's name ("ofa", "meter", ...)
    sets: "OrderedDict[str, dict[str, torch.Tensor]]"
    traces: "OrderedDict[str, OrderedDict[str, torch.Tensor]]"
    generations: list[Generation] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    path: str | None = None
    sha256: str | None = None

    @property
    def order(self) -> list[str]:
        """Trace names in computation order (the same for every set)."""
        first = next(iter(self.traces.values()), {})
        return list(first)


def add_to_trace(trace: "OrderedDict[str, torch.Tensor]", name: str, value: Any) -> None:
    """Append one trace entry; a list or tuple (per-layer states) becomes `name.0`, `name.1`, ..."""
    if value is None:
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            trace[f"{name}.{i}"] = item
    else:
        trace[name] = value


def golden_from_dict(data: dict[str, Any], path: str | None = None, sha256: str | None = None) -> Golden:
    """Adapt a loaded golden dict into a `Golden`, through the family whose layout it is."""
    from hfport.family import families, get_family

    if not isinstance(data, dict) or "inputs" not in data:
        raise CheckpointError(f"{path or 'golden data'} is not a golden file (no 'inputs')")
    named = data.get("family")
    family = get_family(named) if isinstance(named, str) else next((f for f in families() if f.reads_golden(data)), None)
    if family is None:
        raise CheckpointError(f"{path or 'golden data'} is not a golden file of a known family (keys: "
                              f"{', '.join(sorted(map(str, data))[:8])})")
    return family.golden_from_dict(data, path, sha256)


def load_golden(path: str | Path) -> Golden:
    """A golden file, read like any checkpoint (weights_only, one-line errors for missing/empty/broken files)."""
    data = load_checkpoint(path)
    return golden_from_dict(data, str(path), file_sha256(path))
