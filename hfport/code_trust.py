"""Which Python a converted folder carries, and whether hfport may import it without asking.

Loading a converted folder through transformers (`verify`, `run`, `export`) imports the `*.py` files in it. Those
are hfport's own model code, copied at conversion — unless someone edited or added one since. The check here needs
no trust in the folder: every `*.py` in it must be byte-identical to the file of the same name that this hfport
ships under `hfport/models/`. Anything else (an edited file, a file hfport does not ship) is foreign code and is
refused unless the user passes `--trust-remote-code`. `hfport.json` records the hashes written at conversion, which
only serves to say whether foreign code was edited after conversion or came from another hfport version.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from hfport.errors import HfportError
from hfport.folder_files import file_sha256, regular_files

MODELS_DIR = Path(__file__).resolve().parent / "models"


class UntrustedCodeError(HfportError):
    """The folder holds Python that is not hfport's own model code."""


@lru_cache(maxsize=1)
def packaged_model_code() -> dict[str, str]:
    """{file name: sha256} of the model, config and processor code this hfport copies into converted folders."""
    return {path.name: file_sha256(path) for path in sorted(MODELS_DIR.glob("*/*.py")) if path.name != "__init__.py"}


def model_code_digests(folder: str | Path) -> dict[str, str]:
    """{relative path: sha256} of every Python file in the folder (what transformers may import)."""
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): file_sha256(p) for p in regular_files(folder) if p.suffix == ".py"}


AUTO_MAP_FILES = ("config.json", "processor_config.json", "preprocessor_config.json", "tokenizer_config.json")


def foreign_auto_map(folder: str | Path) -> list[str]:
    """`auto_map` entries that would make transformers import code hfport does not ship: a module in another Hub
    repository (`org/repo--module.Class`), or a module name that is not one of hfport's."""
    folder = Path(folder)
    shipped = packaged_model_code()
    out = []
    for name in AUTO_MAP_FILES:
        try:
            data = json.loads((folder / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        auto_map = data.get("auto_map") if isinstance(data, dict) else None
        if not isinstance(auto_map, dict):
            continue
        refs = [r for v in auto_map.values() for r in (v if isinstance(v, list) else [v]) if r is not None]
        for ref in refs:
            module = str(ref).rsplit(".", 1)[0]
            if "--" in str(ref) or f"{module}.py" not in shipped:
                out.append(f"{name} auto_map {ref}")
    return sorted(set(out))


def foreign_code(folder: str | Path) -> list[str]:
    """The folder's Python files that are not byte-identical to hfport's packaged file of the same name, and
    `auto_map` entries pointing at code hfport does not ship."""
    shipped = packaged_model_code()
    files = [rel for rel, sha in sorted(model_code_digests(folder).items()) if shipped.get(rel) != sha]
    return files + foreign_auto_map(folder)


def _provenance_code(folder: Path) -> dict:
    try:
        record = json.loads((folder / "hfport.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    code = record.get("code") if isinstance(record, dict) else None
    return code if isinstance(code, dict) else {}


def check_model_code(folder: str | Path, trust_remote_code: bool, action: str) -> list[str]:
    """Refuse (one line, naming the files) to import foreign Python from `folder` unless trusted.

    Returns the foreign files (empty when the folder's code is exactly hfport's own)."""
    folder = Path(folder)
    foreign = foreign_code(folder)
    if not foreign or trust_remote_code:
        return foreign
    recorded = _provenance_code(folder)
    shipped = packaged_model_code()
    current = model_code_digests(folder)

    def why(name: str) -> str:
        if " auto_map " in name:
            return f"{name} (code hfport does not ship)"
        if name not in shipped:
            return f"{name} (not hfport model code)"
        if recorded.get(name) == current[name]:
            return f"{name} (written by another hfport version)"
        return f"{name} (edited since conversion)" if name in recorded else f"{name} (differs from hfport's copy)"

    raise UntrustedCodeError(
        f"{folder}: refusing to {action}: it would run Python that is not this hfport's model code: "
        + ", ".join(map(why, foreign)),
        hint="read that code, then pass --trust-remote-code to run it anyway (or convert the checkpoint again)")
