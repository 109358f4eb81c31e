"""Independent float64 reference for hubkit's abliteration recipes.

Written from the formulas in the brief (see NOTES.md), not from hubkit's code. Everything is computed in
float64 from the stored values and rounded once, to nearest-even, to each tensor's storage dtype.

Anchors in public code (read with the repository tools, cited by commit):

- p-e-w/heretic @ 20b7bf78694d3615fb67c51ce5ba068aa785b4de, ``src/heretic/model.py``:
  ``Model.abliterate`` (l. 461-616): float ``direction_index`` -> ``math.modf(direction_index + 1)`` and
  ``F.normalize(dirs[i].lerp(dirs[i + 1], f))`` (l. 472-478; heretic's list is hidden_states-indexed, so
  ``+ 1`` turns its block-indexed ``direction_index`` into a hidden_states index; here the float is in the
  direction set's own convention, so no shift); ``direction_index is None`` -> ``dirs[layer_index + 1]``,
  i.e. each block uses its own output's direction (l. 511); the kernel
  ``distance = |layer_index - max_weight_position|``, skip if ``distance > min_weight_distance``,
  ``weight = max + distance / min_weight_distance * (min - max)`` (l. 489-500), ``weight == 0`` -> skip
  (l. 505); LoRA factors ``lora_A = v^T W``, ``lora_B = -weight v`` (l. 568-575), ``PRE``:
  ``W = F.normalize(W, dim=1)`` first and ``lora_B = W_row_norms * lora_B`` (l. 562-579), ``FULL``:
  ``W = normalize_rows(W_hat + lora_B @ lora_A) * W_row_norms - W_org`` (l. 580-588).
- p-e-w/heretic ``src/heretic/main.py`` l. 567-578: directions are unit ``F.normalize(bad - good)``;
  ``orthogonalize_direction`` removes the component along the unit good mean per layer and renormalizes.
- jim-plus/llm-abliteration ``utils/apply.py`` ``modify_tensor_improved2``: ``W -= s * outer(r, r^T W)``
  (the ``none`` writer edit); ``sharded_ablate.py`` ``modify_tensor_norm_preserved``: normalize rows,
  subtract, renormalize, restore the row norms (the idea behind ``preserve``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = [
    "TARGETS",
    "PlannedEdit",
    "classify_tensor",
    "direction_for_block",
    "edit_bias",
    "edit_rows",
    "edit_writer",
    "fused_residual_axis",
    "plan_edits",
    "prepare_directions",
    "project_out",
    "reference_edit",
    "round_to_dtype",
    "unit",
    "weight_for_block",
]

TARGETS = ("embed_tokens", "attn_out", "mlp_down", "lm_head")
NORMS = ("none", "pre", "preserve")
KERNEL_KEYS = frozenset({"max_weight", "max_weight_position", "min_weight", "min_weight_distance"})

F64 = torch.float64


# ---------------------------------------------------------------- vectors


def _f64(x: Any) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    return torch.as_tensor(x).detach().to(device="cpu", dtype=F64)


def unit(v: Any) -> torch.Tensor:
    """v / ||v|| in float64 (a zero vector is an error)."""
    v = _f64(v).reshape(-1)
    n = torch.linalg.vector_norm(v)
    if not torch.isfinite(n) or n == 0:
        raise ValueError("cannot normalize a zero or non-finite vector")
    return v / n


def project_out(r: Any, g: Any) -> torch.Tensor:
    """normalize(r^ - (r^ . g^) g^) with r^ = unit(r), g^ = unit(g): r made orthogonal to g, unit length."""
    r_hat, g_hat = unit(r), unit(g)
    return unit(r_hat - torch.dot(r_hat, g_hat) * g_hat)


def _as_layer_dict(dirs: Any) -> dict[int, Any]:
    """{layer: vector} from a dict (int or digit-string keys), a list/tuple, or a 2-D tensor/array [L, d]."""
    if isinstance(dirs, Mapping):
        return {int(k): v for k, v in dirs.items()}
    if isinstance(dirs, (torch.Tensor, np.ndarray)):
        if dirs.ndim != 2:
            raise ValueError(f"a direction stack must be 2-D [layers, d], got shape {tuple(dirs.shape)}")
        return {i: dirs[i] for i in range(dirs.shape[0])}
    return dict(enumerate(dirs))


def prepare_directions(dirs: Any, project_out_dirs: Any = None) -> dict[int, torch.Tensor]:
    """Unit float64 vector per layer; with ``project_out_dirs`` each r_l is made orthogonal to g_l first.

    Layer keys stay in the direction set's own convention. Every layer of ``dirs`` needs a g_l.
    """
    raw = _as_layer_dict(dirs)
    if project_out_dirs is None:
        return {k: unit(v) for k, v in sorted(raw.items())}
    g = _as_layer_dict(project_out_dirs)
    missing = sorted(set(raw) - set(g))
    if missing:
        raise ValueError(f"project_out has no vector for layer(s) {missing}")
    return {k: project_out(v, g[k]) for k, v in sorted(raw.items())}


def _own_index(block: int, convention: str) -> int:
    """Index, in the direction set's convention, of the vector read at block ``block``'s output."""
    if convention == "block":
        return block
    if convention == "hidden_states":
        return block + 1
    raise ValueError(f"unknown layer convention {convention!r} (block | hidden_states)")


def direction_for_block(
    dirs: Any, layer_spec: float | str, block: int, convention: str, n_blocks: int
) -> torch.Tensor:
    """The unit float64 direction used by decoder block ``block`` (0-based, < n_blocks).

    ``dirs`` is {layer: vector} in ``convention``; each vector used is normalized here (pass the output of
    :func:`prepare_directions` to include ``project_out``).

    - int k: r_k for every block;
    - float x: normalize(r_i + f (r_{i+1} - r_i)), i = floor(x), f = x - i (f == 0 needs only r_i);
    - ``"each"``: block b uses the vector of its own output (block index b, hidden_states index b + 1).
    """
    if not 0 <= block < n_blocks:
        raise ValueError(f"block {block} outside 0..{n_blocks - 1}")
    d = _as_layer_dict(dirs)

    def get(i: int) -> torch.Tensor:
        if i not in d:
            raise KeyError(f"no direction at {convention} index {i} (have {sorted(d)})")
        return unit(d[i])

    if isinstance(layer_spec, str):
        if layer_spec != "each":
            raise ValueError(f"unknown layer spec {layer_spec!r}")
        return get(_own_index(block, convention))
    if isinstance(layer_spec, bool):
        raise TypeError("layer must be an int, a float or 'each', not a bool")
    if isinstance(layer_spec, (int, np.integer)):
        return get(int(layer_spec))
    if isinstance(layer_spec, (float, np.floating)):
        x = float(layer_spec)
        if not math.isfinite(x):
            raise ValueError(f"layer {x} is not finite")
        i = math.floor(x)
        f = x - i
        r_i = get(i)
        if f == 0.0:
            return unit(r_i)
        r_j = get(i + 1)
        return unit(r_i + f * (r_j - r_i))
    raise TypeError(f"layer must be an int, a float or 'each', got {type(layer_spec).__name__}")


# ---------------------------------------------------------------- weights


def _is_kernel(spec: Any) -> bool:
    return isinstance(spec, Mapping) and set(spec) == KERNEL_KEYS


def weight_for_block(spec: Any, block: int) -> float:
    """Weight at 0-based block ``block`` for a number, a {block: w} map (absent -> 0) or a kernel.

    Kernel {max_weight, max_weight_position, min_weight, min_weight_distance}: dist = |block - position|;
    0 if dist > min_weight_distance, else max + dist / min_weight_distance * (min - max). With
    min_weight_distance == 0 only dist == 0 gets a weight (max_weight), to avoid 0 / 0.
    """
    if isinstance(spec, bool):
        raise TypeError("a weight cannot be a bool")
    if isinstance(spec, (int, float, np.integer, np.floating)):
        return float(spec)
    if _is_kernel(spec):
        mx, pos = float(spec["max_weight"]), float(spec["max_weight_position"])
        mn, mwd = float(spec["min_weight"]), float(spec["min_weight_distance"])
        if mwd < 0:
            raise ValueError("min_weight_distance must be >= 0")
        dist = abs(block - pos)
        if dist > mwd:
            return 0.0
        if mwd == 0:
            return mx
        return mx + dist / mwd * (mn - mx)
    if isinstance(spec, Mapping):
        m = {int(k): float(v) for k, v in spec.items()}
        return m.get(block, 0.0)
    raise TypeError(f"unsupported weight spec {spec!r}")


# ---------------------------------------------------------------- matrix edits (float64 in, float64 out)


def _row_norms_and_hat(W: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    n = torch.linalg.vector_norm(W, dim=1)
    safe = torch.where(n > 0, n, torch.ones_like(n))
    W_hat = torch.where((n > 0)[:, None], W / safe[:, None], torch.zeros_like(W))
    return n, W_hat


def edit_writer(W: Any, u: Any, w: float, norm: str = "none") -> torch.Tensor:
    """Edit a residual writer W [d, in] (rows = residual dims) along unit u [d] with weight w (float64).

    none: W - w u (u^T W); pre: W - w (n * u)(u^T W^); preserve: M = W^ - w u (u^T W^), rows of M rescaled
    to the original row norms n_i. W^ = W / n row-wise; a zero row of W (or of M) gives a zero row.
    """
    W, u = _f64(W), _f64(u).reshape(-1)
    if W.ndim != 2 or W.shape[0] != u.shape[0]:
        raise ValueError(f"writer {tuple(W.shape)} does not have {u.shape[0]} rows")
    if norm == "none":
        return W - w * torch.outer(u, u @ W)
    n, W_hat = _row_norms_and_hat(W)
    a = u @ W_hat
    if norm == "pre":
        return W - w * torch.outer(n * u, a)
    if norm == "preserve":
        M = W_hat - w * torch.outer(u, a)
        m = torch.linalg.vector_norm(M, dim=1)
        scale = torch.where(m > 0, n / torch.where(m > 0, m, torch.ones_like(m)), torch.zeros_like(m))
        return M * scale[:, None]
    raise ValueError(f"unknown norm {norm!r} (none | pre | preserve)")


def edit_rows(W: Any, u: Any, w: float) -> torch.Tensor:
    """Embedding / lm_head [vocab, d]: W - w (W u) u^T (each row loses w times its u component)."""
    W, u = _f64(W), _f64(u).reshape(-1)
    if W.ndim != 2 or W.shape[1] != u.shape[0]:
        raise ValueError(f"row matrix {tuple(W.shape)} does not have {u.shape[0]} columns")
    return W - w * torch.outer(W @ u, u)


def edit_bias(b: Any, u: Any, w: float) -> torch.Tensor:
    """Writer bias [d] (or a stack [..., d]): b - w (u^T b) u, row-wise for a stack."""
    b, u = _f64(b), _f64(u).reshape(-1)
    if b.shape[-1] != u.shape[0]:
        raise ValueError(f"bias {tuple(b.shape)} is not [.., {u.shape[0]}]")
    return b - w * (b @ u)[..., None] * u


# ---------------------------------------------------------------- rounding


def _bf16_bits_from_f64(x: np.ndarray) -> np.ndarray:
    """Round float64 to bfloat16 bits, nearest-even, without double rounding.

    Step 1 rounds to float32 *to odd* (truncate toward zero, set the last bit if inexact); float32 keeps 16
    more bits than bfloat16, so step 2 (nearest-even on the bit pattern) then rounds correctly.
    """
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        f = x.astype(np.float32)
        finite = np.isfinite(x)
        too_far = finite & (np.abs(f.astype(np.float64)) > np.abs(x))
        f = np.where(too_far, np.nextafter(f, np.float32(0)), f)
        inexact = finite & (f.astype(np.float64) != x)
        bits = f.view(np.uint32).copy()
        bits[inexact] |= np.uint32(1)
        nan = np.isnan(x)
        out = ((bits + np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1))) >> 16).astype(np.uint16)
        out[nan] = np.uint16(0x7FC0)
    return out


def round_to_dtype(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """float64 -> ``dtype`` with one round-to-nearest-even (bf16 via round-to-odd, f16/f32 via numpy)."""
    a = _f64(x).numpy()
    if dtype == torch.float64:
        return torch.from_numpy(a.copy())
    if dtype == torch.float32:
        return torch.from_numpy(a.astype(np.float32))
    if dtype == torch.float16:
        return torch.from_numpy(a.astype(np.float16))  # numpy rounds double -> half directly
    if dtype == torch.bfloat16:
        return torch.from_numpy(_bf16_bits_from_f64(a).view(np.int16)).view(torch.bfloat16)
    raise TypeError(f"unsupported storage dtype {dtype}")


# ---------------------------------------------------------------- tensor names

_BLOCK = r"^model\.(?:language_model\.)?layers\.(?P<block>\d+)\."
_RULES: list[tuple[re.Pattern[str], str, str]] = [
    (re.compile(r"^model\.(?:language_model\.)?embed_tokens\.weight$"), "embed_tokens", "rows"),
    (re.compile(r"^lm_head\.weight$"), "lm_head", "rows"),
    (re.compile(_BLOCK + r"(?:self_attn\.o_proj|linear_attn\.out_proj)\.weight$"), "attn_out", "writer"),
    (re.compile(_BLOCK + r"(?:self_attn\.o_proj|linear_attn\.out_proj)\.bias$"), "attn_out", "bias"),
    (re.compile(_BLOCK + r"mlp\.(?:shared_expert\.)?down_proj\.weight$"), "mlp_down", "writer"),
    (re.compile(_BLOCK + r"mlp\.(?:shared_expert\.)?down_proj\.bias$"), "mlp_down", "bias"),
    (re.compile(_BLOCK + r"mlp\.experts\.\d+\.down_proj\.weight$"), "mlp_down", "writer"),
    (re.compile(_BLOCK + r"mlp\.experts\.\d+\.down_proj\.bias$"), "mlp_down", "bias"),
    (re.compile(_BLOCK + r"mlp\.experts\.down_proj$"), "mlp_down", "fused"),
    (re.compile(_BLOCK + r"mlp\.experts\.down_proj_bias$"), "mlp_down", "bias"),
]


def classify_tensor(name: str) -> tuple[str, int | None, str] | None:
    """(target, block or None, kind) for a tensor the recipes can edit, else None.

    kind: ``rows`` (embedding / lm_head [vocab, d]), ``writer`` ([d, in]), ``fused`` ([E, d, i] or
    [E, i, d], see :func:`fused_residual_axis`), ``bias`` ([d] or a per-expert stack [E, d]). Only decoder
    blocks under ``model.layers.N.`` / ``model.language_model.layers.N.`` match: ``mtp.*``, vision towers
    and anything else pass through.
    """
    for pattern, target, kind in _RULES:
        m = pattern.match(name)
        if m:
            block = int(m.group("block")) if "block" in pattern.groupindex else None
            return target, block, kind
    return None


# model_type -> axis of a fused expert down projection that holds the residual dims.
# [E, d, i], used as F.linear(x, W[e]) in transformers 5 (checked in the installed modeling code:
# Qwen3MoeExperts.down_proj = empty(E, hidden, intermediate), forward F.linear(h, down_proj[e])).
_RESIDUAL_MIDDLE = {
    "qwen2_moe",
    "qwen3_moe",
    "qwen3_5_moe",
    "qwen3_next",
    "qwen3_vl_moe",
    "qwen3_omni_moe",
    "mixtral",
    "deepseek_v2",
    "glm4_moe",
    "ernie4_5_moe",
    "granitemoe",
    "hunyuan_v1_moe",
}
# [E, i, d], used as h @ W[e] (GptOssExperts.down_proj = empty(E, intermediate, hidden), forward
# ``gated_output @ self.down_proj[expert_idx]``; Llama4TextExperts likewise [E, expert_dim, hidden]).
_RESIDUAL_LAST = {"gpt_oss", "llama4", "llama4_text"}


def fused_residual_axis(model_type: str, shape: tuple[int, ...], d: int) -> int:
    """-2 for [E, d, i], -1 for [E, i, d]; the model type decides, the shape must agree."""
    if len(shape) != 3:
        raise ValueError(f"a fused expert tensor must be 3-D, got {shape}")
    if model_type in _RESIDUAL_LAST:
        axis = -1
    elif model_type in _RESIDUAL_MIDDLE:
        axis = -2
    else:
        fits = [a for a in (-2, -1) if shape[a] == d]
        if len(fits) != 1:
            raise ValueError(f"fused experts {shape} of unknown model type {model_type!r}: ambiguous layout")
        axis = fits[0]
    if shape[axis] != d:
        raise ValueError(f"fused experts {shape} of {model_type!r}: axis {axis} is not the hidden size {d}")
    return axis


# ---------------------------------------------------------------- the whole state dict


def _weight_spec_for(weight: Any, target: str) -> Any:
    """A single spec (number, {block: w}, kernel) for all targets, or a {target: spec} map; None -> 1."""
    if weight is None:
        return 1.0
    named = [k for k in weight if isinstance(k, str) and k in TARGETS] if isinstance(weight, Mapping) else []
    if named:
        if len(named) != len(weight):
            raise ValueError(f"weight map mixes target names with other keys: {sorted(map(str, weight))}")
        if target not in weight:
            raise ValueError(f"weight map has no entry for target {target!r}")
        return weight[target]
    return weight


def _edit_fused(T: torch.Tensor, u: torch.Tensor, w: float, norm: str, axis: int) -> torch.Tensor:
    """Each expert's [d, i] writer (W[e], or W[e]^T for [E, i, d]) edited like a dense writer."""
    out = []
    for e in range(T.shape[0]):
        W = T[e] if axis == -2 else T[e].T
        Wn = edit_writer(W, u, w, norm)
        out.append(Wn if axis == -2 else Wn.T)
    return torch.stack(out)


@dataclass(frozen=True)
class PlannedEdit:
    """One tensor the recipe changes: its direction ``u`` (unit float64), weight ``w`` (non-zero)."""

    name: str
    target: str
    block: int  # the block whose direction is used (0 for the embedding, n_blocks - 1 for lm_head)
    kind: str  # rows | writer | bias | fused
    u: torch.Tensor
    w: float
    axis: int | None = None  # fused only: -2 for [E, d, i], -1 for [E, i, d]


def plan_edits(
    state_dict: Mapping[str, torch.Tensor],
    *,
    model_type: str,
    n_blocks: int,
    dirs: Any,
    convention: str,
    layer: float | str,
    targets: Any,
    weight: Any = None,
    project_out: Any = None,
) -> list[PlannedEdit]:
    """Which tensors change, with which unit direction and weight (weight-0 tensors are left out).

    ``weight``: None (1 everywhere), one spec for every target, or {target: spec}; embed_tokens and lm_head
    take only a number. The embedding uses the direction block 0 uses, lm_head the direction of the last
    block (n_blocks - 1).
    """
    targets = tuple(targets)
    bad = [t for t in targets if t not in TARGETS]
    if bad:
        raise ValueError(f"unknown target(s) {bad} (choose from {list(TARGETS)})")
    prepared = prepare_directions(dirs, project_out)
    d = next(iter(prepared.values())).shape[0]
    cache: dict[int, torch.Tensor] = {}

    def u_at(block: int) -> torch.Tensor:
        if block not in cache:
            cache[block] = direction_for_block(prepared, layer, block, convention, n_blocks)
        return cache[block]

    plan = []
    for name, T in state_dict.items():
        c = classify_tensor(name)
        if c is None or c[0] not in targets:
            continue
        target, block, kind = c
        spec = _weight_spec_for(weight, target)
        if kind == "rows":
            if not isinstance(spec, (int, float, np.integer, np.floating)) or isinstance(spec, bool):
                raise ValueError(f"{target} takes a number weight, got {spec!r}")
            w = float(spec)
            block = 0 if target == "embed_tokens" else n_blocks - 1
        else:
            if block >= n_blocks:
                raise ValueError(f"{name}: block {block} >= n_blocks {n_blocks}")
            w = weight_for_block(spec, block)
        if w == 0.0:
            continue
        axis = fused_residual_axis(model_type, tuple(T.shape), d) if kind == "fused" else None
        plan.append(PlannedEdit(name, target, block, kind, u_at(block), w, axis))
    return plan


def _tied_lm_head(state_dict: Mapping[str, torch.Tensor]) -> str | None:
    """The embedding's name when ``lm_head.weight`` shares its storage (an in-memory tied model)."""
    lm = state_dict.get("lm_head.weight")
    if lm is None:
        return None
    for name, T in state_dict.items():
        c = classify_tensor(name)
        is_embed = c is not None and c[0] == "embed_tokens"
        if is_embed and T.data_ptr() == lm.data_ptr() and T.shape == lm.shape:
            return name
    return None


def reference_edit(
    state_dict: Mapping[str, torch.Tensor],
    *,
    model_type: str,
    n_blocks: int,
    dirs: Any,
    convention: str,
    layer: float | str,
    targets: Any,
    weight: Any = None,
    norm: str = "none",
    project_out: Any = None,
) -> dict[str, torch.Tensor]:
    """The full edited state dict, each edited tensor rounded once to its own storage dtype.

    Tensors that are not edited (not a target, or weight 0 at their block) are returned as the very same
    objects. See :func:`plan_edits` for ``weight`` and the directions of the embedding and lm_head. A tied
    lm_head (the same storage as the embedding) follows the edited embedding and cannot be a target itself.
    """
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r} (none | pre | preserve)")
    tied = _tied_lm_head(state_dict)
    if tied is not None and "lm_head" in tuple(targets):
        raise ValueError("lm_head is tied to the embedding: it cannot be edited on its own")
    plan = plan_edits(
        state_dict,
        model_type=model_type,
        n_blocks=n_blocks,
        dirs=dirs,
        convention=convention,
        layer=layer,
        targets=targets,
        weight=weight,
        project_out=project_out,
    )
    out: dict[str, torch.Tensor] = dict(state_dict)
    for p in plan:
        T = state_dict[p.name]
        if p.kind == "rows":
            new = edit_rows(T, p.u, p.w)
        elif p.kind == "writer":
            new = edit_writer(T, p.u, p.w, norm)
        elif p.kind == "bias":
            new = edit_bias(T, p.u, p.w)
        else:
            new = _edit_fused(_f64(T), p.u, p.w, norm, p.axis)
        out[p.name] = round_to_dtype(new, T.dtype)
    if tied is not None:
        out["lm_head.weight"] = out[tied]
    return out
