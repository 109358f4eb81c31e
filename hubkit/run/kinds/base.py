"""The artifact-kind registry: each kind of artifact a manifest can name is one module here.

A kind declares the manifest section it reads, the files of the run that section names (always published,
with the kind the card's Files table shows), how they are loaded and checked (every problem one line, all
collected), the files hubkit generates from them (canonical vectors), the words that describe each file,
the companion dataset's tables, and what ``hubkit init`` recognises. ``validate_run``, the repo tree, the
card's Files table, the dataset and ``init`` loop over :func:`kinds`; none of them names a kind. (Plots are
drawn on the cards side, which registers a plotter per kind name: :mod:`hubkit.cards.plots`.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from hubkit.errors import HubkitError

if TYPE_CHECKING:
    from hubkit.run.manifest import Manifest
    from hubkit.run.model import Run

_KINDS: list[ArtifactKind] = []


def register(cls: type[ArtifactKind]) -> type[ArtifactKind]:
    if any(k.name == cls.name for k in _KINDS):
        raise ValueError(f"artifact kind {cls.name!r} registered twice")
    _KINDS.append(cls())
    return cls


def kinds() -> list[ArtifactKind]:
    """Every registered kind, in registration order (the order the card lists them)."""
    return list(_KINDS)


@dataclass
class Named:
    """A file the manifest names: its path, the manifest place (for messages) and its inventory kind."""

    path: str
    key: str
    file_kind: str


@dataclass
class Generated:
    path: str
    data: bytes
    kind: str  # the Files table kind: direction | asset | ...


@dataclass
class DatasetTable:
    """One config of the companion dataset: ``rows()`` gives a pyarrow table (read only when published)."""

    prefix: str
    name: str
    source: str
    what: str
    rows: Callable[[], Any]


@dataclass
class LoadContext:
    """What loading shares: the run, the manifest's path for messages, and the problems found so far."""

    run: Run
    where: str
    problems: list[str] = field(default_factory=list)

    def attempt(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        """``fn(...)``, or None with its one-line error recorded (so validation reports every problem)."""
        try:
            return fn(*args, **kw)
        except HubkitError as e:
            self.problems.append(str(e))
            return None

    def file(self, named: Named) -> Path | None:
        """The named file, confined to the run (symlinks followed only while they stay inside it)."""
        return self.folder_or_file(named, folder=False)

    def folder_or_file(self, named: Named, *, folder: bool | None = None) -> Path | None:
        """A named path that must be a file (``folder=False``), a folder (``True``) or either (``None``)."""
        from hubkit.run.model import resolve_in_run

        where = f"{self.where}: {named.key}"
        try:
            p = resolve_in_run(self.run.root, named.path, where, folder=folder is not False)
        except HubkitError as e:
            self.problems.append(str(e))
            return None
        if not p.exists():
            self.problems.append(f"{where}: '{named.path}' not found")
            return None
        if folder is True and not p.is_dir():
            self.problems.append(f"{where}: '{named.path}' is not a folder")
            return None
        return p


class ArtifactKind:
    """One kind of artifact; every hook has a do-nothing default, so a kind overrides only what it has."""

    name: ClassVar[str]
    section: ClassVar[str]  # the manifest key

    def named(self, m: Manifest) -> list[Named]:
        """Files of the run this kind's section names."""
        return []

    def load(self, ctx: LoadContext) -> None:
        """Read and check what the section names into ``ctx.run``; problems go to ``ctx.problems``."""

    def cross_check(self, ctx: LoadContext) -> None:
        """Checks against other kinds' artifacts, once everything is loaded."""

    def generated(self, run: Run) -> list[Generated]:
        return []

    def describe(self, run: Run) -> dict[str, str]:
        """Repo path → what the file is, in words (the card's Files table)."""
        return {}

    def dataset_tables(self, run: Run) -> list[DatasetTable]:
        return []

    def records(self, run: Run) -> dict[str, Any]:
        """Sections this kind adds to ``hubkit.json`` (plain JSON data), keyed by their top-level name."""
        return {}
