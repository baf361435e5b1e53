"""A local stand-in for the Hugging Face Hub, used only by the tests (no network, no Hub account).

It is a small stdlib HTTP server that speaks the part of the Hub HTTP API that `huggingface_hub`
uses for `create_repo`, `upload_folder` / `create_commit`, `model_info` / `repo_info`,
`list_repo_tree`, `hf_hub_download` and `snapshot_download`. Checked against huggingface_hub 2.4.0
(with hf_xet 1.8.0 installed) by reading its client code; it is not the Hub and not a copy of it.

Routes (model repos only; `{repo}` is `namespace/name`; `{rev}` is `main` or a commit sha):

    POST      /api/repos/create                      create_repo (409 + url when it exists)
    POST      /api/validate-yaml                     README.md metadata check: accepted as is
    POST      /api/models/{repo}/preupload/{rev}     says "regular" or "lfs" per file, with remote oid
    POST      /{repo}.git/info/lfs/objects/batch     LFS batch API, upload, "basic" transfer only
    PUT       /lfs-upload/{ticket}                   upload URL handed out by the batch (stands in for S3)
    POST      /{repo}.git/info/lfs/objects/verify    LFS verify (an object is committable only once verified)
    POST      /api/models/{repo}/commit/{rev}        NDJSON commit: header, file, lfsFile, deletedFile/Folder
    GET       /api/models/{repo}[/revision/{rev}]    model_info / repo_info: sha, private, siblings
    GET       /api/models/{repo}/tree/{rev}[/path]   list_repo_tree (snapshot_download lists files this way)
    HEAD, GET /{repo}/resolve/{rev}/{path}           file metadata (ETag, X-Repo-Commit, Content-Length), bytes

Anything else answers 404 with a JSON error and is recorded in `requests` and `unrouted`, so a test
failure names the missing route. Simplifications: only branch `main` (plus any past commit sha); a new
repo starts with an empty commit (the Hub adds a .gitattributes); files are served directly with 200
(the Hub redirects LFS files to a CDN); `private` is recorded, access is guarded only by `token`;
no pagination, pull requests, gating or YAML validation.

Xet: with hf_xet installed, `upload_folder` always goes through the Xet pipeline and
`preupload_lfs_files` through `_upload_xet_files`; the client decides that alone with
`is_xet_available()`, so no server answer can turn it off. The supported switch is the env var
HF_HUB_DISABLE_XET=1, read once at import into `huggingface_hub.constants.HF_HUB_DISABLE_XET`, which
`is_xet_available()` reads on each call: `online()` sets both. Downloads would use Xet only if the
resolve answer carried X-Xet-* headers, which this server never sends.

Offline mode: tests/conftest.py sets HF_HUB_OFFLINE=1. huggingface_hub reads it once at import into
`constants.HF_HUB_OFFLINE`, and `is_offline_mode()` (checked by the client's request hook before every
request, and by transformers) returns that constant, so unsetting the env var alone does nothing:
`online()` patches the constant too, for its duration only.

Use from other tests (the `standin_hub` fixture is in tests/conftest.py):
    from tests.hub_standin import STANDIN_TOKEN
    def test_push(standin_hub): HfApi(endpoint=standin_hub.url, token=STANDIN_TOKEN) ...
"""
from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import threading
import traceback
from contextlib import contextmanager
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Iterator, NamedTuple
from urllib.parse import parse_qs, unquote

import pytest

STANDIN_TOKEN = "hf_standin_test_token"

# Paths the Hub keeps in LFS by default (its stock .gitattributes), plus its 10 MB rule for big files.
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx", ".npy", ".npz",
                ".pkl", ".pickle", ".zip", ".gz", ".tar", ".arrow", ".parquet", ".model")
LFS_MIN_SIZE = 10 * 1024 * 1024

REPO = r"(?P<repo>[^/]+/[^/]+)"
REV = r"(?P<rev>[^/]+)"


class Request(NamedTuple):
    method: str
    args: dict  # URL-decoded named groups of the route pattern
    params: dict  # query string, first value of each key
    headers: dict  # lower-case names
    body: bytes


class Response(NamedTuple):
    status: int
    body: bytes = b""
    headers: dict = {}


def _json(obj, status: int = 200, **headers) -> Response:
    return Response(status, json.dumps(obj).encode(), {"Content-Type": "application/json", **headers})


def _error(status: int, message: str, code: str | None = None, **headers) -> Response:
    # The client builds its error text from X-Error-Message and the JSON "error" field, and picks the
    # exception class (RepositoryNotFoundError, RevisionNotFoundError, ...) from X-Error-Code.
    headers["X-Error-Message"] = message
    if code:
        headers["X-Error-Code"] = code
    return _json({"error": message}, status, **headers)


def _git_blob_sha1(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def _lfs_pointer(content: bytes) -> bytes:
    sha = hashlib.sha256(content).hexdigest()
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha}\nsize {len(content)}\n".encode()


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class _Blob(NamedTuple):
    content: bytes
    lfs: bool

    @property
    def oid(self) -> str:
        # A git oid, as in the tree listing: for an LFS file it is the oid of its pointer file.
        return _git_blob_sha1(_lfs_pointer(self.content) if self.lfs else self.content)

    @property
    def etag(self) -> str:
        # What the Hub's resolve answer gives (X-Linked-Etag for LFS): sha256 for LFS, git oid otherwise.
        return hashlib.sha256(self.content).hexdigest() if self.lfs else self.oid


class StandinHub:
    """Context manager: an in-memory Hub on 127.0.0.1 at a free port, served from a background thread."""

    def __init__(self, token: str | None = None):
        self.token = token
        self.url = ""
        self.repos: dict[str, dict[str, bytes]] = {}  # head of `main`, as plain bytes
        self.private: dict[str, bool] = {}
        self.requests: list[tuple[str, str, dict]] = []  # (method, path with query, lower-cased headers)
        self.unrouted: list[tuple[str, str]] = []
        self.commits: list[dict] = []  # repo_id, oid, message, description, files: {path: regular|lfs|deleted}
        self.errors: list[str] = []  # tracebacks of stand-in bugs (answered 500)
        self._snapshots: dict[str, dict[str, dict[str, _Blob]]] = {}  # repo -> commit sha -> files
        self._head: dict[str, str] = {}
        self._created: dict[str, str] = {}
        self._uploaded: dict[str, bytes] = {}  # LFS oid -> bytes, PUT but not verified yet
        self._lfs: dict[str, bytes] = {}  # LFS oid -> bytes, verified
        self._tickets: dict[str, tuple[str, int]] = {}  # upload ticket -> (oid, size)
        self._lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        # (method(s), pattern, handler, needs_auth)
        self._routes: list[tuple[tuple[str, ...], re.Pattern, Callable[[Request], Response], bool]] = [
            (("POST",), re.compile(r"/api/repos/create"), self._create_repo, True),
            (("POST",), re.compile(r"/api/validate-yaml"), self._validate_yaml, True),
            (("POST",), re.compile(rf"/api/models/{REPO}/preupload/{REV}"), self._preupload, True),
            (("POST",), re.compile(rf"/{REPO}\.git/info/lfs/objects/batch"), self._lfs_batch, True),
            # The PUT goes to a presigned URL: the client sends no Authorization, the ticket is the credential.
            (("PUT",), re.compile(r"/lfs-upload/(?P<ticket>[^/]+)"), self._lfs_put, False),
            (("POST",), re.compile(rf"/{REPO}\.git/info/lfs/objects/verify"), self._lfs_verify, True),
            (("POST",), re.compile(rf"/api/models/{REPO}/commit/{REV}"), self._commit, True),
            (("GET",), re.compile(rf"/api/models/{REPO}(?:/revision/{REV})?"), self._model_info, True),
            (("GET",), re.compile(rf"/api/models/{REPO}/tree/{REV}(?:/(?P<path>.*))?"), self._tree, True),
            (("GET", "HEAD"), re.compile(rf"/{REPO}/resolve/{REV}/(?P<path>.+)"), self._resolve, True),
        ]

    # ---- lifecycle -------------------------------------------------------------------------------

    def __enter__(self) -> "StandinHub":
        hub = self
        handler = type("_BoundHandler", (_Handler,), {"hub": hub})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        # A short poll interval keeps shutdown() (which waits for the next poll) from adding 0.5 s per test.
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="standin-hub", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    # ---- dispatch --------------------------------------------------------------------------------

    def handle(self, method: str, raw_path: str, headers: dict, body: bytes) -> Response:
        path, _, query = raw_path.partition("?")
        with self._lock:
            self.requests.append((method, raw_path, headers))
        for methods, pattern, handler, needs_auth in self._routes:
            match = pattern.fullmatch(path)
            if match is None or method not in methods:
                continue
            if needs_auth and self.token is not None:
                sent = headers.get("authorization")
                if sent is None:
                    return _error(401, "Authorization header missing: this stand-in Hub requires a token")
                if sent != f"Bearer {self.token}":
                    return _error(401, "Invalid credentials in Authorization header")
            args = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
            params = {k: v[0] for k, v in parse_qs(query).items()}
            try:
                with self._lock:  # one request at a time touches the state: simple and enough for tests
                    return handler(Request(method, args, params, headers, body))
            except Exception:
                self.errors.append(traceback.format_exc())
                return _error(500, f"stand-in Hub bug, see StandinHub.errors: {traceback.format_exc(limit=1)}")
        with self._lock:
            self.unrouted.append((method, raw_path))
        return _error(404, f"stand-in Hub has no route for {method} {path}")

    # ---- helpers ---------------------------------------------------------------------------------

    def _files(self, repo: str, rev: str) -> tuple[str, dict[str, _Blob]] | Response:
        """(commit sha, files) of `repo` at `rev`, or the error answer the Hub would give."""
        if repo not in self._snapshots:
            return _error(404, f"Repository {repo} not found", "RepoNotFound")
        sha = self._head[repo] if rev == "main" else rev
        if sha not in self._snapshots[repo]:
            return _error(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        return sha, self._snapshots[repo][sha]

    @staticmethod
    def _wants_lfs(path: str, size: int, sample: bytes) -> bool:
        # Like the Hub: LFS by .gitattributes pattern, for big files, and for binary content.
        return path.endswith(LFS_SUFFIXES) or size >= LFS_MIN_SIZE or b"\0" in sample

    # ---- routes ----------------------------------------------------------------------------------

    def _create_repo(self, req: Request) -> Response:
        payload = json.loads(req.body or b"{}")
        if payload.get("type", "model") != "model":
            return _error(400, "this stand-in Hub only hosts model repos")
        if not payload.get("organization"):
            return _error(400, "this stand-in Hub needs repo ids of the form 'namespace/name'")
        repo = f"{payload['organization']}/{payload['name']}"
        url = f"{self.url}/{repo}"
        if repo in self._snapshots:
            # create_repo(exist_ok=True) swallows the 409 but still reads "url" from this body.
            return _json({"error": "You already created this model repo", "url": url}, 409)
        # huggingface_hub 2.4.0 sends "visibility"; older clients sent "private".
        self.private[repo] = payload.get("visibility") == "private" or bool(payload.get("private"))
        sha = hashlib.sha1(f"initial commit of {repo}".encode()).hexdigest()
        self._snapshots[repo] = {sha: {}}
        self._head[repo] = sha
        self._created[repo] = _now()
        self.repos[repo] = {}
        return _json({"url": url, "name": repo, "id": hashlib.md5(repo.encode()).hexdigest()[:24]})

    def _validate_yaml(self, req: Request) -> Response:
        return _json({"errors": [], "warnings": []})

    def _preupload(self, req: Request) -> Response:
        found = self._files(req.args["repo"], req.args["rev"])
        if isinstance(found, Response):
            return found
        _, files = found
        answer = []
        for item in json.loads(req.body)["files"]:
            path, size = item["path"], item["size"]
            lfs = self._wants_lfs(path, size, base64.b64decode(item["sample"]))
            remote = files.get(path)
            # The client skips a file whose local oid equals this one: sha256 for LFS, git oid otherwise.
            remote_oid = None if remote is None else (remote.etag if remote.lfs else remote.oid)
            answer.append({"path": path, "uploadMode": "lfs" if lfs else "regular",
                           "shouldIgnore": False, "oid": remote_oid})
        return _json({"files": answer, "commitOid": self._head[req.args["repo"]]})

    def _lfs_batch(self, req: Request) -> Response:
        repo = req.args["repo"]
        if repo not in self._snapshots:
            return _error(404, f"Repository {repo} not found", "RepoNotFound")
        payload = json.loads(req.body)
        if payload.get("operation") != "upload" or "basic" not in payload.get("transfers", ["basic"]):
            return _error(422, "this stand-in only serves LFS uploads with the 'basic' transfer")
        objects = []
        for obj in payload["objects"]:
            oid, size = obj["oid"], obj["size"]
            if oid in self._lfs:  # already stored: no actions, the client skips the upload
                objects.append({"oid": oid, "size": size})
                continue
            ticket = secrets.token_urlsafe(16)
            self._tickets[ticket] = (oid, size)
            objects.append({"oid": oid, "size": size, "authenticated": True, "actions": {
                "upload": {"href": f"{self.url}/lfs-upload/{ticket}"},
                "verify": {"href": f"{self.url}/{repo}.git/info/lfs/objects/verify"},
            }})
        body = json.dumps({"transfer": "basic", "objects": objects}).encode()
        return Response(200, body, {"Content-Type": "application/vnd.git-lfs+json"})

    def _lfs_put(self, req: Request) -> Response:
        ticket = self._tickets.pop(req.args["ticket"], None)
        if ticket is None:
            return _error(403, "unknown or used upload ticket")
        oid, size = ticket
        if len(req.body) != size or hashlib.sha256(req.body).hexdigest() != oid:
            return _error(400, f"uploaded bytes do not match oid {oid} / size {size}")
        self._uploaded[oid] = req.body
        return Response(200, b"", {"ETag": f'"{hashlib.md5(req.body).hexdigest()}"'})

    def _lfs_verify(self, req: Request) -> Response:
        obj = json.loads(req.body)
        content = self._uploaded.get(obj["oid"])
        if content is None or len(content) != obj["size"]:
            return _error(404, f"LFS object {obj['oid']} was not uploaded")
        self._lfs[obj["oid"]] = content
        return _json({"success": True})

    def _commit(self, req: Request) -> Response:
        repo, rev = req.args["repo"], req.args["rev"]
        if rev != "main":
            return _error(400, "this stand-in Hub only commits to branch 'main'")
        if req.params.get("create_pr"):
            return _error(400, "this stand-in Hub does not do pull requests")
        found = self._files(repo, rev)
        if isinstance(found, Response):
            return found
        parent, files = found
        files = dict(files)
        lines = [json.loads(line) for line in req.body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            return _error(400, "commit payload must start with a header line")
        header = lines[0]["value"]
        if header.get("parentCommit") not in (None, parent):
            return _error(412, f"parentCommit {header['parentCommit']} is not the head of main ({parent})")
        kinds: dict[str, str] = {}
        for line in lines[1:]:
            key, value = line["key"], line["value"]
            path = value["path"]
            if key == "file":
                if value.get("encoding") != "base64":
                    return _error(400, f"{path}: only base64 file content is supported")
                files[path] = _Blob(base64.b64decode(value["content"]), lfs=False)
                kinds[path] = "regular"
            elif key == "lfsFile":
                content = self._lfs.get(value["oid"])
                if content is None or ("size" in value and len(content) != value["size"]):
                    return _error(400, f"{path}: LFS object {value['oid']} was never uploaded and verified")
                files[path] = _Blob(content, lfs=True)
                kinds[path] = "lfs"
            elif key == "deletedFile":
                if files.pop(path, None) is None:
                    return _error(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                kinds[path] = "deleted"
            elif key == "deletedFolder":
                prefix = path.rstrip("/") + "/"
                for gone in [p for p in files if p.startswith(prefix)]:
                    del files[gone]
                    kinds[gone] = "deleted"
            else:
                return _error(400, f"unknown commit operation {key!r}")
        summary = header.get("summary", "")
        digest = hashlib.sha1(parent.encode() + summary.encode())
        for path in sorted(files):
            digest.update(f"\n{path} {files[path].oid}".encode())
        sha = digest.hexdigest()
        self._snapshots[repo][sha] = files
        self._head[repo] = sha
        self.repos[repo] = {path: blob.content for path, blob in files.items()}
        self.commits.append({"repo_id": repo, "oid": sha, "message": summary,
                             "description": header.get("description", ""), "files": kinds})
        return _json({"success": True, "commitOid": sha, "commitUrl": f"{self.url}/{repo}/commit/{sha}",
                      "pullRequestUrl": None})

    def _model_info(self, req: Request) -> Response:
        repo = req.args["repo"]
        found = self._files(repo, req.args.get("rev", "main"))
        if isinstance(found, Response):
            return found
        sha, files = found
        blobs = req.params.get("blobs", "").lower() in ("1", "true")  # model_info(files_metadata=True)
        siblings = []
        for path in sorted(files):
            sibling = {"rfilename": path}
            if blobs:
                blob = files[path]
                sibling.update(size=len(blob.content), blobId=blob.oid)
                if blob.lfs:
                    sibling["lfs"] = {"sha256": blob.etag, "size": len(blob.content),
                                      "pointerSize": len(_lfs_pointer(blob.content))}
            siblings.append(sibling)
        return _json({"_id": hashlib.md5(repo.encode()).hexdigest()[:24], "id": repo, "modelId": repo,
                      "author": repo.split("/")[0], "sha": sha, "private": self.private[repo],
                      "disabled": False, "gated": False, "downloads": 0, "likes": 0, "tags": [],
                      "createdAt": self._created[repo], "lastModified": _now(), "siblings": siblings})

    def _tree(self, req: Request) -> Response:
        found = self._files(req.args["repo"], req.args["rev"])
        if isinstance(found, Response):
            return found
        _, files = found
        base = req.args.get("path", "").strip("/")
        prefix = base + "/" if base else ""
        recursive = req.params.get("recursive", "").lower() in ("1", "true")
        entries: dict[str, dict] = {}
        for path, blob in files.items():
            if not path.startswith(prefix):
                continue
            parts = path[len(prefix):].split("/")
            # Folders on the way to the file; a non-recursive listing stops at the first level.
            for depth in range(1, len(parts)):
                folder = prefix + "/".join(parts[:depth])
                entries[folder] = {"type": "directory", "path": folder, "size": 0,
                                   "oid": hashlib.sha1(folder.encode()).hexdigest()}
                if not recursive:
                    break
            if recursive or len(parts) == 1:
                entry = {"type": "file", "path": path, "size": len(blob.content), "oid": blob.oid}
                if blob.lfs:
                    entry["lfs"] = {"oid": blob.etag, "size": len(blob.content),
                                    "pointerSize": len(_lfs_pointer(blob.content))}
                entries[path] = entry
        if base and not entries:
            return _error(404, f"{base} does not exist on {req.args['rev']}", "EntryNotFound")
        return _json([entries[key] for key in sorted(entries)])

    def _resolve(self, req: Request) -> Response:
        found = self._files(req.args["repo"], req.args["rev"])
        if isinstance(found, Response):
            return found
        sha, files = found
        blob = files.get(req.args["path"])
        if blob is None:
            # X-Repo-Commit lets the client cache the file's absence for this commit.
            return _error(404, f"Entry not found: {req.args['path']}", "EntryNotFound", **{"X-Repo-Commit": sha})
        content, status = blob.content, 200
        headers = {"ETag": f'"{blob.etag}"', "X-Repo-Commit": sha, "Accept-Ranges": "bytes",
                   "Content-Type": "application/octet-stream"}
        ranged = re.fullmatch(r"bytes=(\d+)-(\d*)", req.headers.get("range", ""))
        if ranged:  # a resumed download asks for the tail of the file
            start = int(ranged[1])
            end = int(ranged[2]) if ranged[2] else len(content) - 1
            headers["Content-Range"] = f"bytes {start}-{end}/{len(content)}"
            content, status = content[start:end + 1], 206
        headers["Content-Length"] = str(len(content))
        return Response(status, b"" if req.method == "HEAD" else content, headers)


class _Handler(BaseHTTPRequestHandler):
    hub: StandinHub  # set on the per-server subclass made in StandinHub.__enter__

    def _serve(self) -> None:
        body = self._read_body()
        headers = {key.lower(): value for key, value in self.headers.items()}
        response = self.hub.handle(self.command, self.path, headers, body)
        self.send_response(response.status)
        for key, value in response.headers.items():
            self.send_header(key, value)
        if "Content-Length" not in response.headers:
            self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = _serve

    def _read_body(self) -> bytes:
        # httpx streams file uploads with chunked encoding when it cannot tell their length.
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while (size := int(self.rfile.readline().split(b";")[0], 16)) > 0:
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                pass
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def log_message(self, format, *args) -> None:  # keep test output quiet; `hub.requests` has the log
        pass


@contextmanager
def online(endpoint: str | None = None, token: str | None = None) -> Iterator[None]:
    """Let huggingface_hub make requests for the duration, without Xet; restores everything after.

    Env vars are set for subprocesses; the `huggingface_hub.constants` read from them at import are
    patched for this process (see the module docstring). With `endpoint`, calls that leave out
    `endpoint=` also land there instead of huggingface.co; with `token`, HF_TOKEN is set to it.
    """
    from huggingface_hub import constants

    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("HF_HUB_OFFLINE", raising=False)
        mp.delenv("TRANSFORMERS_OFFLINE", raising=False)
        mp.setattr(constants, "HF_HUB_OFFLINE", False)
        mp.setenv("HF_HUB_DISABLE_XET", "1")
        mp.setattr(constants, "HF_HUB_DISABLE_XET", True)
        # With telemetry on, building the user agent fetches {ENDPOINT}/api/agent-harnesses once.
        mp.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
        mp.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
        if endpoint is not None:
            mp.setenv("HF_ENDPOINT", endpoint)
            mp.setattr(constants, "ENDPOINT", endpoint)
            # hf_hub_url builds from this template, made from ENDPOINT at import: keep both in step.
            mp.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
        if token is not None:
            mp.setenv("HF_TOKEN", token)
        yield

