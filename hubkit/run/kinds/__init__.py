"""The artifact kinds a manifest can name, one module each (see :mod:`hubkit.run.kinds.base`)."""

from __future__ import annotations

# isort: off
# Registration order is the card's order: each module registers its kind when imported.
from hubkit.run.kinds import directions  # noqa: F401
from hubkit.run.kinds import rankings  # noqa: F401
from hubkit.run.kinds import contrast_sets  # noqa: F401
from hubkit.run.kinds import evaluations  # noqa: F401
from hubkit.run.kinds import texts  # noqa: F401
from hubkit.run.kinds import weights  # noqa: F401
from hubkit.run.kinds import vector_sets  # noqa: F401
from hubkit.run.kinds import adapters  # noqa: F401
from hubkit.run.kinds import data_files  # noqa: F401
# isort: on
from hubkit.run.kinds.base import ArtifactKind, DatasetTable, Generated, LoadContext, Named, kinds, register

__all__ = ["ArtifactKind", "DatasetTable", "Generated", "LoadContext", "Named", "kinds", "register"]
