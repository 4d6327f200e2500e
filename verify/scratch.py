"""Scratch folders that live as long as the process (the original code reads files from them while it loads;
nothing in them is needed afterwards). Standard library only: the recorder imports this in legacy environments."""

import atexit
import shutil
import tempfile


def scratch_dir(prefix: str) -> str:
    path = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, path, True)
    return path
