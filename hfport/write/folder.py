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


def check_output_path(path: str | os.PathLike, force: bool, *, protect: os.PathLike | None = None) -> Path:
    """The resolved output folder, after refusing what must not be replaced.

    ``protect`` is an input file that must survive: replacing a folder that contains it would delete it.
    """
    shown, path = Path(path), Path(path).resolve()
    if path.exists() and not force:
        raise OutputExistsError(f"{shown} exists; pass --force to replace it")
    if path.exists() and not path.is_dir():
        raise OutputExistsError(f"{shown} exists and is not a folder; refusing to replace it")
    if protect is not None and Path(protect).resolve().is_relative_to(path):
        raise OutputExistsError(f"{shown} holds the input {Path(protect).name}; choose another output folder")
    return path


def check_output_file(path: str | os.PathLike, force: bool) -> Path:
    shown, path = Path(path), Path(path).resolve()
    if path.is_dir():
        raise OutputExistsError(f"{shown} is a folder; give a file name for the checkpoint")
    if path.exists() and not force:
        raise OutputExistsError(f"{shown} exists; pass --force to replace it")
    return path


@contextlib.contextmanager
def staged_output(path: str | os.PathLike, force: bool = False, *, protect: os.PathLike | None = None) -> Iterator[Path]:
    """Yield a staging folder; on success it becomes ``path``, on any error it disappears."""
    path = check_output_path(path, force, protect=protect)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.partial-", dir=path.parent))
    try:
        yield staging
        if path.exists():  # force: move the old folder aside first so the swap is quick and recoverable
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
            os.replace(path, old / path.name)
            try:
                os.replace(staging, path)
            except BaseException:
                os.replace(old / path.name, path)  # put the user's folder back
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
