"""Downstream use of a published run: load its direction vectors, or pull the whole repo.

A hubkit repo holds ``hubkit.json`` and ``vectors/<name>.safetensors`` (see ``write_canonical``), so a
user needs neither ``torch.load`` nor trust in the author: nothing here ever unpickles. A repo whose
direction exists only as a pickled ``.pt`` is refused with what to ask the author for.

For a repo id, a tag or branch is resolved to a commit once (``HfApi.resolve_revision``, which records
the ref in the HF cache) and every file is fetched by that commit: the files agree with each other even
if the tag moves meanwhile, and the same call works offline from the cache.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hubkit.errors import DirectionError, HubError, PickleRefused, first_line
from hubkit.formats.directions import DirectionSet, read_canonical, read_direction_file
from hubkit.formats.hashing import sha256_file
from hubkit.formats.tables import read_json_object

if TYPE_CHECKING:
    import torch

HUBKIT_JSON = "hubkit.json"
_COMMIT = re.compile(r"[0-9a-f]{40}")
_SAFE_SUFFIXES = (".safetensors", ".npy")  # formats that can be read without unpickling
_PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".pickle")
_WEIGHT_PREFIXES = ("model", "pytorch_model", "adapter_model", "training_args", "optimizer", "rng_state")


@dataclass
class LoadedDirections(DirectionSet):
    """A :class:`DirectionSet` plus where it came from.

    ``revision`` is what was asked for (tag, branch or commit; None for a local directory), ``commit`` the
    commit the files were read from, ``path`` the local canonical file. Layer numbers are in
    ``layer_convention`` (``block`` i = output of decoder block i).
    """

    repo_id: str | None = None
    revision: str | None = None
    commit: str | None = None
    path: Path | None = None
    declared_unit_norm: bool | None = None  # what hubkit.json says; ``unit_norm`` is recomputed

    def describe(self) -> str:
        where = self.repo_id or str(self.path)
        at = f"@{self.commit[:12]}" if self.commit else ""
        sel = "" if self.selected_layer is None else (
            f", selected layer {self.selected_layer} ({self.layer_convention})")
        return f"{self.name} from {where}{at}: {len(self.layers)} layer(s), d={self.d}{sel}"


@dataclass
class PullResult:
    path: Path
    repo_id: str
    revision: str | None
    commit: str
    files: list[str]


def load_direction(
    repo_or_dir: str | Path, name: str | None = None, layer: int | None = None, revision: str | None = None
) -> torch.Tensor:
    """The float32 ``[d]`` vector of one direction: at ``layer`` (in the run's layer convention), or
    at the run's selected layer when ``layer`` is None."""
    return load_directions(repo_or_dir, name=name, layer=layer, revision=revision).vector()


def load_directions(
    repo_or_dir: str | Path, name: str | None = None, layer: int | None = None, revision: str | None = None
) -> LoadedDirections:
    """All layers of one direction plus metadata (base model, convention, selected layer, commit).

    ``repo_or_dir`` is a local directory (a staged or pulled tree), a local ``.safetensors``/``.npy``
    file, or a Hub repo id. ``name`` picks a direction when the run has several. ``layer`` overrides the
    selected layer (it must exist). ``revision`` is a tag (``v2``), branch or commit.
    """
    path = Path(repo_or_dir)
    if path.is_dir():
        if revision is not None:
            raise HubError(f"{path}: revision={revision!r} applies to Hub repos, not a local directory")
        source = _Source.local(path)
    elif path.is_file():
        ds = read_direction_file(path, name=name, layer=layer) if path.suffix in _SAFE_SUFFIXES else None
        if ds is None:
            raise PickleRefused(
                f"{path}: hubkit loads only .safetensors or .npy directions, which need no unpickling")
        return LoadedDirections(**vars(ds), path=path)
    else:
        source = _Source.hub(str(repo_or_dir), revision)
    ds = source.load(name, layer)
    if layer is not None:
        ds.vector(layer)  # raises with the available layers
        ds.selected_layer = layer
    return ds


def pull(repo_id: str, revision: str | None = None, *, out: str | Path) -> PullResult:
    """Download a published run into ``out`` (a new or empty directory) to inspect or re-publish it.

    The revision is resolved to a commit once and the snapshot taken at that commit; every file
    ``hubkit.json`` lists is checked against its size and sha256. HF's ``.cache/huggingface/`` bookkeeping
    folder stays in ``out`` (``upload_folder`` ignores it)."""
    from huggingface_hub import HfApi, snapshot_download

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        # Files left from another version would be re-published as if they belonged to this one.
        raise HubError(f"{out}: exists and is not an empty directory; pull into a new one")
    try:
        commit = str(HfApi().resolve_revision(repo_id, revision=revision).resolved)
        snapshot_download(repo_id, revision=commit, local_dir=out)
    except Exception as e:  # noqa: BLE001 - every Hub failure becomes one readable line
        raise _hub_error(e, repo_id, revision) from e
    files = sorted(rel for p in out.rglob("*") if p.is_file()
                   and not (rel := p.relative_to(out).as_posix()).startswith(".cache/huggingface/"))
    meta_path = out / HUBKIT_JSON
    if meta_path.is_file():
        meta = read_json_object(meta_path, f"{repo_id}: {HUBKIT_JSON}", DirectionError)
        for entry in meta.get("files") or []:
            _verify(out / entry["path"], entry, f"{repo_id}@{commit[:12]}: {entry['path']}")
    return PullResult(path=out, repo_id=repo_id, revision=revision, commit=str(commit), files=files)


# --------------------------------------------------------------------------- sources


class _Source:
    """Where files come from: a local tree, or one commit of a Hub repo (through the HF cache)."""

    def __init__(self, where: str, fetch: Callable[[str], Path | None], meta_path: Path | None,
                 list_files: Callable[[], list[str]], repo_id: str | None = None,
                 revision: str | None = None, commit: str | None = None):
        self.where = where
        self.fetch = fetch  # relative path -> local path, or None if absent
        self.meta_path = meta_path
        self.list_files = list_files
        self.repo_id, self.revision, self.commit = repo_id, revision, commit

    @classmethod
    def local(cls, root: Path) -> _Source:
        def fetch(rel: str) -> Path | None:
            p = root / rel
            return p if p.is_file() else None

        def list_files() -> list[str]:
            return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())

        meta = root / HUBKIT_JSON
        return cls(str(root), fetch, meta if meta.is_file() else None, list_files)

    @classmethod
    def hub(cls, repo_id: str, revision: str | None) -> _Source:
        from huggingface_hub import HfApi, hf_hub_download
        from huggingface_hub.errors import RemoteEntryNotFoundError

        where = f"{repo_id}@{revision}" if revision else repo_id
        api = HfApi()
        try:
            # One call resolves a tag/branch to a commit and records it in the cache's refs/; offline,
            # the recorded ref answers. Every download below is by that commit.
            commit = str(api.resolve_revision(repo_id, revision=revision).resolved)
        except Exception as e:  # noqa: BLE001 - every Hub failure becomes one readable line
            raise _hub_error(e, repo_id, revision) from e

        def fetch(rel: str) -> Path | None:
            try:
                return Path(hf_hub_download(repo_id, rel, revision=commit))
            except RemoteEntryNotFoundError:
                return None
            except Exception as e:  # noqa: BLE001
                raise _hub_error(e, repo_id, revision, rel) from e

        def list_files() -> list[str]:
            try:
                return sorted(api.list_repo_files(repo_id, revision=commit))
            except Exception as e:  # noqa: BLE001
                raise _hub_error(e, repo_id, revision) from e

        return cls(where, fetch, fetch(HUBKIT_JSON), list_files, repo_id, revision, commit)

    def load(self, name: str | None, layer: int | None) -> LoadedDirections:
        if self.meta_path is not None:
            ds, path, declared = self._from_hubkit_json(name)
        else:
            ds, path = self._from_plain_repo(name, layer)
            declared = None
        return LoadedDirections(**vars(ds), repo_id=self.repo_id, revision=self.revision, commit=self.commit,
                                path=path, declared_unit_norm=declared)

    def _from_hubkit_json(self, name: str | None) -> tuple[DirectionSet, Path, bool | None]:
        assert self.meta_path is not None
        meta = read_json_object(self.meta_path, f"{self.where}: {HUBKIT_JSON}", DirectionError)
        entries = [e for e in meta.get("directions") or [] if isinstance(e, dict) and e.get("name")]
        entry = _pick(entries, name, self.where)
        rel = entry.get("canonical") or entry.get("file") or ""
        where = f"{self.where}: {rel}"
        if not rel.endswith(".safetensors"):
            raise _pickle_refused(self.where, [rel])
        path = self.fetch(rel)
        if path is None:
            raise DirectionError(f"{where}: listed in {HUBKIT_JSON} but missing from the repo")
        file_entry = next((f for f in meta.get("files") or [] if f.get("path") == rel), None)
        if file_entry:
            _verify(path, file_entry, where)
        if entry.get("canonical"):
            ds = read_canonical(path, display=where)
        else:  # an older or hand-written hubkit.json pointing at a plain safetensors file
            ds = read_direction_file(path, layer=entry.get("selected_layer"), display=where,
                                     layer_convention=entry.get("layer_convention") or "block")
        declared_conv = entry.get("layer_convention")
        if declared_conv and declared_conv != ds.layer_convention:
            raise DirectionError(
                f"{where}: layer convention '{ds.layer_convention}' disagrees with {HUBKIT_JSON} "
                f"('{declared_conv}')"
            )
        if ds.selected_layer is None and entry.get("selected_layer") is not None:
            ds.selected_layer = int(entry["selected_layer"])
        ds.base_model = ds.base_model or (meta.get("run") or {}).get("base_model")
        ds.name = entry["name"]
        declared = entry.get("unit_norm")
        return ds, path, declared if isinstance(declared, bool) else None

    def _from_plain_repo(self, name: str | None, layer: int | None) -> tuple[DirectionSet, Path]:
        files = self.list_files()
        safe = [f for f in files if f.endswith(_SAFE_SUFFIXES) and not _is_weights(f)]
        pickled = [f for f in files if f.endswith(_PICKLE_SUFFIXES) and not _is_weights(f)]
        if name is not None:
            safe = [f for f in safe if Path(f).stem == name or f == name]
            pickled = [f for f in pickled if Path(f).stem == name or f == name]
        if not safe:
            if pickled:
                raise _pickle_refused(self.where, pickled)
            raise DirectionError(
                f"{self.where}: no {HUBKIT_JSON} and no direction file (.safetensors or .npy)"
                + (f" named '{name}'" if name else "")
            )
        if len(safe) > 1:
            raise DirectionError(f"{self.where}: several direction files ({', '.join(safe)}); pass name=")
        path = self.fetch(safe[0])
        if path is None:
            raise DirectionError(f"{self.where}: {safe[0]} vanished while loading")
        return read_direction_file(path, layer=layer, display=f"{self.where}: {safe[0]}"), path


# --------------------------------------------------------------------------- helpers


def _pick(entries: list[dict[str, Any]], name: str | None, where: str) -> dict[str, Any]:
    names = [e["name"] for e in entries]
    if not entries:
        raise DirectionError(f"{where}: {HUBKIT_JSON} lists no directions")
    if name is None:
        if len(entries) == 1:
            return entries[0]
        raise DirectionError(f"{where}: {len(entries)} directions ({', '.join(names)}); pass name=")
    for e in entries:
        if e["name"] == name:
            return e
    raise DirectionError(f"{where}: no direction '{name}' (has {', '.join(names)})")


def _is_weights(path: str) -> bool:
    """Model checkpoints, which share suffixes with direction files but are never directions."""
    base = Path(path).name
    return base.startswith(_WEIGHT_PREFIXES)


def _pickle_refused(where: str, files: list[str]) -> PickleRefused:
    return PickleRefused(
        f"{where}: the direction exists only as a pickle ({', '.join(files)}); hubkit never unpickles a "
        "download, since loading a pickle can run arbitrary code. Ask the author to publish the run with "
        "`hubkit publish`, or to upload the tensor as .safetensors"
    )


def _verify(path: Path, entry: dict[str, Any], where: str) -> None:
    """Size and sha256 as hubkit.json recorded them: a truncated or swapped file is an error."""
    if not path.is_file():
        raise DirectionError(f"{where}: listed in {HUBKIT_JSON} but missing")
    size = entry.get("size")
    if isinstance(size, int) and path.stat().st_size != size:
        raise DirectionError(f"{where}: {path.stat().st_size} bytes, {HUBKIT_JSON} says {size}")
    want = entry.get("sha256")
    if want:
        got = sha256_file(path)
        if got != want:
            raise DirectionError(f"{where}: sha256 {got[:12]}… differs from {HUBKIT_JSON} ({want[:12]}…)")


def _hub_error(e: BaseException, repo_id: str, revision: str | None, filename: str | None = None) -> HubError:
    from huggingface_hub.errors import (
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
        RevisionResolutionError,
    )

    where = f"{repo_id}@{revision}" if revision else repo_id
    if filename:
        where += f": {filename}"
    if isinstance(e, HubError):
        return e
    if isinstance(e, HFValidationError):
        return HubError(f"{repo_id}: not a local directory or file, and not a valid Hub repo id (owner/name)")
    if isinstance(e, GatedRepoError):
        return HubError(f"{where}: gated repo; accept its terms on the Hub and set HF_TOKEN")
    if isinstance(e, RepositoryNotFoundError):
        return HubError(f"{where}: repository not found (or private: set HF_TOKEN)")
    if isinstance(e, RevisionNotFoundError):
        return HubError(f"{where}: no such revision (tag, branch or commit)")
    if isinstance(e, (LocalEntryNotFoundError, OfflineModeIsEnabled, RevisionResolutionError)):
        return HubError(
            f"{where}: not in the local HF cache and the Hub can't be reached; load it once online")
    first = first_line(e)
    return HubError(f"{where}: {type(e).__name__}: {first}")
