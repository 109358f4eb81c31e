"""A research run: the manifest plus every artifact it names, loaded and checked.

``validate_run`` collects every problem (one line each) instead of stopping at the first, so a
researcher fixes a run in one pass; ``load_run`` is the strict form the other pipelines use.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from hubkit.errors import HubkitError, ValidationFailed
from hubkit.run.manifest import DEFAULT_EXCLUDE, MANIFEST_NAME, Manifest, load_manifest
from hubkit.run.model import FileEntry, Run, Section, ValidationReport, matches, resolve_in_run  # noqa: F401  (re-exported)

if TYPE_CHECKING:
    pass

REPORT_NAMES = ("TASK", "RESEARCH", "PLAN", "RESULTS", "RESULTS_FINAL", "VERIFY", "NOTES", "README")


#: folders that are tools' bookkeeping, never research output (a pulled repo's HF cache, git, notebooks)
IGNORED_DIRS = (".git", ".cache", "__pycache__", ".ipynb_checkpoints", ".hg", ".svn")
#: files the Hub or git own (a pulled repo carries the Hub's .gitattributes)
IGNORED_FILES = (".gitattributes",)


def _walk(root: Path) -> tuple[list[tuple[str, int]], list[tuple[str, int, str]]]:
    """Every file of the run (symlinks inside the run followed: a copied HF snapshot works), and what was left
    out before classification: links leading outside the run, tools' folders."""
    files, skipped = [], []
    top = os.path.realpath(root)
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        keep = []
        for d in sorted(dirnames):
            rel = (here / d).relative_to(root).as_posix()
            if d in IGNORED_DIRS:
                skipped.append((rel + "/", 0, f"{d}/ is tool bookkeeping, not part of the run"))
            elif (here / d).is_symlink():
                skipped.append((rel + "/", 0, "a symlinked folder (not followed; copy it in or list its files)"))
            else:
                keep.append(d)
        dirnames[:] = keep
        for fn in sorted(filenames):
            full = here / fn
            rel = full.relative_to(root).as_posix()
            if fn in IGNORED_FILES and dirpath == str(root):
                skipped.append((rel, 0, "owned by the Hub / git"))
                continue
            real = os.path.realpath(full)
            if not (real == top or real.startswith(top.rstrip(os.sep) + os.sep)):
                skipped.append((rel, 0, "a symlink to outside the run (its content is never read)"))
                continue
            if not os.path.isfile(real):
                continue
            files.append((rel, os.stat(real).st_size))
    return sorted(files), skipped


def named_role(path: str, role: dict[str, str]) -> str | None:
    """The kind the manifest gives ``path``: itself, or a folder it names (a vector set, an adapter)."""
    if path in role:
        return role[path]
    parts = path.split("/")
    for i in range(len(parts) - 1, 0, -1):
        folder = "/".join(parts[:i])
        if folder in role:
            return role[folder]
    return None


def classify(path: str, m: Manifest, role: dict[str, str]) -> str:
    if (named := named_role(path, role)) is not None:
        return named
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
    files, skipped = _walk(run_dir)
    entries = [FileEntry(rel, size, "skipped", included=False, reason=why) for rel, size, why in skipped]
    for rel, size in files:
        kind = "manifest" if rel == MANIFEST_NAME else classify(rel, m, role)
        e = FileEntry(rel, size, kind)
        if named_role(rel, role) is not None or kind == "manifest":
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
    return sorted(entries, key=lambda f: f.path)


def manifest_roles(m: Manifest) -> dict[str, str]:
    """Kinds of the files the manifest names: such files are always published, whatever include/exclude say."""
    from hubkit.run.kinds import kinds

    return {n.path: n.file_kind for kind in kinds() for n in kind.named(m)}


def validate_run(run_dir: str | Path, *, with_weights: bool = False) -> ValidationReport:
    """Load every artifact the manifest names, collecting one line per problem (every kind, every file)."""
    from hubkit.run.kinds import LoadContext, kinds

    run_dir = Path(run_dir)
    m = load_manifest(run_dir)  # a broken manifest stops here: nothing else can be read
    run = Run(root=run_dir, manifest=m)
    ctx = LoadContext(run, str(run_dir / MANIFEST_NAME))
    for kind in kinds():
        kind.load(ctx)
    for kind in kinds():
        kind.cross_check(ctx)
    run.files = inventory(run_dir, m, manifest_roles(m), with_weights=with_weights)
    for f in run.files:
        if not f.included:
            run.notes.append(f"{f.path}: left out ({f.reason})")
    return ValidationReport(run=run, problems=ctx.problems, notes=run.notes)


def load_run(run_dir: str | Path, *, with_weights: bool = False) -> Run:
    """The strict form: every problem at once in a :class:`ValidationFailed`."""
    report = validate_run(run_dir, with_weights=with_weights)
    if report.problems:
        if len(report.problems) == 1:
            raise HubkitError(report.problems[0])
        raise ValidationFailed(report.problems)
    assert report.run is not None
    return report.run


def report_run(run_dir: str | Path, alternative: str | None = None) -> str:
    """``hubkit stats RUN_DIR``: every evaluation of a run with its tests named (the run loaded strictly)."""
    from hubkit.run.stats import report_evaluations

    run = load_run(run_dir)
    if not run.evaluations:
        return f"{run_dir}: no evaluations in hubkit.yaml\n"
    return report_evaluations(run.evaluations, alternative)
