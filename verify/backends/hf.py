"""The converted side: a folder written by `hfport convert`, loaded the way a user loads it from the Hub
(transformers Auto classes, `trust_remote_code=True`), in fp32 whatever the stored dtype, in eval mode."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import torch

from hfport.errors import ConfigError, MappingError

TRACE_MODULES = {"ofa": "hfport.verify.backends.hf_ofa", "meter": "hfport.verify.backends.hf_meter",
                 "fairseq_translation": "hfport.verify.backends.hf_fairseq"}
STOCK_AUTO = {"fairseq_translation": "AutoModelForSeq2SeqLM"}  # families converted into stock classes


def _auto_class(folder: Path) -> Any:
    """The Auto class whose auto_map entry names the converted model class (hfport.json `model_class`)."""
    import transformers

    config = json.loads((folder / "config.json").read_text())
    auto_map = config.get("auto_map") or {}
    family = json.loads((folder / "hfport.json").read_text()).get("family") if (folder / "hfport.json").is_file() else None
    if not auto_map and family in STOCK_AUTO:
        return getattr(transformers, STOCK_AUTO[family])
    wanted = None
    provenance = folder / "hfport.json"
    if provenance.is_file():
        wanted = json.loads(provenance.read_text()).get("model_class")
    wanted = wanted or (config.get("architectures") or [None])[0]
    for auto_name, target in auto_map.items():
        target = target[0] if isinstance(target, (list, tuple)) else target
        if wanted and str(target).rsplit(".", 1)[-1] == wanted and hasattr(transformers, auto_name):
            return getattr(transformers, auto_name)
    if "AutoModel" in auto_map:
        return transformers.AutoModel
    raise ConfigError(f"{folder}/config.json has no auto_map entry for {wanted or 'the model'}",
                      hint="convert the checkpoint again with hfport convert")


def load_converted(folder: str | Path) -> torch.nn.Module:
    """The converted model in fp32/eval; refuses on missing, unexpected or mismatched keys (transformers only
    warns, and would initialise missing weights randomly)."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise ConfigError(f"{folder} is not a converted model folder (no config.json)")
    auto = _auto_class(folder)
    model, info = auto.from_pretrained(str(folder), trust_remote_code=True, dtype=torch.float32,
                                       output_loading_info=True)
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
    """Trace and generation of the converted folder, through the family's `hf_trace` / `hf_generate`."""

    kind = "hf"

    def __init__(self, folder: str | Path, family: str):
        self.folder = Path(folder)
        self.family = family
        self.model = load_converted(self.folder)
        self.module = importlib.import_module(TRACE_MODULES[family])

    def trace(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            return self.module.hf_trace(self.model, inputs)

    def generate(self, inputs: dict[str, torch.Tensor], num_beams: int, max_len_b: int, min_len: int) -> list[list[int]]:
        with torch.no_grad():
            return self.module.hf_generate(self.model, inputs, num_beams, max_len_b, min_len)
