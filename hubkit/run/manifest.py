"""The run manifest ``hubkit.yaml``: the one file a researcher writes.

Parsing keeps the YAML line of every key so that an error reads ``hubkit.yaml:12: unknown key
'directons' (did you mean 'directions'?)``. The result is a tree of plain dataclasses; nothing here
touches tensors or the network.
"""

from __future__ import annotations

import datetime as _dt
import difflib
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from hubkit.errors import ManifestError
from hubkit.formats.recipe import RecipeSpec, parse_recipe

MANIFEST_NAME = "hubkit.yaml"
STATUSES = ("positive", "null-result", "regression", "inconclusive", "superseded")
ALTERNATIVES = ("greater", "less", "two-sided")
RELATIONS = ("supersedes", "superseded-by", "follow-up", "see-also")
TARGETS = ("embed_tokens", "attn_out", "mlp_down", "lm_head")
DEFAULT_TARGETS = ["embed_tokens", "attn_out", "mlp_down"]
DEFAULT_EXCLUDE = [".env", "**/.env", ".netrc", "**/.netrc", "*.pem", "**/*.pem", "**/credentials*",
                   "**/*.key", ".git/**", "**/__pycache__/**", "**/.ipynb_checkpoints/**", "**/.DS_Store"]
TODO = "TODO"  # what `hubkit init` writes where the author must fill a value
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def is_repo_id(value: str) -> bool:
    """``owner/name`` as the Hub spells repo ids: the one check every command uses."""
    return bool(_REPO_ID.match(value))


#: a files-size limit beyond 1 TB is a typo (NaN and inf are refused as well)
MAX_FILE_SIZE_MB = 1_000_000
#: bootstrap resamples of the geometry intervals: enough for any 95 % interval, small enough to compute
MAX_RESAMPLES = 100_000


@dataclass
class DirectionSpec:
    name: str
    file: str
    layer: int | None = None
    layer_convention: str = "block"
    method: str | None = None


@dataclass
class ContrastSpec:
    file: str
    label: str


@dataclass
class ArmSpec:
    id: str
    label: str | None = None
    passes: int | None = None
    n: int | None = None
    per_task: str | None = None
    this: bool = False


@dataclass
class EvaluationSpec:
    name: str
    arms: list[ArmSpec]
    n: int | None = None
    baseline: str | None = None
    alternative: str = "greater"
    pass_threshold: float = 1.0
    description: str | None = None


@dataclass
class SectionSpec:
    title: str
    file: str | None = None
    text: str | None = None


@dataclass
class RelatedSpec:
    repo_id: str
    relation: str = "see-also"
    note: str | None = None


@dataclass
class WeightsSpec:
    path: str
    publish: bool = False


@dataclass
class VectorSetSpec:
    name: str
    file: str  # a file or a folder of <member>.pt / .npy
    layers: list[int] | None = None
    layer_convention: str = "hidden_states"
    members: list[str] | None = None
    labels: dict[str, Any] = field(default_factory=dict)


@dataclass
class CompareSpec:
    before: str
    after: str
    axis: str | None = None  # a member (its shift after − before) or "principal": project every member on it


@dataclass
class AdapterSpec:
    name: str
    path: str
    base_model: str | None = None  # None: the run's base_model


@dataclass
class DataSpec:
    file: str
    description: str | None = None


@dataclass
class GeometrySpec:
    """The bootstrap behind every interval the geometry shows (recorded, so anyone can recompute it)."""

    seed: int | None = None  # None: the run's first seed, else 0
    resamples: int = 1000


@dataclass
class Manifest:
    """Everything ``hubkit.yaml`` may say; see the README for the schema."""

    title: str
    status: str
    base_model: str | None = None
    repo_id: str | None = None
    date: str | None = None
    base_model_revision: str | None = None
    license: str | None = None
    tags: list[str] = field(default_factory=list)
    status_note: str | None = None
    summary: str | None = None
    summary_file: str | None = None
    authors: list[str] = field(default_factory=list)
    compute: str | None = None
    directions: list[DirectionSpec] = field(default_factory=list)
    ranking: list[str] = field(default_factory=list)
    contrast: list[ContrastSpec] = field(default_factory=list)
    evaluations: list[EvaluationSpec] = field(default_factory=list)
    caveats: list[str] = field(default_factory=list)
    sections: list[SectionSpec] = field(default_factory=list)
    related: list[RelatedSpec] = field(default_factory=list)
    weights: WeightsSpec | None = None
    regenerate: RecipeSpec | None = None  # formats/recipe: one parser for hubkit.yaml and hubkit.json
    include: list[str] = field(default_factory=lambda: ["**"])
    exclude: list[str] = field(default_factory=list)
    allow_secrets: list[str] = field(default_factory=list)
    max_file_size_mb: float = 100.0
    vector_sets: list[VectorSetSpec] = field(default_factory=list)
    compare: list[CompareSpec] = field(default_factory=list)
    adapters: list[AdapterSpec] = field(default_factory=list)
    data: list[DataSpec] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    tests: list[Any] = field(default_factory=list)  # run.reported_tests.ReportedTest: results hubkit can't recompute
    geometry: GeometrySpec = field(default_factory=GeometrySpec)
    alpha: float = 0.05  # the significance level the card's statements are checked against

    def direction(self, name: str) -> DirectionSpec | None:
        return next((d for d in self.directions if d.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        """The manifest as plain data (for ``hubkit.json``), dropping empty values."""
        return _plain(self)


_OMIT_DEFAULT = ("alpha", "geometry")


def _plain(obj: Any) -> Any:
    if isinstance(obj, RecipeSpec):  # as written in hubkit.yaml (defaults left out: the seed recipe's stay as they were)
        out = {"direction": obj.direction, "layer": obj.layer, "targets": list(obj.targets), **obj.params_json()}
        return {k: v for k, v in out.items() if v is not None}
    if hasattr(obj, "__dataclass_fields__"):
        out = {}
        for f in fields(obj):
            raw = getattr(obj, f.name)
            if f.name in _OMIT_DEFAULT and raw == (f.default_factory() if callable(f.default_factory)
                                                   else f.default):
                continue  # keys added after round one: absent at their default, so older repos stay "unchanged"
            v = _plain(raw)
            if v is None or v == [] or v == {}:
                continue
            out[f.name] = v
        return out
    if isinstance(obj, list):
        return [_plain(v) for v in obj]
    return obj


# --------------------------------------------------------------------------- parsing with line numbers


class _Lines:
    """Maps a key path like ('evaluations', 0, 'arms') to its 1-based line in the YAML file."""

    def __init__(self, node: Any):
        self.lines: dict[tuple, int] = {}
        if node is not None:
            self._walk(node, ())

    def _walk(self, node: Any, path: tuple) -> None:
        import yaml

        self.lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                key = k.value
                self.lines[path + (key,)] = k.start_mark.line + 1
                self._walk(v, path + (key,))
                self.lines[path + (key,)] = k.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                self._walk(v, path + (i,))

    def at(self, path: tuple) -> int | None:
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.lines.get(())


class _Parser:
    def __init__(self, where: str, lines: _Lines):
        self.where = where
        self.lines = lines

    def fail(self, path: tuple, msg: str) -> ManifestError:
        line = self.lines.at(path)
        loc = f"{self.where}:{line}" if line else self.where
        return ManifestError(f"{loc}: {msg}")

    @staticmethod
    def dotted(path: tuple) -> str:
        out = ""
        for p in path:
            out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
        return out or "top level"

    def mapping(self, value: Any, path: tuple, cls: type, required: tuple[str, ...] = ()) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(path, f"{self.dotted(path)} must be a mapping, got {_kind(value)}")
        allowed = [f.name for f in fields(cls)]
        for key in value:
            if key not in allowed:
                hint = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
                tip = f" (did you mean '{hint[0]}'?)" if hint else f" (allowed: {', '.join(allowed)})"
                where = "" if not path else f" in {self.dotted(path)}"
                raise self.fail(path + (key,), f"unknown key '{key}'{where}{tip}")
        for key in required:
            if value.get(key) in (None, ""):
                raise self.fail(path, f"{self.dotted(path + (key,))} is required")
        return value

    def string(self, value: Any, path: tuple, *, allow_none: bool = True) -> str | None:
        if value is None and allow_none:
            return None
        if isinstance(value, (_dt.date, _dt.datetime)):
            return value.isoformat()
        if isinstance(value, bool) or isinstance(value, (dict, list)) or value is None:
            raise self.fail(path, f"{self.dotted(path)} must be a string, got {_kind(value)}")
        return str(value)

    def integer(self, value: Any, path: tuple, *, minimum: int | None = 0, maximum: int | None = None) -> int | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(path, f"{self.dotted(path)} must be an integer, got {_kind(value)} {value!r}")
        if minimum is not None and value < minimum:
            raise self.fail(path, f"{self.dotted(path)} must be >= {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise self.fail(path, f"{self.dotted(path)} must be <= {maximum}, got {value}")
        return value

    def number(self, value: Any, path: tuple) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(path, f"{self.dotted(path)} must be a number, got {_kind(value)}")
        try:
            return float(value)
        except OverflowError:
            raise self.fail(path, f"{self.dotted(path)} is too large") from None

    def boolean(self, value: Any, path: tuple) -> bool:
        if not isinstance(value, bool):
            raise self.fail(path, f"{self.dotted(path)} must be true or false, got {value!r}")
        return value

    def choice(self, value: Any, path: tuple, choices: tuple[str, ...]) -> str:
        s = self.string(value, path, allow_none=False)
        if s not in choices:
            hint = difflib.get_close_matches(s, choices, n=1, cutoff=0.5)
            tip = f" (did you mean '{hint[0]}'?)" if hint else ""
            raise self.fail(path, f"{self.dotted(path)} is '{s}', must be one of {' | '.join(choices)}{tip}")
        return s

    def str_list(self, value: Any, path: tuple) -> list[str]:
        if value is None:
            return []
        if isinstance(value, str):
            return [value]
        if not isinstance(value, list):
            raise self.fail(path, f"{self.dotted(path)} must be a list of strings, got {_kind(value)}")
        return [self.string(v, path + (i,), allow_none=False) for i, v in enumerate(value)]  # type: ignore[misc]

    def items(self, value: Any, path: tuple) -> list[tuple[tuple, Any]]:
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.fail(path, f"{self.dotted(path)} must be a list, got {_kind(value)}")
        return [(path + (i,), v) for i, v in enumerate(value)]


def _kind(v: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", type(None): "nothing"}.get(
        type(v), type(v).__name__
    )


MAX_MANIFEST_CHARS = 1 << 16


def _failing_scalar_line(node: Any, loader: Any) -> int | None:
    """The line of the first scalar PyYAML cannot construct (a date such as 2026-02-30), for the message."""
    import yaml

    stack = [node]
    while stack:
        n = stack.pop(0)
        if isinstance(n, yaml.ScalarNode):
            try:
                loader("").construct_object(n, deep=True)
            except Exception:  # noqa: BLE001 - only locating the value that failed
                return n.start_mark.line + 1
        elif isinstance(n, yaml.MappingNode):
            stack.extend(x for pair in n.value for x in pair)
        elif isinstance(n, yaml.SequenceNode):
            stack.extend(n.value)
    return None


def _refuse_aliases_and_duplicates(node: Any, where: str) -> None:
    """YAML anchors/aliases are refused (a 400-byte file of nested aliases expands to gigabytes) and so are
    duplicate keys (YAML keeps the last one silently: the first value the author wrote would vanish)."""
    import yaml

    seen: set[int] = set()
    stack = [node]
    while stack:
        n = stack.pop()
        if n is None:
            continue
        if id(n) in seen:  # the composer shares the node of an alias with its anchor
            raise ManifestError(f"{where}:{n.start_mark.line + 1}: YAML aliases (*name) are not allowed in hubkit.yaml")
        seen.add(id(n))
        if getattr(n, "anchor", None):
            raise ManifestError(f"{where}:{n.start_mark.line + 1}: YAML anchors (&{n.anchor}) are not allowed "
                                "in hubkit.yaml; write the value out")
        if isinstance(n, yaml.MappingNode):
            keys: dict[str, int] = {}
            for k, v in n.value:
                key = str(k.value)
                if key in keys:
                    raise ManifestError(f"{where}:{k.start_mark.line + 1}: duplicate key '{key}' (first on line "
                                        f"{keys[key]}); YAML would keep only the last")
                keys[key] = k.start_mark.line + 1
                stack += [k, v]
        elif isinstance(n, yaml.SequenceNode):
            stack += list(n.value)


def parse_manifest(text: str, where: str = MANIFEST_NAME) -> Manifest:
    """Parse manifest text; every error is a :class:`ManifestError` naming ``where:line``."""
    import yaml

    if len(text) > MAX_MANIFEST_CHARS:
        raise ManifestError(f"{where}: {len(text)} characters; a manifest is a page, not a dataset")
    try:
        loader = yaml.SafeLoader
        node = yaml.compose(text, Loader=loader)
        _refuse_aliases_and_duplicates(node, where)  # before anything is constructed: no alias bomb expands
        data = yaml.load(text, Loader=loader)
    except RecursionError as e:
        raise ManifestError(f"{where}: nested too deeply") from e
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError) as e:
        line = _failing_scalar_line(node, loader) if "node" in locals() and node is not None else None
        at = f"{where}:{line}" if line else where
        raise ManifestError(f"{at}: unreadable YAML value ({type(e).__name__}: {str(e)[:100]})") from e
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        ctx = getattr(e, "context_mark", None)
        loc = f"{where}:{mark.line + 1}" if mark else where
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        if ctx is not None and mark is not None and ctx.line != mark.line and getattr(e, "context", None):
            problem += f" ({e.context} started on line {ctx.line + 1})"
        raise ManifestError(f"{loc}: unreadable YAML: {problem}") from e
    p = _Parser(where, _Lines(node))
    if data is None:
        raise ManifestError(f"{where}: empty manifest (needs at least title and status)")
    top = p.mapping(data, (), Manifest, required=("title", "status"))
    m = Manifest(title=p.string(top["title"], ("title",), allow_none=False),  # type: ignore[arg-type]
                 status=p.choice(top["status"], ("status",), STATUSES))
    for key in ("repo_id", "date", "base_model", "base_model_revision", "license", "status_note", "summary",
                "summary_file", "compute"):
        if key in top:
            setattr(m, key, p.string(top[key], (key,)))
    for key in ("tags", "authors", "caveats", "include", "exclude", "allow_secrets", "ranking"):
        if key in top:
            setattr(m, key, p.str_list(top[key], (key,)))
    if "max_file_size_mb" in top:
        m.max_file_size_mb = p.number(top["max_file_size_mb"], ("max_file_size_mb",))
        if not 0 < m.max_file_size_mb <= MAX_FILE_SIZE_MB:
            raise p.fail(("max_file_size_mb",), f"max_file_size_mb must be > 0 and <= {MAX_FILE_SIZE_MB} "
                         f"(a number of MB), got {m.max_file_size_mb}")
    if "alpha" in top:
        m.alpha = p.number(top["alpha"], ("alpha",))
        if not 0 < m.alpha < 1:
            raise p.fail(("alpha",), f"alpha must be between 0 and 1, got {m.alpha:g}")
    if m.summary and m.summary_file:
        raise p.fail(("summary_file",), "give summary or summary_file, not both")
    if m.repo_id is not None and not is_repo_id(m.repo_id):
        raise p.fail(("repo_id",), f"repo_id must look like owner/name, got '{m.repo_id}'")

    for path, d in p.items(top.get("directions"), ("directions",)):
        d = p.mapping(d, path, DirectionSpec, required=("name", "file"))
        m.directions.append(DirectionSpec(
            name=p.string(d["name"], path + ("name",), allow_none=False),  # type: ignore[arg-type]
            file=p.string(d["file"], path + ("file",), allow_none=False),  # type: ignore[arg-type]
            layer=p.integer(d.get("layer"), path + ("layer",)),
            layer_convention=p.choice(d.get("layer_convention", "block"), path + ("layer_convention",),
                                      ("block", "hidden_states")),
            method=p.string(d.get("method"), path + ("method",)),
        ))
    names = [d.name for d in m.directions]
    for i, n in enumerate(names):
        if names.index(n) != i:
            raise p.fail(("directions", i, "name"), f"duplicate direction name '{n}'")

    for path, c in p.items(top.get("contrast"), ("contrast",)):
        c = p.mapping(c, path, ContrastSpec, required=("file",))
        file = p.string(c["file"], path + ("file",), allow_none=False)
        m.contrast.append(ContrastSpec(file=file, label=p.string(c.get("label"), path) or Path(file).stem))  # type: ignore[arg-type]

    for path, e in p.items(top.get("evaluations"), ("evaluations",)):
        m.evaluations.append(_evaluation(p, e, path))

    for path, s in p.items(top.get("sections"), ("sections",)):
        s = p.mapping(s, path, SectionSpec, required=("title",))
        spec = SectionSpec(title=p.string(s["title"], path + ("title",), allow_none=False),  # type: ignore[arg-type]
                           file=p.string(s.get("file"), path + ("file",)),
                           text=p.string(s.get("text"), path + ("text",)))
        if bool(spec.file) == bool(spec.text):
            raise p.fail(path, f"{p.dotted(path)} needs exactly one of file or text")
        m.sections.append(spec)

    for path, r in p.items(top.get("related"), ("related",)):
        r = p.mapping(r, path, RelatedSpec, required=("repo_id",))
        m.related.append(RelatedSpec(
            repo_id=p.string(r["repo_id"], path + ("repo_id",), allow_none=False),  # type: ignore[arg-type]
            relation=p.choice(r.get("relation", "see-also"), path + ("relation",), RELATIONS),
            note=p.string(r.get("note"), path + ("note",)),
        ))

    if top.get("weights") is not None:
        w = p.mapping(top["weights"], ("weights",), WeightsSpec, required=("path",))
        m.weights = WeightsSpec(path=p.string(w["path"], ("weights", "path"), allow_none=False),  # type: ignore[arg-type]
                                publish=p.boolean(w.get("publish", False), ("weights", "publish")))

    _geometry_sections(p, top, m)

    if top.get("regenerate") is not None:
        r = p.mapping(top["regenerate"], ("regenerate",), RecipeSpec, required=("direction",))
        direction = p.string(r["direction"], ("regenerate", "direction"), allow_none=False)
        if direction not in names:
            hint = difflib.get_close_matches(direction, names, n=1)  # type: ignore[arg-type]
            tip = f" (did you mean '{hint[0]}'?)" if hint else f" (directions: {', '.join(names) or 'none'})"
            raise p.fail(("regenerate", "direction"), f"regenerate.direction '{direction}' is not a direction{tip}")
        spec = m.direction(direction)  # type: ignore[arg-type]
        m.regenerate = parse_recipe(r, lambda path, msg: p.fail(("regenerate", *path), msg), directions=names,
                                    default_layer=spec.layer if spec is not None else None)
    return m


def _geometry_sections(p: _Parser, top: dict[str, Any], m: Manifest) -> None:
    """vector_sets, compare, adapters, data, seeds, tests, geometry: a persona-geometry run (seed 004)."""
    from hubkit.run.reported_tests import parse_tests

    for path, e in p.items(top.get("vector_sets"), ("vector_sets",)):
        e = p.mapping(e, path, VectorSetSpec, required=("name", "file"))
        conv = p.choice(e.get("layer_convention", "hidden_states"), path + ("layer_convention",), ("block", "hidden_states"))
        layers = e.get("layers")
        if layers is not None:
            layers = [p.integer(v, sub) for sub, v in p.items(layers, path + ("layers",))]
        labels = e.get("labels") or {}
        if not isinstance(labels, dict):
            raise p.fail(path + ("labels",), f"{p.dotted(path + ('labels',))} must be a mapping")
        spec = VectorSetSpec(p.string(e["name"], path + ("name",), allow_none=False),  # type: ignore[arg-type]
                             p.string(e["file"], path + ("file",), allow_none=False),  # type: ignore[arg-type]
                             layers, conv,
                             p.str_list(e["members"], path + ("members",)) if e.get("members") is not None else None,
                             dict(labels))
        if any(s.name == spec.name for s in m.vector_sets):
            raise p.fail(path + ("name",), f"vector set '{spec.name}' named twice")
        m.vector_sets.append(spec)
    names = [s.name for s in m.vector_sets]
    for path, e in p.items(top.get("compare"), ("compare",)):
        e = p.mapping(e, path, CompareSpec, required=("before", "after"))
        pair = CompareSpec(p.string(e["before"], path + ("before",), allow_none=False),  # type: ignore[arg-type]
                           p.string(e["after"], path + ("after",), allow_none=False),  # type: ignore[arg-type]
                           p.string(e.get("axis"), path + ("axis",)))
        for side, key in ((pair.before, "before"), (pair.after, "after")):
            if side not in names:
                raise p.fail(path + (key,), f"no vector set named '{side}' (have: {', '.join(names) or 'none'})")
        if pair.before == pair.after:
            raise p.fail(path, "before and after are the same set")
        m.compare.append(pair)
    for path, e in p.items(top.get("adapters"), ("adapters",)):
        e = p.mapping(e, path, AdapterSpec, required=("name", "path"))
        spec = AdapterSpec(p.string(e["name"], path + ("name",), allow_none=False),  # type: ignore[arg-type]
                           p.string(e["path"], path + ("path",), allow_none=False).rstrip("/"),  # type: ignore[union-attr]
                           p.string(e.get("base_model"), path + ("base_model",)))
        if any(a.name == spec.name for a in m.adapters):
            raise p.fail(path + ("name",), f"adapter '{spec.name}' named twice")
        m.adapters.append(spec)
    for path, e in p.items(top.get("data"), ("data",)):
        e = p.mapping(e, path, DataSpec, required=("file",))
        m.data.append(DataSpec(p.string(e["file"], path + ("file",), allow_none=False),  # type: ignore[arg-type]
                               p.string(e.get("description"), path + ("description",))))
    m.seeds = [p.integer(v, path, minimum=None) for path, v in p.items(top.get("seeds"), ("seeds",))]  # type: ignore[misc]
    if top.get("tests") is not None:
        line = p.lines.at(("tests",))
        m.tests = parse_tests(top["tests"], f"{p.where}:{line}: tests" if line else f"{p.where}: tests")
    if top.get("geometry") is not None:
        g = p.mapping(top["geometry"], ("geometry",), GeometrySpec)
        m.geometry = GeometrySpec(p.integer(g.get("seed"), ("geometry", "seed"), minimum=None),
                                  p.integer(g.get("resamples", 1000), ("geometry", "resamples"), minimum=100,
                                            maximum=MAX_RESAMPLES) or 1000)


def _evaluation(p: _Parser, e: Any, path: tuple) -> EvaluationSpec:
    e = p.mapping(e, path, EvaluationSpec, required=("name", "arms"))
    ev = EvaluationSpec(
        name=p.string(e["name"], path + ("name",), allow_none=False),  # type: ignore[arg-type]
        arms=[],
        n=p.integer(e.get("n"), path + ("n",), minimum=1),
        baseline=p.string(e.get("baseline"), path + ("baseline",)),
        alternative=p.choice(e.get("alternative", "greater"), path + ("alternative",), ALTERNATIVES),
        pass_threshold=p.number(e.get("pass_threshold", 1.0), path + ("pass_threshold",)),
        description=p.string(e.get("description"), path + ("description",)),
    )
    for apath, a in p.items(e["arms"], path + ("arms",)):
        a = p.mapping(a, apath, ArmSpec, required=("id",))
        arm = ArmSpec(
            id=p.string(a["id"], apath + ("id",), allow_none=False),  # type: ignore[arg-type]
            label=p.string(a.get("label"), apath + ("label",)),
            passes=p.integer(a.get("passes"), apath + ("passes",)),
            n=p.integer(a.get("n"), apath + ("n",), minimum=1),
            per_task=p.string(a.get("per_task"), apath + ("per_task",)),
            this=p.boolean(a.get("this", False), apath + ("this",)),
        )
        n = arm.n or ev.n
        if arm.per_task is None:
            if arm.passes is None:
                raise p.fail(apath, f"{p.dotted(apath)} needs passes (or a per_task file)")
            if n is None:
                raise p.fail(apath, f"{p.dotted(apath)} needs n (on the arm or the evaluation)")
        if arm.passes is not None and n is not None and arm.passes > n:
            raise p.fail(apath + ("passes",), f"{p.dotted(apath)}: passes {arm.passes} > n {n}")
        ev.arms.append(arm)
    ids = [a.id for a in ev.arms]
    for i, a in enumerate(ids):
        if ids.index(a) != i:
            raise p.fail(path + ("arms", i, "id"), f"duplicate arm id '{a}' in {ev.name}")
    if ev.baseline is not None and ev.baseline not in ids:
        hint = difflib.get_close_matches(ev.baseline, ids, n=1)
        tip = f" (did you mean '{hint[0]}'?)" if hint else f" (arms: {', '.join(ids)})"
        raise p.fail(path + ("baseline",), f"baseline '{ev.baseline}' is not an arm of {ev.name}{tip}")
    return ev


def load_manifest(run_dir: str | Path) -> Manifest:
    """Read ``RUN_DIR/hubkit.yaml``."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise ManifestError(f"{run_dir}: no such directory")
    if not run_dir.is_dir():
        raise ManifestError(f"{run_dir}: is a file, not a run directory")
    path = run_dir / MANIFEST_NAME
    if not path.is_file():
        empty = not any(run_dir.iterdir())
        why = "the directory is empty" if empty else "run `hubkit init` to draft one"
        raise ManifestError(f"{path}: no manifest ({why})")
    if not path.resolve().is_relative_to(run_dir.resolve()):
        raise ManifestError(f"{path}: a symlink to outside the run (the manifest must be the run's own file)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ManifestError(f"{path}: not UTF-8 text (byte {e.start})") from e
    return parse_manifest(text, where=str(path))
