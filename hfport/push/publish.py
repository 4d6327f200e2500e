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
from hfport.folder_files import (CARD_NAME, PLOT_NAME, REPORT_NAME, digest_mismatches, file_sha256, model_digests,
                                 regular_files)
from hfport.push.model_card import VerificationStatus, build_model_card
from hfport.verify.report import SCHEMA as REPORT_SCHEMA

PROVENANCE_NAME = "hfport.json"
DEFAULT_TIMEOUT = 60.0  # seconds the Hub may stay silent on one request before push gives up
# The Hub stores these through git-LFS (its default .gitattributes), and anything from 10 MiB or binary.
LFS_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.ckpt", "*.h5", "*.msgpack", "*.onnx", "*.model",
                "*.npy", "*.npz", "*.pkl", "*.pickle", "*.ot", "*.tflite", "*.zip", "*.tar", "*.gz", "*.zst")
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024
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
    digests: dict  # sha256 of every judged file, computed at planning; the upload must send these bytes

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
    answer_lost: bool = False  # the commit request got no answer, but the remote shows the commit landed


# -- planning (local only) ---------------------------------------------------------------------------------------
def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise HfportError(f"{path}: cannot read the {what}: {err}") from err
    if not isinstance(data, dict):
        raise HfportError(f"{path}: the {what} is not a JSON object")
    return data


def report_problems(report: dict) -> list[str]:
    """Why a report that says `passed` does not prove anything: nothing or too little compared, or a verdict its
    own entries contradict. Empty when the report holds up."""
    outputs = report.get("outputs") if isinstance(report.get("outputs"), list) else []
    generation = report.get("generation") if isinstance(report.get("generation"), list) else []
    reference = report.get("reference") if isinstance(report.get("reference"), dict) else {}
    problems = [str(p) for p in report.get("problems") or []]
    expected_outputs, expected_generations = reference.get("outputs"), reference.get("generations")
    if not outputs:
        problems.append("it compared no outputs")
    if not isinstance(expected_outputs, int) or not isinstance(expected_generations, int):
        problems.append("it does not say how many outputs the reference holds")
    else:
        if len(outputs) < expected_outputs:
            problems.append(f"it compared {len(outputs)} of the reference's {expected_outputs} outputs")
        if len(generation) < expected_generations:
            problems.append(f"it ran {len(generation)} of the reference's {expected_generations} generation checks")
    failing = [str(o.get("name")) for o in outputs if not isinstance(o, dict) or o.get("passed") is not True]
    failing += [str(g.get("name")) for g in generation
                if not isinstance(g, dict) or (g.get("required", True) and g.get("exact") is not True)]
    if failing:
        problems.append(f"its own entries fail ({', '.join(failing[:5])})")
    return problems


def read_verification(folder: Path, report_path: Path | None, family: str | None, allow_unverified: bool,
                      digests: dict[str, str]) -> tuple[VerificationStatus, dict | None, Path | None]:
    """Apply the gate: a passing `hfport.verify/2` report for this family that judged exactly the files being
    published (same names, same sha256), unless the user forces the push."""
    path = Path(report_path) if report_path else folder / REPORT_NAME
    if not path.is_file():
        if report_path or not allow_unverified:
            raise HfportError(f"{path}: no verification report; refusing to publish an unverified model",
                              hint=f"run `hfport verify {folder}` first, or pass --allow-unverified "
                                   "(the model card will then say it is unverified)")
        return "missing", None, None
    report = _read_json(path, "verification report")
    schema = report.get("schema")
    if not str(schema).startswith("hfport.verify/"):
        raise HfportError(f"{path}: not an hfport verification report (schema {schema!r})")
    if family and report.get("family") and report["family"] != family:
        raise HfportError(f"{path}: the report is for a {report['family']} model, this folder holds {family}")
    rerun = f"run `hfport verify {folder}` again"
    if schema != REPORT_SCHEMA or not isinstance(report.get("files"), dict) or not report["files"]:
        why = (f"{path}: the report does not record the sha256 of the files it judged (schema {schema!r}, this "
               f"hfport writes {REPORT_SCHEMA!r}), so it cannot vouch for this folder")
    else:
        mismatches = digest_mismatches(report["files"], digests)
        problems = report_problems(report) if report.get("passed") is True else []
        if mismatches:
            why = (f"{path}: the report was made for other files than this folder holds: "
                   f"{', '.join(mismatches[:6])}" + (f" and {len(mismatches) - 6} more" if len(mismatches) > 6 else ""))
        elif problems:
            why = f"{path}: the report says passed but proves nothing: {'; '.join(problems)}"
        elif report.get("passed") is True:
            return "passed", report, path
        else:
            failing = [o.get("name") for o in report.get("outputs") or [] if not o.get("passed")]
            failing += [g.get("name") for g in report.get("generation") or [] if not g.get("exact")]
            if not allow_unverified:
                raise VerificationFailed(
                    f"{path}: verification failed" + (f" ({', '.join(map(str, failing[:5]))})" if failing else "")
                    + "; refusing to publish",
                    hint="fix the conversion, or pass --allow-unverified to publish it marked as such")
            return "failed", report, path
    if not allow_unverified:
        raise VerificationFailed(why + "; refusing to publish",
                                 hint=f"{rerun}, or pass --allow-unverified to publish it marked as unverified")
    return "unbound", None, path


def predicted_lfs(path: Path, size: int) -> bool:
    if size >= LFS_SIZE_THRESHOLD or any(fnmatch.fnmatch(path.name, p) for p in LFS_PATTERNS):
        return True
    with open(path, "rb") as handle:
        return b"\0" in handle.read(512)


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
    check_repo_id(repo_id)
    missing = [name for name in ("config.json", PROVENANCE_NAME) if not (folder / name).is_file()]
    if missing:
        raise HfportError(f"{folder}: not a folder written by `hfport convert` (no {' or '.join(missing)})",
                          hint="convert the checkpoint first: hfport convert CHECKPOINT FOLDER")
    converted = ConvertedFolder.open(folder)  # one-line errors for unreadable files and unknown families
    provenance, config = converted.provenance, converted.config
    digests = model_digests(folder)  # refuses symlinks out of the folder and special files, by name
    status, report, used_report = read_verification(folder, Path(report_path) if report_path else None,
                                                   provenance.get("family"), allow_unverified, digests)

    plot = report_plot(report, used_report)
    card = str(build_model_card(repo_id, config, provenance, report, status, _preprocessor_class(folder),
                                plot=PLOT_NAME if plot else None))
    files = []
    for path in regular_files(folder):
        rel = path.relative_to(folder).as_posix()
        if rel == CARD_NAME or (rel == REPORT_NAME and status == "unbound"):  # replaced / vouches for other files
            continue
        if rel == PLOT_NAME:  # uploaded below only when it is the picture the report recorded
            continue
        path = path.resolve()  # a link inside the folder: upload its target, which regular_files checked
        size = path.stat().st_size
        files.append(PlannedFile(rel, size, predicted_lfs(path, size), local_path=path))
    if status != "unbound" and used_report is not None and \
            used_report.resolve() != (folder / REPORT_NAME).resolve():
        files = [f for f in files if f.path_in_repo != REPORT_NAME]
        size = used_report.stat().st_size
        files.append(PlannedFile(REPORT_NAME, size, False, local_path=used_report))
    if plot is not None:
        files.append(PlannedFile(PLOT_NAME, plot.stat().st_size, True, local_path=plot.resolve()))
    card_bytes = card.encode("utf-8")
    files.append(PlannedFile(CARD_NAME, len(card_bytes), False, content=card_bytes))
    return PushPlan(folder, repo_id, tuple(sorted(files, key=lambda f: f.path_in_repo)), card, status, provenance,
                    digests)


def report_plot(report: dict | None, report_path: Path | None) -> Path | None:
    """The per-layer plot beside the report, when the report records it and the file still has that sha256 (a
    picture of another run is not published: it is no part of the proof the card shows)."""
    if not report or not report_path or not isinstance(report.get("plot"), dict):
        return None
    name = str(report["plot"].get("file") or "")
    if not name or "/" in name or "\\" in name or name.startswith("."):
        return None
    path = report_path.parent / name
    if not path.is_file() or path.is_symlink() or file_sha256(path) != report["plot"].get("sha256"):
        return None
    return path


def check_repo_id(repo_id: str) -> None:
    """NAMESPACE/NAME as the Hub accepts it (huggingface_hub's own validator), the same for --dry-run and push."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        if repo_id.count("/") != 1 or not all(repo_id.split("/")):
            raise HFValidationError("expected NAMESPACE/NAME")
        validate_repo_id(repo_id)
    except HFValidationError as err:
        reason = (str(err).strip().splitlines() or [""])[0]
        raise HfportError(f"{repo_id!r} is not a Hub repo id ({reason})",
                          hint="use NAMESPACE/NAME, e.g. my-org/ofa-large") from None


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

    def __init__(self, timeout: float) -> None:
        self.doing = "starting"
        self.timeout = timeout


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

        where = f"while {step.doing}"
        timeout = next((e for e in _causes(err) if "Timeout" in type(e).__name__), None)
        if timeout is not None:
            raise HubError(f"the Hub at {endpoint} did not answer within {step.timeout:g} s {where}",
                           hint="retry later, or raise --timeout") from None
        http = next((e for e in _causes(err) if _status_code(e) is not None), None)
        code = _status_code(http) if http is not None else None
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


def use_timeout(seconds: float) -> None:
    """Make every request huggingface_hub sends give up after `seconds` without an answer (its own client has no
    timeout on most API calls). Same client otherwise: huggingface_hub's request hook, redirects followed."""
    import httpx2
    from huggingface_hub.utils import _http

    def factory():
        return httpx2.Client(event_hooks={"request": [_http.hf_request_event_hook]}, follow_redirects=True,
                             timeout=httpx2.Timeout(seconds))

    _http.set_client_factory(factory)


def check_upload_matches_plan(plan: PushPlan, operations) -> None:
    """The bytes about to be committed are the bytes the verification report judged (a file swapped between
    planning and upload is refused)."""
    changed = [op.path_in_repo for op in operations if op.path_in_repo in plan.digests
               and op.upload_info.sha256.hex() != plan.digests[op.path_in_repo]]
    if changed:
        raise HfportError(f"{plan.folder}: files changed while pushing: {', '.join(changed)}; nothing was committed")


def _pull_requests(api, repo_id: str) -> set[str]:
    refs = api.list_repo_refs(repo_id, include_pull_requests=True, repo_type="model")
    return {r.ref for r in refs.pull_requests or []}


def _landed(api, plan: PushPlan, operations, deletions, branch: str, before: str | None,
            prs_before: set[str] | None):
    """After the commit request failed without an answer: (revision, commit sha) holding exactly this commit's
    content if the Hub applied it anyway, None when it did not."""
    if prs_before is not None:
        candidates = sorted(_pull_requests(api, plan.repo_id) - prs_before)
    else:
        head = api.repo_info(plan.repo_id, revision=branch, repo_type="model").sha
        candidates = [branch] if head != before else []
    for revision in candidates:
        tree = {entry.path: entry for entry in api.list_repo_tree(plan.repo_id, revision=revision, recursive=True,
                                                                 repo_type="model") if hasattr(entry, "blob_id")}
        same = all(op.path_in_repo in tree and (
            tree[op.path_in_repo].lfs.sha256 == op.upload_info.sha256.hex() if tree[op.path_in_repo].lfs
            else tree[op.path_in_repo].blob_id == op._local_oid) for op in operations)
        if same and not any(d.path_in_repo in tree for d in deletions):
            sha = api.repo_info(plan.repo_id, revision=revision, repo_type="model").sha
            return revision, sha
    return None


def push(plan: PushPlan, *, private: bool = False, create_pr: bool = False, revision: str | None = None,
         message: str | None = None, endpoint: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> PushResult:
    """Publish the plan in one commit (or one pull request). Raises HubError, leaving no partial commit."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, constants

    if create_pr and revision not in (None, "main"):
        raise HfportError("--create-pr and --revision cannot be combined: a pull request always targets main")
    if not timeout > 0:
        raise HfportError(f"--timeout must be a positive number of seconds, not {timeout}")
    token = resolve_token()
    endpoint = (endpoint or constants.ENDPOINT).rstrip("/")
    branch = revision or "main"
    use_timeout(timeout)
    api = HfApi(endpoint=endpoint, token=token, library_name="hfport", library_version=__version__)
    step = _Step(timeout)
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
        before = api.repo_info(plan.repo_id, revision=branch, repo_type="model").sha
        stale = stale_weight_files(api.list_repo_files(plan.repo_id, revision=before, repo_type="model"), planned)
        deletions = [CommitOperationDelete(path) for path in stale]
        step.doing = "uploading large files"
        api.preupload_lfs_files(plan.repo_id, additions=operations, revision=branch, create_pr=create_pr,
                                repo_type="model")
        check_upload_matches_plan(plan, operations)
        prs_before = _pull_requests(api, plan.repo_id) if create_pr else None
        # the preupload answer tells which files the Hub already holds unchanged (what create_commit skips)
        unchanged = all(getattr(op, "_remote_oid", None) is not None and op._remote_oid == op._local_oid
                        for op in operations)
        changed = bool(deletions) or not unchanged
        step.doing = "committing"
        try:
            info = api.create_commit(plan.repo_id, operations + deletions,
                                     commit_message=message or default_commit_message(plan),
                                     commit_description=description, revision=branch, create_pr=create_pr,
                                     parent_commit=before, repo_type="model")
        except Exception as err:
            if _status_code(next((e for e in _causes(err) if _status_code(e) is not None), err)) is not None:
                raise  # the Hub answered: it refused
            # no answer: the commit may still have landed; say so only after looking at the remote
            step.doing = "checking whether the commit landed after the connection failed"
            landed = _landed(api, plan, operations, deletions, branch, before, prs_before)
            if landed is None:
                cause = next((e for e in _causes(err) if _is_connection_error(e) or "Timeout" in type(e).__name__),
                             err)
                reason = (str(cause).strip().splitlines() or [type(cause).__name__])[0] or type(cause).__name__
                raise HubError(f"the commit to {endpoint} got no answer ({reason}); the remote shows no new "
                               f"commit: nothing was published", hint="push again") from None
            rev, sha = landed
            pr_number = rev.rsplit("/", 1)[-1] if prs_before is not None else None
            return PushResult(repo_url=str(repo_url), commit_url=f"{endpoint}/{plan.repo_id}/commit/{sha}",
                              commit_oid=sha, pr_url=f"{endpoint}/{plan.repo_id}/discussions/{pr_number}"
                              if pr_number else None, revision=rev, deleted=stale, changed=True,
                              answer_lost=True)
    return PushResult(repo_url=str(repo_url), commit_url=info.commit_url, commit_oid=info.oid, pr_url=info.pr_url,
                      revision=info.pr_revision or branch, deleted=stale, changed=changed)
