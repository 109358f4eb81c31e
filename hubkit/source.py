"""A published repo as a source of files: a local tree (staged or pulled), or one commit of a Hub repo.

``load_direction(s)``, ``regenerate``, ``export`` and ``load_vector_set`` read repos through this, so they
share one rule set for untrusted input: a tag or branch is resolved to a commit once and every file is
fetched by that commit (the files agree even if the tag moves meanwhile, and the cache answers offline);
every path comes from a downloaded ``hubkit.json`` and is confined to the repo before it is fetched (a
local tree's symlinks must stay inside it too); a file ``hubkit.json`` lists is checked against its size
and sha256 before anyone reads it.
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path

from hubkit.errors import HubError, HubkitError
from hubkit.formats import hubjson
from hubkit.formats.hashing import sha256_file
from hubkit.formats.hubjson import HUBKIT_JSON, HubJson, confined
from hubkit.hub import Hub


class SourceError(HubkitError):
    """A file of a published repo is missing, altered, or would lie outside the repo."""


class RepoSource:
    """Files of one published repo; ``where`` is what messages call it (``owner/name@v1`` or a folder)."""

    def __init__(self, where: str, *, root: Path | None = None, repo_id: str | None = None,
                 revision: str | None = None, commit: str | None = None, hub: Hub | None = None):
        self.where, self.root = where, root
        self.repo_id, self.revision, self.commit = repo_id, revision, commit
        self._hub = hub

    @classmethod
    def local(cls, root: str | Path) -> RepoSource:
        root = Path(root)
        return cls(str(root), root=root)

    @classmethod
    def hub(cls, repo_id: str, revision: str | None = None, *, hub: Hub | None = None) -> RepoSource:
        hub = hub or Hub()
        commit = hub.resolve(repo_id, revision)
        where = f"{repo_id}@{revision}" if revision else repo_id
        return cls(where, repo_id=repo_id, revision=revision, commit=commit, hub=hub)

    @property
    def is_local(self) -> bool:
        return self.root is not None

    def fetch(self, rel: str, *, missing_ok: bool = False) -> Path | None:
        """The local path of repo file ``rel`` (downloaded by commit for a Hub repo)."""
        rel = confined(rel, f"{self.where}: {rel!r}")
        if self.root is not None:
            path = self.root / rel
            try:
                is_file = path.is_file()
            except (OSError, ValueError) as e:
                raise SourceError(f"{self.where}: {rel}: unreadable path ({type(e).__name__})") from e
            if not is_file:
                if missing_ok:
                    return None
                raise SourceError(f"{self.where}: {rel}: not found")
            inside(self.root, path, f"{self.where}: {rel}")
            return path
        assert self._hub is not None and self.repo_id is not None and self.commit is not None
        return self._hub.fetch(self.repo_id, rel, self.commit, missing_ok=missing_ok)

    def list_files(self) -> list[str]:
        if self.root is not None:
            return sorted(p.relative_to(self.root).as_posix() for p in self.root.rglob("*")
                          if p.is_file() and ".cache" not in p.relative_to(self.root).parts)
        assert self._hub is not None and self.repo_id is not None and self.commit is not None
        return self._hub.list_files(self.repo_id, self.commit)

    @cached_property
    def meta(self) -> HubJson | None:
        """The repo's parsed ``hubkit.json``, or None for a repo that has none (a plain upload)."""
        path = self.fetch(HUBKIT_JSON, missing_ok=True)
        if path is None:
            return None
        if path.stat().st_size > hubjson.MAX_BYTES:
            raise hubjson.HubJsonError(f"{self.where}: {HUBKIT_JSON}: larger than any hubkit.json; refused")
        return hubjson.parse(path.read_bytes(), f"{self.where}: {HUBKIT_JSON}")

    def verified(self, rel: str, error: type[HubkitError] = SourceError) -> Path:
        """``rel`` fetched and checked against the size and sha256 ``hubkit.json`` records for it."""
        path = self.fetch(rel)
        assert path is not None
        record = self.meta.file(rel) if self.meta is not None else None
        if record is not None:
            verify(path, record.size, record.sha256, f"{self.where}: {rel}", error)
        return path


def verify(path: Path, size: int, sha256: str, where: str, error: type[HubkitError] = SourceError) -> None:
    """Size first (cheap, and a truncated download is the common failure), then the sha256."""
    actual = path.stat().st_size
    if actual != size:
        raise error(f"{where}: {actual} bytes, {HUBKIT_JSON} says {size}")
    got = sha256_file(path)
    if got != sha256:
        raise error(f"{where}: sha256 {got[:12]}… differs from {HUBKIT_JSON} ({sha256[:12]}…)")


def inside(root: Path, path: Path, where: str) -> Path:
    """``path`` resolved (symlinks followed), refused unless it stays under ``root`` (also resolved)."""
    real, top = os.path.realpath(path), os.path.realpath(root)
    if real != top and not real.startswith(top.rstrip(os.sep) + os.sep):
        raise SourceError(f"{where}: resolves outside {root} (a symlink out of the tree); refused")
    return Path(real)


def open_source(repo_or_dir: str | Path, revision: str | None = None, *, hub: Hub | None = None) -> RepoSource:
    """A folder (``revision`` refused: it names Hub commits) or a Hub repo id."""
    path = Path(repo_or_dir)
    if path.is_dir():
        if revision is not None:
            raise HubError(f"{path}: revision={revision!r} applies to Hub repos, not a local directory")
        return RepoSource.local(path)
    return RepoSource.hub(str(repo_or_dir), revision, hub=hub)
