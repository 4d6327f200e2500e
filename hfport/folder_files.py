"""What a converted folder holds, and the sha256 of every file that makes up the model.

`regular_files(folder)` is the one walk that both `verify` (what it judged) and `push` (what it uploads) use:
regular files only, hidden entries and Python caches skipped, and anything that is not a regular file inside the
folder — a symlink leading out of it, a symlinked directory, a FIFO, a device — refused by name, so a link to
`~/.ssh/id_rsa` is never read, hashed or published.

`model_digests(folder)` is what a verification report records: the sha256 of every file that affects the model
(weights and their index, config, generation config, model code, tokenizer / processor files, hfport.json), i.e.
every file except the report itself and the generated model card. `digest_mismatches` compares two such records.
"""

from __future__ import annotations

import fnmatch
import os
import stat
from pathlib import Path

from hfport.errors import HfportError

REPORT_NAME = "verification.json"
CARD_NAME = "README.md"
PLOT_NAME = "verification.png"  # a picture of the report; the report records its sha256, push checks it
NOT_JUDGED = (REPORT_NAME, CARD_NAME, PLOT_NAME)  # the proof itself, its picture and the card generated from them
_SKIPPED_NAMES = ("__pycache__", "*.pyc")


class UnsafeFolderEntry(HfportError):
    """A folder entry that is not a regular file inside the folder (symlink out, special file)."""


def _skipped(name: str) -> bool:
    return name.startswith(".") or any(fnmatch.fnmatch(name, p) for p in _SKIPPED_NAMES)


def regular_files(folder: str | Path) -> list[Path]:
    """Every regular file under `folder` (sorted), without hidden entries and Python caches.

    A symlink is accepted only when it resolves to a regular file inside the folder; any other entry that is not a
    plain file or directory is refused, all of them named in one error."""
    folder = Path(folder)
    root = folder.resolve()
    found: list[Path] = []
    refused: list[str] = []
    for current, dirs, files in os.walk(folder, followlinks=False):
        here = Path(current)
        dirs[:] = sorted(d for d in dirs if not _skipped(d))
        for name in sorted(dirs):
            path = here / name
            if path.is_symlink():  # os.walk lists a symlinked directory here without entering it
                refused.append(f"{path.relative_to(folder).as_posix()} (symlinked directory)")
                dirs.remove(name)
        for name in sorted(files):
            if _skipped(name):
                continue
            path = here / name
            rel = path.relative_to(folder).as_posix()
            why = _why_refused(path, root)
            if why:
                refused.append(f"{rel} ({why})")
            else:
                found.append(path)
    if refused:
        raise UnsafeFolderEntry(
            f"{folder}: refusing entries that are not regular files inside the folder: {', '.join(refused[:8])}"
            + (f" and {len(refused) - 8} more" if len(refused) > 8 else ""),
            hint="replace links with copies of the files they point to, or remove them")
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def _why_refused(path: Path, root: Path) -> str | None:
    try:
        target = path.resolve(strict=True)
        mode = os.stat(target).st_mode
    except (OSError, RuntimeError):
        return "broken symlink" if path.is_symlink() else "unreadable"
    if path.is_symlink():
        if not target.is_relative_to(root):
            return f"symlink to {target}, outside the folder"
        if not stat.S_ISREG(mode):
            return "symlink to something that is not a regular file"
        return None
    if not stat.S_ISREG(mode):
        return "not a regular file"
    return None


def file_sha256(path: str | Path, chunk: int = 1 << 24) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def model_digests(folder: str | Path) -> dict[str, str]:
    """{path relative to the folder: sha256} of every file a verification judges (all but the report and card)."""
    folder = Path(folder)
    return {path.relative_to(folder).as_posix(): file_sha256(path) for path in regular_files(folder)
            if path.relative_to(folder).as_posix() not in NOT_JUDGED}


def digest_mismatches(recorded: dict[str, str], current: dict[str, str]) -> list[str]:
    """One phrase per difference between what a report judged and what the folder holds now, by file name."""
    out = [f"{name} (changed)" for name in sorted(recorded) if name in current and current[name] != recorded[name]]
    out += [f"{name} (missing)" for name in sorted(recorded) if name not in current]
    out += [f"{name} (not verified)" for name in sorted(current) if name not in recorded]
    return out
