"""The edit recipes: one module each, registered by name (see :mod:`hubkit.weights.recipes.base`)."""

from __future__ import annotations

from hubkit.weights.recipes import norm_preserving, orthogonalize  # noqa: F401  (each module registers itself)
from hubkit.weights.recipes.base import Recipe, for_spec, get, names, register

__all__ = ["Recipe", "for_spec", "get", "names", "register"]
