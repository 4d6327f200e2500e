"""Hostile inputs for hfport, built on the fly from the shared tiny fixtures.

Each `Case` builds its input under a scratch folder and says how to invoke the CLI and what must hold
afterwards: a clean refusal (one `error:` line, the expected exit code, nothing at the output path) or a
clean success; files that must survive untouched (data loss); a sentinel that planted pickle code would
create (code run). `tests/hostile/table.py` runs every case and prints the before/after table;
`tests/test_hostile_inputs.py` asserts each case.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import pickle
import struct
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch

OFA_FIXTURE = "fixtures/ofa/ofa-tiny-plain"
OFA_RUN_FIXTURE = "fixtures/ofa/ofa-tiny-standard"
EMBEDDINGS = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "decoder.output_projection.weight")


@dataclass
class Invocation:
    argv: list[str]
    output: Path | None = None  # must not exist after a refusal
    keep: list[Path] = field(default_factory=list)  # must hold the same bytes afterwards
    sentinel: Path | None = None  # planted pickle code would create it
    expect: str = "refuse"  # or "accept"
    exit_code: int = 2
    subprocess: bool = False  # run in a child process (hangs, resource limits)
    rlimit_fsize: int | None = None
    timeout: float = 180
    patch: Callable[[], contextlib.AbstractContextManager] | None = None  # in-process fault injection
    message: str | None = None  # must appear in the error line
    late_keep: tuple[Path, str | None] | None = None  # made by someone else mid-run: must survive (content or any)
    gone: Path | None = None  # must not exist afterwards (stale debris)


@dataclass
class Case:
    family: str
    name: str
    build: Callable[["Builder"], Invocation]

    @property
    def id(self) -> str:
        return f"{self.family}/{self.name}"


class Builder:
    """Scratch space plus the inputs the cases derive from (made once, lazily)."""

    def __init__(self, root: Path, shared: Path, work: Path):
        self.root, self.shared, self.work = root, shared, work
        self.work.mkdir(parents=True, exist_ok=True)

    # ----- sources
    def plain(self) -> dict:
        from hfport.read.torch_file import ALLOWED_GLOBALS

        with torch.serialization.safe_globals(ALLOWED_GLOBALS):
            return torch.load(self.shared / OFA_FIXTURE / "checkpoint.pt", weights_only=True, map_location="cpu")

    def checkpoint(self, change: Callable[[dict], None] | None = None, name: str = "in.pt", recursion: bool = False,
                   **save) -> Path:
        import sys

        data = self.plain()
        if change:
            change(data)
        path = self.work / name
        limit = sys.getrecursionlimit()
        if recursion:
            sys.setrecursionlimit(30000)  # pickling a deep structure recurses; reading it back must not need to
        try:
            torch.save(data, path, **save)
        finally:
            sys.setrecursionlimit(limit)
        return path

    def out(self, name: str = "out") -> Path:
        return self.work / name

    def convert(self, source: Path, *extra, output: Path | None = None, **kw) -> Invocation:
        output = output or self.out()
        return Invocation(["convert", str(source), str(output), "--quiet", *map(str, extra)], output=output, **kw)

    def converted_folder(self) -> Path:
        """ofa-tiny-standard converted with a tokenizer (so `run` and `verify` have something to read)."""
        folder = self.root / "converted-ofa"
        if not (folder / "hfport.json").is_file():
            from hfport.converters import convert_checkpoint

            bpe = self.root / "bpe"
            bpe.mkdir(exist_ok=True)
            for name, src in (("dict.txt", "bpe_tiny"), ("encoder.json", "bpe"), ("vocab.bpe", "bpe")):
                if not (bpe / name).exists():
                    (bpe / name).symlink_to(self.shared / "fixtures" / "ofa" / src / name)
            convert_checkpoint(self.shared / OFA_RUN_FIXTURE / "checkpoint.pt", folder, bpe_dir=bpe,
                               patch_image_size=64, force=True)
        return folder

    def folder_copy(self, change: Callable[[Path], None]) -> Path:
        import shutil

        folder = self.work / "folder"
        shutil.copytree(self.converted_folder(), folder)
        change(folder)
        return folder

    def golden(self, change: Callable[[dict], None] | None = None) -> Path:
        data = torch.load(self.shared / OFA_RUN_FIXTURE / "reference.pt", weights_only=True, map_location="cpu")
        if change:
            change(data)
        path = self.work / "golden.pt"
        torch.save(data, path)
        return path


# ---------------------------------------------------------------- byte-level helpers

def replace_member(path: Path, suffix: str, content: bytes, compress: int = zipfile.ZIP_STORED) -> Path:
    """Rewrite a torch zip with the member ending in ``suffix`` replaced by ``content``."""
    with zipfile.ZipFile(path) as source:
        members = [(info, source.read(info)) for info in source.infolist()]
    with zipfile.ZipFile(path, "w") as target:
        for info, data in members:
            if info.filename.endswith(suffix):
                target.writestr(info.filename, content, compress_type=compress)
            else:
                target.writestr(info, data)
    return path


def member_range(path: Path, suffix: str) -> tuple[int, int]:
    """(offset, size) of a stored member's bytes inside the archive."""
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith(suffix))
    with open(path, "rb") as handle:
        handle.seek(info.header_offset)
        header = handle.read(30)
        name_len, extra_len = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_len + extra_len, info.compress_size


def largest_data_member(path: Path) -> str:
    with zipfile.ZipFile(path) as archive:
        info = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    return info.filename


def flip_byte(path: Path, fraction: float = 0.5) -> Path:
    offset, size = member_range(path, largest_data_member(path))
    data = bytearray(path.read_bytes())
    data[offset + int(size * fraction)] ^= 0x40
    path.write_bytes(bytes(data))
    return path


def deflated_zeros(size: int) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = bytes(1 << 24)
    parts = [compressor.compress(chunk) for _ in range(size // len(chunk))]
    return b"".join(parts) + compressor.flush()


def bomb_member(path: Path, inflated: int) -> Path:
    """Replace data.pkl by a deflated member that inflates to ``inflated`` bytes (central directory honest)."""
    body = deflated_zeros(inflated)
    with zipfile.ZipFile(path) as source:
        members = [(info, source.read(info)) for info in source.infolist()]
    with open(path, "wb") as raw, zipfile.ZipFile(raw, "w") as target:
        for info, data in members:
            if info.filename.endswith("data.pkl"):
                # write the precompressed body ourselves: zipfile would need the 1 GiB in memory
                with target.open(zipfile.ZipInfo(info.filename), "w", force_zip64=True) as member:
                    pass
                target.filelist.pop()
                target.fp.seek(target.start_dir)
                zinfo = zipfile.ZipInfo(info.filename)
                zinfo.compress_type = zipfile.ZIP_DEFLATED
                zinfo.file_size, zinfo.compress_size, zinfo.CRC = inflated, len(body), _crc_of_zeros(inflated)
                zinfo.header_offset = target.fp.tell()
                zinfo.flag_bits = 0
                target.fp.write(zinfo.FileHeader(zip64=True))
                target.fp.write(body)
                target.filelist.append(zinfo)
                target.NameToInfo[zinfo.filename] = zinfo
                target.start_dir = target.fp.tell()
            else:
                target.writestr(info, data)
    return path


def _crc_of_zeros(size: int) -> int:
    crc, chunk = 0, bytes(1 << 24)
    for _ in range(size // len(chunk)):
        crc = zlib.crc32(chunk, crc)
    return crc


class _System:
    """Pickles as a call to os.system: the classic malicious checkpoint."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def bomb_png(path: Path, side: int = 16000) -> Path:
    """A few-KB 1-bit PNG that declares side×side pixels (over PIL's decompression-bomb limit)."""
    row = bytes(1 + (side + 7) // 8)
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
                     + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b""))
    return path


# ---------------------------------------------------------------- cases

def _set(key, value):
    return lambda c: c["model"].__setitem__(key, value)


def _replace_like(key, make):
    return lambda c: c["model"].__setitem__(key, make(c["model"][key]))


def _hp(name, value):
    return lambda c: setattr(c["cfg"]["model"], name, value)


@contextlib.contextmanager
def _on_close(action):
    """Run ``action`` just before the converter's weights are finished (a concurrent actor, mid-run)."""
    from hfport.write import safetensors_shards

    original = safetensors_shards.ShardedSafetensorsWriter.close
    pending = [action]  # once: a nested run must not trigger it again

    def close(self):
        if pending:
            pending.pop()()
        return original(self)

    safetensors_shards.ShardedSafetensorsWriter.close = close
    try:
        yield
    finally:
        safetensors_shards.ShardedSafetensorsWriter.close = original


def _appears_midway(b: Builder) -> Invocation:
    out = b.out()
    marker = out / "someone-elses.txt"

    def appear():
        out.mkdir()
        marker.write_text("written by another process while hfport ran\n")

    return b.convert(b.checkpoint(), patch=lambda: _on_close(appear), output=out,
                     late_keep=(marker, "written by another process while hfport ran\n"))


def _concurrent_convert_wins(b: Builder) -> Invocation:
    source, out = b.checkpoint(), b.out()

    def other():
        from hfport.converters import convert_checkpoint

        convert_checkpoint(source, out)  # completes while the outer run is still writing

    inv = b.convert(source, patch=lambda: _on_close(other))
    inv.output = None  # the other run's folder is legitimately there
    inv.late_keep = (out / "hfport.json", None)
    return inv


def _force_race(b: Builder) -> Invocation:
    import shutil

    source, out = b.checkpoint(), b.out()
    out.mkdir()
    (out / "old.txt").write_text("the folder --force was asked to replace\n")
    newer = out / "newer.txt"

    def swap():
        shutil.rmtree(out)
        out.mkdir()
        newer.write_text("a folder that appeared after the run started\n")

    inv = b.convert(source, "--force", patch=lambda: _on_close(swap))
    inv.output = None
    inv.late_keep = (newer, "a folder that appeared after the run started\n")
    return inv


def _stale_partial(b: Builder) -> Invocation:
    out = b.out()
    stale = out.parent / f".{out.name}.partial-stale1"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    (stale / ".hfport-staging").write_text("pid 999999999\n")
    return b.convert(b.checkpoint(), expect="accept", exit_code=0, gone=stale)


def _nested(depth: int) -> bytes:
    return (b"\x80\x02}X\x05\x00\x00\x00modelq\x00" + b"]" * depth + b"a" * (depth - 1) + b"s.")


def _inst_pickle(command: str) -> bytes:
    return b"(S'" + command.encode() + b"'\nios\nsystem\n."


def _ro_fs():
    import errno

    @contextlib.contextmanager
    def patch():
        original = os.mkdir

        def mkdir(path, *a, **k):
            raise OSError(errno.EROFS, "Read-only file system", str(path))

        os.mkdir = mkdir
        try:
            yield
        finally:
            os.mkdir = original

    return patch


def _full_fs():
    import errno

    @contextlib.contextmanager
    def patch():
        from hfport.write import safetensors_shards

        original = safetensors_shards.write_safetensors  # what every shard is written through

        def write_safetensors(*a, **k):
            raise OSError(errno.ENOSPC, "No space left on device")

        safetensors_shards.write_safetensors = write_safetensors
        try:
            yield
        finally:
            safetensors_shards.write_safetensors = original

    return patch


def _verify(b: Builder, folder: Path, *extra, golden: Path | None = None, **kw) -> Invocation:
    golden = golden or (b.shared / OFA_RUN_FIXTURE / "reference.pt")
    report = b.work / "report.json"
    return Invocation(["verify", str(folder), "--golden", str(golden), "--report", str(report), *map(str, extra)], **kw)


def _run(b: Builder, image: Path, *extra, **kw) -> Invocation:
    return Invocation(["run", str(b.converted_folder()), "--image", str(image), "--greedy", "--max-length", "4",
                       *map(str, extra)], **kw)


def _set_src_tokens(change):
    def apply(g):
        g["inputs"]["src_tokens"] = change(g["inputs"]["src_tokens"])
    return apply


def _sentinel(b: Builder) -> Path:
    return b.work / "PWNED"


def _pickle_case(make_bytes) -> Callable[[Builder], Invocation]:
    def build(b: Builder) -> Invocation:
        sentinel = _sentinel(b)
        path = replace_member(b.checkpoint(), "data.pkl", make_bytes(f"touch {sentinel}"))
        return b.convert(path, sentinel=sentinel, message="os.system")
    return build


def _reduce_case(protocol: int) -> Callable[[Builder], Invocation]:
    def build(b: Builder) -> Invocation:
        sentinel = _sentinel(b)
        path = b.checkpoint(lambda c: c.__setitem__("extra", _System(f"touch {sentinel}")), pickle_protocol=protocol)
        return b.convert(path, sentinel=sentinel, message=f"{os.system.__module__}.system")
    return build


def _hostile_key(key: str) -> Callable[[Builder], Invocation]:
    return lambda b: b.convert(b.checkpoint(_set(key, torch.zeros(2))))


def _expanded(rows: int) -> Callable[[dict], None]:
    def change(c):
        width = c["model"]["encoder.embed_tokens.weight"].shape[1]
        view = torch.zeros(1, width).expand(rows, width)
        for key in EMBEDDINGS:
            c["model"][key] = view
        c["cfg"]["model"].vocab_size = rows  # consistent, so that only the size itself can stop it
    return change


def _deep_list(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


def _fifo(b: Builder) -> Path:
    path = b.work / "fifo.png"
    os.mkfifo(path)
    return path


def _truncated_png(b: Builder) -> Path:
    from PIL import Image

    full = b.work / "full.png"
    Image.new("RGB", (64, 64), (200, 10, 10)).save(full)
    cut = b.work / "cut.png"
    cut.write_bytes(full.read_bytes()[:80])
    return cut


def _small_image(b: Builder) -> Path:
    from PIL import Image

    path = b.work / "ok.png"
    Image.new("RGB", (32, 32), (10, 200, 10)).save(path)
    return path


CASES: list[Case] = [
    # pickle: code execution and the opcodes that carry it
    Case("pickle", "reduce-os-system-protocol-2", _reduce_case(2)),
    Case("pickle", "reduce-os-system-protocol-4-stack-global", _reduce_case(4)),
    Case("pickle", "inst-opcode-os-system", _pickle_case(_inst_pickle)),
    Case("pickle", "harmless-protocol-4-checkpoint-loads",
         lambda b: b.convert(b.checkpoint(pickle_protocol=4), expect="accept", exit_code=0)),
    Case("pickle", "int-key", lambda b: b.convert(b.checkpoint(_set(5, torch.zeros(2))))),
    Case("pickle", "tuple-key", lambda b: b.convert(b.checkpoint(_set(("encoder", 1), torch.zeros(2))))),
    Case("pickle", "deeply-nested", lambda b: b.convert(replace_member(b.checkpoint(), "data.pkl", _nested(200000)))),
    Case("pickle", "deeply-nested-hyper-parameter", lambda b: b.convert(b.checkpoint(
        _hp("extra_option", _deep_list(5000)), recursion=True))),
    Case("pickle", "deeply-nested-baggage-inspect", lambda b: Invocation(
        ["inspect", str(b.checkpoint(lambda c: c.__setitem__("last_optimizer_state", _deep_list(5000)),
                                     recursion=True))])),
    Case("pickle", "truncated-opcodes", lambda b: b.convert(_truncate_pickle(b))),
    # archive: corruption and expansion
    Case("archive", "byte-flip-in-tensor-data", lambda b: b.convert(flip_byte(b.checkpoint()))),
    Case("archive", "truncated-file", lambda b: b.convert(_truncate(b.checkpoint(), 0.6))),
    Case("archive", "deflated-1GiB-data-pkl", lambda b: b.convert(bomb_member(b.checkpoint(), 1 << 30))),
    # tensors: sizes, dtypes, values
    Case("tensors", "stride-0-expanded-embeddings", lambda b: b.convert(b.checkpoint(_expanded(2_000_000)))),
    Case("tensors", "huge-layer-index-inspect", lambda b: Invocation(
        ["inspect", str(b.checkpoint(_set("encoder.layers.2000000.fc1.weight", torch.zeros(2))))])),
    Case("tensors", "zero-dim-weight", lambda b: b.convert(b.checkpoint(_set("encoder.layers.0.fc1.weight",
                                                                             torch.tensor(1.0))))),
    Case("tensors", "zero-dim-embedding", lambda b: b.convert(b.checkpoint(_set("encoder.embed_tokens.weight",
                                                                                torch.tensor(1.0))))),
    Case("tensors", "meta-tensor", lambda b: b.convert(b.checkpoint(
        _replace_like("encoder.layers.0.fc1.weight", lambda t: torch.empty(t.shape, device="meta"))))),
    Case("tensors", "sparse-tensor", lambda b: b.convert(b.checkpoint(
        _replace_like("encoder.layers.0.fc1.weight", lambda t: t.to_sparse())))),
    *[Case("tensors", f"{dtype}-weight", (lambda dtype: lambda b: b.convert(b.checkpoint(
        _replace_like("encoder.layers.0.fc1.weight", lambda t: torch.ones(t.shape, dtype=getattr(torch, dtype)))))
        )(dtype)) for dtype in ("int64", "bool", "complex64", "uint8")],
    Case("tensors", "nan-weights", lambda b: b.convert(b.checkpoint(
        _replace_like("encoder.layers.0.fc1.weight", lambda t: t.index_fill(0, torch.tensor([0, 3]), float("nan")))),
        message="non-finite")),
    Case("tensors", "inf-weights", lambda b: b.convert(b.checkpoint(
        _replace_like("decoder.layers.0.fc2.bias", lambda t: t.index_fill(0, torch.tensor([1]), float("inf")))),
        message="non-finite")),
    Case("tensors", "nan-weights-allowed", lambda b: b.convert(b.checkpoint(
        _replace_like("encoder.layers.0.fc1.weight", lambda t: t.index_fill(0, torch.tensor([0]), float("nan")))),
        "--allow-nonfinite", expect="accept", exit_code=0)),
    # hyper-parameters
    Case("hparams", "non-numeric-heads", lambda b: b.convert(b.checkpoint(_hp("encoder_attention_heads", "many")))),
    Case("hparams", "non-numeric-dropout", lambda b: b.convert(b.checkpoint(_hp("dropout", "high")))),
    Case("hparams", "non-numeric-bucket-size", lambda b: b.convert(b.checkpoint(_hp("token_bucket_size", "wide")))),
    Case("hparams", "list-layer-count", lambda b: b.convert(b.checkpoint(_hp("encoder_layers", [1, 2])))),
    # output folder: races, leftovers, file systems
    Case("output", "folder-appears-mid-run", _appears_midway),
    Case("output", "concurrent-convert-into-same-output", _concurrent_convert_wins),
    Case("output", "force-but-folder-replaced-mid-run", _force_race),
    Case("output", "stale-partial-from-killed-run", _stale_partial),
    Case("output", "250-character-output-name", lambda b: b.convert(b.checkpoint(), output=b.out("o" * 250),
                                                                    expect="accept", exit_code=0)),
    Case("output", "output-under-a-regular-file", lambda b: b.convert(
        b.checkpoint(), output=_regular_file(b) / "out")),
    Case("output", "read-only-file-system", lambda b: b.convert(b.checkpoint(), patch=_ro_fs())),
    Case("output", "full-file-system", lambda b: b.convert(b.checkpoint(), patch=_full_fs())),
    Case("output", "file-size-limit", lambda b: b.convert(b.checkpoint(), subprocess=True, rlimit_fsize=20_000)),
    # verify: golden files, folders, options
    Case("verify", "golden-float-token-ids", lambda b: _verify(b, b.converted_folder(), golden=b.golden(
        _set_src_tokens(lambda t: t.float() + 0.5)))),
    Case("verify", "golden-out-of-range-token-ids", lambda b: _verify(b, b.converted_folder(), golden=b.golden(
        _set_src_tokens(lambda t: t + 10**6)))),
    Case("verify", "missing-safetensors", lambda b: _verify(b, b.folder_copy(
        lambda f: [p.unlink() for p in f.glob("*.safetensors")]))),
    Case("verify", "garbage-safetensors", lambda b: _verify(b, b.folder_copy(
        lambda f: (f / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage"))) ),
    Case("verify", "missing-config-json", lambda b: _verify(b, b.folder_copy(lambda f: (f / "config.json").unlink()))),
    Case("verify", "garbage-config-json", lambda b: _verify(b, b.folder_copy(
        lambda f: (f / "config.json").write_text("{not json")))),
    Case("verify", "atol-nan", lambda b: _verify(b, b.converted_folder(), "--atol", "nan")),
    Case("verify", "report-is-a-directory", lambda b: _report_dir(b)),
    # run: images and texts
    Case("run", "not-an-image", lambda b: _run(b, _text_file(b))),
    Case("run", "truncated-image", lambda b: _run(b, _truncated_png(b))),
    Case("run", "decompression-bomb-png", lambda b: _run(b, bomb_png(b.work / "bomb.png"))),
    Case("run", "fifo-instead-of-image", lambda b: _run(b, _fifo(b), subprocess=True, timeout=120)),
    Case("run", "word-longer-than-positions", lambda b: _run(b, _small_image(b), "--text", "x" * 3000,
                                                             expect="accept", exit_code=0)),
    # messages: what a checkpoint key can do to a terminal
    Case("messages", "key-forging-an-error-line", _hostile_key("encoder.bogus\nerror: forged line")),
    Case("messages", "key-with-terminal-escape", _hostile_key("encoder.bogus\x1b[31mred\x1b[0m")),
]


def _truncate(path: Path, fraction: float) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


def _truncate_pickle(b: Builder) -> Path:
    path = b.checkpoint()
    with zipfile.ZipFile(path) as archive:
        name = next(n for n in archive.namelist() if n.endswith("data.pkl"))
        data = archive.read(name)
    return replace_member(path, "data.pkl", data[: len(data) // 2])


def _regular_file(b: Builder) -> Path:
    path = b.work / "plain-file"
    path.write_text("not a folder\n")
    return path


def _text_file(b: Builder) -> Path:
    path = b.work / "notes.png"
    path.write_text("this is not an image\n")
    return path


def _report_dir(b: Builder) -> Invocation:
    inv = _verify(b, b.converted_folder())
    report_dir = b.work / "report-dir"
    report_dir.mkdir()
    inv.argv[inv.argv.index("--report") + 1] = str(report_dir)
    return inv


def by_id() -> dict[str, Case]:
    return {case.id: case for case in CASES}
