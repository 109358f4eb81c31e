"""The edit recipes: one module each, registered by name (see :mod:`hubkit.weights.recipes.base`)."""

from __future__ import annotations

from hubkit.weights.recipes import orthogonalize  # noqa: F401  (each recipe module registers itself)
from hubkit.weights.recipes.base import Recipe, get, names, register

__all__ = ["Recipe", "get", "names", "register"]
