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
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hubkit.errors import DirectionError, HubError, PickleRefused
from hubkit.formats.atomic import staging_dir
from hubkit.formats.directions import DirectionSet, read_canonical, read_direction_file
from hubkit.formats.hubjson import HUBKIT_JSON, DirectionRecord
from hubkit.hub import Hub
from hubkit.source import RepoSource, open_source, verify

if TYPE_CHECKING:
    import torch

    from hubkit.formats.vector_sets import VectorSet

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
    if path.is_file():
        ds = read_direction_file(path, name=name, layer=layer) if path.suffix in _SAFE_SUFFIXES else None
        if ds is None:
            raise PickleRefused(
                f"{path}: hubkit loads only .safetensors or .npy directions, which need no unpickling")
        return LoadedDirections(**vars(ds), path=path)
    source = open_source(repo_or_dir, revision)
    if source.meta is not None:
        ds, where, declared = _from_hubkit_json(source, name)
    else:
        ds, where = _from_plain_repo(source, name, layer)
        declared = None
    ds = LoadedDirections(**vars(ds), repo_id=source.repo_id, revision=source.revision, commit=source.commit,
                          path=where, declared_unit_norm=declared)
    if layer is not None:
        ds.vector(layer)  # raises with the available layers
        ds.selected_layer = layer
    return ds


def load_vector_set(source: str | Path, name: str | None = None, revision: str | None = None) -> VectorSet:
    """A published vector set (personas, traits): ``.members``, ``.layers``, ``.layer_convention``, ``.labels``
    and ``vs[member]`` → float32 ``[n_layers, d]``. ``source`` is a Hub repo id (``revision`` resolved once to a
    commit), a staged / pulled folder, or a canonical ``.safetensors`` file. The file is checked against the
    sha256 ``hubkit.json`` records; nothing is unpickled."""
    from hubkit.formats.hubjson import confined
    from hubkit.formats.vector_sets import check_name, read_canonical
    from hubkit.formats.vector_sets import load_vector_set as load_file

    path = Path(source)
    if path.is_file():
        return load_file(path, name)
    src = open_source(source, revision)
    entries = (src.meta.extra.get("vector_sets") if src.meta is not None else None) or []
    if not isinstance(entries, list) or not all(isinstance(e, dict) and isinstance(e.get("name"), str)
                                                for e in entries):
        raise DirectionError(f"{src.where}: {HUBKIT_JSON}: vector_sets is not a list of named sets")
    names = [e["name"] for e in entries]
    if name is None and len(names) != 1:
        raise DirectionError(f"{src.where}: {len(names)} vector sets ({', '.join(names) or 'none'}); pass name=")
    entry = next((e for e in entries if e["name"] == (name or names[0])), None)
    if entry is None:
        raise DirectionError(f"{src.where}: no vector set '{name}' (has {', '.join(names) or 'none'})")
    rel = confined(entry.get("canonical"), f"{src.where}: {HUBKIT_JSON}: vector_sets.{entry['name']}.canonical")
    check_name(entry["name"], src.where, "set")
    return read_canonical(src.verified(rel, DirectionError), f"{src.where}: {rel}")


def pull(repo_id: str, revision: str | None = None, *, out: str | Path, progress: bool = True) -> PullResult:
    """Download a published run into ``out`` (a new or empty directory) to inspect or re-publish it.

    The revision is resolved to a commit once and the snapshot taken at that commit, into a folder beside
    ``out``; every file ``hubkit.json`` lists is checked against its size and sha256 there, and only then is
    the folder renamed to ``out`` (a failed check leaves nothing). HF's bookkeeping (``.cache/``) and the
    Hub's ``.gitattributes`` are removed, so the folder publishes again as a run."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        # Files left from another version would be re-published as if they belonged to this one.
        raise HubError(f"{out}: exists and is not an empty directory; pull into a new one")
    hub = Hub()
    commit = hub.resolve(repo_id, revision)
    with staging_dir(out, overwrite=True) as tmp, _progress(progress):
        hub.snapshot(repo_id, commit, local_dir=tmp)
        shutil.rmtree(tmp / ".cache", ignore_errors=True)
        (tmp / ".gitattributes").unlink(missing_ok=True)
        source = RepoSource.local(tmp)
        if source.meta is not None:
            for record in source.meta.files:
                where = f"{repo_id}@{commit[:12]}: {record.path}"
                path = source.fetch(record.path, missing_ok=True)
                if path is None:
                    raise DirectionError(f"{where}: listed in {HUBKIT_JSON} but missing")
                verify(path, record.size, record.sha256, where, DirectionError)
        files = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())
    return PullResult(path=out, repo_id=repo_id, revision=revision, commit=commit, files=files)


@contextmanager
def _progress(enabled: bool) -> Iterator[None]:
    """huggingface_hub's download bars on a terminal only (and never with ``--no-progress``)."""
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    was = are_progress_bars_disabled()
    if not enabled or not sys.stderr.isatty():
        disable_progress_bars()
    try:
        yield
    finally:
        if not was:
            enable_progress_bars()


# --------------------------------------------------------------------------- sources


def _from_hubkit_json(source: RepoSource, name: str | None) -> tuple[DirectionSet, Path, bool | None]:
    assert source.meta is not None
    entry = _pick(source.meta.directions, name, source.where)
    rel = entry.canonical or entry.file or ""
    where = f"{source.where}: {rel}"
    if not rel.endswith(".safetensors"):
        raise _pickle_refused(source.where, [rel])
    if source.fetch(rel, missing_ok=True) is None:
        raise DirectionError(f"{where}: listed in {HUBKIT_JSON} but missing from the repo")
    path = source.verified(rel, DirectionError)
    if entry.canonical:
        ds = read_canonical(path, display=where)
    else:  # an older or hand-written hubkit.json pointing at a plain safetensors file
        ds = read_direction_file(path, layer=entry.selected_layer, display=where,
                                 layer_convention=entry.layer_convention)
    if entry.layer_convention != ds.layer_convention:
        raise DirectionError(
            f"{where}: layer convention '{ds.layer_convention}' disagrees with {HUBKIT_JSON} "
            f"('{entry.layer_convention}')"
        )
    if ds.selected_layer is None and entry.selected_layer is not None:
        ds.selected_layer = entry.selected_layer
    ds.base_model = ds.base_model or (source.meta.run or {}).get("base_model")
    ds.name = entry.name
    return ds, path, entry.unit_norm


def _from_plain_repo(source: RepoSource, name: str | None, layer: int | None) -> tuple[DirectionSet, Path]:
    files = source.list_files()
    safe = [f for f in files if f.endswith(_SAFE_SUFFIXES) and not _is_weights(f)]
    pickled = [f for f in files if f.endswith(_PICKLE_SUFFIXES) and not _is_weights(f)]
    if name is not None:
        safe = [f for f in safe if Path(f).stem == name or f == name]
        pickled = [f for f in pickled if Path(f).stem == name or f == name]
    if not safe:
        if pickled:
            raise _pickle_refused(source.where, pickled)
        raise DirectionError(
            f"{source.where}: no {HUBKIT_JSON} and no direction file (.safetensors or .npy)"
            + (f" named '{name}'" if name else "")
        )
    if len(safe) > 1:
        raise DirectionError(f"{source.where}: several direction files ({', '.join(safe)}); pass name=")
    path = source.fetch(safe[0], missing_ok=True)
    if path is None:
        raise DirectionError(f"{source.where}: {safe[0]} vanished while loading")
    return read_direction_file(path, layer=layer, display=f"{source.where}: {safe[0]}"), path


# --------------------------------------------------------------------------- helpers


def _pick(entries: list[DirectionRecord], name: str | None, where: str) -> DirectionRecord:
    names = [e.name for e in entries]
    if not entries:
        raise DirectionError(f"{where}: {HUBKIT_JSON} lists no directions")
    if name is None:
        if len(entries) == 1:
            return entries[0]
        raise DirectionError(f"{where}: {len(entries)} directions ({', '.join(names)}); pass name=")
    for e in entries:
        if e.name == name:
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
