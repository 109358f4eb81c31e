"""A published recipe as a PEFT LoRA adapter: serve an abliteration beside its base model (vLLM, sglang,
``PeftModel.from_pretrained``) without a second copy of the weights.

Reads only the targeted tensors of the base checkpoint (memory-mapped, one at a time). Every edit is
``W' = W + ΔW``; the adapter stores ``ΔW = B A``:

* ``none`` (writers ``[d, in]``): ``B = −w r``, ``A = rᵀW`` — rank 1, exact;
* ``pre``: ``B = −w (n ⊙ r)``, ``A = rᵀŴ`` — rank 1, exact;
* ``preserve``: not low-rank; the best rank-k approximation of the exact ΔW (top eigenvectors of ΔW ΔWᵀ,
  float64, deterministic), with the relative Frobenius error reported per tensor;
* the embedding ``[vocab, d]``: ``ΔE = −w (E r) rᵀ`` as PEFT's embedding LoRA; an untied lm_head likewise as a
  Linear LoRA. Biases travel as the edited bias (``bias: lora_only``).

lora_alpha = r so the scaling is 1; every module has the adapter's rank r (smaller factors are zero-padded).
"""

from __future__ import annotations

import json
import math
import mmap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hubkit.errors import PlanError
from hubkit.formats.atomic import staging_dir
from hubkit.formats.safetensors_io import NP_DTYPES, bf16_to_float32
from hubkit.weights.kernels import unit_vector
from hubkit.weights.plan import TensorOp

ROWS_BLOCK = 1 << 14  # rows of the embedding read at once (float64: 16k × d × 8 bytes)


@dataclass
class LoraModule:
    module: str  # the module's name in the model (the tensor name without ``.weight``)
    kind: str  # linear | embedding
    rank: int
    rel_error: float  # ‖ΔW − B A‖_F / ‖ΔW‖_F (0 for the exact rank-1 cases)


@dataclass
class LoraResult:
    out: Path
    base_model_name_or_path: str
    rank: int
    modules: list[LoraModule]
    biases: list[str]
    notes: list[str] = field(default_factory=list)

    @property
    def worst(self) -> LoraModule | None:
        return max(self.modules, key=lambda m: m.rel_error, default=None)

    def summary(self) -> str:
        worst = self.worst
        exact = worst is None or worst.rel_error == 0.0
        lines = [f"wrote {self.out}: a LoRA of rank {self.rank} on {len(self.modules)} module(s) of "
                 f"{self.base_model_name_or_path}" + (f", {len(self.biases)} edited bias(es)" if self.biases else ""),
                 "exact (every edit is rank 1)" if exact else
                 f"worst relative error ‖ΔW − BA‖/‖ΔW‖ = {worst.rel_error:.3g} ({worst.module}); raise --rank to lower it"]
        return "\n".join(lines + [f"note: {n}" for n in self.notes])


def _read(mm: mmap.mmap, op: TensorOp, rows: slice | None = None) -> Any:
    """The op's tensor (or a slice of its rows) as float64, from the mapped shard."""
    import numpy as np

    dt = np.dtype(NP_DTYPES[op.dtype])
    arr = np.frombuffer(mm, dt, op.nbytes // dt.itemsize, op.begin).reshape(op.shape)
    part = arr if rows is None else arr[rows]
    return (bf16_to_float32(part) if op.dtype == "BF16" else part).astype(np.float64)


def _lowrank(delta: Any, k: int) -> tuple[Any, Any, float]:
    """The best rank-k factors of ``delta [d, m]`` (d ≤ m: the residual rows), float64, deterministic."""
    import numpy as np

    gram = delta @ delta.T
    vals, vecs = np.linalg.eigh(gram)
    top = vecs[:, ::-1][:, :k]
    a = top.T @ delta
    rest = delta - top @ a
    norm = math.sqrt(float((delta * delta).sum()))
    return top, a, (math.sqrt(float((rest * rest).sum())) / norm if norm else 0.0)


def writer_factors(w_mat: Any, u: Any, w: float, norm: str, rank: int) -> tuple[Any, Any, float]:
    """``(B [d, k], A [k, in], relative error)`` of the edit of one residual writer, in float64."""
    import numpy as np

    if norm == "none":
        return (-w * u)[:, None], (u @ w_mat)[None, :], 0.0
    n = np.sqrt((w_mat * w_mat).sum(axis=1))
    n = np.where(n == 0, 1.0, n)
    hat = w_mat / n[:, None]
    s = u @ hat
    if norm == "pre":
        return (-w * n * u)[:, None], s[None, :], 0.0
    m = hat - w * np.outer(u, s)
    mn = np.sqrt((m * m).sum(axis=1))
    out = m * (n / np.where(mn == 0, 1.0, mn))[:, None]
    return _lowrank(out - w_mat, rank)


def export_lora(source: Any, *, base_model: str | Path | None = None, out: str | Path, rank: int = 3,
                revision: str | None = None, overwrite: bool = False) -> LoraResult:
    """Write ``out`` (``adapter_config.json`` + ``adapter_model.safetensors``) from a published recipe."""
    import numpy as np
    import torch
    from safetensors.torch import save_file

    from hubkit.weights.regenerate import prepare

    if rank < 1:
        raise PlanError(f"--rank {rank}: must be at least 1")
    recipe, base, plan = prepare(source, revision, base_model, False)
    tied_embed = plan.tied and "embed_tokens" in plan.targets
    experts = [op.name for op in plan.ops if ".experts." in op.name or op.how == "experts"]
    if experts:
        raise PlanError(f"{experts[0]}: MoE expert tensors can't be targeted by a PEFT LoRA here (fused or per-expert "
                        "parameters, not nn.Linear modules); use `hubkit regenerate`, or drop mlp_down")
    keys = sorted({op.vector for op in plan.ops})
    vectors = {k: unit_vector(v) for k, v in recipe.recipe.vectors(keys).items()}
    name = base.repo_id or recipe.base_model or str(base.path)
    factors: dict[str, tuple[str, Any, Any, float]] = {}
    biases: dict[str, Any] = {}
    for op in sorted(plan.ops, key=lambda o: (o.shard, o.begin)):
        u, w = vectors[op.vector], op.weight
        with open(base.path / op.shard, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            module = op.name.removesuffix(".weight").removesuffix(".bias")
            if op.how == "bias":
                b = _read(mm, op)
                biases[op.name] = b - w * float(u @ b) * u
            elif op.kind == "cols":
                factors[module] = ("linear", *writer_factors(_read(mm, op), u, w, op.norm, rank))
            else:  # embedding / lm_head rows: ΔW = −w (W u) uᵀ, W u read in blocks of rows
                wu = np.concatenate([_read(mm, op, slice(a, a + ROWS_BLOCK)) @ u
                                     for a in range(0, op.shape[0], ROWS_BLOCK)])
                if op.target == "embed_tokens":  # PEFT: ΔE = (B A)ᵀ, A [r, vocab], B [d, r]
                    factors[module] = ("embedding", (-w * u)[:, None], wu[None, :], 0.0)
                else:
                    factors[module] = ("linear", (-w * wu)[:, None], u[None, :], 0.0)
                if op.target == "embed_tokens" and tied_embed:  # the tied unembedding changes with it
                    head = "lm_head"
                    factors[head] = ("linear", (-w * wu)[:, None], u[None, :], 0.0)
    r = max(a.shape[0] for _, _, a, _ in factors.values())
    tensors: dict[str, Any] = {}
    for module, (kind, b_mat, a_mat, _) in sorted(factors.items()):
        a_pad = np.zeros((r, a_mat.shape[1]))
        a_pad[: a_mat.shape[0]] = a_mat
        b_pad = np.zeros((b_mat.shape[0], r))
        b_pad[:, : b_mat.shape[1]] = b_mat
        pre = f"base_model.model.{module}"
        a_key, b_key = ((f"{pre}.lora_embedding_A", f"{pre}.lora_embedding_B") if kind == "embedding"
                        else (f"{pre}.lora_A.weight", f"{pre}.lora_B.weight"))
        tensors[a_key] = torch.from_numpy(a_pad.astype(np.float32))
        tensors[b_key] = torch.from_numpy(b_pad.astype(np.float32))
    for bias_name, b in sorted(biases.items()):
        tensors[f"base_model.model.{bias_name.removesuffix('.bias')}.base_layer.bias"] = torch.from_numpy(
            b.astype(np.float32))
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": name, "r": r, "lora_alpha": r,
        "lora_dropout": 0.0, "use_rslora": False, "use_dora": False, "fan_in_fan_out": False,
        "bias": "lora_only" if biases else "none", "target_modules": sorted(factors), "inference_mode": True,
    }
    out = Path(out)
    with staging_dir(out, overwrite=overwrite) as tmp:
        (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        save_file(tensors, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
    modules = [LoraModule(m, kind, a.shape[0], err) for m, (kind, _, a, err) in sorted(factors.items())]
    notes = list(base.notes)
    if tied_embed:
        notes.append("tied embeddings: the adapter carries the same ΔE on embed_tokens and lm_head (PEFT warns "
                     "about tied layers; merging such an adapter needs ensure_weight_tying, peft issue #2777)")
    if not base.repo_id:
        notes.append(f"base_model_name_or_path is '{name}' (what the recipe records); the base used was a local "
                     "folder whose origin was not verified")
    return LoraResult(out, name, r, modules, sorted(biases), notes)
