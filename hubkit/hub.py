"""Everything that talks to the Hub, always through ``huggingface_hub.HfApi`` (no hand-written HTTP).

Three jobs, kept apart so that a dry run is the same code as a publish minus the last step:

* :meth:`Hub.read_state` reads what is there: the branch head, the tags, the tree (with LFS sha256s) and
  the previous ``hubkit.json`` (downloaded and parsed as JSON, never unpickled);
* :func:`diff_package` compares a built package with that state: files to add, change and delete, and
  the ones already there (same sha256 as the remote LFS oid, or the same git blob id), which are
  neither hashed again by the client nor uploaded again;
* :meth:`Hub.commit` and :meth:`Hub.tag` write: one commit whose ``parent_commit`` is the head that was
  read (a concurrent publisher makes it fail instead of being overwritten), then the ``vN`` tag.

Every call goes through :meth:`Hub.call`: a bounded retry with exponential back-off on 5xx, 429 and
network errors, and a one-line :class:`~hubkit.errors.HubError` for everything else (auth, missing repo,
permission). A commit whose answer got lost is not blindly retried: the head is read again and, if it
moved, ``hubkit.json`` at the new head says whether it is our commit (done) or someone else's (stop).
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from hubkit.errors import HubError
from hubkit.formats import hubjson
from hubkit.formats.hubjson import CARD, HUBKIT_JSON, HistoryEntry, HubJson, HubJsonError
from hubkit.formatting import human_size

if TYPE_CHECKING:
    from huggingface_hub import HfApi

T = TypeVar("T")

RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
VERSION_RE = re.compile(r"^v(\d+)$")
MAX_JSON_BYTES = 64 * 1024 * 1024  # a hubkit.json larger than this is not ours
MAX_README_BYTES = 4 * 1024 * 1024
LOGIN_HINT = "run `hf auth login` or set HF_TOKEN"


# --------------------------------------------------------------------------- remote state


@dataclass
class RemoteFile:
    path: str
    size: int
    blob_id: str  # git oid (of the LFS pointer for LFS files)
    sha256: str | None = None  # LFS oid: the sha256 of the content


@dataclass
class RemoteState:
    """What the target repo holds at the moment a publish looked: the base of its plan."""

    repo_id: str
    repo_type: str = "model"
    branch: str = "main"
    exists: bool = False
    branch_exists: bool = False
    head: str | None = None  # the commit the plan is based on (main's head for a branch to be created)
    tags: dict[str, str] = field(default_factory=dict)  # tag name -> commit
    files: dict[str, RemoteFile] = field(default_factory=dict)
    meta: HubJson | None = None  # the previous hubkit.json
    notes: list[str] = field(default_factory=list)
    _readme: str | None = field(default=None, repr=False)
    _readme_loader: Callable[[], str | None] | None = field(default=None, repr=False)

    @property
    def readme(self) -> str | None:
        """The README at the head, fetched on first use (an unchanged re-publish never needs it)."""
        if self._readme_loader is not None:
            self._readme, self._readme_loader = self._readme_loader(), None
        return self._readme

    @property
    def owned(self) -> set[str]:
        """Paths an earlier hubkit publish put there: the only ones hubkit may ever delete."""
        return set(self.meta.owned) if self.meta is not None else set()

    @property
    def previous_version(self) -> str | None:
        return self.meta.version if self.meta is not None else None

    @property
    def history(self) -> list[HistoryEntry]:
        return list(self.meta.history) if self.meta is not None else []

    def next_version(self) -> str:
        """The highest ``vN`` among the tags and the last hubkit.json, plus one."""
        numbers = [int(m.group(1)) for t in self.tags if (m := VERSION_RE.match(t))]
        if self.previous_version and (m := VERSION_RE.match(self.previous_version)):
            numbers.append(int(m.group(1)))
        return f"v{max(numbers, default=0) + 1}"

    def missing_tag(self) -> str | None:
        """The version the head's hubkit.json claims but no tag marks (a lost tag, or a merged PR)."""
        v = self.previous_version
        return v if v and VERSION_RE.match(v) and v not in self.tags else None


# --------------------------------------------------------------------------- errors and retries


def _chain(e: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    cur: BaseException | None = e
    while cur is not None and cur not in out and len(out) < 10:
        out.append(cur)
        cur = cur.__cause__ or cur.__context__
    return out


def _status(e: BaseException) -> int | None:
    for x in _chain(e):
        resp = getattr(x, "response", None)
        code = getattr(resp, "status_code", None)
        if isinstance(code, int):
            return code
    return None


def is_transient(e: BaseException) -> bool:
    """5xx / 429 / 408 answers and network failures (refused, reset, timed out, cut mid-response)."""
    import httpx2
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    if any(isinstance(x, (OfflineModeIsEnabled, LocalEntryNotFoundError)) for x in _chain(e)):
        return False  # offline by choice, or not in the cache: waiting won't help
    status = _status(e)
    if status is not None:
        return status in RETRY_STATUSES
    return any(isinstance(x, (httpx2.TransportError, ConnectionError, TimeoutError)) for x in _chain(e))


def is_stale(e: BaseException) -> bool:
    """The Hub's answer to a ``parent_commit`` that is no longer the head."""
    return _status(e) == 412


def _server_message(e: BaseException) -> str:
    for x in _chain(e):
        msg = getattr(x, "server_message", None)
        if msg:
            return str(msg).strip().splitlines()[0]
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def _has_token(api: HfApi) -> bool:
    if api.token is False:
        return False
    if isinstance(api.token, str) and api.token:
        return True
    from huggingface_hub import get_token

    return bool(get_token())


def hub_error(e: BaseException, what: str, repo_id: str, api: HfApi, attempts: int = 1) -> HubError:
    """One line a user can act on, from whatever the client raised."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
        RevisionResolutionError,
    )

    status = _status(e)
    chain = _chain(e)
    if any(isinstance(x, HFValidationError) for x in chain):
        return HubError(f"{what}: {repo_id} is not a local directory or file, and not a valid Hub repo id "
                        "(owner/name)")
    if any(isinstance(x, GatedRepoError) for x in chain):
        return HubError(f"{what}: {repo_id} is a gated repo; accept its terms on the Hub and set HF_TOKEN")
    if any(isinstance(x, RevisionNotFoundError) for x in chain):
        return HubError(f"{what}: no such revision (tag, branch or commit) in {repo_id} ({_server_message(e)})")
    if any(isinstance(x, (LocalEntryNotFoundError, OfflineModeIsEnabled, RevisionResolutionError)) for x in chain):
        return HubError(f"{what}: not in the local HF cache and the Hub can't be reached; load it once online")
    if any(isinstance(x, RepositoryNotFoundError) for x in _chain(e)):
        if not _has_token(api):
            return HubError(f"{what}: repo {repo_id} not found, or private and you are not logged in: {LOGIN_HINT}")
        return HubError(f"{what}: repo {repo_id} not found, or your token cannot see it")
    if status == 401:
        return HubError(f"{what}: not logged in or token invalid: {LOGIN_HINT}")
    if status == 403:
        owner = repo_id.split("/", 1)[0]
        return HubError(f"{what}: no permission to write to {repo_id} (the token needs write access to '{owner}'; "
                        f"{LOGIN_HINT} with such a token)")
    tries = f" after {attempts} tries" if attempts > 1 else ""
    if status is not None:
        return HubError(f"{what}: the Hub answered {status}{tries}: {_server_message(e)}")
    if is_transient(e):
        from huggingface_hub import constants

        return HubError(f"{what}: network error talking to {api.endpoint or constants.ENDPOINT}{tries}: "
                        f"{_server_message(e)}")
    return HubError(f"{what}: {_server_message(e)}")


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


class Hub:
    """A thin layer over ``HfApi``: retries, one-line errors, and the reads/writes a publish needs."""

    def __init__(self, api: HfApi | None = None, *, retries: int | None = None, wait: float | None = None):
        from huggingface_hub import HfApi

        self.api = api or HfApi()
        # HUBKIT_RETRIES / HUBKIT_RETRY_WAIT tune the back-off (tests make it instant)
        self.retries = max(1, retries if retries is not None else int(_env_float("HUBKIT_RETRIES", 4)))
        self.wait = wait if wait is not None else _env_float("HUBKIT_RETRY_WAIT", 1.0)
        self.slept: list[float] = []

    def _sleep(self, attempt: int) -> None:
        delay = min(self.wait * 2 ** (attempt - 1), 30.0)
        self.slept.append(delay)
        time.sleep(delay)

    def call(self, what: str, repo_id: str, fn: Callable[..., T], *args: Any,
             passthrough: tuple[type[BaseException], ...] = (), **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` retried on transient failures; other failures become a :class:`HubError`
        (except ``passthrough`` types, which the caller handles)."""
        attempt = 0
        while True:
            attempt += 1
            try:
                return fn(*args, **kwargs)
            except HubError:
                raise
            except passthrough:
                raise
            except Exception as e:  # noqa: BLE001 - classified below, re-raised as one line
                if is_transient(e) and attempt < self.retries:
                    self._sleep(attempt)
                    continue
                if _status(e) is None and not is_transient(e) and not _is_hub_exception(e):
                    raise  # a bug, not a Hub failure: keep the traceback
                raise hub_error(e, what, repo_id, self.api, attempt) from e

    # ----------------------------------------------------------------------- reading

    def url(self, repo_id: str, repo_type: str = "model") -> str:
        from huggingface_hub import constants

        prefix = {"dataset": "datasets/", "space": "spaces/"}.get(repo_type, "")
        return f"{(self.api.endpoint or constants.ENDPOINT).rstrip('/')}/{prefix}{repo_id}"

    def read_state(self, repo_id: str, *, branch: str = "main", repo_type: str = "model") -> RemoteState:
        """Head, tags, tree and previous hubkit.json of ``repo_id`` (an absent repo is an empty state)."""
        from huggingface_hub.errors import RepositoryNotFoundError

        state = RemoteState(repo_id=repo_id, repo_type=repo_type, branch=branch)
        what = f"reading {repo_id}"
        try:
            refs = self.call(what, repo_id, self.api.list_repo_refs, repo_id, repo_type=repo_type,
                             passthrough=(RepositoryNotFoundError,))
        except RepositoryNotFoundError as e:
            if _status(e) == 401 and not _has_token(self.api):
                raise hub_error(e, what, repo_id, self.api) from e
            return state  # not there (or invisible to us: create_repo will say which)
        state.exists = True
        branches = {b.name: b.target_commit for b in refs.branches}
        state.tags = {t.name: t.target_commit for t in refs.tags}
        state.branch_exists = branch in branches
        state.head = branches.get(branch) or branches.get("main")
        if state.head is None:
            return state  # an empty repo
        tree = self.call(what, repo_id, lambda: list(self.api.list_repo_tree(
            repo_id, recursive=True, revision=state.head, repo_type=repo_type)))
        for entry in tree:
            if hasattr(entry, "blob_id"):
                lfs = getattr(entry, "lfs", None)
                state.files[entry.path] = RemoteFile(entry.path, entry.size, entry.blob_id,
                                                     lfs.sha256 if lfs else None)
        meta_file = state.files.get(HUBKIT_JSON)
        if meta_file is not None:
            state.meta = self._read_meta(repo_id, state, meta_file)
        readme = state.files.get(CARD)
        if readme is not None and readme.size <= MAX_README_BYTES:
            head = state.head
            state._readme_loader = lambda: self.download(repo_id, CARD, revision=head, repo_type=repo_type
                                                         ).read_bytes().decode("utf-8", errors="replace")
        return state

    def _read_meta(self, repo_id: str, state: RemoteState, meta_file: RemoteFile) -> HubJson | None:
        if meta_file.size > MAX_JSON_BYTES:
            state.notes.append(f"{HUBKIT_JSON} on the Hub is {human_size(meta_file.size)}: not hubkit's; "
                               f"treating this as a first publish (nothing will be deleted)")
            return None
        path = self.download(repo_id, HUBKIT_JSON, revision=state.head, repo_type=state.repo_type)
        try:
            return hubjson.parse(path.read_bytes(), f"{repo_id}@{(state.head or '')[:12]}: {HUBKIT_JSON}")
        except HubJsonError as e:
            state.notes.append(f"{HUBKIT_JSON} on the Hub is not valid hubkit JSON ({e}); treating this as a "
                               f"first publish (nothing will be deleted)")
            return None

    def download(self, repo_id: str, filename: str, *, revision: str | None, repo_type: str = "model") -> Path:
        return Path(self.call(f"downloading {filename} from {repo_id}", repo_id, self.api.hf_hub_download,
                              repo_id, filename, revision=revision, repo_type=repo_type))

    def head_of(self, repo_id: str, branch: str, repo_type: str = "model") -> str | None:
        refs = self.call(f"reading {repo_id}", repo_id, self.api.list_repo_refs, repo_id, repo_type=repo_type)
        return next((b.target_commit for b in refs.branches if b.name == branch), None)

    def tags(self, repo_id: str, repo_type: str = "model") -> dict[str, str]:
        refs = self.call(f"reading {repo_id}", repo_id, self.api.list_repo_refs, repo_id, repo_type=repo_type)
        return {t.name: t.target_commit for t in refs.tags}

    def resolve(self, repo_id: str, revision: str | None = None, repo_type: str = "model") -> str:
        """The commit a tag, branch or commit names, resolved once (recorded in the HF cache's refs, so the
        same call answers offline); every later read is by that commit."""
        return str(self.call(f"reading {repo_id}{'@' + revision if revision else ''}", repo_id,
                             lambda: self.api.resolve_revision(repo_id, revision=revision,
                                                               repo_type=repo_type).resolved))

    def fetch(self, repo_id: str, filename: str, commit: str, *, missing_ok: bool = False,
              repo_type: str = "model") -> Path | None:
        """One file at one commit (through the HF cache); None for an absent file when ``missing_ok``."""
        from huggingface_hub.errors import RemoteEntryNotFoundError

        try:
            return Path(self.call(f"downloading {filename} from {repo_id}@{commit[:12]}", repo_id,
                                  self.api.hf_hub_download, repo_id, filename, revision=commit,
                                  repo_type=repo_type, passthrough=(RemoteEntryNotFoundError,)))
        except RemoteEntryNotFoundError as e:
            if missing_ok:
                return None
            raise HubError(f"{repo_id}@{commit[:12]}: no file {filename}") from e

    def list_files(self, repo_id: str, commit: str, repo_type: str = "model") -> list[str]:
        return sorted(self.call(f"listing {repo_id}@{commit[:12]}", repo_id, self.api.list_repo_files,
                                repo_id, revision=commit, repo_type=repo_type))

    def snapshot(self, repo_id: str, commit: str, *, local_dir: Path | None = None,
                 allow_patterns: list[str] | None = None) -> Path:
        """Files of one commit: into ``local_dir``, or the HF cache's snapshot folder."""
        return Path(self.call(f"downloading {repo_id}@{commit[:12]}", repo_id, self.api.snapshot_download,
                              repo_id, revision=commit, local_dir=local_dir, allow_patterns=allow_patterns))

    def model_commit(self, repo_id: str, revision: str | None) -> str:
        return str(self.call(f"reading {repo_id}{'@' + revision if revision else ''}", repo_id,
                             lambda: self.api.model_info(repo_id, revision=revision).sha))

    def safetensors_metadata(self, repo_id: str, commit: str) -> Any:
        """The safetensors headers of a checkpoint, by range requests (no tensor data)."""
        return self.call(f"reading the safetensors headers of {repo_id}@{commit[:12]}", repo_id,
                         self.api.get_safetensors_metadata, repo_id, revision=commit)

    # ----------------------------------------------------------------------- writing

    def ensure_repo(self, repo_id: str, *, private: bool, repo_type: str = "model") -> None:
        self.call(f"creating {repo_id}", repo_id, self.api.create_repo, repo_id, private=private,
                  repo_type=repo_type, exist_ok=True)

    def create_for_first_publish(self, repo_id: str, *, private: bool, repo_type: str = "model") -> str | None:
        """Create the repo a publish found absent and return the head to commit on, refusing when the repo is
        not fresh any more: another publish created it and committed between our look and now. (Two first
        publishes otherwise both commit, the second overwriting the first under the same version.)"""
        self.ensure_repo(repo_id, private=private, repo_type=repo_type)
        state = self.read_state(repo_id, repo_type=repo_type)
        if state.meta is not None or any(p != ".gitattributes" for p in state.files):
            raise HubError(f"the repo changed since hubkit looked: {repo_id} did not exist then and now holds "
                           f"{len(state.files)} file(s) (another publish got there first); nothing was "
                           "committed: re-run to publish on top of it")
        return state.head

    def ensure_branch(self, repo_id: str, branch: str, *, start: str | None, repo_type: str = "model") -> None:
        self.call(f"creating branch {branch} in {repo_id}", repo_id, self.api.create_branch, repo_id,
                  branch=branch, revision=start, repo_type=repo_type, exist_ok=True)

    def commit(
        self,
        repo_id: str,
        operations: list[Any],
        *,
        message: str,
        description: str = "",
        parent: str | None,
        branch: str,
        repo_type: str = "model",
        create_pr: bool = False,
        marker_sha256: str | None = None,
    ) -> tuple[str, str | None]:
        """Upload, then make one commit on ``branch`` on top of ``parent``; returns (commit, PR url).

        LFS uploads are retried on their own (the LFS batch API skips objects that already arrived, so a
        retry, or a re-run after a failure, does not send them again). The commit itself is retried only
        while the branch still points at ``parent``; if it moved, ``marker_sha256`` (the sha256 of our
        hubkit.json) tells our own commit, whose answer was lost, from someone else's.
        """
        from huggingface_hub import CommitOperationAdd

        adds = [op for op in operations if isinstance(op, CommitOperationAdd)]
        if adds:
            self.call(f"uploading to {repo_id}", repo_id, self.api.preupload_lfs_files, repo_id, additions=adds,
                      repo_type=repo_type, revision=branch, create_pr=create_pr, free_memory=False)
        what = f"committing to {repo_id}@{branch}"
        attempt = 0
        while True:
            attempt += 1
            try:
                info = self.api.create_commit(repo_id, operations, commit_message=message,
                                              commit_description=description, repo_type=repo_type,
                                              revision=branch, create_pr=create_pr, parent_commit=parent)
                return info.oid, info.pr_url
            except Exception as e:  # noqa: BLE001 - classified below
                if is_stale(e):
                    raise stale_error(repo_id, parent) from e
                if not is_transient(e):
                    if _status(e) is None and not _is_hub_exception(e):
                        raise
                    raise hub_error(e, what, repo_id, self.api, attempt) from e
                if create_pr or attempt >= self.retries:
                    # a PR commit can't be told apart from a duplicate: stop rather than open two
                    raise hub_error(e, what, repo_id, self.api, attempt) from e
                head = self.head_of(repo_id, branch, repo_type)
                if head != parent:
                    if head and marker_sha256 and self._is_ours(repo_id, head, marker_sha256, repo_type):
                        return head, None
                    raise stale_error(repo_id, parent) from e
                self._sleep(attempt)

    def _is_ours(self, repo_id: str, commit: str, marker_sha256: str, repo_type: str) -> bool:
        try:
            data = self.download(repo_id, HUBKIT_JSON, revision=commit, repo_type=repo_type).read_bytes()
        except HubError:
            return False
        return hashlib.sha256(data).hexdigest() == marker_sha256

    def tag(self, repo_id: str, version: str, commit: str, *, repo_type: str = "model",
            message: str | None = None) -> None:
        """Tag ``commit`` as ``version``; a tag that already points there (a lost answer) is fine."""
        what = f"tagging {version} in {repo_id}"
        try:
            self.call(what, repo_id, self.api.create_tag, repo_id, tag=version, revision=commit,
                      repo_type=repo_type, tag_message=message)
        except HubError as e:
            if _status(e.__cause__) != 409:  # type: ignore[arg-type]
                raise
            where = self.tags(repo_id, repo_type).get(version)
            if where != commit:
                raise HubError(f"{what}: tag {version} already exists at {str(where)[:12]}, not at the new "
                               f"commit {commit[:12]}") from e


def _is_hub_exception(e: BaseException) -> bool:
    """Raised by the client about the Hub or its cache (HTTP, offline, validation), not a bug of ours."""
    return any(type(x).__module__.startswith("huggingface_hub") for x in _chain(e))


def stale_error(repo_id: str, parent: str | None) -> HubError:
    since = parent[:12] if parent else "it was read"
    return HubError(f"the repo changed since {since} (someone else published to {repo_id}); nothing was "
                    f"committed: re-run to publish on top of it")

