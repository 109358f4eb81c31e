"""A Hugging Face Hub-compatible HTTP server for the test suite (stdlib only).

Why: hubkit's tests must drive the *real* ``huggingface_hub`` client over HTTP, so that the exact requests
hubkit causes (preupload, LFS batch/upload/verify, NDJSON commit, resolve with ETag/Range, tree listings, ...)
are exercised. Mocking the client would hide the protocol bugs we care about.

What it implements (verified against huggingface_hub 2.4 with ``HF_HUB_DISABLE_XET=1``):

* ``/api/whoami-v2``, ``/api/repos/{create,delete,move}``, ``/api/validate-yaml``, ``/api/agent-harnesses``
* ``/api/{models,datasets,spaces}/{ns}/{name}`` (+ ``/revision/{rev}``), ``preupload``, ``commit``, ``tag``,
  ``branch``, ``refs``, ``commits``, ``tree``, ``paths-info``, ``settings``, ``auth-check``
* git-LFS batch API (basic transfer only) with upload/verify hrefs served by this server
* ``HEAD``/``GET`` ``/[datasets/]{ns}/{name}/resolve/{rev}/{path}`` with ``X-Repo-Commit``, ETags, Range

State: repository metadata lives in memory behind one lock; file contents are content-addressed on disk under
``root_dir`` (regular files by git blob sha1, LFS objects by sha256). Request bodies are streamed to disk in
1 MiB chunks, never read whole into memory (a benchmark pushes a 2 GB folder through this server).

Test hooks: :meth:`HubServer.fail_next`, :meth:`HubServer.drop_next`, :meth:`HubServer.delay_next`,
:meth:`HubServer.before_next`, the request log :attr:`HubServer.requests`, and server-side views/mutations
(:meth:`HubServer.read_file`, :meth:`HubServer.server_commit`, ...) that bypass HTTP on purpose.
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
import socket
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, BinaryIO
from urllib.parse import parse_qs, quote, unquote, urlsplit

import yaml

CHUNK_SIZE = 1024 * 1024
DEFAULT_LFS_THRESHOLD = 10 * 1024 * 1024  # the Hub stores files of 10 MB or more with LFS
DEFAULT_TOKEN = "hf_test_token_hubkit"
DEFAULT_BAD_TOKEN = "hf_bad_token"
DEFAULT_USER = "tester"
MAX_JSON_BODY = 64 * 1024 * 1024
REPO_TYPES = ("model", "dataset", "space")
URL_PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/"}
SPECIAL_REF_KINDS = ("pr", "convert", "heads", "tags")
# Paths the client fetches for its own bookkeeping: never logged, never faulted (they would make
# "the next request" ambiguous in fault-injection tests).
EXEMPT_PATHS = frozenset({"/api/agent-harnesses"})

# Same spirit as the Hub's default .gitattributes: these patterns are uploaded with LFS.
DEFAULT_GITATTRIBUTES = "".join(
    f"{pattern} filter=lfs diff=lfs merge=lfs -text\n"
    for pattern in (
        "*.7z *.arrow *.bin *.bz2 *.ckpt *.ftz *.gguf *.gz *.h5 *.joblib *.lfs.* *.mlmodel *.model *.msgpack "
        "*.npy *.npz *.onnx *.ot *.parquet *.pb *.pickle *.pkl *.pt *.pth *.rar *.safetensors saved_model/**/* "
        "*.tar.* *.tar *.tflite *.tgz *.wasm *.xz *.zip *.zst *tfevents* *.png *.jpg *.jpeg *.wav *.mp3 *.mp4"
    ).split()
)

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_API_REPO_RE = re.compile(r"^/api/(models|datasets|spaces)/([^/]+)/([^/]+)(?:/(.*))?$")
_LFS_BATCH_RE = re.compile(r"^/(?:(datasets|spaces)/)?([^/]+)/([^/]+?)\.git/info/lfs/objects/batch$")
_LFS_UPLOAD_RE = re.compile(r"^/_lfs/upload/([0-9a-f]{32})$")
_LFS_VERIFY_RE = re.compile(r"^/_lfs/verify/([0-9a-f]{32})$")
_RESOLVE_RE = re.compile(r"^/(?:(datasets|spaces)/)?([^/]+)/([^/]+)/resolve/(.+)$")
_RANGE_RE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$")
_FRONT_MATTER_RE = re.compile(r"\A---[ \t]*\r?\n(.*?)\r?\n---[ \t]*(?:\r?\n|\Z)", re.DOTALL)
_HEX40_RE = re.compile(r"^[0-9a-f]{40}$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(dt: datetime) -> str:
    """The Hub's date format (the client parses exactly ``%Y-%m-%dT%H:%M:%S.%fZ``)."""
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def git_blob_sha1(data: bytes) -> str:
    """``git hash-object`` of ``data``: the ETag/oid the Hub reports for regular files."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The git-LFS pointer file; its git sha1 is the ``oid`` the Hub reports for LFS files."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def parse_front_matter(text: str) -> dict[str, Any] | None:
    """YAML front matter of a README (``cardData`` on the Hub); raises ``yaml.YAMLError`` if malformed."""
    match = _FRONT_MATTER_RE.match(text)
    if match is None:
        return None
    data = yaml.safe_load(match.group(1))
    return data if isinstance(data, dict) else None


class HubHTTPError(Exception):
    """An error answer: status, message (JSON ``error`` + ``X-Error-Message``) and Hub ``X-Error-Code``."""

    def __init__(
        self, status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = dict(headers or {})
        self.body: dict[str, Any] = {"error": message}


class _Drop(Exception):
    """Raised to close the connection without (the rest of) a response."""


# --------------------------------------------------------------------------------------------------------------
# Repository model
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Blob:
    """A file in a tree. ``oid`` is the git sha1 (of the content, or of the LFS pointer when ``sha256`` is set)."""

    size: int
    oid: str
    sha256: str | None = None

    @property
    def is_lfs(self) -> bool:
        return self.sha256 is not None

    @property
    def pointer_size(self) -> int:
        assert self.sha256 is not None
        return len(lfs_pointer(self.sha256, self.size))


@dataclass
class Commit:
    """An immutable commit: a full flat tree (path -> Blob) plus metadata."""

    id: str
    parents: tuple[str, ...]
    files: dict[str, Blob]
    title: str
    message: str
    author: str
    date: datetime
    _dir_oids: dict[str, str] | None = field(default=None, repr=False)

    def dir_oids(self) -> dict[str, str]:
        """Deterministic pseudo tree-sha1 for every directory (computed once; commits never change)."""
        if self._dir_oids is None:
            hashers: dict[str, Any] = {}
            for path in sorted(self.files):
                parts = path.split("/")
                for depth in range(1, len(parts)):
                    hashers.setdefault("/".join(parts[:depth]), hashlib.sha1()).update(
                        f"{path}\0{self.files[path].oid}\n".encode()
                    )
            self._dir_oids = {d: h.hexdigest() for d, h in hashers.items()}
        return self._dir_oids


@dataclass
class Repo:
    """One repository: refs (full ref name -> commit id), all its commits, and the LFS oids it holds."""

    type: str
    id: str
    private: bool
    created_at: datetime
    refs: dict[str, str] = field(default_factory=dict)
    commits: dict[str, Commit] = field(default_factory=dict)
    lfs_oids: set[str] = field(default_factory=set)
    next_pr: int = 1
    gated: Any = False

    @property
    def namespace(self) -> str:
        return self.id.split("/", 1)[0]


@dataclass(frozen=True)
class User:
    """A token owner. ``orgs=None`` means "member of every namespace" (the default test user)."""

    name: str
    orgs: tuple[str, ...] | None = None

    def can_write(self, namespace: str) -> bool:
        return self.orgs is None or namespace == self.name or namespace in self.orgs


@dataclass(eq=False)
class RequestRecord:
    """One logged request, appended when it arrives and updated while it is handled.

    Unpacks as ``(method, path, bytes_received)``. ``path`` is URL-unquoted without the query string;
    ``bytes_received`` counts request-body bytes read so far; ``status`` is 0 while in flight and for a dropped
    connection (``dropped`` is then True); ``headers`` has lower-cased keys.
    """

    method: str
    path: str
    bytes_received: int = 0
    status: int = 0
    query: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    dropped: bool = False

    def __iter__(self) -> Iterator[Any]:
        return iter((self.method, self.path, self.bytes_received))

    def __repr__(self) -> str:
        state = "dropped" if self.dropped else self.status
        return f"RequestRecord({self.method} {self.path} received={self.bytes_received} status={state})"


@dataclass
class _Fault:
    kind: str  # "fail" | "drop" | "delay" | "hook"
    remaining: int
    match: str | re.Pattern[str] | None
    method: str | None
    status: int = 500
    message: str = "Injected failure"
    error_code: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    phase: str = "request"
    after_bytes: int = 0
    seconds: float = 0.0
    action: Callable[[], Any] | None = None

    def matches(self, method: str, path: str) -> bool:
        if self.method is not None and self.method.upper() != method:
            return False
        if self.match is None:
            return True
        if isinstance(self.match, re.Pattern):
            return self.match.search(path) is not None
        return self.match in path


# --------------------------------------------------------------------------------------------------------------
# HTTP plumbing
# --------------------------------------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    """Keep-alive HTTP/1.1 handler; all logic lives in :class:`HubServer`."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # small header+body writes would otherwise stall on delayed ACKs
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 (stdlib naming)
        self.server.hub._handle(self)

    do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_GET

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib signature)
        """Silence the default stderr access log: use ``HubServer.requests`` instead."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # keep-alive connections would otherwise block stop()
    request_queue_size = 128
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], hub: HubServer):
        super().__init__(address, _Handler)
        self.hub = hub

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Connections reset by the client (or dropped on purpose) are expected; stay quiet."""


class _Exchange:
    """One request/response: streaming body readers and response writers that track bytes and faults."""

    def __init__(self, handler: _Handler):
        self.h = handler
        self.method = handler.command
        split = urlsplit(handler.path)
        self.raw_path = split.path
        self.path = unquote(split.path)
        self.query_string = split.query
        self.query = parse_qs(split.query, keep_blank_values=True)
        headers = {k.lower(): v for k, v in handler.headers.items()}
        self.record = RequestRecord(self.method, self.path, 0, 0, split.query, headers)
        self.responded = False
        self.drop_after: int | None = None  # set by a response-phase drop fault
        te = handler.headers.get("Transfer-Encoding", "").lower()
        self._chunked = "chunked" in te
        length = handler.headers.get("Content-Length")
        self._remaining: int | None = int(length) if length is not None and not self._chunked else 0
        self._chunk_left = 0
        self._body_done = not self._chunked and self._remaining == 0

    # -- request -----------------------------------------------------------------------------------------------
    def header(self, name: str) -> str | None:
        return self.h.headers.get(name)

    def param(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name) or self.query.get(f"{name}[]")
        return values[0] if values else default

    def flag(self, name: str) -> bool:
        return (self.param(name) or "").lower() in ("1", "true", "yes")

    def iter_body(self, limit: int | None = None) -> Iterator[bytes]:
        """Yield the request body in chunks of at most 1 MiB (Content-Length or chunked encoding)."""
        rfile = self.h.rfile
        while not self._body_done:
            if self._chunked:
                if self._chunk_left == 0:
                    size_line = rfile.readline(65537)
                    if not size_line:
                        raise ConnectionError("client closed during chunked body")
                    self._chunk_left = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                    if self._chunk_left == 0:
                        while rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                            pass  # trailers
                        self._body_done = True
                        return
                want = min(self._chunk_left, CHUNK_SIZE)
            else:
                assert self._remaining is not None
                want = min(self._remaining, CHUNK_SIZE)
            if limit is not None:
                want = min(want, limit)
                if want <= 0:
                    return
            data = rfile.read(want)
            if not data:
                raise ConnectionError("client closed during body")
            self.record.bytes_received += len(data)
            if limit is not None:
                limit -= len(data)
            if self._chunked:
                self._chunk_left -= len(data)
                if self._chunk_left == 0:
                    rfile.readline(3)  # CRLF after each chunk
            else:
                assert self._remaining is not None
                self._remaining -= len(data)
                self._body_done = self._remaining == 0
            yield data

    def read_body(self, max_size: int = MAX_JSON_BODY) -> bytes:
        parts, total = [], 0
        for chunk in self.iter_body():
            total += len(chunk)
            if total > max_size:
                raise HubHTTPError(413, f"Request body too large (> {max_size} bytes)")
            parts.append(chunk)
        return b"".join(parts)

    def json_body(self) -> Any:
        raw = self.read_body()
        if not raw:
            return {}
        try:
            return json.loads(raw)
        except ValueError as err:
            raise HubHTTPError(400, f"Invalid JSON body: {err}") from err

    def form_or_json(self) -> dict[str, list[str] | Any]:
        """``paths-info`` sends a urlencoded form (``paths=a&paths=b``); accept JSON as well."""
        ctype = (self.header("Content-Type") or "").lower()
        raw = self.read_body()
        if "json" in ctype:
            try:
                return json.loads(raw or b"{}")
            except ValueError as err:
                raise HubHTTPError(400, f"Invalid JSON body: {err}") from err
        return {k: v for k, v in parse_qs(raw.decode(), keep_blank_values=True).items()}

    def drain(self) -> None:
        for _ in self.iter_body():
            pass

    # -- response ----------------------------------------------------------------------------------------------
    def _start(self, status: int, headers: dict[str, str], length: int) -> None:
        self.record.status = status
        self.responded = True
        h = self.h
        h.send_response(status)
        for key, value in headers.items():
            h.send_header(key, value)
        h.send_header("Content-Length", str(length))
        h.send_header("X-Request-Id", h.headers.get("X-Amzn-Trace-Id") or secrets.token_hex(8))
        if not self._body_done:
            h.send_header("Connection", "close")  # unread body: this connection can't be reused
            h.close_connection = True
        h.end_headers()

    def _write(self, data: bytes, already_sent: int) -> None:
        if self.drop_after is not None and already_sent + len(data) >= self.drop_after:
            cut = max(0, self.drop_after - already_sent)
            if cut:
                self.h.wfile.write(data[:cut])
            raise _Drop()
        self.h.wfile.write(data)

    def send_bytes(
        self,
        status: int,
        body: bytes,
        headers: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> None:
        hdrs = {"Content-Type": content_type, **(headers or {})}
        self._start(status, hdrs, len(body))
        if self.method != "HEAD" and body:
            self._write(body, 0)
        elif self.drop_after is not None:
            raise _Drop()

    def send_json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        self.send_bytes(status, json.dumps(obj).encode(), headers)

    def send_error(self, err: HubHTTPError) -> None:
        headers = dict(err.headers)
        one_line = " ".join(err.message.split())  # a newline here would corrupt the response headers
        headers["X-Error-Message"] = one_line.encode("latin-1", "replace").decode("latin-1")[:1000]
        if err.code:
            headers["X-Error-Code"] = err.code
        self.send_bytes(err.status, json.dumps(err.body).encode(), headers)

    def send_file(self, path: str, start: int, length: int, status: int, headers: dict[str, str]) -> None:
        self._start(status, {"Content-Type": "application/octet-stream", **headers}, length)
        if self.method == "HEAD":
            if self.drop_after is not None:
                raise _Drop()
            return
        sent = 0
        with open(path, "rb") as fh:
            fh.seek(start)
            while sent < length:
                data = fh.read(min(CHUNK_SIZE, length - sent))
                if not data:
                    raise ConnectionError(f"blob {path} is shorter than expected")
                self._write(data, sent)
                sent += len(data)

    def abort(self) -> None:
        """Close the socket without finishing the response (dropped-connection fault); logged as status 0."""
        self.record.status = 0
        self.record.dropped = True
        self.h.close_connection = True
        try:
            self.h.wfile.flush()
        except OSError:
            pass
        try:
            self.h.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


# --------------------------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------------------------


@dataclass
class _UploadTicket:
    repo_key: tuple[str, str]
    oid: str
    size: int


class HubServer:
    """In-process, thread-safe fake of the Hugging Face Hub for the real ``huggingface_hub`` client.

    Usage::

        hub = HubServer(tmp_dir)
        endpoint = hub.start()  # "http://127.0.0.1:<port>"; set HF_ENDPOINT *before* importing huggingface_hub
        ...
        hub.stop()

    Auth: any bearer token starting with ``hf_`` is valid (user :data:`DEFAULT_USER`, allowed to write in every
    namespace) unless it is in :attr:`bad_tokens`; :meth:`add_user` registers restricted users.
    LFS: a file is LFS if it matches the repo's ``.gitattributes`` LFS patterns, is binary (NUL byte in the
    sample), or is at least :attr:`lfs_threshold` bytes — like the Hub.
    """

    def __init__(self, root_dir: str | os.PathLike[str], host: str = "127.0.0.1", port: int = 0):
        self.root_dir = os.fspath(root_dir)
        self._host, self._port = host, port
        self._lock = threading.RLock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.endpoint = ""
        self.token = DEFAULT_TOKEN
        self._repos: dict[tuple[str, str], Repo] = {}
        self._users: dict[str, User] = {}
        self._tickets: dict[str, _UploadTicket] = {}
        self._faults: list[_Fault] = []
        self._counter = itertools.count(1)
        self.requests: list[RequestRecord] = []
        self.unhandled: list[
            RequestRecord
        ] = []  # requests no route matched: a missing feature of this server
        self.server_errors: list[str] = []  # tracebacks of bugs in this server (answered 500)
        self.lfs_threshold = DEFAULT_LFS_THRESHOLD
        self.bad_tokens: set[str] = {DEFAULT_BAD_TOKEN}
        self.default_user = User(DEFAULT_USER)
        for sub in ("lfs", "git", "tmp"):
            os.makedirs(os.path.join(self.root_dir, sub), exist_ok=True)

    # ---------------------------------------------------------------------------------------------------------
    # lifecycle
    # ---------------------------------------------------------------------------------------------------------
    def start(self) -> str:
        """Bind (port 0 = any free port), serve in a daemon thread, return the endpoint URL."""
        if self._server is not None:
            return self.endpoint
        self._server = _Server((self._host, self._port), self)
        port = self._server.server_address[1]
        self.endpoint = f"http://{self._host}:{port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="hubserver", daemon=True)
        self._thread.start()
        return self.endpoint

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> HubServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def reset(self) -> None:
        """Clear faults, request logs and per-test settings; repositories and blobs are kept."""
        with self._lock:
            self._faults.clear()
            self.requests.clear()
            self.unhandled.clear()
            self.server_errors.clear()
            self.lfs_threshold = DEFAULT_LFS_THRESHOLD
            self.bad_tokens = {DEFAULT_BAD_TOKEN}
            self._users.clear()

    # ---------------------------------------------------------------------------------------------------------
    # fault injection
    # ---------------------------------------------------------------------------------------------------------
    def fail_next(
        self,
        n: int = 1,
        status: int = 500,
        match: str | re.Pattern[str] | None = None,
        *,
        method: str | None = None,
        message: str = "Injected failure",
        error_code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Answer the next ``n`` matching requests with ``status`` (the request body is read first).

        ``match`` is a substring of (or a regex searched in) the unquoted URL path, e.g. ``"/commit/"``,
        ``"/preupload/"``, ``"/_lfs/upload/"``, ``"/resolve/"``; ``None`` matches any request.
        """
        self._add_fault(
            _Fault(
                "fail",
                n,
                match,
                method,
                status=status,
                message=message,
                error_code=error_code,
                headers=dict(headers or {}),
            )
        )

    def drop_next(
        self,
        n: int = 1,
        match: str | re.Pattern[str] | None = None,
        *,
        method: str | None = None,
        phase: str = "request",
        after_bytes: int = 0,
    ) -> None:
        """Close the connection without a (complete) response on the next ``n`` matching requests.

        ``phase="request"``: drop after reading ``after_bytes`` bytes of the request body (mid-upload).
        ``phase="response"``: handle the request, send the headers and ``after_bytes`` bytes of the response
        body, then drop (mid-download: the client then resumes with a ``Range`` request).
        """
        if phase not in ("request", "response"):
            raise ValueError("phase must be 'request' or 'response'")
        self._add_fault(_Fault("drop", n, match, method, phase=phase, after_bytes=after_bytes))

    def delay_next(
        self,
        seconds: float,
        n: int = 1,
        match: str | re.Pattern[str] | None = None,
        *,
        method: str | None = None,
    ) -> None:
        """Sleep ``seconds`` before handling the next ``n`` matching requests (client timeouts)."""
        self._add_fault(_Fault("delay", n, match, method, seconds=seconds))

    def before_next(
        self,
        action: Callable[[], Any],
        match: str | re.Pattern[str] | None = None,
        *,
        n: int = 1,
        method: str | None = None,
    ) -> None:
        """Run ``action()`` just before handling the next matching request, e.g. a concurrent
        :meth:`server_commit` right before the client's ``/commit/`` to provoke a real 412."""
        self._add_fault(_Fault("hook", n, match, method, action=action))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def pending_faults(self) -> int:
        """How many injected faults have not been triggered yet."""
        with self._lock:
            return sum(f.remaining for f in self._faults)

    def _add_fault(self, fault: _Fault) -> None:
        if fault.remaining < 1:
            raise ValueError("n must be >= 1")
        with self._lock:
            self._faults.append(fault)

    def _take_fault(self, method: str, path: str) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.matches(method, path):
                    fault.remaining -= 1
                    if fault.remaining == 0:
                        self._faults.remove(fault)
                    return fault
        return None

    # ---------------------------------------------------------------------------------------------------------
    # users and request-log helpers
    # ---------------------------------------------------------------------------------------------------------
    def add_user(self, token: str, name: str, orgs: Iterable[str] = ()) -> None:
        """Register a restricted user (may only write to its own namespace and ``orgs``)."""
        with self._lock:
            self._users[token] = User(name, tuple(orgs))

    def requests_matching(
        self, match: str | re.Pattern[str], method: str | None = None
    ) -> list[RequestRecord]:
        probe = _Fault("probe", 1, match, method)
        with self._lock:
            return [r for r in self.requests if probe.matches(r.method, r.path)]

    def lfs_upload_bytes(self) -> int:
        """Total request-body bytes received by LFS upload PUTs since the last :meth:`reset`."""
        return sum(r.bytes_received for r in self.requests_matching("/_lfs/upload/", method="PUT"))

    def clear_log(self) -> None:
        with self._lock:
            self.requests.clear()

    # ---------------------------------------------------------------------------------------------------------
    # server-side views and mutations (no HTTP: for assertions and for simulating other writers)
    # ---------------------------------------------------------------------------------------------------------
    def repo_exists(self, repo_id: str, repo_type: str = "model") -> bool:
        with self._lock:
            return (repo_type, repo_id) in self._repos

    def head(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> str:
        """Commit id that ``revision`` (branch, tag, ``refs/pr/N`` or sha) points to."""
        with self._lock:
            repo = self._repo_or_404(repo_type, repo_id)
            return self._resolve(repo, revision).id

    def list_files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> list[str]:
        with self._lock:
            repo = self._repo_or_404(repo_type, repo_id)
            return sorted(self._resolve(repo, revision).files)

    def read_file(self, repo_id: str, path: str, revision: str = "main", repo_type: str = "model") -> bytes:
        """Content of ``path`` at ``revision`` (whole file in memory: meant for small test files)."""
        with self._lock:
            repo = self._repo_or_404(repo_type, repo_id)
            blob = self._resolve(repo, revision).files.get(path)
        if blob is None:
            raise KeyError(path)
        with open(self._blob_path(blob), "rb") as fh:
            return fh.read()

    def server_commit(
        self,
        repo_id: str,
        add: dict[str, bytes] | None = None,
        delete: Iterable[str] = (),
        *,
        repo_type: str = "model",
        branch: str = "main",
        message: str = "server-side commit",
        create: bool = False,
    ) -> str:
        """Commit directly on the server, as another writer would; returns the new commit id.

        Added contents are stored as LFS or regular following the same rules as ``preupload``.
        """
        with self._lock:
            if create and (repo_type, repo_id) not in self._repos:
                self._create_repo(repo_type, repo_id, private=False)
            repo = self._repo_or_404(repo_type, repo_id)
        ops: list[tuple[str, str, Blob | None]] = []
        for path, content in (add or {}).items():
            if self._is_lfs_candidate(repo, "refs/heads/" + branch, path, len(content), content[:512]):
                sha = hashlib.sha256(content).hexdigest()
                self._store_bytes(content, self._lfs_path(sha))
                with self._lock:
                    repo.lfs_oids.add(sha)
                blob = Blob(len(content), git_blob_sha1(lfs_pointer(sha, len(content))), sha)
            else:
                blob = self._store_regular(content)
            ops.append(("add", path, blob))
        ops.extend(("delete", path, None) for path in delete)
        with self._lock:
            commit = self._apply_commit(repo, "refs/heads/" + branch, ops, message, "", None, DEFAULT_USER)
        return commit.id

    # ---------------------------------------------------------------------------------------------------------
    # storage
    # ---------------------------------------------------------------------------------------------------------
    def _lfs_path(self, sha256: str) -> str:
        return os.path.join(self.root_dir, "lfs", sha256[:2], sha256)

    def _git_path(self, sha1: str) -> str:
        return os.path.join(self.root_dir, "git", sha1[:2], sha1)

    def _blob_path(self, blob: Blob) -> str:
        return self._lfs_path(blob.sha256) if blob.sha256 else self._git_path(blob.oid)

    def _tmp_file(self) -> tuple[BinaryIO, str]:
        fd, path = tempfile.mkstemp(dir=os.path.join(self.root_dir, "tmp"))
        return os.fdopen(fd, "w+b"), path

    def _store_bytes(self, data: bytes, dest: str) -> None:
        if os.path.exists(dest):
            return
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        fh, tmp = self._tmp_file()
        with fh:
            fh.write(data)
        os.replace(tmp, dest)

    def _store_regular(self, data: bytes) -> Blob:
        oid = git_blob_sha1(data)
        self._store_bytes(data, self._git_path(oid))
        return Blob(len(data), oid)

    # ---------------------------------------------------------------------------------------------------------
    # request entry point
    # ---------------------------------------------------------------------------------------------------------
    def _handle(self, handler: _Handler) -> None:
        ex = _Exchange(handler)
        exempt = ex.path in EXEMPT_PATHS
        if not exempt:
            with self._lock:
                self.requests.append(ex.record)  # at arrival: the log is in causal order
        try:
            try:
                fault = None if exempt else self._take_fault(ex.method, ex.path)
                if fault is not None:
                    self._apply_fault(ex, fault)
                if not ex.responded:
                    self._route(ex)
            except HubHTTPError as err:
                if ex.responded:
                    raise _Drop() from err
                try:
                    ex.drain()
                except OSError:
                    ex.h.close_connection = True
                ex.send_error(err)
            except (_Drop, OSError, ConnectionError):
                raise
            except Exception as err:  # a bug in this server: answer 500 and remember it
                self.server_errors.append(traceback.format_exc())
                if ex.responded:
                    raise _Drop() from err
                ex.h.close_connection = True
                ex.send_error(HubHTTPError(500, f"hubserver internal error: {err!r}"))
        except (_Drop, OSError, ConnectionError):
            ex.abort()
        finally:
            if not ex._body_done:
                ex.h.close_connection = True

    def _apply_fault(self, ex: _Exchange, fault: _Fault) -> None:
        if fault.kind == "delay":
            time.sleep(fault.seconds)
        elif fault.kind == "hook":
            assert fault.action is not None
            fault.action()
        elif fault.kind == "fail":
            ex.drain()
            err = HubHTTPError(fault.status, fault.message, fault.error_code, fault.headers)
            ex.send_error(err)
        elif fault.kind == "drop":
            if fault.phase == "response":
                ex.drop_after = fault.after_bytes
                return
            if fault.after_bytes:
                for _ in ex.iter_body(limit=fault.after_bytes):
                    pass
            raise _Drop()

    def _route(self, ex: _Exchange) -> None:
        p, m = ex.raw_path, ex.method
        if p == "/api/whoami-v2" and m == "GET":
            return self._whoami(ex)
        if p == "/api/agent-harnesses" and m == "GET":
            return ex.send_json(200, {"standardEnvVars": [], "harnesses": {}})
        if p == "/api/repos/create" and m == "POST":
            return self._repos_create(ex)
        if p == "/api/repos/delete" and m in ("DELETE", "POST"):
            return self._repos_delete(ex)
        if p == "/api/repos/move" and m == "POST":
            return self._repos_move(ex)
        if p == "/api/validate-yaml" and m == "POST":
            return self._validate_yaml(ex)
        if match := _API_REPO_RE.match(p):
            repo_type = match.group(1)[:-1]
            repo_id = f"{unquote(match.group(2))}/{unquote(match.group(3))}"
            return self._repo_api(ex, repo_type, repo_id, match.group(4) or "")
        if (match := _LFS_BATCH_RE.match(p)) and m == "POST":
            repo_type = (match.group(1) or "models")[:-1]
            return self._lfs_batch(ex, repo_type, f"{unquote(match.group(2))}/{unquote(match.group(3))}")
        if (match := _LFS_UPLOAD_RE.match(p)) and m == "PUT":
            return self._lfs_upload(ex, match.group(1))
        if (match := _LFS_VERIFY_RE.match(p)) and m == "POST":
            return self._lfs_verify(ex, match.group(1))
        if (match := _RESOLVE_RE.match(p)) and m in ("GET", "HEAD"):
            repo_type = (match.group(1) or "models")[:-1]
            repo_id = f"{unquote(match.group(2))}/{unquote(match.group(3))}"
            return self._resolve_file(ex, repo_type, repo_id, match.group(4))
        with self._lock:
            self.unhandled.append(ex.record)
        raise HubHTTPError(404, f"hubserver: no route for {m} {ex.path}")

    # ---------------------------------------------------------------------------------------------------------
    # auth and lookup helpers
    # ---------------------------------------------------------------------------------------------------------
    def _user(self, ex: _Exchange) -> User | None:
        auth = ex.header("Authorization")
        if not auth:
            return None
        token = auth.split(" ", 1)[1].strip() if " " in auth else auth.strip()
        with self._lock:
            if token in self._users:
                return self._users[token]
            if token.startswith("hf_") and token not in self.bad_tokens:
                return self.default_user
        raise HubHTTPError(401, "Invalid credentials in Authorization header")

    def _require_user(self, ex: _Exchange) -> User:
        user = self._user(ex)
        if user is None:
            raise HubHTTPError(401, "You must be authenticated to perform this action (no token sent).")
        return user

    def _repo_or_404(self, repo_type: str, repo_id: str) -> Repo:
        repo = self._repos.get((repo_type, repo_id))
        if repo is None:
            raise HubHTTPError(404, f"Repository not found: {repo_type} {repo_id}", "RepoNotFound")
        return repo

    def _readable_repo(self, ex: _Exchange, repo_type: str, repo_id: str) -> Repo:
        user = self._user(ex)
        with self._lock:
            repo = self._repos.get((repo_type, repo_id))
        if repo is None or (repo.private and (user is None or not user.can_write(repo.namespace))):
            # The Hub hides private repos: 401 when anonymous, 404 otherwise; both carry RepoNotFound.
            status = 401 if user is None and repo is not None else 404
            raise HubHTTPError(status, f"Repository not found: {repo_type} {repo_id}", "RepoNotFound")
        return repo

    def _writable_repo(self, ex: _Exchange, repo_type: str, repo_id: str) -> tuple[Repo, User]:
        user = self._require_user(ex)
        repo = self._readable_repo(ex, repo_type, repo_id)
        if not user.can_write(repo.namespace):
            raise HubHTTPError(403, f"You don't have the rights to write to {repo_type} {repo_id}")
        return repo, user

    def _resolve(self, repo: Repo, revision: str) -> Commit:
        """Branch, tag, full ref (``refs/heads/x``, ``refs/pr/1``...), full or >=7-char commit sha."""
        for ref in (revision, f"refs/heads/{revision}", f"refs/tags/{revision}"):
            if ref.startswith("refs/") and ref in repo.refs:
                return repo.commits[repo.refs[ref]]
        if revision in repo.commits:
            return repo.commits[revision]
        if len(revision) >= 7 and re.fullmatch(r"[0-9a-f]+", revision):
            found = [c for cid, c in repo.commits.items() if cid.startswith(revision)]
            if len(found) == 1:
                return found[0]
        raise HubHTTPError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def _resolve_ref_name(self, repo: Repo, revision: str) -> str:
        """Full ref name a commit can be pushed to (branches and ``refs/pr/N`` only)."""
        if revision.startswith("refs/pr/") and revision in repo.refs:
            return revision
        ref = revision if revision.startswith("refs/heads/") else f"refs/heads/{revision}"
        if ref in repo.refs:
            return ref
        if f"refs/tags/{revision}" in repo.refs or revision in repo.commits:
            raise HubHTTPError(
                400, f"Invalid rev id: {revision} is not a branch; commits must target a branch"
            )
        raise HubHTTPError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    @staticmethod
    def _split_rev_and_path(rest: str) -> tuple[str, str]:
        """Split ``{rev}/{path}`` where rev is URL-quoted, or an unquoted ``refs/pr/N``-style ref."""
        segments = rest.split("/")
        if len(segments) >= 3 and unquote(segments[0]) == "refs" and segments[1] in SPECIAL_REF_KINDS:
            return "/".join(segments[:3]), unquote("/".join(segments[3:]))
        return unquote(segments[0]), unquote("/".join(segments[1:]))

    def _url(self, repo: Repo) -> str:
        return f"{self.endpoint}/{URL_PREFIXES[repo.type]}{repo.id}"

    # ---------------------------------------------------------------------------------------------------------
    # account and repo lifecycle
    # ---------------------------------------------------------------------------------------------------------
    def _whoami(self, ex: _Exchange) -> None:
        user = self._require_user(ex)
        orgs = user.orgs if user.orgs is not None else ()
        ex.send_json(
            200,
            {
                "type": "user",
                "id": hashlib.sha1(user.name.encode()).hexdigest()[:24],
                "name": user.name,
                "fullname": user.name.title(),
                "email": f"{user.name}@example.test",
                "emailVerified": True,
                "canPay": False,
                "isPro": False,
                "periodEnd": None,
                "avatarUrl": "",
                "orgs": [{"type": "org", "name": org, "fullname": org, "roleInOrg": "write"} for org in orgs],
                "auth": {
                    "type": "access_token",
                    "accessToken": {
                        "displayName": "hubkit-tests",
                        "role": "write",
                        "createdAt": _iso(_now()),
                    },
                },
            },
        )

    def _create_repo(self, repo_type: str, repo_id: str, private: bool) -> Repo:
        repo = Repo(repo_type, repo_id, private, _now())
        self._repos[(repo_type, repo_id)] = repo
        gitattributes = DEFAULT_GITATTRIBUTES.encode()
        blob = self._store_regular(gitattributes)
        self._apply_commit(
            repo,
            "refs/heads/main",
            [("add", ".gitattributes", blob)],
            "initial commit",
            "",
            None,
            DEFAULT_USER,
            create_ref=True,
        )
        return repo

    def _repos_create(self, ex: _Exchange) -> None:
        user = self._require_user(ex)
        body = ex.json_body()
        name = body.get("name") or ""
        repo_type = body.get("type") or "model"
        if repo_type not in REPO_TYPES:
            raise HubHTTPError(400, f"Invalid repo type: {repo_type}")
        namespace = body.get("organization") or user.name
        if not _NAME_RE.match(name) or not _NAME_RE.match(namespace) or name.endswith((".git", ".")):
            raise HubHTTPError(400, f"Invalid repo name: {namespace}/{name}")
        if not user.can_write(namespace):
            raise HubHTTPError(
                403, f"You don't have the rights to create a {repo_type} under the namespace '{namespace}'"
            )
        private = bool(body.get("private")) or body.get("visibility") == "private"
        repo_id = f"{namespace}/{name}"
        with self._lock:
            existing = self._repos.get((repo_type, repo_id))
            if existing is not None:
                err = HubHTTPError(409, f"You already created this {repo_type} repo")
                err.body["url"] = self._url(existing)
                raise err
            repo = self._create_repo(repo_type, repo_id, private)
        ex.send_json(200, {"url": self._url(repo), "name": repo_id, "id": repo_id})

    def _repos_delete(self, ex: _Exchange) -> None:
        body = ex.json_body()
        repo_type = body.get("type") or "model"
        user = self._require_user(ex)
        repo_id = f"{body.get('organization') or user.name}/{body.get('name')}"
        self._writable_repo(ex, repo_type, repo_id)
        with self._lock:
            self._repos.pop((repo_type, repo_id), None)
        ex.send_json(200, {})

    def _repos_move(self, ex: _Exchange) -> None:
        body = ex.json_body()
        repo_type = body.get("type") or "model"
        src, dst = body.get("fromRepo", ""), body.get("toRepo", "")
        repo, user = self._writable_repo(ex, repo_type, src)
        if "/" not in dst or not user.can_write(dst.split("/")[0]):
            raise HubHTTPError(403, f"You don't have the rights to move to {dst}")
        with self._lock:
            if (repo_type, dst) in self._repos:
                raise HubHTTPError(409, f"Repository {dst} already exists")
            del self._repos[(repo_type, src)]
            repo.id = dst
            self._repos[(repo_type, dst)] = repo
        ex.send_json(200, {})

    def _validate_yaml(self, ex: _Exchange) -> None:
        body = ex.json_body()
        try:
            parse_front_matter(body.get("content") or "")
        except yaml.YAMLError as err:
            invalid = HubHTTPError(400, "Invalid YAML in README.md metadata")
            invalid.body["errors"] = [{"message": f"Invalid YAML: {err}"}]
            raise invalid from err
        ex.send_json(200, {"errors": [], "warnings": []})

    # ---------------------------------------------------------------------------------------------------------
    # /api/{type}s/{ns}/{name}/...
    # ---------------------------------------------------------------------------------------------------------
    def _repo_api(self, ex: _Exchange, repo_type: str, repo_id: str, rest: str) -> None:
        action, _, arg = rest.partition("/")
        m = ex.method
        if action == "" and m == "GET":
            return self._repo_info(ex, repo_type, repo_id, "main")
        if action == "revision" and m == "GET":
            return self._repo_info(ex, repo_type, repo_id, unquote(arg))
        if action == "preupload" and m == "POST":
            return self._preupload(ex, repo_type, repo_id, unquote(arg))
        if action == "commit" and m == "POST":
            return self._commit(ex, repo_type, repo_id, unquote(arg))
        if action == "tag" and m in ("POST", "DELETE"):
            return self._tag(ex, repo_type, repo_id, unquote(arg))
        if action == "branch" and m in ("POST", "DELETE"):
            return self._branch(ex, repo_type, repo_id, unquote(arg))
        if action == "refs" and m == "GET":
            return self._refs(ex, repo_type, repo_id)
        if action == "commits" and m == "GET":
            return self._commits(ex, repo_type, repo_id, unquote(arg) or "main")
        if action == "tree" and m == "GET":
            revision, path = self._split_rev_and_path(arg)
            return self._tree(ex, repo_type, repo_id, revision or "main", path.strip("/"))
        if action == "paths-info" and m == "POST":
            return self._paths_info(ex, repo_type, repo_id, unquote(arg) or "main")
        if action == "settings" and m == "PUT":
            return self._settings(ex, repo_type, repo_id)
        if action == "auth-check" and m == "GET":
            if arg == "write":
                self._writable_repo(ex, repo_type, repo_id)
            else:
                self._readable_repo(ex, repo_type, repo_id)
            return ex.send_json(200, {})
        with self._lock:
            self.unhandled.append(ex.record)
        raise HubHTTPError(404, f"hubserver: no route for {m} {ex.path}")

    def _repo_info(self, ex: _Exchange, repo_type: str, repo_id: str, revision: str) -> None:
        repo = self._readable_repo(ex, repo_type, repo_id)
        with self._lock:
            commit = self._resolve(repo, revision)
        blobs = ex.flag("blobs")
        siblings = []
        for path in sorted(commit.files):
            sibling: dict[str, Any] = {"rfilename": path}
            if blobs:
                blob = commit.files[path]
                sibling.update(size=blob.size, blobId=blob.oid)
                if blob.sha256:
                    sibling["lfs"] = {
                        "size": blob.size,
                        "sha256": blob.sha256,
                        "pointerSize": blob.pointer_size,
                    }
            siblings.append(sibling)
        card_data = None
        readme = commit.files.get("README.md")
        if readme is not None and readme.size < 1024 * 1024:
            with open(self._blob_path(readme), "rb") as fh:
                try:
                    card_data = parse_front_matter(fh.read().decode("utf-8", "replace"))
                except yaml.YAMLError:
                    card_data = None
        raw_tags = (card_data or {}).get("tags") or []
        tags = [str(t) for t in (raw_tags if isinstance(raw_tags, list) else [raw_tags])]
        info: dict[str, Any] = {
            "_id": hashlib.sha1(f"{repo.type}/{repo.id}".encode()).hexdigest()[:24],
            "id": repo.id,
            "author": repo.namespace,
            "sha": commit.id,
            "lastModified": _iso(commit.date),
            "createdAt": _iso(repo.created_at),
            "private": repo.private,
            "gated": repo.gated,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": tags,
            "siblings": siblings,
            "usedStorage": sum(b.size for b in commit.files.values()),
        }
        if card_data is not None:
            info["cardData"] = card_data
        if repo.type == "model":
            info["modelId"] = repo.id
        ex.send_json(200, info)

    def _settings(self, ex: _Exchange, repo_type: str, repo_id: str) -> None:
        repo, _ = self._writable_repo(ex, repo_type, repo_id)
        body = ex.json_body()
        with self._lock:
            if "private" in body:
                repo.private = bool(body["private"])
            if "visibility" in body:
                repo.private = body["visibility"] == "private"
            if "gated" in body:
                repo.gated = body["gated"]
        ex.send_json(200, {})

    # -- upload: preupload, LFS batch/upload/verify, commit ----------------------------------------------------
    def _lfs_patterns(self, commit: Commit) -> list[str]:
        blob = commit.files.get(".gitattributes")
        if blob is None or blob.is_lfs:
            return []
        with open(self._blob_path(blob), "rb") as fh:
            text = fh.read().decode("utf-8", "replace")
        return [
            line.split()[0]
            for line in text.splitlines()
            if line.strip() and not line.startswith("#") and "filter=lfs" in line
        ]

    @staticmethod
    def _path_matches(path: str, pattern: str) -> bool:
        pattern = pattern.lstrip("/")
        if "/" not in pattern:
            return fnmatch.fnmatchcase(path.rsplit("/", 1)[-1], pattern)
        return fnmatch.fnmatchcase(path, pattern.replace("**/", "*"))

    def _is_lfs_candidate(self, repo: Repo, revision: str, path: str, size: int, sample: bytes) -> bool:
        with self._lock:
            try:
                commit = self._resolve(repo, revision)
            except HubHTTPError:
                commit = None
        if size >= self.lfs_threshold or b"\0" in sample:
            return True
        patterns = self._lfs_patterns(commit) if commit is not None else []
        return any(self._path_matches(path, pattern) for pattern in patterns)

    def _preupload(self, ex: _Exchange, repo_type: str, repo_id: str, revision: str) -> None:
        repo, _ = self._writable_repo(ex, repo_type, repo_id)
        body = ex.json_body()
        with self._lock:
            commit = self._resolve(repo, revision)
        gitignore = body.get("gitIgnore")
        if gitignore is None and ".gitignore" in commit.files:
            with open(self._blob_path(commit.files[".gitignore"]), "rb") as fh:
                gitignore = fh.read().decode("utf-8", "replace")
        ignore_patterns = [
            line.strip()
            for line in (gitignore or "").splitlines()
            if line.strip() and not line.startswith("#")
        ]
        patterns = self._lfs_patterns(commit)
        files = []
        for item in body.get("files", []):
            path, size = item["path"], int(item.get("size", 0))
            sample = base64.b64decode(item.get("sample") or "")
            lfs = (
                size >= self.lfs_threshold
                or b"\0" in sample
                or any(self._path_matches(path, p) for p in patterns)
            )
            info: dict[str, Any] = {
                "path": path,
                "uploadMode": "lfs" if lfs else "regular",
                "shouldIgnore": any(self._ignored(path, p) for p in ignore_patterns),
            }
            existing = commit.files.get(path)
            if existing is not None:
                # The client skips a file when this equals its local oid: sha256 for LFS, git sha1 otherwise.
                info["oid"] = existing.sha256 if existing.sha256 else existing.oid
            files.append(info)
        ex.send_json(200, {"files": files, "commitOid": commit.id})

    @staticmethod
    def _ignored(path: str, pattern: str) -> bool:
        if pattern.endswith("/"):
            return f"/{path}".find(f"/{pattern.strip('/')}/") >= 0
        return HubServer._path_matches(path, pattern) or fnmatch.fnmatchcase(path, pattern.lstrip("/"))

    def _lfs_batch(self, ex: _Exchange, repo_type: str, repo_id: str) -> None:
        repo, _ = self._writable_repo(ex, repo_type, repo_id)
        body = ex.json_body()
        if body.get("operation") != "upload":
            raise HubHTTPError(
                400, f"hubserver only supports the 'upload' LFS operation, got {body.get('operation')}"
            )
        auth = ex.header("Authorization") or ""
        objects = []
        for obj in body.get("objects", []):
            oid, size = str(obj.get("oid", "")), obj.get("size")
            if not _SHA256_RE.match(oid) or not isinstance(size, int) or size < 0:
                objects.append(
                    {
                        "oid": oid,
                        "size": size if isinstance(size, int) else 0,
                        "error": {"code": 422, "message": "Invalid oid or size"},
                    }
                )
                continue
            with self._lock:
                present = oid in repo.lfs_oids and os.path.exists(self._lfs_path(oid))
                if not present:
                    ticket = secrets.token_hex(16)
                    self._tickets[ticket] = _UploadTicket((repo.type, repo.id), oid, size)
            if present:
                objects.append({"oid": oid, "size": size})  # no "actions": the client skips the upload
                continue
            objects.append(
                {
                    "oid": oid,
                    "size": size,
                    "authenticated": True,
                    "actions": {
                        # Like an S3 presigned URL: no auth header is sent by the client for this PUT.
                        "upload": {"href": f"{self.endpoint}/_lfs/upload/{ticket}", "expires_in": 86400},
                        "verify": {
                            "href": f"{self.endpoint}/_lfs/verify/{ticket}",
                            "header": {"Authorization": auth},
                        },
                    },
                }
            )
        ex.send_json(
            200,
            {"transfer": "basic", "objects": objects, "hash_algo": "sha256"},
            headers={"Content-Type": "application/vnd.git-lfs+json"},
        )

    def _ticket(self, ticket_id: str) -> _UploadTicket:
        with self._lock:
            ticket = self._tickets.get(ticket_id)
        if ticket is None:
            raise HubHTTPError(404, "Unknown or expired LFS upload URL")
        return ticket

    def _lfs_upload(self, ex: _Exchange, ticket_id: str) -> None:
        ticket = self._ticket(ticket_id)
        hasher = hashlib.sha256()
        fh, tmp = self._tmp_file()
        size = 0
        try:
            with fh:
                for chunk in ex.iter_body():
                    hasher.update(chunk)
                    fh.write(chunk)
                    size += len(chunk)
            if size != ticket.size or hasher.hexdigest() != ticket.oid:
                raise HubHTTPError(
                    400,
                    f"LFS upload rejected: expected sha256={ticket.oid} size={ticket.size}, "
                    f"got sha256={hasher.hexdigest()} size={size}",
                )
            dest = self._lfs_path(ticket.oid)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            os.replace(tmp, dest)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        with self._lock:
            repo = self._repos.get(ticket.repo_key)
            if repo is not None:
                repo.lfs_oids.add(ticket.oid)
        ex.send_bytes(200, b"", {"ETag": f'"{ticket.oid}"'})

    def _lfs_verify(self, ex: _Exchange, ticket_id: str) -> None:
        ticket = self._ticket(ticket_id)
        body = ex.json_body()
        path = self._lfs_path(ticket.oid)
        with self._lock:
            repo = self._repos.get(ticket.repo_key)
            known = repo is not None and ticket.oid in repo.lfs_oids
        if not known or not os.path.exists(path) or body.get("oid") != ticket.oid:
            raise HubHTTPError(404, f"LFS object {body.get('oid')} not found")
        if os.path.getsize(path) != body.get("size"):
            raise HubHTTPError(
                422, f"LFS object {ticket.oid} has size {os.path.getsize(path)}, not {body.get('size')}"
            )
        ex.send_json(200, {"success": True})

    def _commit(self, ex: _Exchange, repo_type: str, repo_id: str, revision: str) -> None:
        repo, user = self._writable_repo(ex, repo_type, repo_id)
        create_pr = ex.flag("create_pr")
        # Stream the NDJSON body to disk first, then parse it line by line.
        spool, spool_path = self._tmp_file()
        try:
            with spool:
                for chunk in ex.iter_body():
                    spool.write(chunk)
                spool.seek(0)
                header, ops = self._parse_commit_ops(repo, spool)
        finally:
            os.remove(spool_path)
        summary = str(header.get("summary") or "").strip()
        if not summary:
            raise HubHTTPError(400, "Commit summary (commit message) is required")
        with self._lock:
            if create_pr:
                target = self._resolve_ref_name(repo, revision)
                parent_id = repo.refs[target]
                if header.get("parentCommit") and header["parentCommit"] != parent_id:
                    self._raise_stale(header["parentCommit"], parent_id, target)
                ref = f"refs/pr/{repo.next_pr}"
                repo.next_pr += 1
                repo.refs[ref] = parent_id
                commit = self._apply_commit(
                    repo, ref, ops, summary, str(header.get("description") or ""), None, user.name
                )
                pr_url: str | None = f"{self._url(repo)}/discussions/{ref.rsplit('/', 1)[1]}"
            else:
                ref = self._resolve_ref_name(repo, revision)
                commit = self._apply_commit(
                    repo,
                    ref,
                    ops,
                    summary,
                    str(header.get("description") or ""),
                    header.get("parentCommit"),
                    user.name,
                )
                pr_url = None
        ex.send_json(
            200,
            {
                "success": True,
                "commitOid": commit.id,
                "commitUrl": f"{self._url(repo)}/commit/{commit.id}",
                "pullRequestUrl": pr_url,
                "hookOutput": "",
            },
        )

    @staticmethod
    def _raise_stale(expected: str, actual: str, ref: str) -> None:
        raise HubHTTPError(
            412,
            f"A commit has happened since. Please refresh and try again. (parentCommit "
            f"{expected} is not the head of {ref}, which is {actual})",
        )

    def _parse_commit_ops(
        self, repo: Repo, spool: BinaryIO
    ) -> tuple[dict[str, Any], list[tuple[str, str, Any]]]:
        header: dict[str, Any] | None = None
        ops: list[tuple[str, str, Any]] = []
        for lineno, line in enumerate(spool, start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                key, value = item["key"], item["value"]
            except (ValueError, KeyError, TypeError) as err:
                raise HubHTTPError(400, f"Malformed NDJSON commit payload at line {lineno}: {err}") from err
            if header is None:
                if key != "header":
                    raise HubHTTPError(400, "The first line of a commit payload must be the header")
                header = value
                continue
            path = str(value.get("path", ""))
            if key in ("file", "lfsFile", "deletedFile") and not self._valid_path(path):
                raise HubHTTPError(400, f"Invalid path in commit: {path!r}")
            if key == "file":
                if value.get("encoding", "base64") != "base64":
                    raise HubHTTPError(400, f"Unsupported encoding {value.get('encoding')!r} for {path}")
                ops.append(("add", path, self._store_regular(base64.b64decode(value.get("content", "")))))
            elif key == "lfsFile":
                oid = str(value.get("oid", ""))
                stored = self._lfs_path(oid)
                with self._lock:
                    known = oid in repo.lfs_oids
                if not known or not os.path.exists(stored):
                    raise HubHTTPError(
                        422,
                        f"Your push was rejected because an LFS pointer pointed to a file that "
                        f"does not exist: {path} (sha256 {oid}). Upload it first.",
                    )
                size = os.path.getsize(stored)
                if value.get("size") is not None and int(value["size"]) != size:
                    raise HubHTTPError(422, f"LFS object size mismatch for {path}: {value['size']} != {size}")
                ops.append(("add", path, Blob(size, git_blob_sha1(lfs_pointer(oid, size)), oid)))
            elif key == "deletedFile":
                ops.append(("delete", path, None))
            elif key == "deletedFolder":
                ops.append(("delete_folder", path.strip("/"), None))
            else:
                raise HubHTTPError(400, f"Unknown commit operation key {key!r}")
        if header is None:
            raise HubHTTPError(400, "Empty commit payload")
        return header, ops

    @staticmethod
    def _valid_path(path: str) -> bool:
        parts = path.split("/")
        return (
            bool(path) and not path.startswith("/") and all(p not in ("", ".", "..", ".git") for p in parts)
        )

    def _apply_commit(
        self,
        repo: Repo,
        ref: str,
        ops: list[tuple[str, str, Any]],
        title: str,
        message: str,
        parent_commit: str | None,
        author: str,
        create_ref: bool = False,
    ) -> Commit:
        """Apply ``ops`` on top of ``ref`` and move it. Caller holds the lock (or is single-threaded)."""
        with self._lock:
            head_id = repo.refs.get(ref)
            if head_id is None and not create_ref:
                raise HubHTTPError(404, f"Invalid rev id: {ref}", "RevisionNotFound")
            if parent_commit and head_id != parent_commit:
                self._raise_stale(parent_commit, str(head_id), ref)
            files = dict(repo.commits[head_id].files) if head_id else {}
            for kind, path, blob in ops:
                if kind == "add":
                    files[path] = blob
                elif kind == "delete":
                    if path not in files:
                        raise HubHTTPError(
                            404, f"A file with this name doesn't exist: {path}", "EntryNotFound"
                        )
                    del files[path]
                elif kind == "delete_folder":
                    doomed = [p for p in files if p.startswith(path + "/")] if path else list(files)
                    if not doomed:
                        raise HubHTTPError(
                            404, f"A folder with this name doesn't exist: {path}", "EntryNotFound"
                        )
                    for p in doomed:
                        del files[p]
            dirs = {p.rsplit("/", 1)[0] for p in files if "/" in p}
            dirs |= {d.rsplit("/", i)[0] for d in dirs for i in range(1, d.count("/") + 1)}
            clash = sorted(dirs.intersection(files))
            if clash:
                raise HubHTTPError(400, f"Path {clash[0]!r} is both a file and a directory")
            tree_hash = hashlib.sha1(
                "".join(f"{p}\0{files[p].oid}\n" for p in sorted(files)).encode()
            ).hexdigest()
            commit_id = hashlib.sha1(
                f"{head_id}\n{tree_hash}\n{title}\n{message}\n{next(self._counter)}".encode()
            ).hexdigest()
            commit = Commit(commit_id, (head_id,) if head_id else (), files, title, message, author, _now())
            repo.commits[commit_id] = commit
            repo.refs[ref] = commit_id
            return commit

    # -- refs and history ------------------------------------------------------------------------------------
    def _tag(self, ex: _Exchange, repo_type: str, repo_id: str, arg: str) -> None:
        repo, _ = self._writable_repo(ex, repo_type, repo_id)
        if ex.method == "DELETE":
            ex.drain()
            with self._lock:
                if repo.refs.pop(f"refs/tags/{arg}", None) is None:
                    raise HubHTTPError(404, f"Tag {arg} not found", "RevisionNotFound")
            return ex.send_json(200, {})
        body = ex.json_body()
        tag = str(body.get("tag") or "")
        if not tag or not self._valid_path(tag):
            raise HubHTTPError(400, f"Invalid tag name: {tag!r}")
        with self._lock:
            commit = self._resolve(repo, arg or "main")
            if f"refs/tags/{tag}" in repo.refs:
                raise HubHTTPError(409, f"Tag reference {tag} already exists")
            repo.refs[f"refs/tags/{tag}"] = commit.id
        ex.send_json(200, {})

    def _branch(self, ex: _Exchange, repo_type: str, repo_id: str, branch: str) -> None:
        repo, _ = self._writable_repo(ex, repo_type, repo_id)
        ref = f"refs/heads/{branch}"
        if ex.method == "DELETE":
            ex.drain()
            with self._lock:
                if branch == "main":
                    raise HubHTTPError(403, "Cannot delete the default branch")
                if repo.refs.pop(ref, None) is None:
                    raise HubHTTPError(404, f"Branch {branch} not found", "RevisionNotFound")
            return ex.send_json(200, {})
        body = ex.json_body()
        if not branch or not self._valid_path(branch) or branch.startswith("refs/"):
            raise HubHTTPError(400, f"Invalid branch name: {branch!r}")
        with self._lock:
            if ref in repo.refs:
                raise HubHTTPError(409, f"Reference {ref} already exists")
            start = self._resolve(repo, str(body.get("startingPoint") or "main"))
            repo.refs[ref] = start.id
        ex.send_json(200, {})

    def _refs(self, ex: _Exchange, repo_type: str, repo_id: str) -> None:
        repo = self._readable_repo(ex, repo_type, repo_id)
        out: dict[str, list[dict[str, str]]] = {"branches": [], "converts": [], "tags": []}
        prs: list[dict[str, str]] = []
        with self._lock:
            for ref, target in sorted(repo.refs.items()):
                kind, _, name = ref[len("refs/") :].partition("/")
                item = {"name": name, "ref": ref, "targetCommit": target}
                bucket = {
                    "heads": out["branches"],
                    "tags": out["tags"],
                    "convert": out["converts"],
                    "pr": prs,
                }
                bucket[kind].append(item)
        if ex.flag("include_prs"):
            out["pullRequests"] = prs
        ex.send_json(200, out)

    def _commits(self, ex: _Exchange, repo_type: str, repo_id: str, revision: str) -> None:
        repo = self._readable_repo(ex, repo_type, repo_id)
        items = []
        with self._lock:
            commit: Commit | None = self._resolve(repo, revision)
            while commit is not None:
                items.append(
                    {
                        "id": commit.id,
                        "title": commit.title,
                        "message": commit.message,
                        "authors": [{"user": commit.author, "avatar": ""}],
                        "date": _iso(commit.date),
                    }
                )
                commit = repo.commits[commit.parents[0]] if commit.parents else None
        ex.send_json(200, items)

    # -- tree / paths-info -------------------------------------------------------------------------------------
    def _last_commit(self, repo: Repo, commit: Commit, path: str, is_dir: bool) -> Commit:
        """Oldest commit on the first-parent chain since which ``path`` is unchanged."""

        def signature(c: Commit) -> str | None:
            if is_dir:
                return c.dir_oids().get(path)
            blob = c.files.get(path)
            return blob.oid if blob else None

        current, sig = commit, signature(commit)
        while current.parents:
            parent = repo.commits[current.parents[0]]
            if signature(parent) != sig:
                break
            current = parent
        return current

    def _entry(self, repo: Repo, commit: Commit, path: str, expand: bool) -> dict[str, Any]:
        blob = commit.files.get(path)
        if blob is not None:
            entry: dict[str, Any] = {"type": "file", "oid": blob.oid, "size": blob.size, "path": path}
            if blob.sha256:
                entry["lfs"] = {"oid": blob.sha256, "size": blob.size, "pointerSize": blob.pointer_size}
            if expand:
                entry["securityFileStatus"] = {
                    "status": "safe",
                    "avScan": {"virusFound": False, "virusNames": None},
                    "pickleImportScan": None,
                }
        else:
            entry = {"type": "directory", "oid": commit.dir_oids()[path], "size": 0, "path": path}
        if expand:
            last = self._last_commit(repo, commit, path, blob is None)
            entry["lastCommit"] = {"id": last.id, "title": last.title, "date": _iso(last.date)}
        return entry

    def _tree(self, ex: _Exchange, repo_type: str, repo_id: str, revision: str, path: str) -> None:
        repo = self._readable_repo(ex, repo_type, repo_id)
        recursive, expand = ex.flag("recursive"), ex.flag("expand")
        with self._lock:
            commit = self._resolve(repo, revision)
            dirs = commit.dir_oids()
            if path and path not in dirs:
                raise HubHTTPError(
                    404,
                    f"Entry not found: {path} is not a directory at {revision}",
                    "EntryNotFound",
                    {"X-Repo-Commit": commit.id},
                )
            prefix = f"{path}/" if path else ""
            names = [p for p in itertools.chain(dirs, commit.files) if p.startswith(prefix)]
            if not recursive:
                names = [p for p in names if "/" not in p[len(prefix) :]]
            # "tree first" like the Hub: directories before files at each level; sorted for determinism
            names.sort(key=lambda p: (p.rsplit("/", 1)[0] if "/" in p else "", p not in dirs, p))
            entries = [self._entry(repo, commit, p, expand) for p in names]
        ex.send_json(200, entries)

    def _paths_info(self, ex: _Exchange, repo_type: str, repo_id: str, revision: str) -> None:
        repo = self._readable_repo(ex, repo_type, repo_id)
        body = ex.form_or_json()
        paths = body.get("paths") or []
        paths = [paths] if isinstance(paths, str) else list(paths)
        expand = body.get("expand")
        expand = expand[0] if isinstance(expand, list) and expand else expand
        expand = str(expand).lower() in ("1", "true")
        with self._lock:
            commit = self._resolve(repo, revision)
            dirs = commit.dir_oids()
            entries = [
                self._entry(repo, commit, p.strip("/"), expand)
                for p in paths
                if p.strip("/") in commit.files or p.strip("/") in dirs
            ]
        ex.send_json(200, entries)

    # -- downloads ---------------------------------------------------------------------------------------------
    def _resolve_file(self, ex: _Exchange, repo_type: str, repo_id: str, rest: str) -> None:
        repo = self._readable_repo(ex, repo_type, repo_id)
        revision, path = self._split_rev_and_path(rest)
        with self._lock:
            commit = self._resolve(repo, revision)
            blob = commit.files.get(path)
        base_headers = {"X-Repo-Commit": commit.id, "Accept-Ranges": "bytes"}
        if blob is None:
            raise HubHTTPError(404, f"Entry not found: {path} at {revision}", "EntryNotFound", base_headers)
        headers = dict(base_headers)
        if blob.sha256:
            headers.update(
                {
                    "ETag": f'"{blob.sha256}"',
                    "X-Linked-Etag": f'"{blob.sha256}"',
                    "X-Linked-Size": str(blob.size),
                }
            )
        else:
            headers["ETag"] = f'"{blob.oid}"'
        headers["Content-Disposition"] = f"inline; filename*=UTF-8''{quote(path.rsplit('/', 1)[-1])}"
        start, length, status = 0, blob.size, 200
        range_header = ex.header("Range")
        if range_header:
            match = _RANGE_RE.match(range_header)
            if match is None:
                raise HubHTTPError(
                    416,
                    f"Unsupported Range header {range_header!r}",
                    headers={**base_headers, "Content-Range": f"bytes */{blob.size}"},
                )
            first, last = match.groups()
            if first:
                start = int(first)
                end = min(int(last), blob.size - 1) if last else blob.size - 1
            elif last:
                start, end = max(0, blob.size - int(last)), blob.size - 1
            else:
                raise HubHTTPError(
                    416, "Empty range", headers={**base_headers, "Content-Range": f"bytes */{blob.size}"}
                )
            if start >= blob.size or end < start:
                raise HubHTTPError(
                    416,
                    f"Range {range_header} not satisfiable for size {blob.size}",
                    headers={**base_headers, "Content-Range": f"bytes */{blob.size}"},
                )
            length, status = end - start + 1, 206
            headers["Content-Range"] = f"bytes {start}-{end}/{blob.size}"
        ex.drain()
        ex.send_file(self._blob_path(blob), start, length, status, headers)


__all__ = [
    "DEFAULT_BAD_TOKEN",
    "DEFAULT_LFS_THRESHOLD",
    "DEFAULT_TOKEN",
    "DEFAULT_USER",
    "Blob",
    "Commit",
    "HubHTTPError",
    "HubServer",
    "RequestRecord",
    "User",
    "git_blob_sha1",
    "lfs_pointer",
    "parse_front_matter",
]
