"""Publish a converted folder to the Hub in one atomic commit, behind the verification gate.

`plan_push` reads the folder (no network): which files go up, how, and the generated model card; it refuses
folders that are not hfport output or lack a passing verification report. `push` executes a plan:
`create_repo(exist_ok=True)`, the branch if asked, `preupload_lfs_files` (streamed from disk), then a single
`create_commit`. Every failure on the way is a one-line `HubError`; whatever happened before it (a repo created,
LFS blobs uploaded) leaves no commit behind.
"""

from __future__ import annotations

import fnmatch
import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from hfport import __version__
from hfport.errors import HfportError, HubError, VerificationFailed
from hfport.family import ConvertedFolder
from hfport.push.model_card import VerificationStatus, build_model_card

REPORT_NAME = "verification.json"
PROVENANCE_NAME = "hfport.json"
CARD_NAME = "README.md"
# The Hub stores these through git-LFS (its default .gitattributes), and anything from 10 MiB or binary.
LFS_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.ckpt", "*.h5", "*.msgpack", "*.onnx", "*.model",
                "*.npy", "*.npz", "*.pkl", "*.pickle", "*.ot", "*.tflite", "*.zip", "*.tar", "*.gz", "*.zst")
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024
_SKIPPED_NAMES = ("__pycache__", "*.pyc")
# Weight files a previous push may have left that this one does not replace: deleted in the same commit, since
# transformers would prefer a stale `model.safetensors` over a new sharded index.
STALE_WEIGHT_PATTERNS = ("model*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin",
                         "pytorch_model*.bin.index.json")


@dataclass(frozen=True)
class PlannedFile:
    path_in_repo: str
    size: int
    lfs: bool  # predicted locally; on push the Hub's preupload answer decides
    local_path: Path | None = None  # streamed from disk
    content: bytes | None = None  # generated (the model card)


@dataclass(frozen=True)
class PushPlan:
    folder: Path
    repo_id: str
    files: tuple[PlannedFile, ...]
    card: str
    status: VerificationStatus
    provenance: dict

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)


@dataclass(frozen=True)
class PushResult:
    repo_url: str
    commit_url: str
    commit_oid: str
    pr_url: str | None
    revision: str
    deleted: tuple[str, ...]  # stale weight files removed by the commit
    changed: bool  # False when the Hub already held exactly these files (no commit was made)


# -- planning (local only) ---------------------------------------------------------------------------------------
def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise HfportError(f"{path}: cannot read the {what}: {err}") from err
    if not isinstance(data, dict):
        raise HfportError(f"{path}: the {what} is not a JSON object")
    return data


def read_verification(folder: Path, report_path: Path | None, family: str | None,
                      allow_unverified: bool) -> tuple[VerificationStatus, dict | None, Path | None]:
    """Apply the gate: a passing `hfport.verify/1` report for this family, unless the user forces the push."""
    path = Path(report_path) if report_path else folder / REPORT_NAME
    if not path.is_file():
        if report_path or not allow_unverified:
            raise HfportError(f"{path}: no verification report; refusing to publish an unverified model",
                              hint=f"run `hfport verify {folder}` first, or pass --allow-unverified "
                                   "(the model card will then say it is unverified)")
        return "missing", None, None
    report = _read_json(path, "verification report")
    if not str(report.get("schema", "")).startswith("hfport.verify/"):
        raise HfportError(f"{path}: not an hfport verification report (schema {report.get('schema')!r})")
    if family and report.get("family") and report["family"] != family:
        raise HfportError(f"{path}: the report is for a {report['family']} model, this folder holds {family}")
    if report.get("passed") is True:
        return "passed", report, path
    if not allow_unverified:
        failing = [o.get("name") for o in report.get("outputs") or [] if not o.get("passed")]
        failing += [g.get("name") for g in report.get("generation") or [] if not g.get("exact")]
        raise VerificationFailed(
            f"{path}: verification failed" + (f" ({', '.join(map(str, failing[:5]))})" if failing else "")
            + "; refusing to publish",
            hint="fix the conversion, or pass --allow-unverified to publish it marked as such")
    return "failed", report, path


def predicted_lfs(path: Path, size: int) -> bool:
    if size >= LFS_SIZE_THRESHOLD or any(fnmatch.fnmatch(path.name, p) for p in LFS_PATTERNS):
        return True
    with open(path, "rb") as handle:
        return b"\0" in handle.read(512)


def _folder_files(folder: Path) -> list[Path]:
    """Every regular file under the folder, sorted, without hidden entries and Python caches."""
    out = []
    for path in sorted(folder.rglob("*")):
        parts = path.relative_to(folder).parts
        if any(part.startswith(".") or any(fnmatch.fnmatch(part, p) for p in _SKIPPED_NAMES) for part in parts):
            continue
        if path.is_file():
            out.append(path)
    return out


def _preprocessor_class(folder: Path) -> str | None:
    if (folder / "processor_config.json").is_file() or (folder / "preprocessor_config.json").is_file():
        return "AutoProcessor"
    if (folder / "tokenizer_config.json").is_file():
        return "AutoTokenizer"
    return None


def plan_push(folder: str | Path, repo_id: str, *, report_path: str | Path | None = None,
              allow_unverified: bool = False) -> PushPlan:
    """Decide what a push would commit, without touching the network. Raises when the gate refuses."""
    folder = Path(folder)
    if not folder.is_dir():
        raise HfportError(f"{folder}: no such folder")
    if "/" not in repo_id or repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise HfportError(f"{repo_id!r} is not a Hub repo id", hint="use NAMESPACE/NAME, e.g. my-org/ofa-large")
    missing = [name for name in ("config.json", PROVENANCE_NAME) if not (folder / name).is_file()]
    if missing:
        raise HfportError(f"{folder}: not a folder written by `hfport convert` (no {' or '.join(missing)})",
                          hint="convert the checkpoint first: hfport convert CHECKPOINT FOLDER")
    converted = ConvertedFolder.open(folder)  # one-line errors for unreadable files and unknown families
    provenance, config = converted.provenance, converted.config
    status, report, used_report = read_verification(folder, Path(report_path) if report_path else None,
                                                   provenance.get("family"), allow_unverified)

    card = str(build_model_card(repo_id, config, provenance, report, status, _preprocessor_class(folder)))
    files = []
    for path in _folder_files(folder):
        rel = path.relative_to(folder).as_posix()
        if rel == CARD_NAME:  # replaced by the generated card
            continue
        size = path.stat().st_size
        files.append(PlannedFile(rel, size, predicted_lfs(path, size), local_path=path))
    if used_report is not None and used_report.resolve() != (folder / REPORT_NAME).resolve():
        files = [f for f in files if f.path_in_repo != REPORT_NAME]
        size = used_report.stat().st_size
        files.append(PlannedFile(REPORT_NAME, size, False, local_path=used_report))
    card_bytes = card.encode("utf-8")
    files.append(PlannedFile(CARD_NAME, len(card_bytes), False, content=card_bytes))
    return PushPlan(folder, repo_id, tuple(sorted(files, key=lambda f: f.path_in_repo)), card, status, provenance)


# -- pushing -------------------------------------------------------------------------------------------------------
def _status_code(err: BaseException) -> int | None:
    response = getattr(err, "response", None)
    return getattr(response, "status_code", None)


def _causes(err: BaseException):
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def _is_connection_error(err: BaseException) -> bool:
    names = {cls.__name__ for cls in type(err).__mro__}
    return bool(names & {"ConnectError", "ConnectTimeout", "TransportError", "NetworkError", "ConnectionError"})


class _Step:
    """What push is doing right now, so an error can say when it happened."""

    def __init__(self) -> None:
        self.doing = "starting"


@contextmanager
def _hub_errors(endpoint: str, repo_id: str, revision: str, token: str, step: _Step):
    """Turn whatever huggingface_hub raises into one line that names the cause; the token never appears."""
    try:
        yield
    except HfportError:
        raise
    except Exception as err:  # noqa: BLE001 - everything below is classified, nothing is swallowed
        def clean(text: str) -> str:
            first = next((line.strip() for line in str(text).splitlines() if line.strip()), "")
            return first.replace(token, "***") if token else first

        http = next((e for e in _causes(err) if _status_code(e) is not None), None)
        code = _status_code(http) if http is not None else None
        where = f"while {step.doing}"
        if code == 401:
            raise HubError(f"{endpoint} rejected the token (401 Unauthorized) {where}",
                           hint="set HF_TOKEN to a valid write token or run `hf auth login`") from None
        if code == 403:
            raise HubError(f"{endpoint} refused access to {repo_id} (403 Forbidden) {where}",
                           hint="the token needs write access to this namespace") from None
        if code == 404:
            error_code = http.response.headers.get("X-Error-Code") if http.response is not None else None
            what = f"revision {revision!r} of {repo_id}" if error_code == "RevisionNotFound" else repo_id
            raise HubError(f"{what} not found on {endpoint} (404 Not Found) {where}") from None
        if code is not None:
            server = getattr(http, "server_message", None) or clean(http)
            raise HubError(f"{endpoint} answered {code} {where}: {clean(server)}") from None
        connection = next((e for e in _causes(err) if _is_connection_error(e)), None)
        if connection is not None:
            reason = "connection refused" if "refused" in str(connection).lower() else clean(connection) or \
                type(connection).__name__
            raise HubError(f"cannot reach the Hub at {endpoint}: {reason} ({where})",
                           hint="check HF_ENDPOINT and your network") from None
        if isinstance(err, ValueError) and "metadata" in str(err).lower():
            raise HubError(f"the Hub rejected the model card metadata: {clean(err)}") from None
        raise HubError(f"push failed {where}: {type(err).__name__}: {clean(err)}") from None


def stale_weight_files(remote_paths, planned: set[str]) -> tuple[str, ...]:
    return tuple(sorted(path for path in remote_paths if path not in planned
                        and any(fnmatch.fnmatch(path, pattern) for pattern in STALE_WEIGHT_PATTERNS)))


def resolve_token() -> str:
    """The token from HF_TOKEN or the saved login (huggingface_hub's own resolution); never shown anywhere."""
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        raise HubError("no Hugging Face token found", hint="set HF_TOKEN or run `hf auth login`")
    return token


def default_commit_message(plan: PushPlan) -> str:
    source = (plan.provenance.get("source") or {}).get("file")
    what = plan.provenance.get("model_class") or plan.provenance.get("family") or "model"
    return f"Upload {what}" + (f" converted from {source}" if source else "") + f" with hfport {__version__}"


def push(plan: PushPlan, *, private: bool = False, create_pr: bool = False, revision: str | None = None,
         message: str | None = None, endpoint: str | None = None) -> PushResult:
    """Publish the plan in one commit (or one pull request). Raises HubError, leaving no partial commit."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, constants

    if create_pr and revision not in (None, "main"):
        raise HfportError("--create-pr and --revision cannot be combined: a pull request always targets main")
    token = resolve_token()
    endpoint = (endpoint or constants.ENDPOINT).rstrip("/")
    branch = revision or "main"
    api = HfApi(endpoint=endpoint, token=token, library_name="hfport", library_version=__version__)
    step = _Step()
    description = f"Converted and published with hfport {__version__}; verification: {plan.status}."
    with _hub_errors(endpoint, plan.repo_id, branch, token, step):
        step.doing = f"creating {plan.repo_id}"
        repo_url = api.create_repo(plan.repo_id, private=private, exist_ok=True, repo_type="model")
        if revision not in (None, "main"):
            step.doing = f"creating branch {revision!r}"
            api.create_branch(plan.repo_id, branch=revision, exist_ok=True, repo_type="model")
        operations = [CommitOperationAdd(f.path_in_repo, str(f.local_path) if f.local_path else f.content)
                      for f in plan.files]
        step.doing = "listing the files already there"
        planned = {f.path_in_repo for f in plan.files}
        stale = stale_weight_files(api.list_repo_files(plan.repo_id, revision=branch, repo_type="model"), planned)
        deletions = [CommitOperationDelete(path) for path in stale]
        step.doing = "uploading large files"
        api.preupload_lfs_files(plan.repo_id, additions=operations, revision=branch, create_pr=create_pr,
                                repo_type="model")
        # the preupload answer tells which files the Hub already holds unchanged (what create_commit skips)
        unchanged = all(getattr(op, "_remote_oid", None) is not None and op._remote_oid == op._local_oid
                        for op in operations)
        changed = bool(deletions) or not unchanged
        step.doing = "committing"
        info = api.create_commit(plan.repo_id, operations + deletions,
                                 commit_message=message or default_commit_message(plan),
                                 commit_description=description, revision=branch, create_pr=create_pr,
                                 repo_type="model")
    return PushResult(repo_url=str(repo_url), commit_url=info.commit_url, commit_oid=info.oid, pr_url=info.pr_url,
                      revision=info.pr_revision or branch, deleted=stale, changed=changed)
