"""Small helpers shared by test modules (not fixtures)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

# Runs in a fresh interpreter where importing hfport is impossible: a converted folder must load with
# stock transformers and the modeling code it carries.
_LOAD_WITHOUT_HFPORT = """
import json, sys
sys.modules["hfport"] = None
import transformers
cls = getattr(transformers, sys.argv[2])
model, info = cls.from_pretrained(sys.argv[1], trust_remote_code=True, output_loading_info=True)
print(json.dumps({"class": type(model).__name__, "module": type(model).__module__,
                  **{k: sorted(map(str, v)) for k, v in info.items()}}))
"""


def fresh_process_env(tmp_path: Path) -> dict:
    env = dict(os.environ)
    env.update(HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error",
               HF_HUB_DISABLE_TELEMETRY="1")
    return env


def load_in_fresh_process(folder: Path, auto_class: str, tmp_path: Path) -> dict:
    result = subprocess.run([sys.executable, "-c", _LOAD_WITHOUT_HFPORT, str(folder), auto_class],
                            capture_output=True, text=True, env=fresh_process_env(tmp_path), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def run_cli(args: list[str], tmp_path: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hfport.cli", *map(str, args)], capture_output=True, text=True,
                          env=fresh_process_env(tmp_path), timeout=timeout)
