"""An in-memory Hugging Face Hub for tests, spoken to by the real `huggingface_hub` client.

It implements the routes huggingface_hub 2.x uses to publish a model (create repo, validate-yaml, preupload,
git-LFS batch + PUT + verify, NDJSON commit, branches, pull-request refs) and to download one (resolve with the
Hub's headers, tree, model/revision info, refs). Every commit is an immutable snapshot and a branch is a name
pointing at one, so a test can prove that a refused push left the remote exactly as it was.

Start one with `with FakeHub(tokens={"hf_test": "alice"}) as hub:` and point the client at `hub.url`
(HF_ENDPOINT, HF_HUB_DISABLE_XET=1). `hub.answer_401` / `hub.answer_403` make every authenticated request fail
like a revoked token / a token without write access. Faults: `hub.stall = True` makes it accept every request
and never answer; `hub.drop_commit_answer = "after"` applies a commit and then closes the connection without
answering (`"before"`: closes it without applying the commit).
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import io
import json
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import MappingProxyType
from typing import Mapping
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

# what the Hub writes into a new repo's .gitattributes (abridged): these paths are stored through git-LFS
LFS_PATTERNS = (
    "*.7z", "*.arrow", "*.bin", "*.bz2", "*.ckpt", "*.ftz", "*.gz", "*.h5", "*.joblib", "*.mlmodel", "*.model",
    "*.msgpack", "*.npy", "*.npz", "*.onnx", "*.ot", "*.parquet", "*.pb", "*.pickle", "*.pkl", "*.pt", "*.pth",
    "*.rar", "*.safetensors", "*.tar", "*.tflite", "*.tgz", "*.wasm", "*.xz", "*.zip", "*.zst", "*tfevents*",
)
GITATTRIBUTES = "".join(f"{pattern} filter=lfs diff=lfs merge=lfs -text\n" for pattern in LFS_PATTERNS).encode()
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024
REPO = r"(?P<repo>[^/?]+/[^/?]+)"


def git_blob_sha1(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


@dataclass(frozen=True)
class Blob:
    content: bytes
    lfs_sha256: str | None = None  # set when the file is stored through git-LFS

    @property
    def size(self) -> int:
        return len(self.content)

    @property
    def git_oid(self) -> str:
        """The git object id: of the content for a regular file, of the pointer file for an LFS one."""
        if self.lfs_sha256 is None:
            return git_blob_sha1(self.content)
        return git_blob_sha1(lfs_pointer(self.lfs_sha256, self.size))

    @property
    def upload_oid(self) -> str:
        """What the preupload endpoint reports, i.e. what the client compares with its local file."""
        return self.lfs_sha256 or git_blob_sha1(self.content)


@dataclass(frozen=True)
class Commit:
    oid: str
    parent: str | None
    title: str
    files: Mapping[str, Blob]


@dataclass
class Repo:
    repo_id: str
    private: bool
    branches: dict[str, str] = field(default_factory=dict)  # "main" / "refs/pr/1" -> commit oid
    commits: dict[str, Commit] = field(default_factory=dict)
    pull_requests: int = 0

    def head(self, branch: str = "main") -> Commit:
        return self.commits[self.branches[branch]]

    def history(self, branch: str = "main") -> list[Commit]:
        """Commits reachable from the branch, oldest first."""
        out, oid = [], self.branches[branch]
        while oid is not None:
            out.append(self.commits[oid])
            oid = self.commits[oid].parent
        return out[::-1]


class HubHTTPError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None,
                 body: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}
        self.body = body if body is not None else {"error": message}


class FakeHub:
    """The Hub's state plus a ThreadingHTTPServer serving it on 127.0.0.1 (an ephemeral port)."""

    def __init__(self, tokens: Mapping[str, str] | None = None, port: int = 0):
        self.tokens = dict(tokens or {"hf_test_token": "tester"})  # token -> user name
        self.repos: dict[str, Repo] = {}
        self.lfs_objects: dict[str, bytes] = {}  # sha256 -> content
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request, in arrival order
        self.answer_401 = False
        self.answer_403 = False
        self.stall = False
        self.drop_commit_answer: str | None = None  # "before" / "after" applying the commit
        self._stopped = threading.Event()
        self._upload_tickets: dict[str, tuple[str, int]] = {}
        self._lock = threading.RLock()
        self._server = ThreadingHTTPServer(("127.0.0.1", port), _Handler)
        self._server.daemon_threads = True
        self._server.hub = self  # type: ignore[attr-defined]
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "FakeHub":
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> "FakeHub":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- inspection helpers for tests ---------------------------------------------------------------------
    def repo(self, repo_id: str) -> Repo:
        return self.repos[repo_id]

    def snapshot(self) -> dict:
        """Every repo's branches -> commit oids: equal before and after means nothing changed remotely."""
        with self._lock:
            return {rid: dict(repo.branches) for rid, repo in self.repos.items()}

    def create_repo(self, repo_id: str, private: bool = False) -> Repo:
        with self._lock:
            repo = Repo(repo_id=repo_id, private=private)
            self._commit(repo, "main", None, "initial commit", {".gitattributes": Blob(GITATTRIBUTES)})
            self.repos[repo_id] = repo
            return repo

    # -- state changes ------------------------------------------------------------------------------------
    def _commit(self, repo: Repo, branch: str, parent: Commit | None, title: str, files: dict) -> Commit:
        seed = json.dumps([repo.repo_id, branch, parent.oid if parent else None, title, time.time_ns(),
                           sorted((p, b.git_oid) for p, b in files.items())])
        commit = Commit(hashlib.sha1(seed.encode()).hexdigest(), parent.oid if parent else None, title,
                        MappingProxyType(dict(files)))
        repo.commits[commit.oid] = commit
        repo.branches[branch] = commit.oid
        return commit

    def resolve(self, repo: Repo, revision: str) -> Commit:
        if revision in repo.branches:
            return repo.head(revision)
        if revision in repo.commits:
            return repo.commits[revision]
        raise HubHTTPError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def lfs_mode(self, path: str, size: int, sample: bytes) -> bool:
        name = path.rsplit("/", 1)[-1]
        return (size >= LFS_SIZE_THRESHOLD or b"\0" in sample
                or any(fnmatch.fnmatch(name, pattern) for pattern in LFS_PATTERNS))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FakeHub/1"

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    @property
    def hub(self) -> FakeHub:
        return self.server.hub  # type: ignore[attr-defined]

    # -- plumbing ---------------------------------------------------------------------------------------------
    def _dispatch(self, method: str) -> None:
        parts = urlsplit(self.path)
        self.route, self.query = parts.path, {k: v[-1] for k, v in parse_qs(parts.query).items()}
        # read the whole body first, even for requests about to be refused, so keep-alive stays in sync
        self.body = self._read_request_body()
        self.hub.requests.append((method, self.path))
        if self.hub.stall:  # a Hub that stopped answering: hold the connection open, say nothing
            self.hub._stopped.wait(600)
            self.close_connection = True
            return
        drop = self.hub.drop_commit_answer if method == "POST" and "/commit/" in self.route else None
        if drop == "before":
            self.close_connection = True
            return
        try:
            for verb, pattern, handler in ROUTES:
                match = re.fullmatch(pattern, self.route)
                if verb == method and match:
                    with self.hub._lock:
                        status, headers, body = handler(self, **match.groupdict())
                    break
            else:
                raise HubHTTPError(404, f"no route {method} {self.route}")
        except HubHTTPError as err:
            headers = {"X-Error-Message": err.message, **err.headers}
            if err.code:
                headers["X-Error-Code"] = err.code
            status, body = err.status, err.body
        if drop == "after":
            self.close_connection = True
            return
        self._send(status, headers, body, head=method == "HEAD")

    def _send(self, status: int, headers: dict, body, head: bool = False) -> None:
        if isinstance(body, (dict, list)):
            payload, content_type = json.dumps(body).encode(), "application/json"
        else:
            payload, content_type = body or b"", "application/octet-stream"
        self.send_response(status)
        self.send_header("Content-Type", headers.pop("Content-Type", content_type))
        self.send_header("Content-Length", str(headers.pop("Content-Length", len(payload))))
        for key, value in headers.items():
            self.send_header(key, str(value))
        self.end_headers()
        if not head:
            self.wfile.write(payload)

    def do_GET(self):
        self._dispatch("GET")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    def _read_request_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = io.BytesIO()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return out.getvalue()
                out.write(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def read_body(self) -> bytes:
        return self.body

    def read_json(self):
        body = self.read_body()
        return json.loads(body) if body else {}

    def user(self, write: bool = False) -> str | None:
        """The caller's user name; raises 401 for a bad or (on writes) missing token, 403 when switched on."""
        auth = self.headers.get("Authorization")
        if self.hub.answer_401 and (auth or write):
            raise HubHTTPError(401, "Invalid credentials in Authorization header")
        if auth is None:
            if write:
                raise HubHTTPError(401, "You must be authenticated to access this resource")
            return None
        token = auth[len("Bearer "):] if auth.startswith("Bearer ") else ""
        if token not in self.hub.tokens:
            raise HubHTTPError(401, "Invalid credentials in Authorization header")
        if write and self.hub.answer_403:
            raise HubHTTPError(403, "You don't have the rights to write to this repository")
        return self.hub.tokens[token]

    def repo(self, repo_id: str, write: bool = False) -> Repo:
        user = self.user(write=write)
        repo = self.hub.repos.get(unquote(repo_id))
        if repo is None or (repo.private and user is None):
            raise HubHTTPError(404, "Repository not found", "RepoNotFound")
        return repo

    def base(self) -> str:
        return self.hub.url

    # -- routes: repos -------------------------------------------------------------------------------------
    def create_repo(self):
        user = self.user(write=True)
        payload = self.read_json()
        repo_id = f"{payload.get('organization') or user}/{payload['name']}"
        url = f"{self.base()}/{repo_id}"
        if repo_id in self.hub.repos:  # the body still names the repo, as the Hub's does
            raise HubHTTPError(409, "You already created this model repo",
                               body={"error": "You already created this model repo", "url": url})
        private = payload.get("visibility") == "private" or bool(payload.get("private"))
        self.hub.create_repo(repo_id, private=private)
        return 200, {}, {"url": url, "name": repo_id}

    def validate_yaml(self):
        self.user()
        content = self.read_json().get("content", "")
        match = re.match(r"^---\s*\n(.*?)\n---\s*\n", content, re.S)
        errors = []
        if match is None:
            errors.append({"message": "README.md has no YAML metadata block"})
        else:
            try:
                metadata = yaml.safe_load(match.group(1))
                if not isinstance(metadata, dict):
                    errors.append({"message": "metadata must be a mapping"})
                elif not isinstance(metadata.get("tags", []), list):
                    errors.append({"message": "\"tags\" must be an array"})
            except yaml.YAMLError as err:
                errors.append({"message": f"invalid YAML: {err}"})
        return (400 if errors else 200), {}, {"errors": errors, "warnings": []}

    def model_info(self, repo, revision=None):
        repo = self.repo(repo)
        commit = self.hub.resolve(repo, unquote(revision or "main"))
        return 200, {}, {
            "_id": repo.repo_id, "id": repo.repo_id, "modelId": repo.repo_id, "author": repo.repo_id.split("/")[0],
            "sha": commit.oid, "private": repo.private, "disabled": False, "gated": False, "tags": [],
            "lastModified": "2026-01-01T00:00:00.000Z",
            "siblings": [{"rfilename": path} for path in sorted(commit.files)],
        }

    def refs(self, repo):
        repo = self.repo(repo)

        def ref(name):
            full = name if name.startswith("refs/") else f"refs/heads/{name}"
            return {"name": name, "ref": full, "targetCommit": repo.branches[name]}

        names = sorted(repo.branches)
        return 200, {}, {
            "branches": [ref(n) for n in names if not n.startswith("refs/pr/")], "converts": [], "tags": [],
            "pullRequests": [ref(n) for n in names if n.startswith("refs/pr/")]
            if self.query.get("include_prs") else None,
        }

    def create_branch(self, repo, branch):
        repo = self.repo(repo, write=True)
        branch = unquote(branch)
        start = self.read_json().get("startingPoint") or "main"
        if branch in repo.branches:
            raise HubHTTPError(409, f"Reference {branch} already exists")
        repo.branches[branch] = self.hub.resolve(repo, start).oid
        return 200, {}, {}

    def tree(self, repo, revision, path=None):
        repo = self.repo(repo)
        commit = self.hub.resolve(repo, unquote(revision))
        prefix = unquote(path or "").strip("/")
        prefix = f"{prefix}/" if prefix else ""
        recursive = self.query.get("recursive", "").lower() in ("1", "true")
        entries, folders = [], set()
        for file_path, blob in sorted(commit.files.items()):
            if not file_path.startswith(prefix):
                continue
            rest = file_path[len(prefix):]
            if "/" in rest and not recursive:
                folders.add(prefix + rest.split("/")[0])
                continue
            if recursive:
                parts = rest.split("/")[:-1]
                folders.update(prefix + "/".join(parts[: i + 1]) for i in range(len(parts)))
            entry = {"type": "file", "oid": blob.git_oid, "size": blob.size, "path": file_path}
            if blob.lfs_sha256:
                entry["lfs"] = {"oid": blob.lfs_sha256, "size": blob.size,
                                "pointerSize": len(lfs_pointer(blob.lfs_sha256, blob.size))}
            entries.append(entry)
        if prefix and not entries and not folders:
            raise HubHTTPError(404, f"{prefix} does not exist", "EntryNotFound")
        entries += [{"type": "directory", "oid": hashlib.sha1(f.encode()).hexdigest(), "size": 0, "path": f}
                    for f in sorted(folders)]
        return 200, {}, entries

    def agent_harnesses(self):  # huggingface_hub's best-effort user-agent registry
        return 200, {}, {"standardEnvVars": [], "harnesses": {}}

    def whoami(self):
        user = self.user()
        if user is None:
            raise HubHTTPError(401, "Invalid credentials in Authorization header")
        return 200, {}, {"type": "user", "name": user, "auth": {"type": "access_token"}}

    # -- routes: upload ------------------------------------------------------------------------------------
    def preupload(self, repo, revision):
        repo = self.repo(repo, write=True)
        revision = unquote(revision)
        files = {}
        if revision in repo.branches or revision in repo.commits:
            files = self.hub.resolve(repo, revision).files
        elif not self.query.get("create_pr"):
            raise HubHTTPError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        answer = []
        for item in self.read_json()["files"]:
            sample = base64.b64decode(item["sample"])
            lfs = self.hub.lfs_mode(item["path"], item["size"], sample)
            existing = files.get(item["path"])
            answer.append({"path": item["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False,
                           "oid": existing.upload_oid if existing else None})
        return 200, {}, {"files": answer, "commitOid": self.hub.resolve(repo, revision).oid if files else None}

    def lfs_batch(self, repo):
        repo = self.repo(repo, write=True)
        payload = self.read_json()
        if payload.get("operation") != "upload":
            raise HubHTTPError(400, "only uploads are supported")
        objects = []
        for obj in payload["objects"]:
            oid, size = obj["oid"], int(obj["size"])
            answer = {"oid": oid, "size": size}
            if self.hub.lfs_objects.get(oid) is None or len(self.hub.lfs_objects[oid]) != size:
                ticket = secrets.token_hex(8)
                self.hub._upload_tickets[ticket] = (oid, size)
                answer["authenticated"] = True
                answer["actions"] = {
                    "upload": {"href": f"{self.base()}/__lfs/{oid}?ticket={ticket}"},
                    "verify": {"href": f"{self.base()}/{repo.repo_id}.git/info/lfs/objects/verify"},
                }
            objects.append(answer)
        return 200, {"Content-Type": "application/vnd.git-lfs+json"}, {"transfer": "basic", "objects": objects}

    def lfs_put(self, oid):
        """The storage PUT (S3's role): the blob must be exactly what the batch request announced."""
        _, expected_size = self._upload_ticket(oid)
        data = self.read_body()
        if len(data) != expected_size:
            raise HubHTTPError(400, f"size mismatch: announced {expected_size} bytes, received {len(data)}")
        received = hashlib.sha256(data).hexdigest()
        if received != oid:
            raise HubHTTPError(400, f"sha256 mismatch: announced {oid}, received {received}")
        self.hub.lfs_objects[oid] = data
        return 200, {"ETag": f'"{oid}"'}, b""

    def _upload_ticket(self, oid: str) -> tuple[str, int]:
        ticket = self.hub._upload_tickets.get(self.query.get("ticket", ""))
        if ticket is None or ticket[0] != oid:
            raise HubHTTPError(403, "upload URL not signed for this object")
        return ticket

    def lfs_verify(self, repo):
        self.repo(repo, write=True)
        payload = self.read_json()
        stored = self.hub.lfs_objects.get(payload.get("oid"))
        if stored is None or len(stored) != payload.get("size"):
            raise HubHTTPError(404, f"object {payload.get('oid')} was not uploaded")
        return 200, {}, {}

    def commit(self, repo, revision):
        repo = self.repo(repo, write=True)
        revision = unquote(revision)
        lines = [json.loads(line) for line in self.read_body().decode().splitlines() if line.strip()]
        header = next((line["value"] for line in lines if line["key"] == "header"), None)
        if header is None or not header.get("summary"):
            raise HubHTTPError(400, "commit needs a header line with a summary")
        base = self.hub.resolve(repo, revision)
        if self.query.get("create_pr"):
            repo.pull_requests += 1
            branch = f"refs/pr/{repo.pull_requests}"
        elif revision in repo.branches:
            branch = revision
        else:
            raise HubHTTPError(404, f"Invalid rev id: {revision} is not a branch", "RevisionNotFound")
        if header.get("parentCommit") and header["parentCommit"] != base.oid:
            raise HubHTTPError(412, "A commit has happened since. Please refresh and try again.")
        files = dict(base.files)
        for line in lines:
            key, value = line["key"], line["value"]
            if key == "file":
                files[value["path"]] = Blob(base64.b64decode(value["content"]))
            elif key == "lfsFile":
                content = self.hub.lfs_objects.get(value["oid"])
                if content is None or ("size" in value and len(content) != value["size"]):
                    raise HubHTTPError(422, f"LFS object {value['oid']} for {value['path']} was never uploaded")
                files[value["path"]] = Blob(content, lfs_sha256=value["oid"])
            elif key == "deletedFile":
                if value["path"] not in files:
                    raise HubHTTPError(404, "A file with this name doesn't exist", "EntryNotFound")
                del files[value["path"]]
            elif key == "deletedFolder":
                folder = value["path"].rstrip("/") + "/"
                files = {p: b for p, b in files.items() if not p.startswith(folder)}
            elif key != "header":
                raise HubHTTPError(400, f"unsupported commit operation {key!r}")
        commit = self.hub._commit(repo, branch, base, header["summary"], files)
        pr_url = None
        if branch.startswith("refs/pr/"):
            pr_url = f"{self.base()}/{repo.repo_id}/discussions/{repo.pull_requests}"
        return 200, {}, {"success": True, "commitOid": commit.oid,
                         "commitUrl": f"{self.base()}/{repo.repo_id}/commit/{commit.oid}", "pullRequestUrl": pr_url}

    # -- routes: download ----------------------------------------------------------------------------------
    def resolve_file(self, repo, revision, path):
        repo = self.repo(repo)
        commit = self.hub.resolve(repo, unquote(revision))
        blob = commit.files.get(unquote(path))
        if blob is None:
            raise HubHTTPError(404, "Entry not found", "EntryNotFound", headers={"X-Repo-Commit": commit.oid})
        headers = {"X-Repo-Commit": commit.oid, "ETag": f'"{blob.git_oid}"', "Accept-Ranges": "bytes"}
        if blob.lfs_sha256:
            headers.update({"X-Linked-Etag": f'"{blob.lfs_sha256}"', "X-Linked-Size": blob.size})
        content, status = blob.content, 200
        start = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        if start:
            offset = int(start.group(1))
            headers["Content-Range"] = f"bytes {offset}-{blob.size - 1}/{blob.size}"
            content, status = content[offset:], 206
        return status, headers, content


_API = r"/api/models/" + REPO
ROUTES = [
    ("POST", r"/api/repos/create", _Handler.create_repo),
    ("POST", r"/api/validate-yaml", _Handler.validate_yaml),
    ("GET", r"/api/whoami-v2", _Handler.whoami),
    ("GET", r"/api/agent-harnesses", _Handler.agent_harnesses),
    ("POST", _API + r"/preupload/(?P<revision>[^/]+)", _Handler.preupload),
    ("POST", _API + r"/commit/(?P<revision>[^/]+)", _Handler.commit),
    ("POST", _API + r"/branch/(?P<branch>[^/]+)", _Handler.create_branch),
    ("GET", _API + r"/refs", _Handler.refs),
    ("GET", _API + r"/revision/(?P<revision>[^/]+)", _Handler.model_info),
    ("GET", _API + r"/tree/(?P<revision>[^/]+)(?:/(?P<path>.*))?", _Handler.tree),
    ("GET", _API, _Handler.model_info),
    ("POST", "/" + REPO + r"\.git/info/lfs/objects/batch", _Handler.lfs_batch),
    ("POST", "/" + REPO + r"\.git/info/lfs/objects/verify", _Handler.lfs_verify),
    ("PUT", r"/__lfs/(?P<oid>[0-9a-f]{64})", _Handler.lfs_put),
    ("HEAD", "/" + REPO + r"/resolve/(?P<revision>[^/]+)/(?P<path>.+)", _Handler.resolve_file),
    ("GET", "/" + REPO + r"/resolve/(?P<revision>[^/]+)/(?P<path>.+)", _Handler.resolve_file),
]

