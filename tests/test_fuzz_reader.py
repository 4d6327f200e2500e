"""A bounded, seeded mutation fuzz of the checkpoint reader (and a few whole conversions).

Valid tiny checkpoints are mutated (byte flips, truncation, appended junk, pickle opcode edits, members
swapped for planted code) and read back. Whatever happens, only hfport's typed errors may escape, a failed
conversion leaves nothing at its output, and planted pickle code never runs. HFPORT_FUZZ_SECONDS (default 20)
bounds the run, HFPORT_FUZZ_MUTANTS (default 600) caps it so that every machine replays the same prefix of the
sequence (CI stays reproducible); HFPORT_FUZZ_SEED picks the sequence (printed on failure to replay it).
"""

from __future__ import annotations

import os
import pickle
import random
import time
import zipfile
from pathlib import Path

import pytest
import torch

from hfport.errors import HfportError
from hfport.read.torch_file import file_sha256, load_checkpoint
from tests.hostile.corpus import Builder, replace_member

PLANTED_CALLS: list[str] = []


def planted(*args):
    """A global a malicious pickle might name; if the reader ever calls it, the fuzz fails."""
    PLANTED_CALLS.append(repr(args))
    return {}


def _seeds(folder: Path, builder: Builder) -> list[Path]:
    tensors = {"model": {"encoder.w": torch.randn(4, 3), "encoder.b": torch.arange(3.0)}, "cfg": {"x": 1}}
    paths = []
    for name, kwargs in (("p2.pt", {}), ("p4.pt", {"pickle_protocol": 4}),
                         ("legacy.pt", {"_use_new_zipfile_serialization": False})):
        path = folder / name
        torch.save(tensors, path, **kwargs)
        paths.append(path)
    paths.append(builder.checkpoint(name="ofa.pt"))
    return paths


def _planted_pickle(rng: random.Random, sentinel: Path) -> bytes:
    choices = [
        b"\x80\x02ctests.test_fuzz_reader\nplanted\nq\x00)R.",
        b"\x80\x02cos\nsystem\nX" + len(f"touch {sentinel}").to_bytes(4, "little") + f"touch {sentinel}".encode()
        + b"\x85R.",
        b"\x80\x04\x95\x20\x00\x00\x00\x00\x00\x00\x00\x8c\x16tests.test_fuzz_reader\x8c\x07planted\x93)R.",
        b"(S'touch " + str(sentinel).encode() + b"'\nios\nsystem\n.",
    ]
    return rng.choice(choices)


def _mutate(data: bytes, path: Path, rng: random.Random, sentinel: Path) -> tuple[str, bytes]:
    kind = rng.choice(["flip", "flip", "truncate", "append", "pickle-flip", "pickle-opcode", "planted", "splice"])
    buffer = bytearray(data)
    if kind == "flip":
        for _ in range(rng.randint(1, 8)):
            buffer[rng.randrange(len(buffer))] ^= 1 << rng.randrange(8)
    elif kind == "truncate":
        del buffer[rng.randrange(1, len(buffer)):]
    elif kind == "append":
        buffer += bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    elif kind == "splice":
        start = rng.randrange(len(buffer))
        buffer[start:start + rng.randint(1, 32)] = bytes(rng.randrange(256) for _ in range(rng.randint(0, 32)))
    elif zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            name = next(n for n in archive.namelist() if n.endswith("data.pkl"))
            pkl = bytearray(archive.read(name))
        if kind == "pickle-flip":
            pkl[rng.randrange(len(pkl))] = rng.randrange(256)
        elif kind == "pickle-opcode":
            opcodes = b"c\x93\x81\x92RbiI(.0}]tse\x94\x95"
            pkl.insert(rng.randrange(len(pkl)), rng.choice(opcodes))
        else:
            pkl = bytearray(_planted_pickle(rng, sentinel))
        copy = path.with_name("mutant-src.pt")
        copy.write_bytes(data)
        return kind, replace_member(copy, "data.pkl", bytes(pkl)).read_bytes()
    return kind, bytes(buffer)


def test_mutated_checkpoints_only_ever_raise_typed_errors_and_run_no_code(tmp_path, shared_root):
    seconds = float(os.environ.get("HFPORT_FUZZ_SECONDS", "20"))
    seed = int(os.environ.get("HFPORT_FUZZ_SEED", "1234"))
    cap = int(os.environ.get("HFPORT_FUZZ_MUTANTS", "600"))
    rng = random.Random(seed)
    builder = Builder(tmp_path, shared_root, tmp_path / "work")
    seeds = _seeds(tmp_path, builder)
    originals = {path: path.read_bytes() for path in seeds}
    sentinel = tmp_path / "PWNED"
    mutant = tmp_path / "mutant.pt"
    out = tmp_path / "out"
    deadline = time.monotonic() + seconds
    tried = refused = loaded = converted = 0
    while time.monotonic() < deadline and tried < cap:
        source = rng.choice(seeds)
        kind, data = _mutate(originals[source], source, rng, sentinel)
        mutant.write_bytes(data)
        what = f"seed={seed} iteration={tried} base={source.name} mutation={kind}"
        tried += 1
        whole = source.name == "ofa.pt" and converted < 4  # a few whole conversions, the rest reader only
        try:
            if whole:
                from hfport.converters import convert_checkpoint

                converted += 1
                target = out / str(tried)
                convert_checkpoint(mutant, target)
                loaded += 1
            else:
                checkpoint = load_checkpoint(mutant)
                file_sha256(mutant)
                loaded += 1
                assert isinstance(checkpoint, dict), what
        except HfportError:
            refused += 1
            if whole:
                assert not (out / str(tried)).exists(), f"{what}: a failed conversion left its output"
        except Exception as err:  # noqa: BLE001 - the finding
            pytest.fail(f"{what}: {type(err).__name__}: {err}")
        assert not PLANTED_CALLS, f"{what}: planted pickle code ran: {PLANTED_CALLS}"
        assert not sentinel.exists(), f"{what}: os.system ran"
    leftovers = [p.name for p in out.iterdir() if p.name.startswith(".")] if out.is_dir() else []
    assert not leftovers, leftovers
    print(f"fuzz: {tried} mutants in {seconds:.0f} s ({refused} refused, {loaded} loaded, {converted} converts)")
    assert tried >= 20, "the fuzz run barely ran"
    assert refused > 0
