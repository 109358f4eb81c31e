"""The seed recipe (mlabonne / Arditi et al.): one unit direction r, weight 1, removed from every targeted
residual writer of every block: ``W ← W − r (rᵀW)`` for ``[d, in]`` writers, ``W ← W − (W r) rᵀ`` for the
embedding, biases ``b ← b − (rᵀb) r``. Its inference-time twin is :func:`hubkit.use.steering.ablate`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hubkit.weights.kernels import (
    TorchKernels,
    accumulate,
    chunk_rows,
    cols_block,
    cols_partials,
    rows_block,
    unit_vector,
)
from hubkit.weights.recipes.base import Recipe, register

if TYPE_CHECKING:
    import torch


def orthogonalize(weight: torch.Tensor, r: Any, kind: str) -> torch.Tensor:
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
        return rows_block(weight.reshape(-1, weight.shape[-1]), k).reshape(weight.shape)
    d, m = weight.shape[-2], weight.shape[-1]
    out = []
    for mat in weight.reshape(-1, d, m):
        s = accumulate(cols_partials(mat, k.r, chunk_rows(m), k), None)
        out.append(cols_block(mat, k.r, s, k))
    return torch.stack(out).reshape(weight.shape)


@register
class Orthogonalize(Recipe):
    name = "orthogonalize"
    has_hook_equivalent = True
    summary = "one direction, weight 1, every block"
