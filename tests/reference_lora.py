"""Exact LoRA factors of the reference edits, and a PEFT adapter folder built from them.

For a writer W [d, in] (PEFT ``Linear``: weight [out, in], delta = lora_B @ lora_A * scaling):

- ``none``: delta = B A with B = -w u [d, 1], A = u^T W [1, in];
- ``pre``: B = -w (n * u) [d, 1], A = u^T W^ [1, in] (n the row norms, W^ = W / n row-wise);
- ``preserve``: delta = edit_writer(W, u, w, "preserve") - W is not low rank in general (it holds a
  diag(.) W^ term), so the factors are its rank-k truncated SVD in float64, B = U_k sqrt(S_k),
  A = sqrt(S_k) V_k^T (heretic splits the singular values the same way, ``src/heretic/model.py`` l. 606-611
  @ 20b7bf78), with the relative error ||delta - B A||_F / ||delta||_F. k = min(d, in) is exact.

lm_head [vocab, d] is a PEFT ``Linear`` too: delta = -w (W u) u^T, B = -w W u [vocab, 1], A = u^T [1, d].

The embedding [vocab, d] is a PEFT ``Embedding``, whose factors are stored the other way round:
``lora_embedding_A`` [r, vocab], ``lora_embedding_B`` [d, r], and the embedding's delta is
(lora_embedding_B @ lora_embedding_A)^T (``peft.tuners.lora.layer.Embedding.get_delta_weight`` uses
``transpose(weight_B @ weight_A, True)``; ``forward`` looks rows up in ``lora_embedding_A.T`` and multiplies
by ``lora_embedding_B.T``). For delta E = -w (E u) u^T: lora_embedding_A = (E u)^T [1, vocab],
lora_embedding_B = -w u [d, 1].

Biases cannot be a LoRA product. The adapter carries the edited biases in PEFT's ``bias="lora_only"`` form
(``base_model.model.<module>.base_layer.bias``), which PEFT loads over the base layer's bias.

Not supported in the adapter (documented in NOTES.md): fused MoE expert tensors and per-expert checkpoint
names (transformers 5 has no per-expert ``Linear`` modules to attach a LoRA to), and an embedding edit on a
model with tied embeddings (the adapter would change the input embedding only, the edited checkpoint both).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from tests.reference_recipes import (
    _f64,
    _row_norms_and_hat,
    _tied_lm_head,
    edit_bias,
    edit_writer,
    plan_edits,
    round_to_dtype,
)

__all__ = [
    "LoraFactors",
    "build_peft_adapter",
    "embedding_lora",
    "reference_lora",
    "rows_lora",
    "writer_lora",
]

F64 = torch.float64


@dataclass(frozen=True)
class LoraFactors:
    """delta = B @ A for ``kind == "linear"``; delta = (B @ A)^T for ``kind == "embedding"`` (PEFT's)."""

    B: torch.Tensor  # linear: [out, r]; embedding: lora_embedding_B [d, r]
    A: torch.Tensor  # linear: [r, in]; embedding: lora_embedding_A [r, vocab]
    rel_error: float  # ||delta - product||_F / ||delta||_F in float64 (0 for a zero delta)
    kind: str = "linear"

    @property
    def rank(self) -> int:
        return self.A.shape[0]

    def delta(self) -> torch.Tensor:
        p = self.B @ self.A
        return p.T if self.kind == "embedding" else p


def _rel(delta: torch.Tensor, approx: torch.Tensor) -> float:
    nd = torch.linalg.matrix_norm(delta)
    return 0.0 if nd == 0 else float(torch.linalg.matrix_norm(delta - approx) / nd)


def writer_lora(W: Any, u: Any, w: float, norm: str = "none", rank: int | None = None) -> LoraFactors:
    """Factors of edit_writer(W, u, w, norm) - W for a writer W [d, in] (see the module docstring).

    ``rank`` is used by ``preserve`` only (default min(d, in): exact); none / pre are exactly rank 1.
    """
    W, u = _f64(W), _f64(u).reshape(-1)
    if norm == "none":
        B, A = (-w * u)[:, None], (u @ W)[None, :]
    elif norm == "pre":
        n, W_hat = _row_norms_and_hat(W)
        B, A = (-w * n * u)[:, None], (u @ W_hat)[None, :]
    elif norm == "preserve":
        delta = edit_writer(W, u, w, "preserve") - W
        k = min(W.shape) if rank is None else rank
        if not 1 <= k <= min(W.shape):
            raise ValueError(f"rank {k} outside 1..{min(W.shape)}")
        U, S, Vh = torch.linalg.svd(delta, full_matrices=False)
        s = S[:k].sqrt()
        B, A = U[:, :k] * s, s[:, None] * Vh[:k]
        return LoraFactors(B, A, _rel(delta, B @ A))
    else:
        raise ValueError(f"unknown norm {norm!r}")
    return LoraFactors(B, A, _rel(edit_writer(W, u, w, norm) - W, B @ A))


def rows_lora(W: Any, u: Any, w: float) -> LoraFactors:
    """lm_head [vocab, d] as a PEFT Linear: delta = -w (W u) u^T = B A, B [vocab, 1], A = u^T [1, d]."""
    W, u = _f64(W), _f64(u).reshape(-1)
    B, A = (-w * (W @ u))[:, None], u[None, :]
    return LoraFactors(B, A, _rel(-w * torch.outer(W @ u, u), B @ A))


def embedding_lora(E: Any, u: Any, w: float) -> LoraFactors:
    """Embedding [vocab, d] in PEFT's orientation: A = (E u)^T [1, vocab], B = -w u [d, 1]; delta = (B A)^T."""
    E, u = _f64(E), _f64(u).reshape(-1)
    A, B = (E @ u)[None, :], (-w * u)[:, None]
    return LoraFactors(B, A, _rel(-w * torch.outer(E @ u, u), (B @ A).T), kind="embedding")


def reference_lora(
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
    rank: int | None = None,
) -> tuple[dict[str, LoraFactors], dict[str, torch.Tensor]]:
    """({module name: factors}, {bias tensor name: edited bias in its storage dtype}) for a recipe.

    Same arguments as :func:`reference_recipes.reference_edit`; ``rank`` as in :func:`writer_lora`.
    Module names are the tensor names without ``.weight``.
    """
    if _tied_lm_head(state_dict) is not None and {"embed_tokens", "lm_head"} & set(targets):
        raise NotImplementedError("tied embeddings: a LoRA adapter cannot reproduce the tied edit")
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
    factors: dict[str, LoraFactors] = {}
    biases: dict[str, torch.Tensor] = {}
    for p in plan:
        T = state_dict[p.name]
        if p.kind == "fused" or ".experts." in p.name:
            raise NotImplementedError(f"{p.name}: MoE expert tensors have no PEFT Linear module")
        if p.kind == "bias":
            biases[p.name] = round_to_dtype(edit_bias(T, p.u, p.w), T.dtype)
            continue
        module = p.name.removesuffix(".weight")
        if p.target == "embed_tokens":
            factors[module] = embedding_lora(T, p.u, p.w)
        elif p.target == "lm_head":
            factors[module] = rows_lora(T, p.u, p.w)
        else:
            factors[module] = writer_lora(T, p.u, p.w, norm, rank)
    return factors, biases


def _pad(t: torch.Tensor, r: int, dim: int) -> torch.Tensor:
    """Zero-pad the rank dimension to r (zero rank components leave the product unchanged)."""
    missing = r - t.shape[dim]
    if missing == 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t, t.new_zeros(shape)], dim=dim)


def build_peft_adapter(
    folder: str | Path,
    factors: Mapping[str, LoraFactors],
    *,
    base_model_name_or_path: str,
    biases: Mapping[str, torch.Tensor] | None = None,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write ``adapter_config.json`` + ``adapter_model.safetensors`` that PeftModel.from_pretrained loads.

    One rank r for every module (the largest; smaller factors are zero-padded), lora_alpha = r so the
    scaling is 1, dropout 0, target_modules = the full module names (PEFT matches a name exactly or as a
    ``.``-suffix). Keys: ``base_model.model.<module>.lora_A.weight`` / ``lora_B.weight`` (Linear),
    ``base_model.model.<module>.lora_embedding_A`` / ``lora_embedding_B`` (Embedding),
    ``base_model.model.<module>.base_layer.bias`` (edited biases, with ``bias="lora_only"``).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    biases = dict(biases or {})
    bias_modules = {name.removesuffix(".bias") for name in biases}
    if not bias_modules <= set(factors):
        raise ValueError(f"biases of modules without a LoRA: {sorted(bias_modules - set(factors))}")
    r = max((f.rank for f in factors.values()), default=1)
    tensors: dict[str, torch.Tensor] = {}
    for module, f in sorted(factors.items()):
        A, B = _pad(f.A, r, 0), _pad(f.B, r, 1)
        pre = f"base_model.model.{module}"
        if f.kind == "embedding":
            tensors[f"{pre}.lora_embedding_A"] = A.to(dtype).contiguous()
            tensors[f"{pre}.lora_embedding_B"] = B.to(dtype).contiguous()
        else:
            tensors[f"{pre}.lora_A.weight"] = A.to(dtype).contiguous()
            tensors[f"{pre}.lora_B.weight"] = B.to(dtype).contiguous()
    for name, b in sorted(biases.items()):
        tensors[f"base_model.model.{name.removesuffix('.bias')}.base_layer.bias"] = b.contiguous()
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name_or_path,
        "r": r,
        "lora_alpha": r,
        "lora_dropout": 0.0,
        "use_rslora": False,
        "use_dora": False,
        "fan_in_fan_out": False,
        "bias": "lora_only" if biases else "none",
        "target_modules": sorted(factors),
        "inference_mode": True,
    }
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    return folder
