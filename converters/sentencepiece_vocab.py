"""A SentencePiece model file read without sentencepiece or protobuf: its pieces (text, score, type) and the
normaliser settings, from the protobuf wire format of ``ModelProto`` (pieces = field 1, trainer_spec = 2,
normalizer_spec = 3). Enough to rebuild a unigram model as a `tokenizers` tokenizer."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from hfport.errors import ConfigError

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
UNIGRAM, BPE = 1, 2


@dataclass
class SentencePieceModel:
    pieces: list[tuple[str, float, int]] = field(default_factory=list)  # (piece, score, type)
    model_type: int = UNIGRAM
    normalizer_name: str = ""
    precompiled_charsmap: bytes = b""
    add_dummy_prefix: bool = True
    remove_extra_whitespaces: bool = True


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _fields(data: bytes):
    """(field number, wire type, value) of one protobuf message; values of length-delimited fields are bytes."""
    import struct

    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 1:
            value, pos = data[pos:pos + 8], pos + 8
        elif wire == 2:
            size, pos = _varint(data, pos)
            value, pos = data[pos:pos + size], pos + size
        elif wire == 5:
            value, pos = struct.unpack("<f", data[pos:pos + 4])[0], pos + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if pos > len(data):
            raise ValueError("truncated field")
        yield number, wire, value


def read_sentencepiece_model(path: Path) -> SentencePieceModel:
    import struct

    try:
        return _parse(Path(path).read_bytes())
    except (ValueError, UnicodeDecodeError, struct.error) as err:
        raise ConfigError(f"{path}: not a SentencePiece model file ({err})") from None


def _parse(data: bytes) -> SentencePieceModel:
    model = SentencePieceModel()
    for number, wire, value in _fields(data):
        if number == 1 and wire == 2:
            piece, score, kind = "", 0.0, NORMAL
            for n, _, v in _fields(value):
                if n == 1:
                    piece = v.decode("utf-8")
                elif n == 2:
                    score = float(v)
                elif n == 3:
                    kind = int(v)
            model.pieces.append((piece, score, kind))
        elif number == 2 and wire == 2:
            for n, _, v in _fields(value):
                if n == 3:
                    model.model_type = int(v)
        elif number == 3 and wire == 2:
            for n, _, v in _fields(value):
                if n == 1:
                    model.normalizer_name = v.decode("utf-8")
                elif n == 2:
                    model.precompiled_charsmap = bytes(v)
                elif n == 3:
                    model.add_dummy_prefix = bool(v)
                elif n == 4:
                    model.remove_extra_whitespaces = bool(v)
    if not model.pieces:
        raise ValueError("no pieces")
    return model
