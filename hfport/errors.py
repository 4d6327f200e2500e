"""Typed errors. The CLI turns every HfportError into one line on stderr and its exit code."""

from __future__ import annotations


class HfportError(Exception):
    """An expected failure the user can act on: no traceback, a one-line message, exit code."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint


class CheckpointError(HfportError):
    """The input file cannot be read as a checkpoint (missing, empty, truncated, not torch)."""


class UnsafeCheckpointError(CheckpointError):
    """Reading the file would need a pickle global outside the allowlist."""


class UnsupportedCheckpointError(CheckpointError):
    """A readable checkpoint whose family or structure hfport does not know."""


class MappingError(HfportError):
    """Source and target parameters do not correspond (unmapped, unproduced, wrong shape)."""


class ConfigError(HfportError):
    """Hyper-parameters are missing or contradict the tensor shapes."""


class OutputExistsError(HfportError):
    """The output path exists and --force was not given."""


class VerificationFailed(HfportError):
    """The converted model does not compute what the reference computed."""

    exit_code = 1


class HubError(HfportError):
    """Talking to the Hub failed (auth, network, refusal)."""
