"""Streaming safetensors writer: tensors arrive one at a time, shards are flushed at a size limit.

Memory stays bounded by one shard: the caller hands over lazily loaded (memory-mapped) tensors, and only
the tensors of the shard being written are materialised (and cast) at once.
"""

from __future__ import annotations

import json
import os
import re
import struct
from pathlib import Path

import torch

from hfport.errors import HfportError

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(text: str | int) -> int:
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B?)\s*", str(text).upper())
    if not match or match.group(2) not in _UNITS:
        raise HfportError(f"invalid size '{text}' (examples: 500MB, 2GB, 1GiB)")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


class ShardedSafetensorsWriter:
    def __init__(self, folder: str | os.PathLike, max_shard_size: int | str = "2GB", metadata: dict | None = None):
        self.folder = Path(folder)
        self.max_bytes = parse_size(max_shard_size)
        self.metadata = {"format": "pt", **(metadata or {})}
        self._pending: dict[str, torch.Tensor] = {}
        self._pending_bytes = 0
        self._shards: list[list[str]] = []
        self.total_bytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if self._pending and self._pending_bytes + size > self.max_bytes:
            self._flush()
        self._pending[name] = _standalone(tensor)
        self._pending_bytes += size
        self.total_bytes += size

    def _flush(self) -> None:
        index = len(self._shards)
        path = self.folder / f".shard-{index:05d}.safetensors"
        try:
            write_safetensors(path, self._pending, self.metadata)
        except OSError as err:
            raise HfportError(f"cannot write the weights into {self.folder.parent}: {err.strerror or err}") from None
        self._shards.append(list(self._pending))
        self._pending, self._pending_bytes = {}, 0

    def close(self) -> list[str]:
        """Finish writing; returns the file names written (shards and, when sharded, the index)."""
        if self._pending or not self._shards:
            self._flush()
        count = len(self._shards)
        if count == 1:
            os.replace(self.folder / ".shard-00000.safetensors", self.folder / WEIGHTS_NAME)
            return [WEIGHTS_NAME]
        names, weight_map = [], {}
        for index, keys in enumerate(self._shards):
            name = f"model-{index + 1:05d}-of-{count:05d}.safetensors"
            os.replace(self.folder / f".shard-{index:05d}.safetensors", self.folder / name)
            names.append(name)
            weight_map.update({key: name for key in keys})
        index_doc = {"metadata": {"total_size": self.total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
        (self.folder / INDEX_NAME).write_text(json.dumps(index_doc, indent=2) + "\n")
        return names + [INDEX_NAME]


# safetensors' dtype names
SAFETENSORS_DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
                      torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
                      torch.bool: "BOOL"}


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """One safetensors file (8-byte header length, JSON header padded to 8 bytes, the tensors' bytes in header
    order), each tensor's bytes handed to the file straight from its (possibly memory-mapped) storage: one copy,
    none held in memory (safetensors' own writer first copies every tensor of a shard into a bytes object)."""
    header: dict = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name, tensor in tensors.items():
        if tensor.dtype not in SAFETENSORS_DTYPES:
            raise HfportError(f"{name}: cannot store a {tensor.dtype} tensor in safetensors")
        size = tensor.numel() * tensor.element_size()
        header[name] = {"dtype": SAFETENSORS_DTYPES[tensor.dtype], "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(encoded)))
        handle.write(encoded)
        for tensor in tensors.values():
            if tensor.numel():
                handle.write(memoryview(tensor.reshape(-1).view(torch.uint8).numpy()))


def _standalone(tensor: torch.Tensor) -> torch.Tensor:
    """safetensors refuses tensors that share storage (METER's rank_output is a view of itm_score)."""
    tensor = tensor.contiguous()
    if tensor.untyped_storage().nbytes() != tensor.numel() * tensor.element_size():
        tensor = tensor.clone()
    return tensor
