"""The safe reader: allowlisted weights_only loading, lazy tensors, one clear error per kind of bad file."""

from __future__ import annotations

import os

import pytest
import torch

from hfport.errors import CheckpointError, UnsafeCheckpointError
from hfport.read.torch_file import load_checkpoint


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo this must never run",))


def test_fairseq_checkpoint_loads_without_fairseq_and_keeps_its_namespace(shared_root):
    checkpoint = load_checkpoint(shared_root / "fixtures/ofa/ofa-tiny-standard/checkpoint.pt")
    assert type(checkpoint["cfg"]["model"]).__name__ == "Namespace"
    assert checkpoint["cfg"]["model"].encoder_layers == 2


def test_lightning_checkpoint_loads_with_its_callback_class_allowlisted_by_name(shared_root):
    checkpoint = load_checkpoint(shared_root / "fixtures/meter/meter-tiny-vqa-lightning/checkpoint.ckpt")
    (callback_key,) = checkpoint["callbacks"].keys()
    assert callback_key.__name__ == "PickledClassPlaceholder"
    assert "optimizer_states" in checkpoint


def test_tensors_are_memory_mapped_not_copied_into_ram(shared_root):
    checkpoint = load_checkpoint(shared_root / "fixtures/ofa/ofa-tiny-fp16-trained/checkpoint.pt")
    moment = next(iter(checkpoint["last_optimizer_state"]["state"].values()))["exp_avg"]
    address = moment.data_ptr()
    mapped = []
    for line in open("/proc/self/maps"):
        span, *rest = line.split()
        if rest and rest[-1].endswith("ofa-tiny-fp16-trained/checkpoint.pt"):
            low, high = (int(x, 16) for x in span.split("-"))
            mapped.append(low <= address < high)
    assert any(mapped), "the optimizer moment does not live in a file mapping of the checkpoint"


def test_a_pickle_that_would_run_code_is_refused_naming_the_global(tmp_path):
    path = tmp_path / "hostile.pt"
    torch.save({"model": {"w": torch.zeros(2)}, "payload": _RunsCode()}, path)
    with pytest.raises(UnsafeCheckpointError, match=r"'posix\.system'") as info:
        load_checkpoint(path)
    assert "--trust-pickle" in info.value.hint


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "file is empty"),
        (b"hello, I am text", "not a torch checkpoint"),
        (None, "truncated"),
    ],
    ids=["empty", "text", "truncated"],
)
def test_bad_files_raise_one_clear_checkpoint_error(tmp_path, shared_root, content, message):
    path = tmp_path / "bad.pt"
    if content is None:
        whole = (shared_root / "fixtures/ofa/ofa-tiny-plain/checkpoint.pt").read_bytes()
        content = whole[: len(whole) // 3]
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message) as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value)


def test_a_missing_file_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(tmp_path / "absent.pt")


def test_lightning_attribute_dict_hparams_load_as_a_plain_dict_without_lightning(tmp_path):
    import sys
    import types

    module = types.ModuleType("pytorch_lightning.utilities.parsing")

    class AttributeDict(dict):
        pass

    AttributeDict.__module__, AttributeDict.__qualname__ = module.__name__, "AttributeDict"
    module.AttributeDict = AttributeDict
    names = ["pytorch_lightning", "pytorch_lightning.utilities", "pytorch_lightning.utilities.parsing"]
    saved = {name: sys.modules.get(name) for name in names}
    for name in names[:-1]:
        sys.modules[name] = types.ModuleType(name)
    sys.modules[names[-1]] = module
    try:
        torch.save({"state_dict": {}, "hyper_parameters": AttributeDict(config={"num_heads": 12})}, tmp_path / "pl.ckpt")
    finally:
        for name, old in saved.items():
            if old is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old
    checkpoint = load_checkpoint(tmp_path / "pl.ckpt")
    assert isinstance(checkpoint["hyper_parameters"], dict)
    assert checkpoint["hyper_parameters"]["config"] == {"num_heads": 12}


def test_an_archive_member_with_an_unknown_compression_method_is_one_checkpoint_error(tmp_path):
    """Found by the reader fuzz: a flipped byte in the central directory's method field made zipfile raise
    NotImplementedError (an internal error) instead of a refusal."""
    import struct

    from hfport.read.torch_file import file_sha256

    path = tmp_path / "method.pt"
    torch.save({"w": torch.ones(3)}, path)
    data = bytearray(path.read_bytes())
    central = data.find(b"PK\x01\x02")  # the first central-directory entry; its method is at offset 10
    assert central > 0
    data[central + 10:central + 12] = struct.pack("<H", 99)
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="unknown compression method"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError):
        file_sha256(path)


def test_an_end_record_claiming_several_disks_is_one_checkpoint_error(tmp_path):
    """Found by the reader fuzz: zipfile.is_zipfile itself raised BadZipFile on a multi-disk end record."""
    import struct

    from hfport.read.torch_file import file_sha256

    path = tmp_path / "disks.pt"
    torch.save({"w": torch.ones(3)}, path)
    data = bytearray(path.read_bytes())
    end = data.rfind(b"PK\x05\x06")  # end of central directory; "number of this disk" at offset 4
    data[end + 4:end + 6] = struct.pack("<H", 1)
    locator = data.rfind(b"PK\x06\x07")  # zip64 locator (torch writes zip64): "total disks" at offset 16
    if locator > 0:
        data[locator + 16:locator + 20] = struct.pack("<I", 2)
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    try:  # hashing the damaged archive either hashes it or refuses it, never an internal error
        file_sha256(path)
    except CheckpointError:
        pass


def test_an_archive_member_needing_an_unknown_zip_version_is_one_checkpoint_error(tmp_path):
    """Found by the reader fuzz: 'version needed to extract' past what zipfile knows raised NotImplementedError."""
    import struct

    path = tmp_path / "version.pt"
    torch.save({"w": torch.ones(3)}, path)
    data = bytearray(path.read_bytes())
    central = data.find(b"PK\x01\x02")  # "version needed to extract" at offset 6 of a central-directory entry
    data[central + 6:central + 8] = struct.pack("<H", 128)
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_a_refused_global_is_named_by_torchs_own_checkpoint_inspection_not_its_error_text(tmp_path, monkeypatch):
    """torch's error wording is no interface: the name comes from get_unsafe_globals_in_checkpoint, with the
    allowlist counted as safe (a fairseq Namespace beside the payload is not named)."""
    import argparse
    import pickle

    path = tmp_path / "hostile.pt"
    torch.save({"args": argparse.Namespace(arch="x"), "model": {"w": torch.zeros(2)}, "payload": _RunsCode()}, path)
    asked = []
    real = torch.serialization.get_unsafe_globals_in_checkpoint
    monkeypatch.setattr(torch.serialization, "get_unsafe_globals_in_checkpoint",
                        lambda f: asked.append(f) or real(f))
    real_load = torch.load

    def reworded(*args, **kwargs):  # a torch whose refusal says nothing about which global
        try:
            return real_load(*args, **kwargs)
        except pickle.UnpicklingError:
            raise pickle.UnpicklingError("Weights only load failed.") from None

    monkeypatch.setattr(torch, "load", reworded)
    with pytest.raises(UnsafeCheckpointError, match=r"needs the pickle global 'posix\.system' to load") as info:
        load_checkpoint(path)
    assert asked and "argparse" not in str(info.value)
