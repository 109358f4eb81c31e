"""The Run data object (a manifest plus its loaded artifacts) and the path rules every reader of a run obeys.

Kept apart from :mod:`hubkit.run.run` (which loads runs by looping over the artifact kinds) so the kinds can
build a Run without importing the loop that calls them.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from hubkit.errors import HubkitError, ManifestError
from hubkit.run.contrast import ContrastSet
from hubkit.run.evaluations import Evaluation
from hubkit.run.manifest import Manifest
from hubkit.run.ranking import Ranking

if TYPE_CHECKING:
    from hubkit.formats.directions import DirectionSet


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
    # a persona-geometry run (vector sets, adapters, data files, the run's own tests): see run/kinds
    vector_sets: dict[str, Any] = field(default_factory=dict)  # name → formats.vector_sets.VectorSet
    set_geometry: dict[str, Any] = field(default_factory=dict)  # name → run.geometry.SetGeometry
    compares: list[Any] = field(default_factory=list)  # run.geometry.CompareGeometry
    adapters: list[Any] = field(default_factory=list)  # formats.peft_adapters.AdapterInfo
    data_files: list[tuple[Any, Any]] = field(default_factory=list)  # (DataSpec, safefiles.FileHashes)
    reported_tests: list[Any] = field(default_factory=list)  # run.reported_tests.AdjustedTest

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


def resolve_in_run(root: Path, rel: str, where: str, *, folder: bool = False) -> Path:
    """``root/rel`` with every symlink resolved, refused (one line naming ``where``) unless it stays inside the
    run: a manifest path, or a symlink along it (``notes/etc -> /etc``), must not reach outside."""
    from hubkit.source import inside

    p = PurePosixPath(rel)
    if p.is_absolute() or ".." in p.parts or "\0" in rel:
        raise ManifestError(f"{where}: path '{rel}' must be relative and inside the run directory")
    path = root / rel
    if not path.exists():
        if folder:
            return path
        raise ManifestError(f"{where}: file '{rel}' not found")
    try:
        real = inside(root, path, where)
    except HubkitError as e:
        raise ManifestError(f"{where}: '{rel}' resolves outside the run directory (a symlink); refused") from e
    if not folder and not real.is_file():
        raise ManifestError(f"{where}: '{rel}' is not a file")
    return real
