"""The edit-recipe registry (like mergekit's merge methods): a recipe is one module here that registers a
:class:`Recipe` subclass. The executor knows nothing recipe-specific: a recipe turns a structural
:class:`~hubkit.weights.plan.TensorPlan` (which tensors write the residual stream) into the edits of each
tensor (its unit vector and weight), and describes itself for the cards.
"""

from __future__ import annotations

from typing import ClassVar

_REGISTRY: dict[str, type[Recipe]] = {}


class Recipe:
    """One way of editing weights with a published direction."""

    name: ClassVar[str]
    summary: ClassVar[str]
    #: an inference-time hook gives the same model (``hubkit.ablate``); False for row-norm dependent edits
    has_hook_equivalent: ClassVar[bool]


def register(cls: type[Recipe]) -> type[Recipe]:
    if cls.name in _REGISTRY:
        raise ValueError(f"recipe {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def get(name: str) -> type[Recipe]:
    return _REGISTRY[name]


def names() -> list[str]:
    return sorted(_REGISTRY)
