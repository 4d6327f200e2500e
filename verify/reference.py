"""Running the original model: in this interpreter, or in the original's own (legacy) Python as a subprocess.

Either way the recorder writes a golden file and the harness reads it back with `load_golden`, so live and
recorded references go through one reader.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

import hfport
import hfport.verify
from hfport.errors import CheckpointError, ConfigError, HfportError
from hfport.verify.scratch import scratch_dir

# Makes `hfport.verify.record` importable in another interpreter without installing hfport there: the two
# package directories are registered by path (hfport's __init__ and the recorder need only torch).
_BOOTSTRAP = """
import importlib.util, sys
def _package(name, path):
    spec = importlib.util.spec_from_file_location(name, path + "/__init__.py", submodule_search_locations=[path])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
_package("hfport", {hfport!r})
_package("hfport.verify", {verify!r})
from hfport.verify.record import main
sys.exit(main(sys.argv[1:]))
"""


def record_args(checkpoint: str, reference_code: str, out: str, family: str | None = None, inputs: str | None = None,
                bpe_dir: str | None = None, text_config: str | None = None, vit: str | None = None) -> list[str]:
    args = [str(checkpoint), "--reference-code", str(reference_code), "--out", str(out)]
    for flag, value in (("--family", family), ("--inputs", inputs), ("--bpe-dir", bpe_dir),
                        ("--text-config", text_config), ("--vit", vit)):
        if value:
            args += [flag, str(value)]
    return args


def run_recorder(args: list[str], reference_python: str | None = None, timeout: float | None = None) -> None:
    """Run the recorder CLI with `args`, in-process or in `reference_python`; errors become HfportErrors."""
    if reference_python is None:
        from hfport.verify import record

        ns = record.build_parser().parse_args(args)
        try:
            from hfport.verify.backends.fairseq_ofa import ReferenceError_

            record.record(ns.checkpoint, ns.reference_code, ns.out, ns.family, ns.inputs, ns.bpe_dir,
                          ns.text_config, ns.vit, ns.threads)
        except ReferenceError_ as err:
            raise CheckpointError(str(err)) from err
        except ImportError as err:
            raise ConfigError(f"the original code cannot run in this Python: {err}",
                              hint="point --reference-python at the original's own environment") from err
        return
    bootstrap = _BOOTSTRAP.format(hfport=os.path.dirname(hfport.__file__), verify=os.path.dirname(hfport.verify.__file__))
    try:
        proc = subprocess.run([reference_python, "-c", bootstrap, *args], capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError as err:
        raise ConfigError(f"--reference-python {reference_python} cannot be run") from err
    if proc.returncode != 0:
        lines = [line for line in (proc.stderr or proc.stdout).strip().splitlines() if line.strip()]
        raise CheckpointError(f"the reference run in {reference_python} failed: {lines[-1] if lines else proc.returncode}")


def record_reference(checkpoint: str | Path, reference_code: str | Path, sets: dict | None, family: str,
                     reference_python: str | None = None, bpe_dir: str | None = None,
                     text_config: str | None = None, vit: str | None = None, workdir: str | None = None) -> Path:
    """Run the original on `sets` (None: its own probes) and return the golden file it wrote."""
    if not Path(checkpoint).is_file():
        raise CheckpointError(f"checkpoint not found: {checkpoint}")
    if not Path(reference_code).is_dir():
        raise ConfigError(f"--reference-code {reference_code} is not a directory")
    workdir = workdir or scratch_dir("hfport-verify-")
    inputs_file = None
    if sets is not None:
        inputs_file = os.path.join(workdir, "probes.pt")
        torch.save({k: dict(v) for k, v in sets.items()}, inputs_file)
    out = os.path.join(workdir, "reference.golden.pt")
    run_recorder(record_args(str(checkpoint), str(reference_code), out, family, inputs_file, bpe_dir, text_config, vit),
                 reference_python)
    if not os.path.isfile(out):
        raise HfportError("the reference recorder wrote no golden file")
    return Path(out)


def current_python() -> str:
    return sys.executable
