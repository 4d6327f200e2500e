"""Reading torch checkpoint files safely: weights_only unpickling, an explicit allowlist, lazy tensors.

Tensors come back memory-mapped (zip-format files), so optimizer state that the conversion throws away is
never read from disk. Anything the allowlist does not cover is refused with the name of the pickle global,
unless the caller passes ``trust=True`` (the user's explicit ``--trust-pickle`` flag).
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from hfport.errors import CheckpointError, UnsafeCheckpointError


class PickledClassPlaceholder:
    """Stands in for a class object that a checkpoint pickles by reference but never needs to run.

    Lightning stores its ModelCheckpoint *class* as a dict key under ``callbacks``; we only need the
    weights, so the name is allowlisted and bound to this inert placeholder (no import, no code run).
    """


# Globals that a plain OFA or METER checkpoint legitimately needs, beyond torch's own weights_only set.
ALLOWED_GLOBALS: list[Any] = [
    argparse.Namespace,  # fairseq: cfg["model"] and legacy top-level `args`
    (PickledClassPlaceholder, "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"),
    (PickledClassPlaceholder, "pytorch_lightning.callbacks.early_stopping.EarlyStopping"),
    (PickledClassPlaceholder, "pytorch_lightning.callbacks.lr_monitor.LearningRateMonitor"),
    (dict, "pytorch_lightning.utilities.parsing.AttributeDict"),  # a plain dict subclass: read as a dict
]

_GLOBAL_IN_ERROR = re.compile(r"(?:Unsupported global|Unsupported class|GLOBAL)\s*:?\s*(?:GLOBAL\s+)?([\w.]+)")


def _describe_global(message: str) -> str | None:
    match = re.search(r"GLOBAL ([\w.]+)", message) or _GLOBAL_IN_ERROR.search(message)
    return match.group(1) if match else None


def load_checkpoint(path: str | os.PathLike, *, trust: bool = False) -> dict:
    """Load a torch checkpoint as a dict with lazily mapped tensors.

    Raises CheckpointError (missing/empty/truncated/not torch) or UnsafeCheckpointError (a pickle global
    outside the allowlist). ``trust=True`` switches to full unpickling; only for files the user vouches for.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, expected a checkpoint file (.pt / .ckpt)")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path}: file is empty")

    is_zip = zipfile.is_zipfile(path)
    head = _head(path)
    if not is_zip and head.startswith(b"PK\x03\x04"):
        raise CheckpointError(f"{path}: truncated or corrupt torch zip archive (incomplete download?)")
    if not is_zip and not head.startswith(b"\x80"):
        # neither a zip-format torch file nor a legacy pickle-based one
        raise CheckpointError(f"{path}: not a torch checkpoint (expected a file written by torch.save)")
    # Legacy (pre-1.6) torch files cannot be memory-mapped; they load eagerly.
    mmap = is_zip
    try:
        if trust:
            checkpoint = torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
        else:
            with torch.serialization.safe_globals(ALLOWED_GLOBALS):
                checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        message = str(err)
        name = _describe_global(message)
        if name and ("Unsupported global" in message or "GLOBAL" in message or "Unsupported class" in message):
            raise UnsafeCheckpointError(
                f"{path} needs the pickle global '{name}' to load; refusing (not a plain checkpoint)",
                hint="if you trust this file completely, rerun with --trust-pickle",
            ) from None
        if "weights_only" in message.lower() or "unsupported" in message.lower():
            raise UnsafeCheckpointError(
                f"{path}: refused by safe unpickling ({_first_line(message)})",
                hint="if you trust this file completely, rerun with --trust-pickle",
            ) from None
        raise CheckpointError(f"{path}: not a torch checkpoint ({_first_line(message)})") from None
    except (EOFError, zipfile.BadZipFile) as err:
        raise CheckpointError(f"{path}: truncated or corrupt checkpoint ({type(err).__name__})") from None
    except RuntimeError as err:
        message = _first_line(str(err))
        if "zip" in message.lower() or "central directory" in message.lower() or "PytorchStreamReader" in message:
            raise CheckpointError(f"{path}: truncated or corrupt torch zip archive ({message})") from None
        raise CheckpointError(f"{path}: cannot be read as a torch checkpoint ({message})") from None
    except (ValueError, TypeError, AttributeError, KeyError, IndexError, OSError, MemoryError) as err:
        raise CheckpointError(f"{path}: cannot be read as a torch checkpoint ({type(err).__name__}: "
                              f"{_first_line(str(err))})") from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path}: top level is a {type(checkpoint).__name__}, expected a checkpoint dict")
    return checkpoint


def _first_line(message: str) -> str:
    for line in message.strip().splitlines():
        if line.strip():
            return line.strip()[:300]
    return "no details"


def _head(path: Path) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(4)


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 24) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()
