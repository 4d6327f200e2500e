"""Output folders appear whole or not at all: everything is written into a staging folder beside the
target and renamed into place at the end, without ever replacing what another process put there meanwhile.

- The final rename is atomic and refuses to replace (``renameat2(RENAME_NOREPLACE)`` on Linux; elsewhere a
  claimed empty folder that only our rename may fill).
- ``force`` replaces only the folder that existed when the run started (same device and inode); anything
  else found at the path at the end is left alone and the run fails.
- Staging folders are named ``.NAME.partial-*`` and carry a marker with the writer's pid and host; the
  next run into the same output removes those whose writer is gone (a killed run's leftovers).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Iterator

from hfport.errors import HfportError, OutputExistsError

STAGING_MARKER = ".hfport-staging"
_AT_FDCWD = -100
_RENAME_NOREPLACE = 1


def _staging_prefix(path: Path) -> str:
    return f".{path.name[:100]}.partial-"  # short enough for a 255-byte file name limit


def check_output_path(path: str | os.PathLike, force: bool, *, protect: os.PathLike | None = None) -> Path:
    """The resolved output folder, after refusing what must not be replaced.

    ``protect`` is an input file that must survive: replacing a folder that contains it would delete it.
    """
    shown, path = Path(path), Path(path).resolve()
    if path.is_dir() and (path / STAGING_MARKER).exists():
        raise OutputExistsError(f"{shown} is an unfinished hfport staging folder, not an output; choose another path")
    if path.exists() and not force:
        raise OutputExistsError(f"{shown} exists; pass --force to replace it")
    if path.exists() and not path.is_dir():
        raise OutputExistsError(f"{shown} exists and is not a folder; refusing to replace it")
    if protect is not None and Path(protect).resolve().is_relative_to(path):
        raise OutputExistsError(f"{shown} holds the input {Path(protect).name}; choose another output folder")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise HfportError(f"{shown}: {parent} is a file, not a folder; choose another output path")
            break
    return path


def check_output_file(path: str | os.PathLike, force: bool) -> Path:
    shown, path = Path(path), Path(path).resolve()
    if path.is_dir():
        raise OutputExistsError(f"{shown} is a folder; give a file name for the checkpoint")
    if path.exists() and not force:
        raise OutputExistsError(f"{shown} exists; pass --force to replace it")
    return path


_UNSET = object()


def output_identity(path: Path) -> tuple[int, int, int] | None:
    """What is at ``path`` now (device, inode), so that --force later replaces only that."""
    return _identity(Path(path))


def _identity(path: Path) -> tuple[int, int, int] | None:
    """(device, inode, change time): a folder deleted and recreated may get the same inode number back."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    return info.st_dev, info.st_ino, info.st_ctime_ns


def _renameat2():
    name = ctypes.util.find_library("c")
    try:
        function = ctypes.CDLL(name, use_errno=True).renameat2
    except (OSError, AttributeError, TypeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return function


_RENAMEAT2 = _renameat2()


def rename_no_replace(source: Path, target: Path) -> None:
    """Move ``source`` to ``target`` atomically; FileExistsError if anything is at ``target``."""
    if _RENAMEAT2 is not None:
        if _RENAMEAT2(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target), _RENAME_NOREPLACE) == 0:
            return
        code = ctypes.get_errno()
        if code not in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):  # not supported here: fall back below
            raise OSError(code, os.strerror(code), str(target))
    # Fallback: claim the name with mkdir (atomic, fails if taken); renaming a folder onto an *empty* folder
    # replaces it, onto one someone has written into fails (ENOTEMPTY), so nothing of theirs is lost.
    os.mkdir(target)
    try:
        os.rename(source, target)
    except OSError:
        with contextlib.suppress(OSError):
            os.rmdir(target)
        raise


def _writer_alive(marker: Path) -> bool:
    try:
        fields = dict(line.split(" ", 1) for line in marker.read_text().splitlines() if " " in line)
        pid = int(fields["pid"])
    except (OSError, ValueError, KeyError):
        return True  # unreadable: not ours to judge, leave it
    if fields.get("host", socket.gethostname()) != socket.gethostname():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_staging(path: Path) -> list[Path]:
    """Remove staging folders for ``path`` left by runs that were killed (their writer process is gone)."""
    removed = []
    with contextlib.suppress(OSError):
        for entry in path.parent.iterdir():
            marker = entry / STAGING_MARKER
            if entry.name.startswith(_staging_prefix(path)) and marker.is_file() and not _writer_alive(marker):
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry)
    return removed


def _publish(staging: Path, path: Path, original: tuple[int, int, int] | None) -> None:
    if original is None:
        try:
            rename_no_replace(staging, path)
        except FileExistsError:
            raise OutputExistsError(f"{path} appeared while converting (another process?); left it untouched") from None
        except OSError as err:
            if err.errno in (errno.EEXIST, errno.ENOTEMPTY):
                raise OutputExistsError(f"{path} appeared while converting (another process?); left it untouched") from None
            raise
        return
    changed = OutputExistsError(f"{path} changed while converting (another process?); refusing to replace what "
                                "--force was not asked to replace")
    if _identity(path) != original:
        raise changed
    aside = Path(tempfile.mkdtemp(prefix=f".{path.name[:100]}.old-", dir=path.parent))
    moved = aside / "previous"
    try:
        rename_no_replace(path, moved)
    except FileNotFoundError:
        shutil.rmtree(aside, ignore_errors=True)
        raise changed from None
    if (_identity(moved) or ())[:2] != original[:2]:  # swapped between check and move (the move changes ctime)
        try:
            rename_no_replace(moved, path)
            shutil.rmtree(aside, ignore_errors=True)
        except OSError:
            raise OutputExistsError(f"{path} changed while converting; the newer folder was kept at {moved}") from None
        raise changed
    try:
        rename_no_replace(staging, path)
    except BaseException:
        with contextlib.suppress(OSError):
            rename_no_replace(moved, path)  # the user's folder goes back
            shutil.rmtree(aside, ignore_errors=True)
        raise
    shutil.rmtree(aside, ignore_errors=True)


@contextlib.contextmanager
def staged_output(path: str | os.PathLike, force: bool = False, *, protect: os.PathLike | None = None,
                  existing=_UNSET) -> Iterator[Path]:
    """Yield a staging folder; on success it becomes ``path``, on any error it disappears.

    With ``force``, only the folder that was at ``path`` when the run started (``existing``, from
    ``output_identity``; default: when this is entered) may be replaced.
    """
    path = check_output_path(path, force, protect=protect)
    original = _identity(path) if existing is _UNSET else existing
    if original is not None and _identity(path) != original:
        raise OutputExistsError(f"{path} changed while converting (another process?); refusing to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_staging(path)
    staging = Path(tempfile.mkdtemp(prefix=_staging_prefix(path), dir=path.parent))
    try:
        (staging / STAGING_MARKER).write_text(f"pid {os.getpid()}\nhost {socket.gethostname()}\n")
        yield staging
        (staging / STAGING_MARKER).unlink()
        _publish(staging, path, original)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
