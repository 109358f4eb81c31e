"""The recipe record: how a run's weights are rebuilt from its direction, as ``hubkit.yaml``'s ``regenerate:``
and ``hubkit.json``'s ``regenerate`` write it. One parser serves both (the manifest's errors carry YAML line
numbers, a downloaded file's carry its key path); what each recipe *does* lives in
:mod:`hubkit.weights.recipes`.

```yaml
regenerate:
  direction: refusal        # a direction of the run
  layer: 22                 # int: that layer's vector for every block; float 17.4: interpolated (heretic's
                            # direction_index, in the direction's own convention); each: every block its own
  targets: [attn_out, mlp_down]
  weight:                   # default 1 everywhere; per target a number, {block: w} (others untouched) or a kernel
    attn_out: {max_weight: 1.2, max_weight_position: 20.5, min_weight: 0.4, min_weight_distance: 9}
  norm: none                # none | pre | preserve
  project_out: harmless     # a direction of the run removed from the ablation direction first
```
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

TARGETS = ("embed_tokens", "attn_out", "mlp_down", "lm_head")
DEFAULT_TARGETS = ("embed_tokens", "attn_out", "mlp_down")
NORMS = ("none", "pre", "preserve")
Norm = Literal["none", "pre", "preserve"]
KERNEL_KEYS = ("max_weight", "max_weight_position", "min_weight", "min_weight_distance")
MAX_BLOCK = 100_000

Fail = Callable[[tuple, str], Exception]  # (key path, message) → the caller's one-line error


@dataclass(frozen=True)
class Kernel:
    """heretic's weight kernel over blocks: ``max_weight`` at ``max_weight_position``, falling linearly to
    ``min_weight`` at ``min_weight_distance`` blocks away, 0 beyond."""

    max_weight: float
    max_weight_position: float
    min_weight: float
    min_weight_distance: float

    def at(self, block: int) -> float:
        dist = abs(block - self.max_weight_position)
        if dist > self.min_weight_distance:
            return 0.0
        if self.min_weight_distance == 0:
            return self.max_weight
        return self.max_weight + dist / self.min_weight_distance * (self.min_weight - self.max_weight)

    def to_json(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in KERNEL_KEYS}


# A weight per target: a number for every block, {block: w} (blocks not listed: untouched), or a kernel.
WeightSpec = float | dict[int, float] | Kernel


def weight_at(spec: WeightSpec, block: int) -> float:
    if isinstance(spec, Kernel):
        return spec.at(block)
    if isinstance(spec, dict):
        return spec.get(block, 0.0)
    return float(spec)


def weight_json(spec: WeightSpec) -> Any:
    if isinstance(spec, Kernel):
        return spec.to_json()
    if isinstance(spec, dict):
        return {str(b): w for b, w in sorted(spec.items())}
    return spec


@dataclass
class RecipeSpec:
    """The parameters of a recipe, checked; ``layer`` is an int, a float (interpolated) or ``"each"``."""

    direction: str
    layer: int | float | str | None
    targets: tuple[str, ...] = DEFAULT_TARGETS
    weight: dict[str, WeightSpec] = field(default_factory=dict)  # target → spec; absent: 1
    norm: str = "none"
    project_out: str | None = None

    @property
    def recipe(self) -> str:
        """The registered recipe these parameters select (:mod:`hubkit.weights.recipes`)."""
        return "orthogonalize" if self.norm == "none" else "norm-preserving"

    @property
    def is_seed(self) -> bool:
        """The first round's recipe (one layer, weight 1, no norm, no projection): hubkit.json stays as it was."""
        return (isinstance(self.layer, int) and not self.weight and self.norm == "none"
                and self.project_out is None)

    def weight_at(self, target: str, block: int) -> float:
        spec = self.weight.get(target)
        return 1.0 if spec is None else weight_at(spec, block)

    def params_json(self) -> dict[str, Any]:
        """The keys beyond the seed recipe's, for hubkit.json (absent when they are the defaults)."""
        out: dict[str, Any] = {}
        if self.weight:
            out["weight"] = {t: weight_json(s) for t, s in self.weight.items()}
        if self.norm != "none":
            out["norm"] = self.norm
        if self.project_out is not None:
            out["project_out"] = self.project_out
        return out


def parse_recipe(raw: dict[str, Any], fail: Fail, *, directions: list[str] | None = None,
                 default_layer: int | None = None) -> RecipeSpec:
    """A :class:`RecipeSpec` from ``regenerate:``'s mapping; ``fail(path, msg)`` builds the caller's error.

    ``directions`` (the run's direction names) is checked when given; unknown keys are the caller's to refuse.
    """
    direction = raw.get("direction")
    if not isinstance(direction, str) or not direction:
        raise fail(("direction",), "regenerate.direction must name a direction of the run")
    if directions is not None and direction not in directions:
        raise fail(("direction",), f"regenerate.direction '{direction}' is not a direction "
                                   f"(directions: {', '.join(directions) or 'none'})")
    layer = _layer(raw.get("layer", default_layer), fail)
    targets = raw.get("targets")
    if targets is None:
        targets = list(DEFAULT_TARGETS)
    if not isinstance(targets, list) or not targets:
        raise fail(("targets",), f"regenerate.targets must be a non-empty list of {', '.join(TARGETS)}")
    for i, t in enumerate(targets):
        if t not in TARGETS:
            hint = difflib.get_close_matches(str(t), TARGETS, n=1, cutoff=0.5)
            tip = f" (did you mean '{hint[0]}'?)" if hint else ""
            raise fail(("targets", i), f"regenerate.targets: '{t}' is not one of {', '.join(TARGETS)}{tip}")
    norm = raw.get("norm", "none")
    if norm not in NORMS:
        raise fail(("norm",), f"regenerate.norm: '{norm}' is not one of {', '.join(NORMS)}")
    project_out = raw.get("project_out")
    if project_out is not None:
        if not isinstance(project_out, str) or (directions is not None and project_out not in directions):
            raise fail(("project_out",), f"regenerate.project_out: '{project_out}' is not a direction of the run")
        if project_out == direction:
            raise fail(("project_out",), "regenerate.project_out: the direction can't be projected out of itself")
    spec = RecipeSpec(direction, layer, tuple(dict.fromkeys(targets)), _weights(raw.get("weight"), targets, fail),
                      norm, project_out)
    _check_combinations(spec, fail)
    return spec


def _layer(v: Any, fail: Fail) -> int | float | str | None:
    if v is None or v == "each":
        return v
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not -1 <= v <= MAX_BLOCK or not math.isfinite(v):
        raise fail(("layer",), f"regenerate.layer: expected a layer number, a float index or 'each', got {v!r}")
    return v


def _number(v: Any, path: tuple, fail: Fail, *, lo: float = -math.inf) -> float:
    if isinstance(v, int) and not isinstance(v, bool) and abs(v) > 1e300:
        v = math.inf
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < lo:
        raise fail(path, f"regenerate.{'.'.join(map(str, path))}: expected a finite number"
                         + (f" ≥ {lo:g}" if lo > -math.inf else "") + f", got {v!r}")
    return float(v)


def _weights(raw: Any, targets: list[str], fail: Fail) -> dict[str, WeightSpec]:
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not raw or any(k not in TARGETS for k in raw):
        # one spec for every target
        return {t: _weight(raw, ("weight",), fail) for t in targets}
    unknown = [k for k in raw if k not in targets]
    if unknown:
        raise fail(("weight", unknown[0]), f"regenerate.weight.{unknown[0]}: not one of the targets "
                                           f"({', '.join(targets)})")
    return {t: _weight(v, ("weight", t), fail) for t, v in raw.items()}


def _weight(v: Any, path: tuple, fail: Fail) -> WeightSpec:
    if isinstance(v, dict) and set(v) & set(KERNEL_KEYS):
        missing = [k for k in KERNEL_KEYS if k not in v]
        extra = [k for k in v if k not in KERNEL_KEYS]
        if missing or extra:
            what = f"missing {', '.join(missing)}" if missing else f"unknown key {extra[0]}"
            raise fail(path, f"regenerate.{'.'.join(map(str, path))}: a weight kernel needs "
                             f"{', '.join(KERNEL_KEYS)} ({what})")
        vals = {k: _number(v[k], (*path, k), fail, lo=0.0 if k == "min_weight_distance" else -math.inf)
                for k in KERNEL_KEYS}
        return Kernel(**vals)
    if isinstance(v, dict):
        out: dict[int, float] = {}
        for k, w in v.items():
            b = int(k) if isinstance(k, int) or (isinstance(k, str) and k.isascii() and k.isdigit() and len(k) < 10) else None
            if b is None or isinstance(k, bool) or not 0 <= b <= MAX_BLOCK:
                raise fail((*path, k), f"regenerate.{'.'.join(map(str, path))}: key {k!r} is not a block index")
            if b in out:
                raise fail((*path, k), f"regenerate.{'.'.join(map(str, path))}: block {b} given twice")
            out[b] = _number(w, (*path, k), fail)
        return out
    return _number(v, path, fail)


def _check_combinations(spec: RecipeSpec, fail: Fail) -> None:
    """What no recipe can do, refused where it is written rather than half-way through a rebuild."""
    for t in ("embed_tokens", "lm_head"):
        if t in spec.targets and t in spec.weight and not isinstance(spec.weight[t], float):
            raise fail(("weight", t), f"regenerate.weight.{t}: the {t} is not a block; give it a number")
    if spec.norm != "none" and "embed_tokens" in spec.targets:
        raise fail(("norm",), f"regenerate.norm: {spec.norm} rescales a writer's rows; embed_tokens has none to "
                              "keep (drop embed_tokens from targets, or use norm: none)")
    if spec.norm != "none" and "lm_head" in spec.targets:
        raise fail(("norm",), f"regenerate.norm: {spec.norm} applies to residual writers, not lm_head")
    if spec.layer == "each" and "embed_tokens" in spec.targets:
        raise fail(("layer",), "regenerate.layer: 'each' gives every block its own direction; the embedding "
                               "has no block (drop embed_tokens, or give one layer)")


def describe_spec(s: RecipeSpec, convention: str) -> list[str]:
    """The parameters in words and numbers, one line each (both cards show them)."""
    if s.layer == "each":
        layer = "each block uses its own layer's vector (the direction at block i's output)"
    elif isinstance(s.layer, float) and not s.layer.is_integer():
        layer = (f"the vector at index {s.layer:g} ({convention} convention), interpolated between the two "
                 "neighbouring layers' unit vectors and renormalized (heretic's direction_index)")
    else:
        layer = f"the vector at layer {s.layer:g} ({convention} convention) for every block"
    lines = [f"direction `{s.direction}`: {layer}"]
    if s.project_out:
        lines.append(f"projected: `{s.project_out}` removed from the direction per layer first "
                     "(r ← normalize(r − (r·ĝ) ĝ))")
    for t in s.targets:
        spec = s.weight.get(t)
        if spec is None:
            lines.append(f"{t}: weight 1 at every block")
        elif isinstance(spec, Kernel):
            lines.append(f"{t}: kernel, {spec.max_weight:g} at block {spec.max_weight_position:g} falling linearly "
                         f"to {spec.min_weight:g} at distance {spec.min_weight_distance:g}, 0 beyond")
        elif isinstance(spec, dict):
            lines.append(f"{t}: blocks " + ", ".join(f"{b}: {w:g}" for b, w in sorted(spec.items()))
                         + "; others untouched")
        else:
            lines.append(f"{t}: weight {spec:g} at every block")
    lines.append({"none": "norm: none (W − w r rᵀW)",
                  "pre": "norm: pre (W − w (n⊙r)(rᵀŴ), n the rows' norms)",
                  "preserve": "norm: preserve (each row of Ŵ − w r rᵀŴ rescaled to its original norm)"}[s.norm])
    return lines


def weights_by_block(s: RecipeSpec, n_blocks: int | None = None) -> dict[str, list[float]]:
    """target → the weight at each block 0…n−1 (the weight-per-block figure); without ``n_blocks``, up to the
    last block a kernel or map reaches. The embedding and lm_head are not blocks."""
    if n_blocks is None:
        last = 0
        for spec in s.weight.values():
            if isinstance(spec, Kernel):
                last = max(last, math.ceil(spec.max_weight_position + spec.min_weight_distance) + 1)
            elif isinstance(spec, dict) and spec:
                last = max(last, max(spec) + 2)
        n_blocks = max(last, 1)
    return {t: [s.weight_at(t, b) for b in range(n_blocks)] for t in s.targets if t in ("attn_out", "mlp_down")}
