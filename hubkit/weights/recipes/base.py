"""The edit-recipe registry (like mergekit's merge methods).

A recipe is one module under :mod:`hubkit.weights.recipes` that registers a :class:`Recipe` subclass. It
turns a structural :class:`~hubkit.weights.plan.TensorPlan` (which tensors write the residual stream) into
the edit of every tensor (:meth:`Recipe.assign`: its vector, weight and norm mode, or untouched), computes
those vectors in float64 (:meth:`Recipe.vectors`), says whether an inference-time hook gives the same model
and describes itself for the cards. The executor and the kernels know nothing recipe-specific.

Parameters are a :class:`~hubkit.formats.recipe.RecipeSpec` (parsed in one place for hubkit.yaml and
hubkit.json). Layer numbers: the spec's ``layer`` is in the recipe's convention; the vectors are looked up
in the direction file's own convention; kernel positions and ``{block: w}`` maps count decoder blocks.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, ClassVar

from hubkit.errors import PlanError, ProvenanceError
from hubkit.formats.recipe import RecipeSpec, describe_spec

_REGISTRY: dict[str, type[Recipe]] = {}

#: layer index (in the direction file's convention) → float vector [d] as stored
VectorLoader = Callable[[list[int]], dict[int, Any]]


def register(cls: type[Recipe]) -> type[Recipe]:
    if cls.name in _REGISTRY:
        raise ValueError(f"recipe {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def get(name: str) -> type[Recipe]:
    return _REGISTRY[name]


def names() -> list[str]:
    return sorted(_REGISTRY)


def for_spec(spec: RecipeSpec, **kwargs: Any) -> Recipe:
    """The registered recipe the parameters select, bound to them."""
    return get(spec.recipe)(spec, **kwargs)


class Recipe:
    """One way of editing weights with a published direction, bound to its parameters."""

    name: ClassVar[str]
    summary: ClassVar[str]
    norms: ClassVar[tuple[str, ...]]  # the norm modes this recipe implements
    #: an inference-time hook on each writer's output gives the same model (``hubkit.ablate``)
    has_hook_equivalent: ClassVar[bool]

    def __init__(self, spec: RecipeSpec, *, convention: str, stored: str, load: VectorLoader,
                 load_project_out: VectorLoader | None = None, available: list[int] | None = None):
        if spec.norm not in self.norms:
            raise PlanError(f"recipe {self.name}: norm {spec.norm} (it implements {', '.join(self.norms)})")
        self.spec, self.convention, self.stored = spec, convention, stored
        self._load, self._load_g = load, load_project_out
        self.available = available  # layers the direction file has (file convention), when known

    # ------------------------------------------------------------------ which vector each block uses

    def _file_index(self, index: float, convention: str) -> float:
        """A layer index in ``convention`` as an index of the direction file (its own convention)."""
        shift = {("block", "hidden_states"): 1, ("hidden_states", "block"): -1}.get((convention, self.stored), 0)
        return index + shift

    def source_for_block(self, block: int) -> tuple[str, list[tuple[int, float]]]:
        """``(key, [(file index, coefficient)])`` of block ``block``'s vector (before normalization)."""
        layer = self.spec.layer
        if layer == "each":
            i = int(self._file_index(block, "block"))
            return f"L{i}", [(i, 1.0)]
        x = self._file_index(float(layer), self.convention)  # type: ignore[arg-type]
        if isinstance(layer, int) or x == math.floor(x):
            i = int(x)
            return f"L{i}", [(i, 1.0)]
        i = math.floor(x)
        f = x - i
        return f"L{x!r}", [(i, 1.0 - f), (i + 1, f)]

    def describe_source(self, key: str) -> str:
        conv = self.stored
        if key.startswith("L") and "." in key:
            x = float(key[1:])
            i = math.floor(x)
            return f"{x:g} ({conv}): {i} + {x - i:.3g}·({i + 1} − {i})"
        return f"layer {key[1:]} ({conv})"

    def blocks_needed(self, n_blocks: int) -> list[int]:
        """File indices the plan's vectors read (for provenance checks before anything is written)."""
        out: set[int] = set()
        for b in range(n_blocks):
            out.update(i for i, _ in self.source_for_block(b)[1])
        return sorted(out)

    # ------------------------------------------------------------------ the plan

    def weight_for(self, target: str, block: int | None, n_blocks: int) -> float:
        return self.spec.weight_at(target, 0 if block is None else block)

    def assign(self, plan: Any) -> Any:
        """The plan with every op's vector, weight and norm set; ops of weight 0 moved to ``untouched``."""
        self.check_blocks(plan.num_layers)
        ops, untouched = [], []
        for op in plan.ops:
            block = op.layer if op.layer is not None else (0 if op.target == "embed_tokens" else plan.num_layers - 1)
            w = self.weight_for(op.target, op.layer, plan.num_layers)
            key, _ = self.source_for_block(block)
            norm = self.spec.norm if op.how != "bias" else "none"  # biases: b − w (rᵀb) r in every mode
            if norm != "none" and op.kind != "cols":
                raise PlanError(f"{op.shard}: {op.name} ({list(op.shape)}) has d on its last axis (fused "
                                f"[E, i, d] experts); norm {norm} is not supported for it, use norm: none")
            edited = dataclasses.replace(op, vector=key, weight=w, norm=norm, source=self.describe_source(key))
            (ops if w != 0.0 else untouched).append(edited)
        if not ops:
            raise PlanError("the recipe's weights are 0 at every targeted block: nothing to do")
        return dataclasses.replace(plan, ops=ops, untouched=untouched)

    def check_blocks(self, n_blocks: int) -> None:
        """Kernel positions and ``{block: w}`` maps must name blocks the base has (both values in the message)."""
        from hubkit.formats.recipe import Kernel

        for target, spec in self.spec.weight.items():
            if isinstance(spec, Kernel) and not 0 <= spec.max_weight_position <= n_blocks - 1:
                raise ProvenanceError(f"regenerate.weight.{target}: max_weight_position {spec.max_weight_position:g}"
                                      f", the base has blocks 0–{n_blocks - 1}")
            if isinstance(spec, dict) and spec and max(spec) >= n_blocks:
                raise ProvenanceError(f"regenerate.weight.{target}: block {max(spec)}, the base has blocks "
                                      f"0–{n_blocks - 1}")

    # ------------------------------------------------------------------ the vectors

    def vectors(self, keys: list[str]) -> dict[str, Any]:
        """float64 vectors for the plan's keys: unit vectors first, ``project_out`` removed per layer, then
        interpolated (and renormalized: the executor normalizes each once more, exactly)."""
        import numpy as np

        from hubkit.weights.kernels import unit_vector

        wanted: dict[str, list[tuple[int, float]]] = {}
        for key in keys:
            wanted[key] = _parse_key(key)
        indices = sorted({i for parts in wanted.values() for i, _ in parts})
        raw = self._load(indices)
        if self.spec.project_out is None and all(len(parts) == 1 for parts in wanted.values()):
            # stored vectors as they are: the executor normalizes each (the first round's bytes)
            return {k: np.asarray(raw[parts[0][0]], dtype=np.float64).reshape(-1) for k, parts in wanted.items()}
        unit = {i: unit_vector(raw[i]) for i in indices}
        if self.spec.project_out is not None:
            assert self._load_g is not None
            g = self._load_g(indices)
            for i in indices:
                gh = unit_vector(g[i])
                unit[i] = unit_vector(unit[i] - _dot(unit[i], gh) * gh)
        out = {}
        for key, parts in wanted.items():
            if len(parts) == 1:
                out[key] = unit[parts[0][0]]
            else:
                (i, _), (j, f) = parts
                out[key] = unit_vector(unit[i] + f * (unit[j] - unit[i]))
        return out

    # ------------------------------------------------------------------ cards

    def describe(self) -> list[str]:
        """The recipe in words and numbers, one line each (the cards' rebuild sections)."""
        return [f"recipe `{self.name}`: {self.summary}", *describe_spec(self.spec, self.convention)]


def _parse_key(key: str) -> list[tuple[int, float]]:
    x = float(key[1:])
    if x.is_integer():
        return [(int(x), 1.0)]
    i = math.floor(x)
    return [(i, 1.0 - (x - i)), (i + 1, x - i)]


def _dot(a: Any, b: Any) -> float:
    """An exactly rounded dot product: no library's reduction order in the vectors."""
    return math.fsum((a * b).tolist())
