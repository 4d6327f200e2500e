"""Output folders appear whole or not at all: everything is written into a staging folder beside the
target and renamed into place at the end; an existing target is replaced only with ``force``."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from hfport.errors import OutputExistsError


def check_output_path(path: str | os.PathLike, force: bool) -> Path:
    path = Path(path)
    if path.exists() and not force:
        raise OutputExistsError(f"{path} exists; pass --force to replace it")
    if path.exists() and not path.is_dir():
        raise OutputExistsError(f"{path} exists and is not a folder; refusing to replace it")
    return path


@contextlib.contextmanager
def staged_output(path: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """Yield a staging folder; on success it becomes ``path``, on any error it disappears."""
    path = check_output_path(path, force)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.partial-", dir=path.parent))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if path.exists():  # force: move the old folder aside first so the swap is quick and recoverable
        old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
        os.replace(path, old / path.name)
        os.replace(staging, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, path)
