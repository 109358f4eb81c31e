"""``hubkit.json``: the one owner of the file that describes a published repo.

Written by a publish (kind ``run``), by ``regenerate --push-to`` (``regenerated-weights``) and by the
companion dataset (``dataset``); read back by the next publish (its history and what it may delete), by
``pull``, ``load_direction(s)``, ``regenerate`` and ``export``. Nothing else touches its keys as strings.

What is read may come from anyone's repo, so :func:`parse` checks every field before handing it on:
types, paths confined to the repo (relative, no ``..``), sizes and counts bounded, sha256s well formed.
A field that fails is one :class:`HubJsonError` line naming the file and the key.

Schema versions: 1 is every file written before the ``schema`` key existed (same fields); 2 adds
``schema``. Unknown top-level keys are kept (``extra``) so a newer hubkit's file survives a round trip.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, Literal

from hubkit.errors import HubkitError
from hubkit.formats.recipe import RecipeSpec, parse_recipe
from hubkit.formats.safefiles import strict_json

HUBKIT_JSON = "hubkit.json"
CARD = "README.md"
SCHEMA = 2
MAX_BYTES = 64 * 1024 * 1024  # a hubkit.json larger than this is not ours
MAX_ITEMS = 1_000_000  # files, layers, history entries: any list longer than this is not ours
MAX_SIZE = 1 << 50  # a file size above a petabyte is a crafted value
MAX_D = 1 << 20  # hidden sizes: the largest models have d ~ 16k

Kind = Literal["run", "regenerated-weights", "dataset"]
KINDS: tuple[str, ...] = ("run", "regenerated-weights", "dataset")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class HubJsonError(HubkitError):
    """A ``hubkit.json`` (usually downloaded) is malformed or names a path outside its repo."""


# --------------------------------------------------------------------------- records


@dataclass
class FileRecord:
    """One file of the repo as hubkit.json lists it (the card's Files table and pull's check)."""

    path: str
    size: int
    sha256: str
    kind: str

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "sha256": self.sha256, "kind": self.kind}


@dataclass
class HistoryEntry:
    version: str
    date: str | None = None
    summary: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "date": self.date, "summary": self.summary}


@dataclass
class DirectionRecord:
    name: str
    file: str | None
    canonical: str | None
    layers: list[int]
    d: int
    selected_layer: int | None
    layer_convention: str
    unit_norm: bool | None
    method: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "file": self.file, "canonical": self.canonical, "layers": self.layers,
                "d": self.d, "selected_layer": self.selected_layer, "layer_convention": self.layer_convention,
                "unit_norm": self.unit_norm, "method": self.method}


@dataclass
class RegenerateRecord:
    """The recipe that rebuilds the weights (its parameters: :class:`~hubkit.formats.recipe.RecipeSpec`) and
    the base it was recorded against."""

    spec: RecipeSpec
    layer_convention: str
    base_model: str | None
    base_model_revision: str | None
    model_type: str | None = None
    shards_sha256: dict[str, str] | None = None

    @property
    def direction(self) -> str:
        return self.spec.direction

    @property
    def layer(self) -> Any:
        return self.spec.layer

    @property
    def targets(self) -> tuple[str, ...]:
        return self.spec.targets

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"direction": self.spec.direction, "layer": self.spec.layer,
                               "layer_convention": self.layer_convention, "targets": list(self.spec.targets),
                               "base_model": self.base_model, "base_model_revision": self.base_model_revision}
        out.update(self.spec.params_json())
        if self.model_type:
            out["model_type"] = self.model_type
        if self.shards_sha256:
            out["shards_sha256"] = dict(sorted(self.shards_sha256.items()))
        return out


@dataclass
class HubJson:
    """The whole file. ``kind`` decides which fields are written (and in which order: stable bytes)."""

    kind: str = "run"
    hubkit_version: str | None = None
    version: str | None = None
    repo_id: str | None = None
    run: dict[str, Any] | None = None  # the manifest as parsed (its own schema: hubkit.yaml's)
    directions: list[DirectionRecord] = field(default_factory=list)
    regenerate: RegenerateRecord | None = None
    dataset_repo: str | None = None
    history: list[HistoryEntry] = field(default_factory=list)
    files: list[FileRecord] = field(default_factory=list)
    owned: list[str] = field(default_factory=list)
    source: dict[str, Any] | None = None  # regenerated-weights: where the weights come from
    model_repo: str | None = None  # dataset: the model repo it belongs to
    configs: list[dict[str, Any]] = field(default_factory=list)  # dataset: its configs
    extra: dict[str, Any] = field(default_factory=dict)  # sections of later kinds (vector sets, ...)
    schema: int = SCHEMA

    def file(self, path: str) -> FileRecord | None:
        return next((f for f in self.files if f.path == path), None)

    def sha256s(self) -> dict[str, str]:
        """path → sha256 of every listed file."""
        return {f.path: f.sha256 for f in self.files}

    def direction(self, name: str) -> DirectionRecord | None:
        return next((d for d in self.directions if d.name == name), None)

    def set_files(self, files: list[FileRecord]) -> None:
        """The file list and what this publish owns (hubkit.json itself included)."""
        self.files = sorted(files, key=lambda f: f.path)
        self.owned = sorted([f.path for f in self.files] + [HUBKIT_JSON])

    def to_dict(self) -> dict[str, Any]:
        head: dict[str, Any] = {"schema": self.schema, "hubkit_version": self.hubkit_version}
        if self.kind == "dataset":
            body = {"kind": self.kind, "model_repo": self.model_repo, "configs": self.configs}
        elif self.kind == "regenerated-weights":
            body = {"kind": self.kind, "version": self.version, "repo_id": self.repo_id, "source": self.source,
                    "history": [h.to_dict() for h in self.history]}
        else:
            body = {"version": self.version, "repo_id": self.repo_id, "run": self.run,
                    "directions": [d.to_dict() for d in self.directions],
                    "regenerate": None if self.regenerate is None else self.regenerate.to_dict(),
                    **self.extra, "dataset_repo": self.dataset_repo,
                    "history": [h.to_dict() for h in self.history]}
        tail = {"files": [f.to_dict() for f in self.files], "owned": list(self.owned)}
        return {**head, **body, **tail}

    def to_bytes(self) -> bytes:
        return meta_bytes(self.to_dict())


def meta_bytes(meta: dict[str, Any]) -> bytes:
    """hubkit.json as written: indented, key order kept, UTF-8."""
    return (json.dumps(meta, indent=2, sort_keys=False, ensure_ascii=False) + "\n").encode("utf-8")


# --------------------------------------------------------------------------- parsing untrusted files


def confined(path: Any, where: str) -> str:
    """A repo-relative POSIX path that stays inside the repo, or a :class:`HubJsonError`."""
    if not isinstance(path, str) or not path or len(path) > 1000:
        raise HubJsonError(f"{where}: expected a relative path, got {_show(path)}")
    p = PurePosixPath(path)
    if (p.is_absolute() or ".." in p.parts or "\\" in path or "\0" in path or path.startswith("~")
            or any(part in ("", ".") for part in path.split("/"))):
        raise HubJsonError(f"{where}: path '{_show(path)}' leaves the repo (absolute, '..' or odd); refused")
    return path


class _Reader:
    """Typed access to one parsed object, every failure one line naming file and key."""

    def __init__(self, where: str):
        self.where = where

    def fail(self, key: str, msg: str) -> HubJsonError:
        return HubJsonError(f"{self.where}: {key}: {msg}")

    def obj(self, v: Any, key: str, *, optional: bool = True) -> dict[str, Any] | None:
        if v is None and optional:
            return None
        if not isinstance(v, dict):
            raise self.fail(key, f"expected an object, got {_kind(v)}")
        return v

    def lst(self, v: Any, key: str) -> list[Any]:
        if v is None:
            return []
        if not isinstance(v, list):
            raise self.fail(key, f"expected a list, got {_kind(v)}")
        if len(v) > MAX_ITEMS:
            raise self.fail(key, f"{len(v)} entries; refused")
        return v

    def text(self, v: Any, key: str, *, optional: bool = True) -> str | None:
        if v is None and optional:
            return None
        if not isinstance(v, str) or len(v) > 100_000:
            raise self.fail(key, f"expected a string, got {_kind(v)}")
        return v

    def integer(self, v: Any, key: str, *, lo: int = 0, hi: int = MAX_SIZE, optional: bool = False) -> int | None:
        if v is None and optional:
            return None
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise self.fail(key, f"expected an integer in [{lo}, {hi}], got {_show(v)}")
        return v

    def boolean(self, v: Any, key: str) -> bool | None:
        if v is None or isinstance(v, bool):
            return v
        raise self.fail(key, f"expected true/false, got {_kind(v)}")

    def sha(self, v: Any, key: str) -> str:
        if not isinstance(v, str) or not _SHA256.fullmatch(v):
            raise self.fail(key, f"expected a sha256 (64 hex digits), got {_show(v)}")
        return v


def parse(data: bytes | str | dict[str, Any], where: str = HUBKIT_JSON) -> HubJson:
    """A :class:`HubJson` from the file's bytes (or an already decoded object), every field checked."""
    if isinstance(data, (bytes, str)):
        if len(data) > MAX_BYTES:
            raise HubJsonError(f"{where}: {len(data)} bytes, larger than any hubkit.json; refused")
        try:
            data = strict_json(data)  # JSON only (a download is never unpickled); no key given twice, no NaN
        except (ValueError, RecursionError) as e:
            raise HubJsonError(f"{where}: not valid JSON ({str(e).splitlines()[0][:200]})") from e
    if not isinstance(data, dict):
        raise HubJsonError(f"{where}: expected a JSON object, got {_kind(data)}")
    r = _Reader(where)
    schema = data.get("schema", 1)
    if isinstance(schema, bool) or not isinstance(schema, int) or schema < 1:
        raise r.fail("schema", f"expected a positive integer, got {_show(schema)}")
    if schema > SCHEMA:
        raise r.fail("schema", f"version {schema} is newer than this hubkit reads ({SCHEMA}); upgrade hubkit")
    kind = data.get("kind", "run")
    if kind not in KINDS:
        raise r.fail("kind", f"'{_show(kind)}' is not one of {', '.join(KINDS)}")
    hj = HubJson(kind=kind, schema=SCHEMA)
    hj.hubkit_version = r.text(data.get("hubkit_version"), "hubkit_version")
    hj.version = r.text(data.get("version"), "version")
    hj.repo_id = r.text(data.get("repo_id"), "repo_id")
    hj.run = r.obj(data.get("run"), "run")
    hj.dataset_repo = r.text(data.get("dataset_repo"), "dataset_repo")
    hj.model_repo = r.text(data.get("model_repo"), "model_repo")
    hj.source = r.obj(data.get("source"), "source")
    hj.configs = [r.obj(c, f"configs[{i}]", optional=False) for i, c in enumerate(r.lst(data.get("configs"), "configs"))]  # type: ignore[misc]
    for i, f in enumerate(r.lst(data.get("files"), "files")):
        key = f"files[{i}]"
        f = r.obj(f, key, optional=False)
        hj.files.append(FileRecord(confined(f.get("path"), f"{where}: {key}.path"),
                                   r.integer(f.get("size"), f"{key}.size"),  # type: ignore[arg-type]
                                   r.sha(f.get("sha256"), f"{key}.sha256"),
                                   r.text(f.get("kind"), f"{key}.kind") or "data"))
    seen: set[str] = set()
    for f in hj.files:
        if f.path in seen:
            raise r.fail("files", f"'{f.path}' listed twice")
        seen.add(f.path)
    hj.owned = [confined(p, f"{where}: owned[{i}]") for i, p in enumerate(r.lst(data.get("owned"), "owned"))]
    for i, h in enumerate(r.lst(data.get("history"), "history")):
        h = r.obj(h, f"history[{i}]", optional=False)
        version = r.text(h.get("version"), f"history[{i}].version")
        if version is not None:  # an entry without a version is skipped, as before
            hj.history.append(HistoryEntry(version, r.text(h.get("date"), f"history[{i}].date"),
                                           r.text(h.get("summary"), f"history[{i}].summary")))
    for i, d in enumerate(r.lst(data.get("directions"), "directions")):
        hj.directions.append(_direction(r, r.obj(d, f"directions[{i}]", optional=False), f"directions[{i}]"))  # type: ignore[arg-type]
    regen = r.obj(data.get("regenerate"), "regenerate")
    if regen is not None:
        hj.regenerate = _regenerate(r, regen)
    known = {"schema", "kind", "hubkit_version", "version", "repo_id", "run", "directions", "regenerate",
             "dataset_repo", "history", "files", "owned", "source", "model_repo", "configs"}
    hj.extra = {k: v for k, v in data.items() if k not in known}
    return hj


def _direction(r: _Reader, d: dict[str, Any], key: str) -> DirectionRecord:
    name = r.text(d.get("name"), f"{key}.name", optional=False)
    if not name or not re.fullmatch(r"[A-Za-z0-9_.\-]{1,200}", name):
        raise r.fail(f"{key}.name", f"'{_show(name)}' is not a direction name")
    canonical = d.get("canonical")
    file = d.get("file")
    layers = [r.integer(v, f"{key}.layers", lo=-1, hi=MAX_ITEMS) for v in r.lst(d.get("layers"), f"{key}.layers")]
    return DirectionRecord(
        name=name,
        file=None if file is None else confined(file, f"{r.where}: {key}.file"),
        canonical=None if canonical is None else confined(canonical, f"{r.where}: {key}.canonical"),
        layers=layers,  # type: ignore[arg-type]
        d=r.integer(d.get("d", 0), f"{key}.d", hi=MAX_D),  # type: ignore[arg-type]
        selected_layer=r.integer(d.get("selected_layer"), f"{key}.selected_layer", lo=-1, hi=MAX_ITEMS,
                                 optional=True),
        layer_convention=_convention(r, d.get("layer_convention"), f"{key}.layer_convention") or "block",
        unit_norm=r.boolean(d.get("unit_norm"), f"{key}.unit_norm"),
        method=r.text(d.get("method"), f"{key}.method"),
    )


def _regenerate(r: _Reader, g: dict[str, Any]) -> RegenerateRecord:
    known = {"direction", "layer", "layer_convention", "targets", "base_model", "base_model_revision",
             "model_type", "shards_sha256", "weight", "norm", "project_out"}
    unknown = sorted(k for k in g if k not in known)
    if unknown:
        raise r.fail(f"regenerate.{unknown[0]}", "not a recipe parameter this hubkit knows; upgrade hubkit")
    spec = parse_recipe(g, lambda path, msg: r.fail("regenerate." + ".".join(map(str, path)), msg))
    shards = r.obj(g.get("shards_sha256"), "regenerate.shards_sha256")
    if shards is not None:
        shards = {confined(k, f"{r.where}: regenerate.shards_sha256"): r.sha(v, f"regenerate.shards_sha256.{k}")
                  for k, v in shards.items()}
    return RegenerateRecord(
        spec=spec,
        layer_convention=_convention(r, g.get("layer_convention"), "regenerate.layer_convention") or "",
        base_model=r.text(g.get("base_model"), "regenerate.base_model"),
        base_model_revision=r.text(g.get("base_model_revision"), "regenerate.base_model_revision"),
        model_type=r.text(g.get("model_type"), "regenerate.model_type"),
        shards_sha256=shards,
    )


def _convention(r: _Reader, v: Any, key: str) -> str | None:
    if v is None:
        return None
    if v not in ("block", "hidden_states"):
        raise r.fail(key, f"'{_show(v)}' is not a layer convention (block, hidden_states)")
    return str(v)


def _kind(v: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(v), "a number" if isinstance(v, (int, float)) else type(v).__name__)


def _show(v: Any) -> str:
    s = repr(v) if not isinstance(v, str) else v
    s = s.encode("unicode_escape").decode("ascii")
    return s if len(s) <= 60 else s[:57] + "…"
