"""Hostile inputs for `push`, `verify`, `run` and `export`, built on the fly, and what hfport does with each.

Every case builds its input in a scratch folder (from the shared OFA fixture, converted and verified by the hfport
under test), runs ONE hfport command in a fresh process — against an in-process Hub (tests/hub_server.py) where it
pushes — and records what happened: exit code, `error:` lines, a traceback, a hang, whether Python planted in the
folder ran, whether a secret outside the folder reached the Hub, whether the remote or the folder changed.

    python tests/hostile_push_proof_cases.py                      # this checkout, prints the table
    python tests/hostile_push_proof_cases.py --python OTHER/bin/python --pythonpath OTHER_SITE_PACKAGES

The second form runs another hfport (e.g. a worktree of an older commit) with the same cases. The test module
tests/test_hostile_push_proof.py runs each case under pytest and asserts the expected outcome and message.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from hub_server import FakeHub  # noqa: E402

SHARED = Path(os.environ.get("HFPORT_SHARED", HERE.parents[0].parent / "shared"))
FIXTURE = SHARED / "fixtures" / "ofa" / "ofa-tiny-plain"
STANDARD = SHARED / "fixtures" / "ofa" / "ofa-tiny-standard"
IMAGE = HERE / "data" / "images" / "rgb_37x23.png"
TOKEN = "hf_hostile_0123456789SECRETTOKEN"
REPO_ID = "tester/hostile"
HANG_LIMIT = 600  # seconds a command may take before it counts as hung (a loaded 2-core machine is slow)


@dataclass
class Outcome:
    family: str
    case: str
    expected: str  # "refuse" | "succeed"
    returncode: int | None
    stdout: str = ""
    stderr: str = ""
    hung: bool = False
    code_run: bool = False
    secret_uploaded: bool = False
    remote_changed: bool = False
    folder_changed: bool = False

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("error: ")]

    @property
    def internal_error(self) -> bool:
        return self.hung or self.returncode == 3 or "Traceback" in self.stderr or (
            self.returncode not in (0, None) and len(self.error_lines) != 1)

    @property
    def clean_refusal(self) -> bool:
        return (self.expected == "refuse" and not self.internal_error and self.returncode not in (0, None)
                and not self.remote_changed and not self.code_run and not self.secret_uploaded)

    @property
    def wrong_verdict(self) -> bool:
        """Accepted what it had to refuse, or reported as failed what succeeded."""
        if self.internal_error:
            return False
        return (self.returncode == 0) if self.expected == "refuse" else (self.returncode != 0)

    @property
    def ok(self) -> bool:
        if self.expected == "refuse":
            return self.clean_refusal and not self.folder_changed
        return (self.returncode == 0 and not self.internal_error and not self.code_run
                and not self.secret_uploaded and not self.folder_changed)


@dataclass
class Lab:
    """One hfport under test (an interpreter + PYTHONPATH) and the folders every case starts from."""

    root: Path
    python: str = sys.executable
    pythonpath: str | None = None
    in_process: bool = False  # run commands inside this interpreter (the hfport importable here)
    _base: Path | None = field(default=None, init=False)
    _runnable: Path | None = field(default=None, init=False)
    _other: Path | None = field(default=None, init=False)

    def env(self, hub: FakeHub | None = None) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "PYTHONPATH"))}
        env.update(HF_HOME=str(self.root / "hf-home"), HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_XET="1",
                   HF_HUB_DISABLE_PROGRESS_BARS="1", NO_COLOR="1", TRANSFORMERS_VERBOSITY="error",
                   HF_TOKEN=TOKEN, HF_HUB_OFFLINE="0" if hub else "1")
        if hub:
            env["HF_ENDPOINT"] = hub.url
        if self.pythonpath:
            env["PYTHONPATH"] = self.pythonpath
        return env

    def cli(self, *args, hub: FakeHub | None = None, timeout: int = HANG_LIMIT,
            fresh_process: bool = False) -> tuple[subprocess.CompletedProcess, bool]:
        """Run `hfport ARGS`; (result, hung). In-process when `in_process` (fast, for pytest), unless the command
        may hang (`fresh_process`)."""
        if self.in_process and not fresh_process:
            return self._in_process(args, hub), False
        try:
            done = subprocess.run([self.python, "-m", "hfport.cli", *map(str, args)], env=self.env(hub),
                                  capture_output=True, text=True, timeout=timeout, cwd=self.root)
            return done, False
        except subprocess.TimeoutExpired as err:
            out = err.stdout.decode() if isinstance(err.stdout, bytes) else (err.stdout or "")
            errs = err.stderr.decode() if isinstance(err.stderr, bytes) else (err.stderr or "")
            return subprocess.CompletedProcess(err.cmd, None, out, errs), True

    def _in_process(self, args, hub: FakeHub | None) -> subprocess.CompletedProcess:
        import contextlib
        import io

        import huggingface_hub.constants

        from hfport.cli import main

        constants = huggingface_hub.constants  # read from the environment at import: set here too
        saved_env, saved = dict(os.environ), (constants.ENDPOINT, constants.HF_HUB_DISABLE_XET)
        out, err = io.StringIO(), io.StringIO()
        os.environ.clear()
        os.environ.update(self.env(hub))
        if hub:
            constants.ENDPOINT, constants.HF_HUB_DISABLE_XET = hub.url, True
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = main([str(a) for a in args])
        finally:
            os.environ.clear()
            os.environ.update(saved_env)
            constants.ENDPOINT, constants.HF_HUB_DISABLE_XET = saved
        return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())

    def must(self, *args) -> None:
        done, hung = self.cli(*args, timeout=600)
        if hung or done.returncode != 0:
            raise RuntimeError(f"setup command failed: hfport {' '.join(map(str, args))}\n{done.stderr[-2000:]}")

    # -- starting folders (made by the hfport under test) ------------------------------------------------------
    def base(self) -> Path:
        """ofa-tiny-plain converted and verified against its golden file: a folder push accepts."""
        if self._base is None:
            self._base = self.root / "base"
            self.must("convert", FIXTURE / "checkpoint.pt", self._base, "--max-shard-size", "4MB")
            self.must("verify", self._base, "--golden", FIXTURE / "reference.pt")
        return self._base

    def other(self) -> Path:
        """Another verified OFA folder (ofa-tiny-standard), whose report a forger may copy."""
        if self._other is None:
            self._other = self.root / "other"
            self.must("convert", STANDARD / "checkpoint.pt", self._other)
            self.must("verify", self._other, "--golden", STANDARD / "reference.pt")
        return self._other

    def runnable(self) -> Path:
        """ofa-tiny-standard with a tokenizer and image processor, so `run` gets as far as loading the model."""
        if self._runnable is None:
            bpe = self.root / "bpe"
            bpe.mkdir()
            shutil.copy(SHARED / "fixtures" / "ofa" / "bpe_tiny" / "dict.txt", bpe / "dict.txt")
            for name in ("encoder.json", "vocab.bpe"):
                shutil.copy(SHARED / "fixtures" / "ofa" / "bpe" / name, bpe / name)
            self._runnable = self.root / "runnable"
            self.must("convert", STANDARD / "checkpoint.pt", self._runnable, "--bpe-dir", bpe,
                      "--patch-image-size", "64")
        return self._runnable

    def copy(self, source: Path, name: str) -> Path:
        target = self.root / "cases" / name
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(source, target, symlinks=True)
        return target


# -- observing --------------------------------------------------------------------------------------------------
def folder_state(folder: Path) -> dict:
    out = {}
    for path in sorted(folder.rglob("*")):
        if "__pycache__" in path.parts or path.name.endswith(".pyc"):
            continue
        if path.is_symlink():
            out[str(path)] = "link:" + os.readlink(path)
        elif path.is_file():
            out[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def hub_holds(hub: FakeHub, needle: bytes) -> bool:
    blobs = list(hub.lfs_objects.values())
    for repo in hub.repos.values():
        for commit in repo.commits.values():
            blobs += [blob.content for blob in commit.files.values()]
    return any(needle in blob for blob in blobs)


def observe(lab: Lab, family: str, case: str, expected: str, args: list, folder: Path | None = None,
            hub: FakeHub | None = None, marker: Path | None = None, secret: bytes | None = None,
            timeout: int = HANG_LIMIT, fresh_process: bool = False) -> Outcome:
    before_folder = folder_state(folder) if folder else None
    before_hub = hub.snapshot() if hub else None
    done, hung = lab.cli(*args, hub=hub, timeout=timeout, fresh_process=fresh_process)
    outcome = Outcome(family, case, expected, done.returncode, done.stdout, done.stderr, hung)
    outcome.code_run = bool(marker and marker.exists())
    if hub is not None:
        outcome.secret_uploaded = bool(secret and hub_holds(hub, secret))
        outcome.remote_changed = expected == "refuse" and hub.snapshot() != before_hub
    if folder is not None:
        after = folder_state(folder)
        for written_by_verify in ("verification.json", "verification.png"):  # the report and its picture
            after.pop(str(folder / written_by_verify), None)
            before_folder.pop(str(folder / written_by_verify), None)
        outcome.folder_changed = after != before_folder
    return outcome


# -- the cases --------------------------------------------------------------------------------------------------
def _secret(lab: Lab) -> tuple[Path, bytes]:
    secret = f"-----BEGIN OPENSSH PRIVATE KEY----- {secrets.token_hex(16)}".encode()
    keys = lab.root / "home" / ".ssh"
    keys.mkdir(parents=True, exist_ok=True)
    (keys / "id_rsa").write_bytes(secret)
    return keys / "id_rsa", secret


def _push(lab: Lab, family: str, case: str, folder: Path, secret: bytes | None = None, extra=(),
          expected: str = "refuse", setup_hub: Callable[[FakeHub], None] | None = None,
          timeout: int = HANG_LIMIT, fresh_process: bool = False) -> Outcome:
    with FakeHub(tokens={TOKEN: "tester"}) as hub:
        hub.create_repo(REPO_ID)  # an existing repo: a refused push must leave its branches as they were
        if setup_hub:
            setup_hub(hub)
        return observe(lab, family, case, expected, ["push", folder, REPO_ID, *extra], folder, hub,
                       secret=secret, timeout=timeout, fresh_process=fresh_process)


def symlink_file_out(lab: Lab) -> Outcome:
    key, secret = _secret(lab)
    folder = lab.copy(lab.base(), "link-file")
    (folder / "notes.txt").symlink_to(key)
    return _push(lab, "symlinks out of the folder", "file link to ~/.ssh/id_rsa", folder, secret)


def symlink_dir_out(lab: Lab) -> Outcome:
    key, secret = _secret(lab)
    folder = lab.copy(lab.base(), "link-dir")
    (folder / "extras").symlink_to(key.parent, target_is_directory=True)
    return _push(lab, "symlinks out of the folder", "directory link to ~/.ssh", folder, secret)


def fifo_in_folder(lab: Lab) -> Outcome:
    folder = lab.copy(lab.base(), "fifo")
    os.mkfifo(folder / "weights.pipe")
    return _push(lab, "symlinks out of the folder", "FIFO in the folder", folder)


def handwritten_report(lab: Lab) -> Outcome:
    folder = lab.copy(lab.base(), "handwritten")
    (folder / "verification.json").write_text('{"schema": "hfport.verify/2", "passed": true,\n"family": "ofa"}\n')
    return _push(lab, "forged or stale proof", "two-line hand-written report", folder)


def _scale_one_fc2(folder: Path, factor: float = 1.05) -> str:
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    for shard in sorted(folder.glob("*.safetensors")):
        with safe_open(str(shard), framework="pt") as handle:
            keys = list(handle.keys())
            target = next((k for k in keys if "fc2.weight" in k), None)
            if target is None:
                continue
            tensors = {k: handle.get_tensor(k) for k in keys}
            metadata = handle.metadata()
        tensors[target] = (tensors[target].to(torch.float64) * factor).to(tensors[target].dtype)
        save_file(tensors, str(shard), metadata=metadata)
        return target
    raise RuntimeError(f"{folder}: no fc2 weight")


def stale_report(lab: Lab) -> Outcome:
    folder = lab.copy(lab.base(), "stale")
    _scale_one_fc2(folder)
    return _push(lab, "forged or stale proof", "report made before a weight changed", folder)


def other_folders_report(lab: Lab) -> Outcome:
    folder = lab.copy(lab.base(), "borrowed")
    _scale_one_fc2(folder)
    shutil.copy(lab.other() / "verification.json", folder / "verification.json")
    return _push(lab, "forged or stale proof", "another folder's report", folder)


def trimmed_report(lab: Lab) -> Outcome:
    folder = lab.copy(lab.base(), "trimmed")
    report = json.loads((folder / "verification.json").read_text())
    report["outputs"], report["generation"] = report["outputs"][:0], []
    (folder / "verification.json").write_text(json.dumps(report))
    return _push(lab, "forged or stale proof", "real report with every output removed", folder)


def _golden(lab: Lab, name: str, change: Callable[[dict], None]) -> Path:
    import torch

    data = torch.load(FIXTURE / "reference.pt", weights_only=True)
    change(data)
    path = lab.root / "goldens" / f"{name}.pt"
    path.parent.mkdir(exist_ok=True)
    torch.save(data, path)
    return path


def golden_without_outputs(lab: Lab) -> Outcome:
    def empty(data):
        for key in list(data):
            if key.startswith("outputs"):
                data[key] = {}
        data["generation"] = {}

    golden = _golden(lab, "no-outputs", empty)
    folder = lab.copy(lab.base(), "empty-golden")
    return observe(lab, "forged or stale proof", "verify against a golden file with no outputs", "refuse",
                   ["verify", folder, "--golden", golden], folder)


def golden_generation_skipped(lab: Lab) -> Outcome:
    def orphan(data):
        runs = data.get("generation") or {}
        data["generation"] = {f"{name}_gone": run for name, run in runs.items()}  # runs on a set that is absent

    golden = _golden(lab, "orphan-generation", orphan)
    folder = lab.copy(lab.base(), "orphan-golden")
    return observe(lab, "forged or stale proof", "verify skips the golden file's generation checks", "refuse",
                   ["verify", folder, "--golden", golden], folder)


def _retag(folder: Path, **fields) -> None:
    record = json.loads((folder / "hfport.json").read_text())
    record.update(fields)
    (folder / "hfport.json").write_text(json.dumps(record, indent=2))


def tolerance_from_stored_dtype(lab: Lab) -> Outcome:
    folder = lab.copy(lab.base(), "bf16-claim")
    _scale_one_fc2(folder)
    _retag(folder, stored_dtype="bfloat16")
    return observe(lab, "tolerance from metadata", "fc2 x1.05, hfport.json says bfloat16", "refuse",
                   ["verify", folder, "--golden", FIXTURE / "reference.pt"], folder)


def tolerance_from_source_dtype(lab: Lab) -> Outcome:
    folder = lab.copy(lab.base(), "f64-claim")
    _scale_one_fc2(folder)
    _retag(folder, source_dtype="float64")
    return observe(lab, "tolerance from metadata", "fc2 x1.05, hfport.json says the source was float64", "refuse",
                   ["verify", folder, "--golden", FIXTURE / "reference.pt"], folder)


def _plant(folder: Path, lab: Lab, name: str = "configuration_ofa.py") -> Path:
    marker = lab.root / "markers" / f"{folder.name}.ran"
    marker.parent.mkdir(exist_ok=True)
    marker.unlink(missing_ok=True)
    code = (folder / name).read_text()
    (folder / name).write_text(f"open({str(marker)!r}, 'w').write('ran')\n" + code)
    return marker


def edited_code_verify(lab: Lab) -> Outcome:
    folder = lab.copy(lab.base(), "code-verify")
    marker = _plant(folder, lab)
    return observe(lab, "foreign code in the folder", "verify with an edited configuration_ofa.py", "refuse",
                   ["verify", folder, "--golden", FIXTURE / "reference.pt"], folder, marker=marker)


def edited_code_run(lab: Lab) -> Outcome:
    folder = lab.copy(lab.runnable(), "code-run")
    marker = _plant(folder, lab)
    return observe(lab, "foreign code in the folder", "run with an edited configuration_ofa.py", "refuse",
                   ["run", folder, "--image", IMAGE, "--greedy", "--max-length", "2"], folder, marker=marker)


def edited_code_export(lab: Lab) -> Outcome:
    folder = lab.copy(lab.base(), "code-export")
    marker = _plant(folder, lab, "modeling_ofa.py")
    return observe(lab, "foreign code in the folder", "export with an edited modeling_ofa.py", "refuse",
                   ["export", folder, lab.root / "cases" / "exported.pt", "--force"], folder, marker=marker)


def stalled_hub(lab: Lab) -> Outcome:
    def stall(hub):
        hub.stall = True

    folder = lab.base()
    supported = "--timeout" in (lab.cli("push", "--help")[0].stdout or "")
    return _push(lab, "Hub faults", "Hub accepts the connection and never answers", folder,
                 extra=("--timeout", "3") if supported else (), setup_hub=stall, timeout=120, fresh_process=True)


def commit_landed_answer_lost(lab: Lab) -> Outcome:
    def drop(hub):
        hub.drop_commit_answer = "after"

    return _push(lab, "Hub faults", "commit landed, its answer was lost", lab.base(), expected="succeed",
                 setup_hub=drop)


def commit_lost(lab: Lab) -> Outcome:
    def drop(hub):
        hub.drop_commit_answer = "before"

    return _push(lab, "Hub faults", "connection dropped before the commit applied", lab.base(), setup_hub=drop)


def dry_run_bad_ids(lab: Lab) -> list[Outcome]:
    out = []
    for repo_id in ("../evil", "org/..", "org/.hidden"):
        out.append(observe(lab, "Hub faults", f"--dry-run {repo_id}", "refuse",
                           ["push", lab.base(), repo_id, "--dry-run"], lab.base()))
    return out


CASES: dict[str, Callable[[Lab], Outcome | list[Outcome]]] = {
    "symlink_file_out": symlink_file_out,
    "symlink_dir_out": symlink_dir_out,
    "fifo_in_folder": fifo_in_folder,
    "handwritten_report": handwritten_report,
    "stale_report": stale_report,
    "other_folders_report": other_folders_report,
    "trimmed_report": trimmed_report,
    "golden_without_outputs": golden_without_outputs,
    "golden_generation_skipped": golden_generation_skipped,
    "tolerance_from_stored_dtype": tolerance_from_stored_dtype,
    "tolerance_from_source_dtype": tolerance_from_source_dtype,
    "edited_code_verify": edited_code_verify,
    "edited_code_run": edited_code_run,
    "edited_code_export": edited_code_export,
    "stalled_hub": stalled_hub,
    "commit_landed_answer_lost": commit_landed_answer_lost,
    "commit_lost": commit_lost,
    "dry_run_bad_ids": dry_run_bad_ids,
}


def run_all(lab: Lab, names=None) -> list[Outcome]:
    outcomes: list[Outcome] = []
    for name in names or CASES:
        result = CASES[name](lab)
        outcomes += result if isinstance(result, list) else [result]
    return outcomes


def table(outcomes: list[Outcome]) -> str:
    columns = ("tried", "clean refusals", "wrong verdicts", "internal errors", "data lost", "code run",
               "secrets uploaded")
    rows: dict[str, dict[str, int]] = {}
    for o in outcomes:
        row = rows.setdefault(o.family, dict.fromkeys(columns, 0))
        row["tried"] += 1
        row["clean refusals"] += o.clean_refusal
        row["wrong verdicts"] += o.wrong_verdict
        row["internal errors"] += o.internal_error
        row["data lost"] += o.folder_changed
        row["code run"] += o.code_run
        row["secrets uploaded"] += o.secret_uploaded
    lines = ["| case family | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    lines += [f"| {family} | " + " | ".join(str(row[c]) for c in columns) + " |" for family, row in rows.items()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", default=sys.executable, help="interpreter of the hfport under test")
    parser.add_argument("--pythonpath", help="PYTHONPATH for it (e.g. the dependencies of another venv)")
    parser.add_argument("--case", action="append", help="run only these cases")
    parser.add_argument("-v", "--verbose", action="store_true", help="print each case's outcome")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hfport-hostile-") as root:
        lab = Lab(Path(root), args.python, args.pythonpath)
        outcomes = run_all(lab, args.case)
    if args.verbose:
        for o in outcomes:
            tail = (o.error_lines or [o.stderr.strip().splitlines()[-1] if o.stderr.strip() else ""])[0][:160]
            print(f"{'ok ' if o.ok else 'BAD'} {o.case}: rc={o.returncode} hung={o.hung} code_run={o.code_run} "
                  f"secret={o.secret_uploaded} remote_changed={o.remote_changed} :: {tail}")
    print(table(outcomes))


if __name__ == "__main__":
    main()
