"""The tensor plan: which tensor of which shard gets which edit (pure: config + tensor index in, plan out).

Shapes and dtypes never change, so every tensor keeps its byte offset; everything not in the plan passes
through byte for byte."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hubkit.errors import PlanError
from hubkit.formats.safetensors_io import (
    FLOAT_DTYPES,
    ShardInfo,
    TensorInfo,
    config_facts,
    read_config,
    read_index,
    text_config,
)
from hubkit.weights.families import DEFAULT_TARGETS, GENERIC, TARGETS, Family, family_for


@dataclass(frozen=True)
class TensorOp:
    """One tensor to rewrite: which target it serves and along which axis r is removed."""

    name: str
    shard: str
    target: str  # embed_tokens | attn_out | mlp_down | lm_head
    layer: int | None  # decoder block, None for embedding / lm_head
    kind: str  # "rows": d is the last axis; "cols": d is the second-to-last axis
    shape: tuple[int, ...]
    dtype: str
    begin: int
    end: int
    how: str = "matrix"  # embed | matrix | bias | experts: what the name pattern matched
    # the edit, set by the recipe (weights/recipes): which vector, with which weight and norm mode
    vector: str = "r"
    weight: float = 1.0
    norm: str = "none"
    source: str = ""  # where the vector comes from, for --plan ("layer 22", "17.4 = 17 + 0.4 (18 − 17)")

    @property
    def nbytes(self) -> int:
        return self.end - self.begin

    @property
    def formula(self) -> str:
        w = "" if self.weight == 1.0 else f"{self.weight:.4g}·"
        if self.kind == "rows":
            return f"W − {w}(W r) rᵀ"
        return {"none": f"W − {w}r (rᵀ W)", "pre": f"W − {w}(n⊙r)(rᵀ Ŵ)", "preserve": f"‖row‖-kept Ŵ − {w}r (rᵀ Ŵ)"}[
            self.norm]


def _natural(name: str) -> list[Any]:
    """``layers.2`` before ``layers.10``: the plan reads in block order, not string order."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


@dataclass
class TensorPlan:
    """Which tensor of which shard gets which operation; everything else passes through byte for byte."""

    family: str
    model_type: str
    hidden_size: int
    num_layers: int
    root: str
    targets: tuple[str, ...]
    tied: bool
    shards: list[ShardInfo]
    ops: list[TensorOp]
    n_tensors: int
    notes: list[str] = field(default_factory=list)
    untouched: list[TensorOp] = field(default_factory=list)  # targeted, but weight 0 at their block

    @property
    def total_bytes(self) -> int:
        return sum(s.size for s in self.shards)

    @property
    def modified_bytes(self) -> int:
        return sum(op.nbytes for op in self.ops)

    def ops_in(self, shard: str) -> list[TensorOp]:
        return sorted((op for op in self.ops if op.shard == shard), key=lambda op: op.begin)

    def counts(self) -> dict[str, int]:
        """Modified tensors per target, in TARGETS order."""
        return {t: n for t in TARGETS if (n := sum(op.target == t for op in self.ops))}

    def summary(self) -> str:
        counts = ", ".join(f"{t} {n}" for t, n in self.counts().items())
        return (
            f"{self.model_type} ({self.family} table), d={self.hidden_size}, {self.num_layers} blocks under "
            f"'{self.root}': {len(self.ops)} of {self.n_tensors} tensors modified ({counts}); "
            f"{_gb(self.modified_bytes)} of {_gb(self.total_bytes)} in {len(self.shards)} shard(s)"
        )

    def render(self) -> str:
        """The plan as text: summary, notes, then one line per modified tensor."""
        lines = [self.summary()]
        lines += [f"note: {n}" for n in self.notes]
        width = max((len(op.name) for op in self.ops), default=10)
        fw = max((len(op.formula) for op in self.ops), default=13)
        sw = max((len(op.source) for op in self.ops), default=0)
        lines.append(f"{'tensor':<{width}}  {'target':<12} {'op':<{fw}} {'direction':<{sw}}  {'shape':<18} "
                     "dtype  shard")
        for op in sorted(self.ops, key=lambda o: (o.shard, _natural(o.name))):
            shape = "×".join(map(str, op.shape))
            lines.append(f"{op.name:<{width}}  {op.target:<12} {op.formula:<{fw}} {op.source:<{sw}}  {shape:<18} "
                         f"{op.dtype:<6} {op.shard}")
        if self.untouched:
            blocks: dict[str, list[int]] = {}
            for op in self.untouched:
                if op.layer is not None and op.layer not in blocks.setdefault(op.target, []):
                    blocks[op.target].append(op.layer)
            for target, ids in blocks.items():
                lines.append(f"untouched (weight 0): {target} in block(s) {_short(sorted(ids))}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "model_type": self.model_type,
            "hidden_size": self.hidden_size,
            "num_layers": self.num_layers,
            "targets": list(self.targets),
            "tied": self.tied,
            "counts": self.counts(),
            "ops": [{"name": o.name, "target": o.target, "kind": o.kind, "shard": o.shard} for o in self.ops],
            "notes": list(self.notes),
        }


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n} B"


def _kind_for(info: TensorInfo, how: str, d: int, fam: Family) -> str:
    """rows / cols for a matched tensor, refusing one whose shape has no axis of size d where expected."""
    s = info.shape
    if how == "embed" and len(s) == 2 and s[1] == d:
        return "rows"
    if how == "matrix" and len(s) == 2 and s[0] == d:
        return "cols"
    if how == "bias" and len(s) in (1, 2) and s[-1] == d:
        return "rows"
    if how == "experts" and len(s) == 3 and d in s[1:]:
        if s[1] == d and s[2] == d:
            return "rows" if fam.fused_d_last else "cols"
        return "cols" if s[1] == d else "rows"
    expected = {"embed": "[vocab, d]", "matrix": "[d, in]", "bias": "[d] or [E, d]", "experts": "[E, d, i]"}[
        how
    ]
    raise PlanError(f"{info.shard}: {info.name} has shape {list(s)}, expected {expected} with d={d}")


def build_plan(
    config: dict[str, Any],
    tensors: dict[str, TensorInfo],
    shards: list[ShardInfo],
    targets: Iterable[str] = DEFAULT_TARGETS,
    *,
    layers: Iterable[int] | None = None,
) -> TensorPlan:
    """Decide the operation of every tensor (pure: config + tensor index in, plan out).

    Raises :class:`PlanError` when a target matches nothing, when a block lacks a residual writer the recipe
    names (a table that doesn't fit this checkpoint must not give a half-edited model), or when a targeted
    tensor is not a float tensor (quantized checkpoints can't be edited in place).
    """
    targets = tuple(dict.fromkeys(targets))
    unknown = [t for t in targets if t not in TARGETS]
    if unknown:
        raise PlanError(f"recipe targets: unknown {', '.join(unknown)} (known: {', '.join(TARGETS)})")
    if not targets:
        raise PlanError("recipe targets: empty list, nothing to do")
    model_type, d, n_layers = config_facts(config)
    fam = family_for(model_type)
    notes = list(fam.notes)
    if fam is GENERIC:
        notes.append(f"no name-pattern table for model_type '{model_type}'; used the generic one")

    root = next((r for r in fam.roots if any(k.startswith(f"{r}layers.") for k in tensors)), None)
    if root is None:
        sample = ", ".join(sorted(tensors)[:3])
        raise PlanError(
            f"{model_type} checkpoint: no decoder blocks under {' or '.join(repr(r + 'layers.') for r in fam.roots)} "
            f"(tensors start: {sample})"
        )
    block_re = re.compile(re.escape(root) + r"layers\.(\d+)\.(.+)$")
    wanted_layers = set(range(n_layers)) if layers is None else set(layers)
    patterns = {
        t: [(re.compile(p + "$"), how) for p, how in getattr(fam, t)] for t in ("attn_out", "mlp_down")
    }

    ops: list[TensorOp] = []

    def add(info: TensorInfo, target: str, layer: int | None, how: str) -> None:
        if info.dtype not in FLOAT_DTYPES:
            raise PlanError(
                f"{info.shard}: {info.name} is {info.dtype}; only float tensors (BF16, F16, F32, F64) can be "
                "orthogonalized (use an unquantized base checkpoint)"
            )
        kind = _kind_for(info, how, d, fam)
        ops.append(
            TensorOp(info.name, info.shard, target, layer, kind, info.shape, info.dtype, info.begin, info.end, how)
        )

    embed_name = next((root + e for e in fam.embed if root + e in tensors), None)
    lm_head_name = next((h for h in fam.lm_head if h in tensors), None)
    tie_flag = config.get("tie_word_embeddings", text_config(config).get("tie_word_embeddings", False))
    if not isinstance(tie_flag, bool):  # "false" as a string is truthy: it would edit lm_head like the embedding
        raise PlanError(f"config.json: tie_word_embeddings must be true or false, got {tie_flag!r}"[:200])
    tied = lm_head_name is None or tie_flag

    if "embed_tokens" in targets:
        if embed_name is None:
            raise PlanError(f"{model_type} checkpoint: no embedding tensor {root}{fam.embed[0]}")
        add(tensors[embed_name], "embed_tokens", None, "embed")
        if tied and lm_head_name is not None:
            add(tensors[lm_head_name], "lm_head", None, "embed")
            notes.append(f"tie_word_embeddings with a stored {lm_head_name}: edited like the embedding")
    if "lm_head" in targets and not (tied and "embed_tokens" in targets):
        if lm_head_name is None:
            raise PlanError(
                "recipe target lm_head: the checkpoint has no lm_head tensor (tied embeddings; the "
                "embed_tokens target already changes the unembedding)"
            )
        add(tensors[lm_head_name], "lm_head", None, "embed")

    found: dict[tuple[str, int], int] = {}
    for name in sorted(tensors):
        m = block_re.match(name)
        if not m:
            continue
        layer, rest = int(m.group(1)), m.group(2)
        if layer not in wanted_layers:
            continue
        for target in ("attn_out", "mlp_down"):
            if target not in targets:
                continue
            for pat, how in patterns[target]:
                if pat.match(rest):
                    add(tensors[name], target, layer, how)
                    if how != "bias":
                        found[(target, layer)] = found.get((target, layer), 0) + 1
                    break

    bad_layers = sorted(i for i in wanted_layers if i < 0 or i >= n_layers)
    if bad_layers:
        raise PlanError(f"recipe layers {bad_layers}: the model has blocks 0–{n_layers - 1}")
    for target in ("attn_out", "mlp_down"):
        if target not in targets:
            continue
        missing = sorted(i for i in wanted_layers if (target, i) not in found)
        if missing:
            looked = ", ".join(p for p, how in getattr(fam, target) if how != "bias")
            raise PlanError(
                f"{model_type} checkpoint: block(s) {_short(missing)} have no {target} tensor under "
                f"'{root}layers.<i>.' (looked for {looked})"
            )
    if not ops:
        raise PlanError(f"{model_type} checkpoint: no tensor matches targets {', '.join(targets)}")
    if tied and "embed_tokens" in targets:
        notes.append("tied embeddings: the unembedding (lm_head) changes with the embedding")
    elif lm_head_name is not None and "lm_head" not in targets:
        notes.append(f"untied {lm_head_name} left alone (add the lm_head target to change it)")
    return TensorPlan(
        family=fam.name,
        model_type=model_type,
        hidden_size=d,
        num_layers=n_layers,
        root=root,
        targets=targets,
        tied=tied,
        shards=shards,
        ops=ops,
        n_tensors=len(tensors),
        notes=notes,
    )


def _short(ids: list[int]) -> str:
    return ", ".join(map(str, ids[:6])) + (f" … ({len(ids)} in all)" if len(ids) > 6 else "")


def plan_checkpoint(
    model_dir: str | Path, targets: Iterable[str] = DEFAULT_TARGETS, *, layers: Iterable[int] | None = None
) -> TensorPlan:
    """:func:`build_plan` for a checkpoint folder (reads config.json and the shard headers only)."""
    shards, tensors = read_index(model_dir)
    return build_plan(read_config(model_dir), tensors, shards, targets, layers=layers)


# ====================================================================== the math (deterministic)

