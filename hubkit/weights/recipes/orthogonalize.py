"""Directional ablation of the residual writers (mlabonne / Arditi et al.; heretic with ``row_normalization:
none``): ``W ← W − w r (rᵀW)`` for ``[d, in]`` writers, ``W ← W − w (W r) rᵀ`` for the embedding and an
untied lm_head, ``b ← b − w (rᵀb) r`` for biases, with r one unit direction per block (a layer, an
interpolated index, or each block's own) and w its weight (1, a number, a ``{block: w}`` map or heretic's
kernel). Its inference-time twin is :func:`hubkit.use.steering.ablate`: ``y ← y − w (y·r) r`` on every
writer's output gives the same logits.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hubkit.weights.kernels import (
    TorchKernels,
    accumulate,
    chunk_rows,
    cols_block,
    cols_coefficient,
    cols_partials,
    rows_block,
    unit_vector,
)
from hubkit.weights.recipes.base import Recipe, register

if TYPE_CHECKING:
    import torch


def orthogonalize(weight: torch.Tensor, r: Any, kind: str, w: float = 1.0) -> torch.Tensor:
    """The whole-tensor form of what the executor streams (the same bytes), for tests and small uses.

    ``weight`` a torch tensor in its storage dtype (BF16/F16/F32/F64); ``r`` any float vector ``[d]``
    (renormalized in float64 here); ``kind`` ``rows`` or ``cols`` as in :class:`~hubkit.weights.plan.TensorOp`.
    """
    import torch

    code = {torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32", torch.float64: "F64"}[
        weight.dtype
    ]
    k = TorchKernels(code, unit_vector(r), str(weight.device))
    if kind == "rows":
        return rows_block(weight.reshape(-1, weight.shape[-1]), k, w=w).reshape(weight.shape)
    d, m = weight.shape[-2], weight.shape[-1]
    out = []
    for mat in weight.reshape(-1, d, m):
        s = accumulate(cols_partials(mat, k.r, chunk_rows(m), k), None)
        out.append(cols_block(mat, k.r, k.r, cols_coefficient(s, w, k), k))
    return torch.stack(out).reshape(weight.shape)


@register
class Orthogonalize(Recipe):
    name = "orthogonalize"
    summary = "directional ablation of every targeted residual writer (W − w r rᵀW)"
    norms = ("none",)
    has_hook_equivalent = True
