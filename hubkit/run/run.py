"""A research run: the manifest plus every artifact it names, loaded and checked.

``validate_run`` collects every problem (one line each) instead of stopping at the first, so a
researcher fixes a run in one pass; ``load_run`` is the strict form the other pipelines use.
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from hubkit.errors import HubkitError, ManifestError, ValidationFailed
from hubkit.run.contrast import ContrastSet, read_contrast
from hubkit.run.evaluations import Evaluation, load_evaluation
from hubkit.run.manifest import DEFAULT_EXCLUDE, MANIFEST_NAME, Manifest, load_manifest
from hubkit.run.ranking import Ranking, read_ranking

if TYPE_CHECKING:
    from hubkit.formats.directions import DirectionSet

REPORT_NAMES = ("TASK", "RESEARCH", "PLAN", "RESULTS", "RESULTS_FINAL", "VERIFY", "NOTES", "README")


@dataclass
class FileEntry:
    path: str  # POSIX path relative to the run root
    size: int
    kind: str  # manifest | direction | ranking | contrast | results | script | notes | report | weights | data
    included: bool = True
    reason: str | None = None  # why a file is left out


@dataclass
class Section:
    title: str
    text: str
    source: str | None = None


@dataclass
class Run:
    root: Path
    manifest: Manifest
    directions: list[DirectionSet] = field(default_factory=list)
    rankings: list[Ranking] = field(default_factory=list)
    contrasts: list[ContrastSet] = field(default_factory=list)
    evaluations: list[Evaluation] = field(default_factory=list)
    files: list[FileEntry] = field(default_factory=list)
    summary: str | None = None
    sections: list[Section] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def included_files(self) -> list[FileEntry]:
        return [f for f in self.files if f.included]

    def direction(self, name: str) -> DirectionSet:
        return next(d for d in self.directions if d.name == name)

    def ranking_for(self, direction: str) -> Ranking | None:
        """The ranking CSV that belongs to a direction: the one named after it, or the only one."""
        named = [r for r in self.rankings if direction in PurePosixPath(r.file).stem]
        if named:
            return named[0]
        return self.rankings[0] if len(self.rankings) == 1 else None


@dataclass
class ValidationReport:
    run: Run | None
    problems: list[str]
    notes: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


def matches(path: str, patterns: list[str]) -> bool:
    """gitignore-like matching: ``**`` spans folders, a pattern without '/' also matches the basename,
    and ``dir/`` matches everything below ``dir``."""
    name = path.rsplit("/", 1)[-1]
    for pat in patterns:
        if pat.endswith("/"):
            if path.startswith(pat) or fnmatch.fnmatchcase(path, pat + "*"):
                return True
            continue
        if fnmatch.fnmatchcase(path, pat) or ("/" not in pat and fnmatch.fnmatchcase(name, pat)):
            return True
        if pat.startswith("**/") and fnmatch.fnmatchcase(path, pat[3:]):
            return True
    return False


def _safe_rel(run_dir: Path, rel: str, where: str) -> Path:
    p = PurePosixPath(rel)
    if p.is_absolute() or ".." in p.parts:
        raise ManifestError(f"{where}: path '{rel}' must be relative and inside the run directory")
    return run_dir / rel


def _walk(root: Path) -> list[tuple[str, int]]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in (".git", "__pycache__"))
        for fn in sorted(filenames):
            full = Path(dirpath) / fn
            if full.is_symlink() or not full.is_file():
                continue
            out.append((full.relative_to(root).as_posix(), full.stat().st_size))
    return sorted(out)


def classify(path: str, m: Manifest, role: dict[str, str]) -> str:
    if path in role:
        return role[path]
    if m.weights and (path + "/").startswith(m.weights.path.rstrip("/") + "/"):
        return "weights"
    top = path.split("/", 1)[0]
    stem = PurePosixPath(path).stem.upper()
    if top == "scripts" or path.endswith((".py", ".sh", ".ipynb")):
        return "script"
    if top == "notes" or path.endswith(".log"):
        return "notes"
    if path.endswith(".md") and (stem in REPORT_NAMES or "/" not in path):
        return "report"
    return "data"


def inventory(run_dir: Path, m: Manifest, role: dict[str, str], *, with_weights: bool = False) -> list[FileEntry]:
    """Every file of the run with its kind and whether it goes into the repo (and why not)."""
    limit = int(m.max_file_size_mb * 1024 * 1024)
    entries = []
    for rel, size in _walk(run_dir):
        kind = "manifest" if rel == MANIFEST_NAME else classify(rel, m, role)
        e = FileEntry(rel, size, kind)
        if rel in role or kind == "manifest":
            pass  # files the manifest names are always published
        elif matches(rel, DEFAULT_EXCLUDE) and not matches(rel, m.allow_secrets):
            e.included, e.reason = False, "credential-like file, excluded by default"
        elif kind == "weights":
            if not (with_weights or (m.weights and m.weights.publish)):
                e.included = False
                e.reason = "weights not published" + (" (regenerable from the recipe)" if m.regenerate else "")
        elif not matches(rel, m.include) or matches(rel, m.exclude):
            e.included, e.reason = False, "matches exclude" if matches(rel, m.exclude) else "not in include"
        elif size > limit:
            e.included, e.reason = False, f"over the {m.max_file_size_mb:g} MB limit (max_file_size_mb)"
        entries.append(e)
    return entries


def validate_run(run_dir: str | Path, *, with_weights: bool = False) -> ValidationReport:
    """Load every artifact the manifest names, collecting one line per problem."""
    run_dir = Path(run_dir)
    m = load_manifest(run_dir)  # a broken manifest stops here: nothing else can be read
    where = str(run_dir / MANIFEST_NAME)
    run = Run(root=run_dir, manifest=m)
    problems: list[str] = []
    role: dict[str, str] = {}

    def attempt(fn, *args, **kw):
        try:
            return fn(*args, **kw)
        except HubkitError as e:
            problems.append(str(e))
            return None

    def exists(rel: str, key: str, kind: str) -> Path | None:
        try:
            p = _safe_rel(run_dir, rel, f"{where}: {key}")
        except ManifestError as e:
            problems.append(str(e))
            return None
        if not p.is_file():
            problems.append(f"{where}: {key}: file '{rel}' not found")
            return None
        role[rel] = kind
        return p

    for i, d in enumerate(m.directions):
        p = exists(d.file, f"directions[{i}].file", "direction")
        if p is not None:
            from hubkit.formats.directions import read_direction_file

            ds = attempt(read_direction_file, p, name=d.name, layer=d.layer,
                         layer_convention=d.layer_convention, display=d.file)
            if ds is not None:
                ds.base_model, ds.method, ds.source = m.base_model, d.method, d.file
                run.directions.append(ds)
                if not ds.unit_norm:
                    run.notes.append(f"{d.file}: not unit-norm (norms {min(ds.norms.values()):.3g}–"
                                     f"{max(ds.norms.values()):.3g}); canonical copy keeps the values as they are")
    for i, r in enumerate(m.ranking):
        p = exists(r, f"ranking[{i}]", "ranking")
        if p is not None:
            rk = attempt(read_ranking, p, r)
            if rk is not None:
                run.rankings.append(rk)
    for i, c in enumerate(m.contrast):
        p = exists(c.file, f"contrast[{i}].file", "contrast")
        if p is not None:
            cs = attempt(read_contrast, p, c.file, c.label)
            if cs is not None:
                run.contrasts.append(cs)
                for line, first in cs.duplicates:
                    run.notes.append(f"{c.file}:{line}: duplicate prompt (same as line {first})")
    for i, e in enumerate(m.evaluations):
        ok = True
        for j, a in enumerate(e.arms):
            if a.per_task and exists(a.per_task, f"evaluations[{i}].arms[{j}].per_task", "results") is None:
                ok = False
        if ok:
            ev = attempt(load_evaluation, e, run_dir, where)
            if ev is not None:
                run.evaluations.append(ev)
    if m.summary_file:
        p = exists(m.summary_file, "summary_file", "report")
        if p is not None:
            run.summary = p.read_text(encoding="utf-8")
    else:
        run.summary = m.summary
    for i, s in enumerate(m.sections):
        if s.file:
            p = exists(s.file, f"sections[{i}].file", "report")
            if p is not None:
                run.sections.append(Section(s.title, p.read_text(encoding="utf-8").strip(), s.file))
        else:
            run.sections.append(Section(s.title, (s.text or "").strip()))
    if m.weights:
        wp = run_dir / m.weights.path
        if not wp.is_dir():
            problems.append(f"{where}: weights.path: folder '{m.weights.path}' not found")
        elif not (wp / "config.json").is_file():
            problems.append(f"{where}: weights.path: '{m.weights.path}' has no config.json")

    _cross_check(run, problems, where)
    run.files = inventory(run_dir, m, role, with_weights=with_weights)
    big = [f for f in run.files if not f.included]
    for f in big:
        run.notes.append(f"{f.path}: left out ({f.reason})")
    return ValidationReport(run=run, problems=problems, notes=run.notes)


def _cross_check(run: Run, problems: list[str], where: str) -> None:
    """Checks across artifacts: one d, rankings cover the selected layer, the recipe's layer exists."""
    ds = {d.name: d.d for d in run.directions}
    if len(set(ds.values())) > 1:
        parts = ", ".join(f"{n}: d={d}" for n, d in ds.items())
        problems.append(f"{where}: directions have different d ({parts})")
    for d in run.directions:
        rk = run.ranking_for(d.name)
        if rk is None:
            continue
        if d.selected_layer is not None and d.selected_layer not in rk.layers:
            problems.append(f"{rk.file}: no row for {d.name}'s selected layer {d.selected_layer} "
                            f"({d.layer_convention} convention)")
        if len(d.layers) > 1 and not set(rk.layers) <= set(d.layers):
            extra = sorted(set(rk.layers) - set(d.layers))
            problems.append(f"{rk.file}: layers {extra[:5]} not in {d.source} (has {d.layer_ids[0]}–"
                            f"{d.layer_ids[-1]})")
    r = run.manifest.regenerate
    if r is not None and r.direction in ds:
        d = run.direction(r.direction)
        layer = r.layer if r.layer is not None else d.selected_layer
        if layer is None:
            problems.append(f"{where}: regenerate.layer is needed ({d.source} has {len(d.layers)} layers)")
        elif layer not in d.layers:
            problems.append(f"{where}: regenerate.layer {layer} not in {d.source} (layers "
                            f"{d.layer_ids[0]}–{d.layer_ids[-1]}, {d.layer_convention} convention)")
        if not run.manifest.base_model:
            problems.append(f"{where}: base_model is required when a regenerate recipe is given")


def load_run(run_dir: str | Path, *, with_weights: bool = False) -> Run:
    """The strict form: every problem at once in a :class:`ValidationFailed`."""
    report = validate_run(run_dir, with_weights=with_weights)
    if report.problems:
        if len(report.problems) == 1:
            raise HubkitError(report.problems[0])
        raise ValidationFailed(report.problems)
    assert report.run is not None
    return report.run
