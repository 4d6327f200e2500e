"""Reading torch checkpoint files safely: weights_only unpickling, an explicit allowlist, lazy tensors.

Tensors come back memory-mapped (zip-format files), so optimizer state that the conversion throws away is
never read from disk. Anything the allowlist does not cover is refused with the name of the pickle global,
unless the caller passes ``trust=True`` (the user's explicit ``--trust-pickle`` flag).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import pickle
import re
import stat
import struct
import types
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import Any

import torch
from torch._weights_only_unpickler import Unpickler as WeightsOnlyUnpickler

from hfport.errors import CheckpointError, HfportError, UnsafeCheckpointError
from hfport.read.pickle_ops import globals_in, protocol_of, to_protocol_2


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

# torch stores every member uncompressed; a compressed one is foreign, and may not inflate beyond this
MAX_INFLATED_MEMBER = 64 * 2**20

def load_checkpoint(path: str | os.PathLike, *, trust: bool = False) -> dict:
    """Load a torch checkpoint as a dict with lazily mapped tensors.

    Raises CheckpointError (missing/empty/truncated/not torch) or UnsafeCheckpointError (a pickle global
    outside the allowlist). ``trust=True`` switches to full unpickling; only for files the user vouches for.
    """
    path = Path(path)
    check_regular_file(path, "a checkpoint file (.pt / .ckpt)")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path}: file is empty")

    is_zip = _is_zip(path)
    head = _head(path)
    if not is_zip and head.startswith(b"PK\x03\x04"):
        raise CheckpointError(f"{path}: truncated or corrupt torch zip archive (incomplete download?)")
    if not is_zip and not head.startswith(b"\x80"):
        # neither a zip-format torch file nor a legacy pickle-based one
        raise CheckpointError(f"{path}: not a torch checkpoint (expected a file written by torch.save)")
    if is_zip:
        check_archive_sizes(path)
    # Legacy (pre-1.6) torch files cannot be memory-mapped; they load eagerly.
    mmap = is_zip
    protocol = _pickle_protocol(path) if is_zip else 2
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*pickle protocol.*")
            if trust:
                checkpoint = torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
            elif protocol > 2:
                checkpoint = _load_newer_protocol(path, mmap)
            else:
                with torch.serialization.safe_globals(ALLOWED_GLOBALS):
                    checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        message = str(err)
        name = _unsafe_global_named(path, message)
        if name:
            raise UnsafeCheckpointError(
                f"{path} needs the pickle global '{name}' to load; refusing (not a plain checkpoint)",
                hint="if you trust this file completely, rerun with --trust-pickle",
            ) from None
        if "weights_only" in message.lower() or "unsupported" in message.lower():
            raise UnsafeCheckpointError(
                f"{path}: refused by safe unpickling ({_unpickler_reason(message)})",
                hint="if you trust this file completely, rerun with --trust-pickle",
            ) from None
        raise CheckpointError(f"{path}: not a torch checkpoint ({_first_line(message)})") from None
    except RecursionError:
        raise CheckpointError(f"{path}: nested too deeply to be a checkpoint") from None
    except (EOFError, zipfile.BadZipFile) as err:
        raise CheckpointError(f"{path}: truncated or corrupt checkpoint ({type(err).__name__})") from None
    except RuntimeError as err:
        message = _first_line(str(err))
        if "zip" in message.lower() or "central directory" in message.lower() or "PytorchStreamReader" in message:
            raise CheckpointError(f"{path}: truncated or corrupt torch zip archive ({message})") from None
        raise CheckpointError(f"{path}: cannot be read as a torch checkpoint ({message})") from None
    except HfportError:
        raise
    except Exception as err:  # noqa: BLE001 - whatever torch's parser raises on a damaged file is about the file
        raise CheckpointError(f"{path}: cannot be read as a torch checkpoint ({type(err).__name__}: "
                              f"{_first_line(str(err))})") from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path}: top level is a {type(checkpoint).__name__}, expected a checkpoint dict")
    return checkpoint


def check_regular_file(path: Path, expected: str) -> None:
    """Refuse before opening what is not a regular file: a FIFO or device would block or never end."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except OSError as err:
        raise CheckpointError(f"{path}: cannot be read ({err.strerror})") from None
    if stat.S_ISDIR(mode):
        raise CheckpointError(f"{path}: is a directory, expected {expected}")
    if not stat.S_ISREG(mode):
        raise CheckpointError(f"{path}: not a regular file (a pipe or device?), expected {expected}")


# what Python's zipfile raises on a damaged archive (NotImplementedError: an unknown method or "zip file version")
ZIP_ERRORS = (zipfile.BadZipFile, OSError, ValueError, EOFError, zlib.error, struct.error, NotImplementedError)


def _is_zip(path: Path) -> bool:
    """zipfile.is_zipfile, except that an end record it cannot accept (a multi-disk claim, say) means "no"."""
    try:
        return zipfile.is_zipfile(path)
    except ZIP_ERRORS:
        return False


_KNOWN_COMPRESSION = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA)


def check_archive_sizes(path: Path) -> None:
    """Refuse archives whose members would inflate far beyond the file, before anything is inflated.

    The central directory states every member's size; torch's reader allocates what it states.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except ZIP_ERRORS as err:
        raise CheckpointError(f"{path}: truncated or corrupt torch zip archive ({_first_line(str(err))})") from None
    for info in members:
        if info.compress_type not in _KNOWN_COMPRESSION:  # zipfile would raise NotImplementedError later
            raise CheckpointError(f"{path}: corrupt archive: member {info.filename!r} names an unknown compression "
                                  f"method ({info.compress_type})")
        if info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size:
            raise CheckpointError(f"{path}: corrupt archive: member {info.filename!r} states two sizes")
        if info.compress_type != zipfile.ZIP_STORED and info.file_size > MAX_INFLATED_MEMBER:
            raise CheckpointError(
                f"{path}: archive member {info.filename!r} would inflate from {info.compress_size:,} to "
                f"{info.file_size:,} bytes; refusing (torch writes members uncompressed)")


def _data_pkl(path: Path) -> bytes | None:
    """The archive's pickle (small: compressed members are bounded by check_archive_sizes)."""
    try:
        with zipfile.ZipFile(path) as archive:
            name = next((n for n in archive.namelist() if n.endswith("data.pkl")), None)
            return archive.read(name) if name else None
    except ZIP_ERRORS:
        return None


def _pickle_protocol(path: Path) -> int:
    data = _data_pkl(path)
    return protocol_of(data) if data else 2


def _allowed_names() -> set[str]:
    from torch._weights_only_unpickler import _get_allowed_globals

    ours = {g[1] if isinstance(g, tuple) else f"{g.__module__}.{g.__qualname__}" for g in ALLOWED_GLOBALS}
    return set(_get_allowed_globals()) | ours


def _unsafe_global_named(path: Path, message: str) -> str | None:
    """The pickle global that safe unpickling refused, by name, whatever opcode imported it
    (GLOBAL, INST, protocol 4's STACK_GLOBAL): torch's own static look at the archive's pickle first, then
    hfport's opcode scan (legacy files, globals torch's look misses)."""
    names = _unsafe_globals_by_torch(path)
    if names:
        return ", ".join(names[:3])
    data = _data_pkl(path) if _is_zip(path) else path.read_bytes()[: 1 << 20]
    if not data:
        return None
    allowed = _allowed_names()
    names = [n for n in globals_in(data) if n not in allowed and not n.startswith("torch.")]
    return ", ".join(names[:3]) if names else None


def _unsafe_globals_by_torch(path: Path) -> list[str]:
    """`torch.serialization.get_unsafe_globals_in_checkpoint`, with hfport's allowlist counted as safe; [] where
    it cannot tell (a legacy file, a damaged archive)."""
    if not _is_zip(path):
        return []
    try:
        with torch.serialization.safe_globals(ALLOWED_GLOBALS):
            found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # noqa: BLE001 - a file torch cannot disassemble falls back to hfport's own scan
        return []
    return [str(name) for name in found]


class _ProtocolTwoUnpickler(WeightsOnlyUnpickler):
    """torch's weights-only unpickler, fed the protocol-2 rewrite of a protocol 3-5 pickle."""

    def __init__(self, file, *, encoding: str = "bytes"):
        try:
            data = to_protocol_2(file.read())
        except (ValueError, EOFError, struct.error, UnicodeDecodeError) as err:
            raise pickle.UnpicklingError(f"cannot read this pickle safely: {err}") from None
        super().__init__(io.BytesIO(data), encoding=encoding)


_PROTOCOL_TWO = types.SimpleNamespace(__name__="hfport_protocol_two", Unpickler=_ProtocolTwoUnpickler,
                                      UnpicklingError=pickle.UnpicklingError)


def _load_newer_protocol(path: Path, mmap: bool) -> Any:
    """A protocol 3-5 checkpoint (torch.save(..., pickle_protocol=4)): same allowlist, same unpickler."""
    with zipfile.ZipFile(path) as archive:
        if any(n.endswith("constants.pkl") for n in archive.namelist()):  # TorchScript: torch.load would run it
            raise UnsafeCheckpointError(f"{path} is a TorchScript archive, not a checkpoint; refusing")
    globals_named = _data_pkl(path) or b""
    allowed = _allowed_names()
    refused = [n for n in globals_in(globals_named) if n not in allowed]
    if refused:
        raise UnsafeCheckpointError(
            f"{path} needs the pickle global '{refused[0]}' to load; refusing (not a plain checkpoint)",
            hint="if you trust this file completely, rerun with --trust-pickle")
    with torch.serialization.safe_globals(ALLOWED_GLOBALS):
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_PROTOCOL_TWO, mmap=mmap)


def _unpickler_reason(message: str) -> str:
    """torch's weights-only refusal without its boilerplate: the line that says what it met."""
    match = re.search(r"WeightsUnpickler error:\s*(.+)", message)
    return _first_line(match.group(1)) if match else _first_line(message)


def _first_line(message: str) -> str:
    for line in message.strip().splitlines():
        if line.strip():
            return line.strip()[:300]
    return "no details"


def _head(path: Path) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(4)


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 24) -> str:
    """SHA-256 of the file; for a zip-format checkpoint, every member's CRC-32 is checked in the same pass.

    A mismatch (a corrupted download, a flipped byte) is a CheckpointError naming the member.
    """
    path = Path(path)
    members = _member_ranges(path)
    crcs = [0] * len(members)
    first = 0  # members before this one are complete and checked
    position = 0
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
            end = position + len(block)
            view = memoryview(block)
            index = first
            while index < len(members) and members[index][0] < end:
                start, stop = members[index][0], members[index][1]
                low, high = max(start, position), min(stop, end)
                if low < high:
                    crcs[index] = zlib.crc32(view[low - position:high - position], crcs[index])
                index += 1
            while first < len(members) and members[first][1] <= end:
                _check_crc(path, members[first], crcs[first])
                first += 1
            position = end
    for index in range(first, len(members)):  # stated ranges beyond the end of the file
        _check_crc(path, members[index], crcs[index])
    return digest.hexdigest()


def _check_crc(path: Path, member: tuple[int, int, str, int], crc: int) -> None:
    if crc != member[3]:
        raise CheckpointError(f"{path}: corrupted: archive member {member[2]!r} fails its CRC-32 check "
                              "(damaged or incomplete download?)")


def _member_ranges(path: Path) -> list[tuple[int, int, str, int]]:
    """(start, stop, name, crc) of every stored member's bytes, in file order; compressed members are
    checked here directly (they are small: see check_archive_sizes)."""
    if not _is_zip(path):
        return []
    ranges = []
    try:
        with zipfile.ZipFile(path) as archive, open(path, "rb") as raw:
            for info in archive.infolist():
                if info.compress_type != zipfile.ZIP_STORED:
                    if info.file_size <= MAX_INFLATED_MEMBER:
                        archive.read(info)  # zipfile checks the CRC of what it inflates
                    continue
                raw.seek(info.header_offset)
                header = raw.read(30)
                if len(header) < 30 or header[:4] != b"PK\x03\x04":
                    raise CheckpointError(f"{path}: corrupt archive: no header for member {info.filename!r}")
                name_length, extra_length = struct.unpack("<HH", header[26:30])
                start = info.header_offset + 30 + name_length + extra_length
                ranges.append((start, start + info.compress_size, info.filename, info.CRC))
    except zipfile.BadZipFile as err:
        raise CheckpointError(f"{path}: corrupted: {_first_line(str(err))}") from None
    except ZIP_ERRORS as err:
        raise CheckpointError(f"{path}: corrupt torch zip archive ({_first_line(str(err))})") from None
    return sorted(ranges)


class BackgroundSha256:
    """`file_sha256` (with its CRC-32 checks) in a thread, started now, while the conversion maps and writes.

    hashlib and zlib release the GIL on large blocks, so on two cores the hash costs next to no wall time. A
    damaged archive found by the hash is the first thing to report: `result()` and `failure()` give it precedence
    over whatever its damaged bytes made fail meanwhile.
    """

    def __init__(self, path: str | os.PathLike):
        import threading

        self._digest: str | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(Path(path),), name="hfport-sha256", daemon=True)
        self._thread.start()

    def _run(self, path: Path) -> None:
        try:
            self._digest = file_sha256(path)
        except BaseException as err:  # noqa: BLE001 - handed to the caller's thread
            self._error = err

    def failure(self) -> BaseException | None:
        """Wait for the hash; the error it raised, if any."""
        self._thread.join()
        return self._error

    def result(self) -> str:
        if (error := self.failure()) is not None:
            raise error
        return self._digest
