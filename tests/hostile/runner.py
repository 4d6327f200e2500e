"""Run one hostile case through the `hfport` CLI and judge what happened."""

from __future__ import annotations

import contextlib
import io
import os
import re
import resource
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.hostile.corpus import Builder, Case, Invocation

CONTROL = {chr(c) for c in range(32) if c not in (9, 10)} | {"\x7f"}


@dataclass
class Outcome:
    case: str
    exit_code: int | None
    stderr: str
    clean: bool  # the expected refusal (or success), cleanly
    internal: bool  # exit 3, a traceback, an escaped exception, or a hang
    data_lost: bool
    code_run: bool
    problems: list[str]

    @property
    def accepted_wrongly(self) -> bool:
        return not (self.clean or self.internal)


_PROGRESS = re.compile(r"^[^\n\r]*\d+%\|[^\n\r]*\]\s*$")


def _without_progress_bars(text: str) -> str:
    """transformers' tqdm bar ('Loading weights: 100%|###| 290/290 [...]') is not an error line."""
    return "\n".join(part for part in re.split(r"[\r\n]+", text) if part and not _PROGRESS.match(part))


def _snapshot(paths: list[Path]) -> dict[Path, bytes | None]:
    return {p: p.read_bytes() if p.is_file() else None for p in paths}


def _in_process(inv: Invocation) -> tuple[int | None, str, bool]:
    from hfport.cli import main

    err, out = io.StringIO(), io.StringIO()
    hung = False

    def alarm(signum, frame):
        raise TimeoutError("the case ran past its time limit")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(int(inv.timeout))
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            with inv.patch() if inv.patch else contextlib.nullcontext():
                try:
                    code = main(list(inv.argv))
                except TimeoutError:
                    code, hung = None, True
                except BaseException as escaped:  # noqa: BLE001 - anything escaping main is a finding
                    err.write(f"Traceback (escaped main): {type(escaped).__name__}: {escaped}\n")
                    code = None
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    text = err.getvalue()
    if "ran past its time limit" in text:
        hung = True
    return code, text, hung


def _child(inv: Invocation) -> tuple[int | None, str, bool]:
    def limits():
        if inv.rlimit_fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (inv.rlimit_fsize, inv.rlimit_fsize))

    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    try:
        done = subprocess.run([sys.executable, "-m", "hfport.cli", *inv.argv], capture_output=True, text=True,
                              env=env, timeout=inv.timeout, preexec_fn=limits)
    except subprocess.TimeoutExpired as expired:
        return None, (expired.stderr or b"").decode(errors="replace") if isinstance(expired.stderr, bytes) else "", True
    return done.returncode, done.stderr, False


def run_case(case: Case, root: Path, shared: Path) -> Outcome:
    work = root / case.id.replace("/", "__")
    builder = Builder(root, shared, work)
    inv = case.build(builder)
    before = _snapshot(inv.keep)
    code, stderr, hung = (_child if inv.subprocess else _in_process)(inv)
    problems: list[str] = []
    stderr = _without_progress_bars(stderr)
    lines = [line for line in stderr.splitlines() if line.strip()]
    internal = hung or code == 3 or "Traceback" in stderr or "internal error" in stderr
    if hung:
        problems.append("hung")
    code_run = inv.sentinel is not None and inv.sentinel.exists()
    data_lost = any(_snapshot([p])[p] != content for p, content in before.items())
    if inv.late_keep is not None:
        path, content = inv.late_keep
        if not path.is_file() or (content is not None and path.read_text() != content):
            data_lost = True
            problems.append(f"lost {path.name}, made by someone else during the run")
    if inv.expect == "accept":
        clean = code == 0
        if not clean:
            problems.append(f"expected success, got exit {code}")
    else:
        clean = code == inv.exit_code
        if not clean:
            problems.append(f"expected exit {inv.exit_code}, got {code}")
        error_lines = [line for line in lines if line.startswith("error:")]
        if len(error_lines) != 1 or not lines or not lines[0].startswith("error:") or len(lines) > 2:
            clean = False
            problems.append(f"stderr is not one error line (+ one hint): {lines[:4]!r}")
        if any(ch in CONTROL for ch in stderr):
            clean = False
            problems.append("raw control characters on stderr")
        if inv.message and inv.message not in stderr:
            clean = False
            problems.append(f"message lacks {inv.message!r}")
        if inv.output is not None and inv.late_keep is None and inv.output.exists():
            clean = False
            problems.append("something was written at the output path")
    if inv.output is not None and inv.output.parent.is_dir():
        debris = [p.name for p in inv.output.parent.iterdir() if p.name.startswith(f".{inv.output.name[:100]}.")
                  and p != inv.gone]
        if debris:
            clean = False
            problems.append(f"staging debris left: {debris}")
    if inv.gone is not None and inv.gone.exists():
        clean = False
        problems.append(f"{inv.gone.name} still there")
    if code_run:
        clean = False
        problems.append("planted pickle code ran")
    if data_lost:
        clean = False
    return Outcome(case.id, code, stderr, clean and not internal, internal, data_lost, code_run, problems)
