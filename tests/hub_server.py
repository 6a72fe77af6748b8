"""A small Hugging Face Hub-compatible HTTP server for end-to-end tests, plus pytest fixtures.

The real ``huggingface_hub`` client (and so transformers' ``push_to_hub`` / ``from_pretrained``) talks to
it over real HTTP on 127.0.0.1. For model/dataset/space repos with ``namespace/name`` ids it implements the
endpoints the client uses (shapes read from huggingface_hub 2.4 ``hf_api.py``, ``_commit_api.py``,
``lfs.py``, ``file_download.py`` and ``utils/_http.py``):

    GET    /api/whoami-v2
    POST   /api/repos/create                        409 + {"url": ...} when the repo exists
    DELETE /api/repos/delete
    POST   /api/validate-yaml                       (README.md metadata check made before each commit)
    GET    /api/{type}s/{repo}[/revision/{rev}]     repo info: sha, siblings, private, ...
    POST   /api/{type}s/{repo}/preupload/{rev}      "regular" or "lfs" upload mode per file
    POST   /api/{type}s/{repo}/commit/{rev}         NDJSON: header, file, lfsFile, deletedFile, deletedFolder
    GET    /api/{type}s/{repo}/tree/{rev}[/{path}]  ?recursive=true
    GET    /api/{type}s/{repo}/commits/{rev}
    GET    /api/{type}s/{repo}/refs
    POST   /api/{type}s/{repo}/branch/{name}        DELETE too
    POST   /api/{type}s/{repo}/tag/{rev}            DELETE /tag/{name} too
    POST   /[{type}s/]{repo}.git/info/lfs/objects/batch   upload actions point back here (basic transfer)
    PUT    /_lfs/{sha256}?sig=...                   the "presigned" upload URL handed out by the batch call
    POST   /[{type}s/]{repo}.git/info/lfs/objects/verify
    GET    /[{type}s/]{repo}/resolve/{rev}/{path}   HEAD too; a single-range GET gets a 206

Errors carry the headers ``hf_raise_for_status`` maps to exception classes: ``X-Error-Code: RepoNotFound``
-> ``RepositoryNotFoundError``, ``RevisionNotFound`` -> ``RevisionNotFoundError``, ``EntryNotFound`` ->
``RemoteEntryNotFoundError`` (a subclass of ``EntryNotFoundError``). A write with a missing or wrong token
gets 401 + ``X-Error-Message: Invalid credentials in Authorization header`` -> plain ``HfHubHTTPError``; a
read of a private repo without a valid token gets 401 + ``RepoNotFound``, as on the real Hub.

Storage is in memory. Every commit gets a new 40-hex id and keeps a full snapshot of the tree, so an older
commit can still be read by its id. LFS objects live in one server-wide store keyed by sha256. Not
implemented: Xet, multipart LFS, PR discussions, ``lastCommit``/``expand`` fields, pagination, gitignore.

Use: ``pytest_plugins = ["hub_server"]`` in a test module, or ``from hub_server import hub_env, hub_server``
in conftest.py. (PYTEST_DONT_REWRITE: nothing here needs assert rewriting, and this avoids pytest's
"already imported" warning when the module is both imported and registered as a plugin.)
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import itertools
import json
import os
import re
import secrets
import sys
import threading
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cached_property
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

__all__ = ["TEST_TOKEN", "TEST_USER", "HubServer", "HubError", "hub_env", "hub_server", "point_client_at"]

TEST_TOKEN = "hf_lstmlm_test_token"
TEST_USER = "tester"

# Files the Hub stores with LFS: the usual patterns of the default `.gitattributes` (written into every new
# repo, as the Hub does) and anything over 10 MB.
LFS_PATTERNS = (
    "*.7z *.arrow *.bin *.bz2 *.ckpt *.ftz *.gz *.h5 *.joblib *.mlmodel *.model *.msgpack *.npy *.npz "
    "*.onnx *.ot *.parquet *.pb *.pickle *.pkl *.pt *.pth *.rar *.safetensors *.tar *.tflite *.tgz *.wasm "
    "*.xz *.zip *.zst *tfevents*"
).split()
LFS_THRESHOLD = 10 * 1024 * 1024
GITATTRIBUTES = "".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in LFS_PATTERNS).encode()

_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
_URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
_REPO = r"(?P<repo>[^/]+/[^/]+?)"
_API = rf"/api/(?P<types>models|datasets|spaces)/{_REPO}"
_GIT = rf"/(?:(?P<types>datasets|spaces)/)?{_REPO}"


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class HubError(Exception):
    """An error answer: status, message (``X-Error-Message`` + JSON ``error``), optional ``X-Error-Code``."""

    def __init__(self, status: int, message: str, code: str | None = None, headers=None, **json_fields):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code
        self.headers, self.json_fields = headers or {}, json_fields


@dataclass
class _File:
    data: bytes
    lfs: bool

    @cached_property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @cached_property
    def pointer(self) -> bytes:
        spec = "https://git-lfs.github.com/spec/v1"
        return f"version {spec}\noid sha256:{self.sha256}\nsize {len(self.data)}\n".encode()

    @cached_property
    def oid(self) -> str:
        """The git blob id: of the content for regular files, of the LFS pointer for LFS files."""
        return _git_sha1(self.pointer if self.lfs else self.data)

    def tree_entry(self, path: str) -> dict:
        entry = {"type": "file", "oid": self.oid, "size": len(self.data), "path": path}
        if self.lfs:
            entry["lfs"] = {"oid": self.sha256, "size": len(self.data), "pointerSize": len(self.pointer)}
        return entry


@dataclass
class _Commit:
    oid: str
    files: dict[str, _File]
    title: str
    message: str
    parent: str | None
    date: str = field(default_factory=_now)


@dataclass
class _Repo:
    type: str
    id: str
    private: bool
    commits: dict[str, _Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)  # name -> commit oid
    tags: dict[str, str] = field(default_factory=dict)
    prs: dict[str, str] = field(default_factory=dict)  # "refs/pr/N" -> commit oid
    created_at: str = field(default_factory=_now)

    def resolve(self, revision: str) -> str:
        """Commit oid of a branch, tag, PR ref, full or (>= 7 chars, unique) short commit id."""
        for refs in (self.branches, self.tags, self.prs):
            if revision in refs:
                return refs[revision]
        if re.fullmatch(r"[0-9a-f]{7,40}", revision):
            matches = [oid for oid in self.commits if oid.startswith(revision)]
            if len(matches) == 1:
                return matches[0]
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")


class HubServer:
    """In-memory Hub on ``127.0.0.1:<free port>``. ``start()`` returns self; ``endpoint`` is the base URL."""

    def __init__(self, token: str = TEST_TOKEN, user: str = TEST_USER):
        self.token, self.user = token, user
        self.repos: dict[tuple[str, str], _Repo] = {}
        self.lfs_objects: dict[str, bytes] = {}  # sha256 -> content, shared by all repos
        self.request_log: list[tuple[str, str, int]] = []  # (method, path with query, status)
        self._lock = threading.RLock()
        self._counter = itertools.count()
        self._lfs_sig = secrets.token_hex(8)  # stands in for the signature of a presigned upload URL
        self.env: dict[str, str] = {}  # environment variables set by the `hub_server` fixture
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------------------------

    def start(self) -> HubServer:
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.hub = self  # type: ignore[attr-defined]
        # A short poll interval: stop() waits for the serving loop to notice the shutdown request.
        poll = {"poll_interval": 0.05}
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs=poll, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(timeout=5)
            self._httpd = None

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        assert self._httpd is not None, "server not started"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def requests(self, method: str | None = None, contains: str = "") -> list[tuple[str, str, int]]:
        """The logged requests, optionally filtered by method and a substring of the path."""
        with self._lock:
            return [r for r in self.request_log if (method is None or r[0] == method) and contains in r[1]]

    # -- helpers used by the routes --------------------------------------------------------------------------

    def _authorized(self, headers) -> bool:
        return headers.get("Authorization") == f"Bearer {self.token}"

    def _check_token(self, headers, write: bool) -> None:
        """A wrong token is always refused; no token is refused only for writes."""
        if (write or headers.get("Authorization")) and not self._authorized(headers):
            raise HubError(401, "Invalid credentials in Authorization header")

    def _repo(self, types: str | None, repo_id: str, headers, write: bool = False) -> _Repo:
        self._check_token(headers, write)
        repo = self.repos.get((_TYPES[types or "models"], unquote(repo_id)))
        if repo is None:
            raise HubError(404, "Repository not found", "RepoNotFound")
        if repo.private and not self._authorized(headers):
            raise HubError(401, "Invalid username or password.", "RepoNotFound")
        return repo

    def _url(self, repo: _Repo, suffix: str = "") -> str:
        return f"{self.endpoint}/{_URL_PREFIX[repo.type]}{repo.id}{suffix}"

    def _commit(self, repo: _Repo, files: dict, title: str, message: str, parent: str | None) -> str:
        listing = "".join(f"{path} {f.oid}\n" for path, f in sorted(files.items()))
        seed = f"{parent}\n{listing}{title}\n{message}\n{next(self._counter)}"  # the counter: no two alike
        oid = hashlib.sha1(seed.encode()).hexdigest()
        repo.commits[oid] = _Commit(oid, files, title, message, parent)
        return oid

    @staticmethod
    def _upload_mode(path: str, size: int) -> str:
        name = path.rsplit("/", 1)[-1]
        lfs = size > LFS_THRESHOLD or any(fnmatch.fnmatch(name, p) for p in LFS_PATTERNS)
        return "lfs" if lfs else "regular"

    # -- routes: (match, query, headers, body) -> JSON-able answer, or (status, headers, body) ---------------

    def whoami(self, m, query, headers, body):
        if not self._authorized(headers):
            raise HubError(401, "Invalid credentials in Authorization header")
        access = {"displayName": "test", "role": "write"}
        return {
            "type": "user",
            "id": "0" * 24,
            "name": self.user,
            "fullname": "Test User",
            "orgs": [],
            "auth": {"type": "access_token", "accessToken": access},
        }

    def create_repo(self, m, query, headers, body):
        self._check_token(headers, write=True)
        payload = json.loads(body or b"{}")
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or self.user}/{payload['name']}"
        if (repo_type, repo_id) in self.repos:
            # The client reads "url" from this 409 answer when exist_ok=True.
            url = f"{self.endpoint}/{_URL_PREFIX[repo_type]}{repo_id}"
            raise HubError(409, f"You already created this {repo_type} repo", url=url)
        private = payload.get("visibility") == "private" or bool(payload.get("private"))
        repo = self.repos[(repo_type, repo_id)] = _Repo(repo_type, repo_id, private)
        files = {".gitattributes": _File(GITATTRIBUTES, lfs=False)}
        repo.branches["main"] = self._commit(repo, files, "initial commit", "", None)
        return {"url": self._url(repo), "name": repo_id, "id": repo_id}

    def delete_repo(self, m, query, headers, body):
        payload = json.loads(body or b"{}")
        repo_id = f"{payload.get('organization') or self.user}/{payload['name']}"
        repo = self._repo(f"{payload.get('type') or 'model'}s", repo_id, headers, write=True)
        del self.repos[(repo.type, repo.id)]
        return {}

    def validate_yaml(self, m, query, headers, body):
        return {"errors": [], "warnings": []}

    def repo_info(self, m, query, headers, body):
        repo = self._repo(m["types"], m["repo"], headers)
        commit = repo.commits[repo.resolve(unquote(m["rev"] or "main"))]
        siblings = []
        for path, f in sorted(commit.files.items()):
            sibling = {"rfilename": path, "size": len(f.data), "blobId": f.oid}
            if f.lfs:
                sibling["lfs"] = {"size": len(f.data), "sha256": f.sha256, "pointerSize": len(f.pointer)}
            siblings.append(sibling)
        return {
            "_id": repo.id,
            "id": repo.id,
            "author": repo.id.split("/")[0],
            "sha": commit.oid,
            "lastModified": commit.date,
            "createdAt": repo.created_at,
            "private": repo.private,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
        }

    def preupload(self, m, query, headers, body):
        repo = self._repo(m["types"], m["repo"], headers, write=True)
        files = repo.commits[repo.resolve(unquote(m["rev"]))].files
        result = []
        for item in json.loads(body)["files"]:
            mode = self._upload_mode(item["path"], item["size"])
            existing = files.get(item["path"])
            # The client compares this oid to its own (sha256 for LFS, else git sha1) to skip unchanged files.
            oid = None if existing is None else existing.sha256 if mode == "lfs" else existing.oid
            result.append({"path": item["path"], "uploadMode": mode, "shouldIgnore": False, "oid": oid})
        return {"files": result}

    def commit(self, m, query, headers, body):
        repo = self._repo(m["types"], m["repo"], headers, write=True)
        revision = unquote(m["rev"])
        create_pr = query.get("create_pr") == "1"
        if not (revision in repo.branches or revision in repo.prs):
            raise HubError(404, f"Invalid rev id: {revision} (commits go to a branch)", "RevisionNotFound")
        head = repo.branches.get(revision) or repo.prs[revision]
        files = dict(repo.commits[head].files)
        header: dict = {}
        for line in body.splitlines():
            if not line.strip():
                continue
            op = json.loads(line)
            key, value = op["key"], op["value"]
            if key == "header":
                header = value
                continue
            path = value["path"].strip("/")
            if not path or ".." in path.split("/"):
                raise HubError(400, f"Invalid path: {value['path']!r}")
            if key == "file":
                files[path] = _File(base64.b64decode(value["content"]), lfs=False)
            elif key == "lfsFile":
                if value["oid"] not in self.lfs_objects:
                    raise HubError(400, f"LFS object {value['oid']} for {path!r} was not uploaded")
                files[path] = _File(self.lfs_objects[value["oid"]], lfs=True)
            elif key == "deletedFile":
                if files.pop(path, None) is None:
                    raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
            elif key == "deletedFolder":
                for name in [name for name in files if name.startswith(path + "/")]:
                    del files[name]
            else:
                raise HubError(400, f"Unknown commit operation {key!r}")
        parent = header.get("parentCommit")
        if parent and not head.startswith(parent):
            raise HubError(412, f"Parent commit {parent} is not the head of {revision} ({head})")
        oid = self._commit(repo, files, header.get("summary", ""), header.get("description", ""), head)
        answer = {"success": True, "commitOid": oid, "commitUrl": self._url(repo, f"/commit/{oid}")}
        if create_pr:
            number = len(repo.prs) + 1
            repo.prs[f"refs/pr/{number}"] = oid
            answer["pullRequestUrl"] = self._url(repo, f"/discussions/{number}")
        elif revision in repo.branches:
            repo.branches[revision] = oid
        else:
            repo.prs[revision] = oid
        return answer

    def tree(self, m, query, headers, body):
        repo = self._repo(m["types"], m["repo"], headers)
        files = repo.commits[repo.resolve(unquote(m["rev"]))].files
        base = unquote(m["path"] or "").strip("/")
        prefix = base + "/" if base else ""
        recursive = query.get("recursive", "").lower() in ("1", "true")
        entries, folders = [], set()
        for path, f in sorted(files.items()):
            if not path.startswith(prefix):
                continue
            parts = path[len(prefix) :].split("/")
            for depth in range(1, len(parts) if recursive else min(2, len(parts))):
                folders.add(prefix + "/".join(parts[:depth]))
            if recursive or len(parts) == 1:
                entries.append(f.tree_entry(path))
        if base and not entries and not folders:
            raise HubError(404, f"{base} does not exist on {m['rev']}", "EntryNotFound")
        dirs = [{"type": "directory", "oid": _git_sha1(d.encode()), "path": d} for d in sorted(folders)]
        return dirs + entries

    def commits(self, m, query, headers, body):
        repo = self._repo(m["types"], m["repo"], headers)
        oid, history = repo.resolve(unquote(m["rev"])), []
        while oid is not None:
            c = repo.commits[oid]
            history.append(
                {
                    "id": c.oid,
                    "title": c.title,
                    "message": c.message,
                    "date": c.date,
                    "authors": [{"user": self.user}],
                }
            )
            oid = c.parent
        return history

    def refs(self, m, query, headers, body):
        repo = self._repo(m["types"], m["repo"], headers)

        def fmt(refs: dict[str, str], kind: str | None) -> list[dict]:
            prefix = f"refs/{kind}/" if kind else ""
            return [{"name": n, "ref": prefix + n, "targetCommit": c} for n, c in refs.items()]

        answer = {"branches": fmt(repo.branches, "heads"), "tags": fmt(repo.tags, "tags"), "converts": []}
        if query.get("include_prs"):
            answer["pullRequests"] = fmt(repo.prs, None)
        return answer

    def create_branch(self, m, query, headers, body):
        repo = self._repo(m["types"], m["repo"], headers, write=True)
        name, start = unquote(m["name"]), json.loads(body or b"{}").get("startingPoint")
        if name in repo.branches:
            raise HubError(409, f"Branch {name} already exists")
        repo.branches[name] = repo.resolve(start) if start else repo.branches["main"]
        return {}

    def delete_branch(self, m, query, headers, body):
        repo = self._repo(m["types"], m["repo"], headers, write=True)
        name = unquote(m["name"])
        if name == "main" or repo.branches.pop(name, None) is None:
            raise HubError(404 if name != "main" else 403, f"Cannot delete branch {name}")
        return {}

    def create_tag(self, m, query, headers, body):
        repo = self._repo(m["types"], m["repo"], headers, write=True)
        tag = json.loads(body)["tag"]
        if tag in repo.tags:
            raise HubError(409, f"Tag {tag} already exists")
        repo.tags[tag] = repo.resolve(unquote(m["rev"]))
        return {}

    def delete_tag(self, m, query, headers, body):
        repo = self._repo(m["types"], m["repo"], headers, write=True)
        if repo.tags.pop(unquote(m["rev"]), None) is None:
            raise HubError(404, f"Tag {unquote(m['rev'])} not found")
        return {}

    def lfs_batch(self, m, query, headers, body):
        repo = self._repo(m["types"], m["repo"], headers, write=True)
        payload = json.loads(body)
        if payload.get("operation") != "upload":
            raise HubError(400, "Only the upload operation is implemented")
        verify = {"href": self._url(repo, ".git/info/lfs/objects/verify"), "header": {}}
        objects = []
        for obj in payload["objects"]:
            answer = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if obj["oid"] not in self.lfs_objects:  # already stored: no actions, the client skips the upload
                upload = {"href": f"{self.endpoint}/_lfs/{obj['oid']}?sig={self._lfs_sig}"}
                answer["actions"] = {"upload": upload, "verify": verify}
            objects.append(answer)
        return (
            200,
            {"Content-Type": "application/vnd.git-lfs+json"},
            {"transfer": "basic", "objects": objects},
        )

    def lfs_put(self, m, query, headers, body):
        if query.get("sig") != self._lfs_sig:
            raise HubError(403, "Bad upload signature")
        if hashlib.sha256(body).hexdigest() != m["oid"]:
            raise HubError(400, "Uploaded content does not match its sha256")
        self.lfs_objects[m["oid"]] = body
        return 200, {"ETag": f'"{m["oid"]}"'}, b""

    def lfs_verify(self, m, query, headers, body):
        self._repo(m["types"], m["repo"], headers, write=True)
        payload = json.loads(body)
        data = self.lfs_objects.get(payload["oid"])
        if data is None or len(data) != payload["size"]:
            raise HubError(404, f"LFS object {payload['oid']} not found")
        return {}

    def resolve(self, m, query, headers, body, range_header: str | None = None):
        repo = self._repo(m["types"], m["repo"], headers)
        oid = repo.resolve(unquote(m["rev"]))
        path = unquote(m["path"])
        f = repo.commits[oid].files.get(path)
        if f is None:
            raise HubError(404, "Entry not found", "EntryNotFound", headers={"X-Repo-Commit": oid})
        etag = f'"{f.sha256 if f.lfs else f.oid}"'
        out = {
            "ETag": etag,
            "X-Repo-Commit": oid,
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        if f.lfs:
            out.update({"X-Linked-Etag": etag, "X-Linked-Size": str(len(f.data))})
        if not range_header:
            return 200, out, f.data
        # One range, as sent when resuming a download or reading a safetensors header: "bytes=a-b|a-|-n".
        size, found = len(f.data), re.fullmatch(r"bytes=(\d*)-(\d*)", range_header.strip())
        start, end = size, -1  # unsatisfiable unless parsed below
        if found and found[1]:
            start, end = int(found[1]), min(int(found[2] or size - 1), size - 1)
        elif found and found[2]:
            start, end = max(size - int(found[2]), 0), size - 1
        if start >= size or end < start:
            unsatisfiable = {"Content-Range": f"bytes */{size}"}
            raise HubError(416, f"Unsatisfiable range {range_header}", headers=unsatisfiable)
        out["Content-Range"] = f"bytes {start}-{end}/{size}"
        return 206, out, f.data[start : end + 1]


# (method, regex on the raw path, HubServer method). Methods are matched in order; the first match wins.
_ROUTES = [
    ("GET", r"/api/whoami-v2", "whoami"),
    ("POST", r"/api/repos/create", "create_repo"),
    ("DELETE", r"/api/repos/delete", "delete_repo"),
    ("POST", r"/api/validate-yaml", "validate_yaml"),
    ("GET", rf"{_API}(?:/revision/(?P<rev>[^/]+))?", "repo_info"),
    ("POST", rf"{_API}/preupload/(?P<rev>[^/]+)", "preupload"),
    ("POST", rf"{_API}/commit/(?P<rev>[^/]+)", "commit"),
    ("GET", rf"{_API}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?", "tree"),
    ("GET", rf"{_API}/commits/(?P<rev>[^/]+)", "commits"),
    ("GET", rf"{_API}/refs", "refs"),
    ("POST", rf"{_API}/branch/(?P<name>[^/]+)", "create_branch"),
    ("DELETE", rf"{_API}/branch/(?P<name>[^/]+)", "delete_branch"),
    ("POST", rf"{_API}/tag/(?P<rev>[^/]+)", "create_tag"),
    ("DELETE", rf"{_API}/tag/(?P<rev>[^/]+)", "delete_tag"),
    ("POST", rf"{_GIT}\.git/info/lfs/objects/batch", "lfs_batch"),
    ("POST", rf"{_GIT}\.git/info/lfs/objects/verify", "lfs_verify"),
    ("PUT", r"/_lfs/(?P<oid>[0-9a-f]{64})", "lfs_put"),
    ("GET", rf"{_GIT}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve"),
]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the client's connection pool expects
    timeout = 60  # idle keep-alive connections are closed after this many seconds

    def do_GET(self):
        self._dispatch()

    do_HEAD = do_POST = do_PUT = do_DELETE = do_GET

    def _read_body(self) -> bytes:
        if "chunked" not in self.headers.get("Transfer-Encoding", "").lower():
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))
        chunks = []
        while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
            chunks.append(self.rfile.read(size))
            self.rfile.readline()
        while self.rfile.readline().strip():  # trailers, then the blank line ending the body
            pass
        return b"".join(chunks)

    def _dispatch(self) -> None:
        hub: HubServer = self.server.hub  # type: ignore[attr-defined]
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        body = self._read_body()
        method = "GET" if self.command == "HEAD" else self.command
        headers: dict = {}
        try:
            for route_method, pattern, name in _ROUTES:
                found = re.fullmatch(pattern, url.path)
                if found and route_method == method:
                    kwargs = {"range_header": self.headers.get("Range")} if name == "resolve" else {}
                    with hub._lock:
                        result = getattr(hub, name)(found, query, self.headers, body, **kwargs)
                    break
            else:
                raise HubError(404, f"No route for {self.command} {url.path}")
            status, headers, payload = result if isinstance(result, tuple) else (200, {}, result)
        except HubError as e:
            status, payload = e.status, {"error": e.message, **e.json_fields}
            headers = {**e.headers, "X-Error-Message": e.message}
            if e.code:
                headers["X-Error-Code"] = e.code
        except Exception:  # a server bug: answer 500 with the traceback so the failing test shows it
            status, payload = 500, {"error": traceback.format_exc()}
        if not isinstance(payload, bytes):
            payload = json.dumps(payload).encode()
            headers.setdefault("Content-Type", "application/json")
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def log_request(self, code="-", size="-") -> None:
        hub: HubServer = self.server.hub  # type: ignore[attr-defined]
        with hub._lock:
            hub.request_log.append((self.command, self.path, int(code)))

    def log_message(self, format, *args) -> None:  # quiet: the request log is on the server object
        pass


# -- pytest fixtures -----------------------------------------------------------------------------------------


def point_client_at(server: HubServer, monkeypatch: pytest.MonkeyPatch, hf_home: Path) -> dict[str, str]:
    """Point huggingface_hub (and transformers) at ``server``, in this process and in subprocesses.

    Environment variables only reach subprocesses and modules imported later: huggingface_hub reads them
    ONCE, at import, into ``huggingface_hub.constants``. So in-process the constants are patched too:

    * ``ENDPOINT``: base URL of every API call (``HfApi.endpoint`` defaults to it when an HfApi is built).
    * ``HUGGINGFACE_CO_URL_TEMPLATE``: ``hf_hub_url`` builds ``/resolve/`` URLs from it, not from ENDPOINT.
    * ``HF_URL_HOSTS``: hosts treated as the Hub (redirects followed with auth, web URLs parsed to ids).
    * ``HF_HOME``, ``HF_HUB_CACHE``, ``HF_ASSETS_CACHE``, ``HF_XET_CACHE``: per-test caches, so nothing is
      served from (or written to) the user's real cache. ``HF_TOKEN_PATH``, ``HF_STORED_TOKENS_PATH``: so a
      token saved on the machine is never read or overwritten.
    * ``HF_HUB_OFFLINE``: ``is_offline_mode()`` (transformers uses it too) reads it; a request hook raises.
    * ``HF_HUB_DISABLE_XET``: with ``hf_xet`` installed, transfers would otherwise go to a Xet CAS server.
    * ``HF_HUB_DISABLE_TELEMETRY``, ``HF_HUB_DISABLE_IMPLICIT_TOKEN`` (False: HF_TOKEN is sent implicitly).

    Copies made at import time are patched too: ``huggingface_hub.hf_api.api.endpoint`` (the module-level
    HfApi behind ``huggingface_hub.create_repo``/``upload_file``/...), ``utils._cache_manager.HF_HUB_CACHE``
    and ``utils._cache_assets.HF_ASSETS_CACHE``; and transformers' cached ``transformers.utils.hub._hf_api``
    (the HfApi used by ``push_to_hub``) is reset so it is rebuilt with the new endpoint. Not patched:
    transformers' ``HF_MODULES_CACHE`` (remote-code modules; it is put on ``sys.path`` once) and fsspec's
    cached ``HfFileSystem`` instances. Returns the environment variables that were set.
    """
    from huggingface_hub import constants, hf_api
    from huggingface_hub.utils import _cache_assets, _cache_manager

    hub_cache, assets = str(hf_home / "hub"), str(hf_home / "assets")
    env = {
        "HF_ENDPOINT": server.endpoint,
        "HF_TOKEN": server.token,
        "HF_HOME": str(hf_home),
        "HF_HUB_CACHE": hub_cache,
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_OFFLINE": "0",
        "HF_HUB_DISABLE_IMPLICIT_TOKEN": "0",
        "NO_PROXY": "127.0.0.1,localhost",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for name in (
        "HUGGINGFACE_HUB_CACHE",
        "HF_ASSETS_CACHE",
        "HF_XET_CACHE",
        "HF_TOKEN_PATH",
        "TRANSFORMERS_CACHE",
        "HUGGING_FACE_HUB_TOKEN",
        "HF_OIDC_RESOURCE",
        "HUGGINGFACE_CO_STAGING",
        "TRANSFORMERS_OFFLINE",
    ):
        monkeypatch.delenv(name, raising=False)

    patches = {
        "ENDPOINT": server.endpoint,
        "HUGGINGFACE_CO_URL_TEMPLATE": server.endpoint + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_URL_HOSTS": constants.HF_URL_HOSTS | {"127.0.0.1"},
        "HF_HOME": str(hf_home),
        "HF_HUB_CACHE": hub_cache,
        "HUGGINGFACE_HUB_CACHE": hub_cache,
        "HF_ASSETS_CACHE": assets,
        "HF_XET_CACHE": str(hf_home / "xet"),
        "HF_TOKEN_PATH": str(hf_home / "token"),
        "HF_STORED_TOKENS_PATH": str(hf_home / "stored_tokens"),
        "HF_HUB_OFFLINE": False,
        "HF_HUB_DISABLE_XET": True,
        "HF_HUB_DISABLE_TELEMETRY": True,
        "HF_HUB_DISABLE_IMPLICIT_TOKEN": False,
    }
    for name, value in patches.items():
        monkeypatch.setattr(constants, name, value)
    monkeypatch.setattr(hf_api.api, "endpoint", server.endpoint)
    monkeypatch.setattr(_cache_manager, "HF_HUB_CACHE", hub_cache)
    monkeypatch.setattr(_cache_assets, "HF_ASSETS_CACHE", assets)
    _reset_cached_clients()
    return env


def _reset_cached_clients() -> None:
    """Drop HfApi/HTTP clients cached with an old endpoint or pooled connections to a stopped server."""
    from huggingface_hub.utils import close_session

    close_session()
    transformers_hub = sys.modules.get("transformers.utils.hub")
    if transformers_hub is not None:
        transformers_hub._hf_api = None


@pytest.fixture
def hub_server(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """A fresh, empty ``HubServer`` that huggingface_hub/transformers use by default for this test."""
    server = HubServer().start()
    try:
        server.env = point_client_at(server, monkeypatch, tmp_path / "hf_home")
        yield server
    finally:
        server.stop()
        _reset_cached_clients()


@pytest.fixture
def hub_env(hub_server: HubServer) -> dict[str, str]:
    """A full environment (``os.environ`` with the Hub variables) for ``subprocess.run(..., env=hub_env)``."""
    return dict(os.environ)


if __name__ == "__main__":  # manual debugging: python tests/hub_server.py, then point HF_ENDPOINT at it
    with HubServer() as hub:
        print(f"HF_ENDPOINT={hub.endpoint} HF_TOKEN={hub.token} HF_HUB_DISABLE_XET=1", flush=True)
        threading.Event().wait()
