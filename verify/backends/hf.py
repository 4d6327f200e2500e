"""The converted side: a folder written by `hfport convert`, loaded the way a user loads it from the Hub
(transformers Auto classes, `trust_remote_code=True`), in fp32 whatever the stored dtype, in eval mode."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from hfport.errors import MappingError
from hfport.family import ConvertedFolder, get_family


def load_converted(folder: "str | Path | ConvertedFolder") -> torch.nn.Module:
    """The converted model in fp32/eval; refuses on missing, unexpected or mismatched keys (transformers only
    warns, and would initialise missing weights randomly)."""
    converted = folder if isinstance(folder, ConvertedFolder) else ConvertedFolder.open(folder, require_provenance=False)
    folder = converted.path
    model, info = converted.load_model(dtype=torch.float32, output_loading_info=True)
    problems = []
    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
        items = list(info.get(kind) or [])
        if items:
            shown = ", ".join(str(i if not isinstance(i, tuple) else i[0]) for i in items[:6])
            problems.append(f"{len(items)} {kind.replace('_', ' ')} ({shown}{', ...' if len(items) > 6 else ''})")
    if problems:
        raise MappingError(f"{folder} does not load cleanly: " + "; ".join(problems))
    return model.float().eval()


class ConvertedBackend:
    """Trace and generation of the converted folder, through its family's `trace` / `generate`."""

    kind = "hf"

    def __init__(self, folder: "str | Path | ConvertedFolder", family: Any = None):
        self.converted = folder if isinstance(folder, ConvertedFolder) else ConvertedFolder.open(folder, require_provenance=False)
        self.folder = self.converted.path
        self.family = get_family(family) if isinstance(family, str) else (family or self.converted.family)
        self.model = load_converted(self.converted)

    def trace(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            return self.family.trace(self.model, inputs)

    def generate(self, inputs: dict[str, torch.Tensor], num_beams: int, max_len_b: int, min_len: int) -> list[list[int]]:
        with torch.no_grad():
            return self.family.generate(self.model, inputs, num_beams, max_len_b, min_len)
