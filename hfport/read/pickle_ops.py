"""Reading pickle opcodes without running them: which globals a pickle names, and protocol 4/5 rewritten
as protocol 2 so that torch's weights-only unpickler (which knows only protocol-2 opcodes) can judge it.

Nothing here executes a pickle: ``pickletools.genops`` only parses. The rewrite maps opcodes one to one
(FRAME dropped, MEMOIZE -> BINPUT, SHORT_BINUNICODE -> BINUNICODE, STACK_GLOBAL -> GLOBAL with the two
strings it consumes); every global still goes through torch's allowlist afterwards.
"""

from __future__ import annotations

import pickle
import pickletools
import struct

_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING", "STRING"}


def protocol_of(data: bytes) -> int:
    return data[1] if len(data) >= 2 and data[0] == pickle.PROTO[0] else 0


def globals_in(data: bytes, limit: int = 1000) -> list[str]:
    """``module.name`` of every GLOBAL / INST / STACK_GLOBAL in a pickle, in order (parsing stops at damage)."""
    found: list[str] = []
    memo: dict[int, object] = {}
    recent: list[object] = []  # values of the latest pushes that STACK_GLOBAL may consume
    try:
        for opcode, arg, _ in pickletools.genops(data):
            name = opcode.name
            if name in ("GLOBAL", "INST"):
                found.append(str(arg).replace(" ", "."))
            elif name == "STACK_GLOBAL" and len(recent) >= 2:
                found.append(f"{recent[-2]}.{recent[-1]}")
            if name in _STRING_OPS:
                recent.append(arg)
            elif name == "MEMOIZE":
                memo[len(memo)] = recent[-1] if recent else None
            elif name in ("BINPUT", "LONG_BINPUT", "PUT"):
                memo[int(arg)] = recent[-1] if recent else None
            elif name in ("BINGET", "LONG_BINGET", "GET"):
                recent.append(memo.get(int(arg)))
            elif name not in ("FRAME",):
                recent.append(None)
            if len(found) >= limit:
                break
    except (ValueError, EOFError, struct.error, UnicodeDecodeError):
        pass
    return [f for f in dict.fromkeys(found)]


def to_protocol_2(data: bytes) -> bytes:
    """Rewrite a protocol 3-5 pickle with protocol-2 opcodes (see the module doc); ValueError if it cannot."""
    out = bytearray()
    memo_map: dict[int, int | str] = {}  # input memo index -> output memo index, or a string never emitted
    next_in = 0
    next_out = 0
    pending: list[tuple[str, list[int]]] = []  # strings held back: (value, input memo indices naming them)

    def emit_string(value: str) -> None:
        encoded = value.encode("utf-8", "surrogatepass")
        out.extend(pickle.BINUNICODE + struct.pack("<I", len(encoded)) + encoded)

    def flush() -> None:
        nonlocal next_out
        for value, indices in pending:
            emit_string(value)
            for index in indices:
                out.extend(pickle.LONG_BINPUT + struct.pack("<I", next_out))
                memo_map[index] = next_out
                next_out += 1
        pending.clear()

    for opcode, arg, position in pickletools.genops(data):
        name = opcode.name
        if name == "PROTO":
            out.extend(pickle.PROTO + bytes([2]))
        elif name == "FRAME":
            continue
        elif name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8"):
            pending.append((arg, []))
        elif name == "MEMOIZE":
            if pending:
                pending[-1][1].append(next_in)
                memo_map[next_in] = pending[-1][0]  # replaced by a real index if the string is flushed
            else:
                out.extend(pickle.LONG_BINPUT + struct.pack("<I", next_out))
                memo_map[next_in] = next_out
                next_out += 1
            next_in += 1
        elif name in ("BINGET", "LONG_BINGET"):
            target = memo_map.get(int(arg))
            if target is None:
                raise ValueError(f"memo index {arg} used before it was set")
            if isinstance(target, str):
                pending.append((target, []))
            else:
                flush()
                out.extend(pickle.LONG_BINGET + struct.pack("<I", target))
        elif name == "STACK_GLOBAL":
            if len(pending) < 2:
                raise ValueError("STACK_GLOBAL without two literal strings before it")
            (module, _), (attribute, _) = pending[-2], pending[-1]
            del pending[-2:]
            flush()
            out.extend(pickle.GLOBAL + f"{module}\n{attribute}\n".encode("utf-8"))
        elif name in ("BINPUT", "LONG_BINPUT"):
            raise ValueError("mixes explicit memo indices with MEMOIZE")
        else:
            flush()
            if name == "STOP":
                out.extend(pickle.STOP)
                return bytes(out)
            end = _next_position(data, position, opcode, arg)
            out.extend(data[position:end])
    raise ValueError("no STOP opcode")


def _next_position(data: bytes, position: int, opcode, arg) -> int:
    """Where the opcode at ``position`` ends (its argument included)."""
    if opcode.arg is None:
        return position + 1
    reader = opcode.arg.reader
    import io

    stream = io.BytesIO(data)
    stream.seek(position + 1)
    reader(stream)
    return stream.tell()
