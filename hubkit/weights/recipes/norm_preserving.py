"""Norm-preserving abliteration (grimjim / jim-plus llm-abliteration; heretic's ``row_normalization: pre`` and
``full``): the writer's rows are normalized before the direction is removed, and with ``preserve`` each row
is put back at its original norm, exactly (heretic approximates that with a rank-3 SVD). With n_i = ‖W_i‖
and Ŵ = W / n:

* ``pre``: ``W − w (n ⊙ r)(rᵀŴ)`` (a rank-1 change: exact as a LoRA);
* ``preserve``: ``M = Ŵ − w r (rᵀŴ)``, row i of M rescaled to n_i (not low-rank: a truncated-SVD LoRA).

Both depend on W row by row, so no hook on a writer's output reproduces them (``hubkit.ablate`` refuses and
points at ``export lora`` or ``regenerate``). The embedding and lm_head have no rows to keep and are refused
where the recipe is written; biases take the ``none`` projection.
"""

from __future__ import annotations

from hubkit.weights.recipes.base import Recipe, register


@register
class NormPreserving(Recipe):
    name = "norm-preserving"
    summary = "row-normalized directional ablation of the residual writers (norm pre / preserve)"
    norms = ("pre", "preserve")
    has_hook_equivalent = False
