"""The parent's side of a benchmark worker process: one command per stdin line, answers as `TAG VALUE...` lines.

A worker prints `ready LOAD_SECONDS RSS_MB` once its model is loaded; lines without the awaited tag (library
chatter) are skipped.
"""

from __future__ import annotations

import subprocess


class LineWorker:
    def __init__(self, argv: list[str], env: dict | None = None, close_timeout: float = 60):
        self.close_timeout = close_timeout
        self.process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        reply = self.read("ready")
        self.load_seconds, self.rss_mb = float(reply[0]), float(reply[1])

    def read(self, tag: str, whole: bool = False) -> list[str]:
        """The words after `tag` on its next line (`whole`: the rest of the line as one item)."""
        while True:
            line = self.process.stdout.readline()
            if not line:
                raise RuntimeError(f"worker {self.process.args[:3]} ended without answering")
            if line.split()[:1] == [tag]:
                return [line[len(tag) + 1:]] if whole else line.split()[1:]

    def send(self, line: str) -> None:
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def ask(self, command: str) -> float:
        """Send a timed command; its answer is `ms VALUE`."""
        self.send(command)
        return float(self.read("ms")[0])

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=self.close_timeout)
