"""Look at a torch checkpoint's structure without running pickled code or reading tensor data.

Used to tell a checkpoint's family inside the original's own environment (the recorder: any torch version,
Python >= 3.8). Plain containers come back as themselves; every other pickled global (tensors, Namespaces,
Lightning classes) becomes an inert `Opaque`; tensor storages are never read.
"""

import collections
import pickle
import zipfile
from typing import Any

_CONTAINERS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "dict"): dict,
    ("builtins", "list"): list,
    ("builtins", "tuple"): tuple,
    ("builtins", "set"): set,
    ("__builtin__", "set"): set,
}


class Opaque:
    """Stands in for any pickled object that is not a plain container; records only its global's name."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass

    def __call__(self, *args, **kwargs):
        return Opaque()


def _opaque_class(module: str, name: str):
    return type("Opaque_" + name, (Opaque,), {"pickled_as": module + "." + name})


class _Unpickler(pickle.Unpickler):
    def find_class(self, module, name):
        return _CONTAINERS.get((module, name)) or _opaque_class(module, name)

    def persistent_load(self, pid):
        return Opaque()


def peek_checkpoint(path: str) -> Any:
    """The checkpoint's top-level object with tensors and foreign objects replaced by `Opaque` instances.
    Raises ValueError when the file is not a torch checkpoint."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                name = next((n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"), None)
                if name is None:
                    raise ValueError("{}: a zip file without data.pkl, not a torch checkpoint".format(path))
                with archive.open(name) as handle:
                    return _Unpickler(handle).load()
        with open(path, "rb") as handle:  # legacy format: magic number, protocol, sys info, then the object
            for _ in range(3):
                _Unpickler(handle).load()
            return _Unpickler(handle).load()
    except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, IndexError, TypeError, AttributeError) as err:
        raise ValueError("{}: cannot be read as a torch checkpoint ({})".format(path, type(err).__name__)) from None
