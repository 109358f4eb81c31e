"""Weight orthogonalization ("abliteration") of a safetensors checkpoint, planned then streamed.

Two halves, kept apart so the first can be shown (``--plan``) and tested without touching weights:

* :func:`build_plan` is pure: from ``config.json`` and the tensor index (names, shapes, dtypes, byte ranges)
  it decides which tensor gets which operation, through one name-pattern table per architecture family.
* :func:`execute_plan` streams each shard once: untouched bytes (the original header included: shapes and
  dtypes don't change, so every tensor keeps its offset) are copied inside the kernel, targeted tensors are
  read from the memory-mapped shard and rewritten chunk by chunk, and a hash thread computes each output
  shard's sha256 on the way. Memory stays bounded by the chunk size and queue depth, not the model.

The math, with r the unit direction ``[d]``:

* ``rows`` (d is the last axis: the embedding ``[vocab, d]``, an untied ``lm_head``, biases ``[..., d]``,
  GPT-OSS fused experts ``[E, i, d]``): ``W ← W − (W r) rᵀ``
* ``cols`` (d is the second-to-last axis: ``[d, in]`` projections and fused experts ``[E, d, i]``):
  ``W ← W − r (rᵀ W)``

Determinism: every reduction is a fixed pairwise tree of elementwise adds over fixed chunk boundaries (which
depend on the shape only), and every other step is one IEEE-rounded elementwise op. No BLAS reduction touches
the output, so the bytes are the same run after run, on any CPU and on CUDA, with numpy (CPU runs: no torch
import) or torch (CUDA) doing the arithmetic: the math is written once against :class:`Kernels` (checked:
torch 2.13 CPU here, torch 2.11 CPU and H100 give identical shards, numpy and torch agree on every rounding
case). 16-bit tensors are computed in float32 (exact upcast, 24-bit mantissa), 32/64-bit ones in float64;
the cast back rounds to nearest-even. r is normalized with an exactly rounded norm (``math.fsum``).
"""

from __future__ import annotations

import hashlib
import json
import math
import mmap
import os
import queue
import re
import shutil
import struct
import threading
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from .errors import HubkitError, PlanError

if TYPE_CHECKING:
    import torch

TARGETS = ("embed_tokens", "attn_out", "mlp_down", "lm_head")
DEFAULT_TARGETS = ("embed_tokens", "attn_out", "mlp_down")
INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"

#: elements per compute chunk. Part of the output's definition (the cross-chunk summation order of ``cols``
#: ops depends on it), so it is a constant, the same on every device.
CHUNK_ELEMS = 1 << 16
#: largest piece of untouched bytes handed to the writer at once
COPY_BLOCK = 64 << 20
#: computed bytes the compute stream may run ahead, per queue (16-bit; twice that for 32-bit tensors)
QUEUE_BYTES = 64 << 20
#: at most this many shards stream at once (see :func:`parallel_pipelines`)
MAX_PIPELINES = 8
#: compute chunks per block: on CPU 16 (1M elements: few enough Python-level calls that the streams' threads
#: don't queue for the GIL; 2 was 30 % slower on a 16-core machine), on CUDA 64 (4M elements, enough to keep
#: the device busy); the bytes are the same as one chunk at a time
CPU_GROUP = 16
CUDA_GROUP = 64
#: how far ahead of the compute stream the kernel is asked to read a targeted tensor (0: no read-ahead); from a
#: cold cache the compute stream would otherwise fault the tensor in with the kernel's small default window
PREFETCH_BYTES = 256 << 20
#: written bytes after which the writer asks the kernel to start writing a shard's pages out (see _flush_stream)
FLUSH_BYTES = 64 << 20
#: at most this many helper threads compute blocks on CPU, when cores are to spare (see compute_helpers), and
#: at most IN_FLIGHT blocks of one tensor are out on them at once
HELPERS_MAX = 16
IN_FLIGHT = 16
#: the array library of CPU runs: numpy, so that a CPU run never imports torch (on a GPU machine its CUDA build
#: takes 4-6 s to import, longer than the rest of a warm run); "torch" gives the same bytes (tested)
CPU_LIBRARY = "numpy"
_PAGE = mmap.PAGESIZE

_FLOAT_DTYPES = ("BF16", "F16", "F32", "F64")
_NP_DTYPES = {"BF16": "<u2", "F16": "<f2", "F32": "<f4", "F64": "<f8"}  # bfloat16 as its bits
_DTYPE_EPS = {"BF16": 2.0**-8, "F16": 2.0**-10, "F32": 2.0**-23, "F64": 2.0**-52}


# ====================================================================== checkpoint index


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of a checkpoint: where its bytes are (absolute offsets in its shard file)."""

    name: str
    shard: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


@dataclass(frozen=True)
class ShardInfo:
    name: str
    size: int
    header_len: int  # 8 + JSON header length: where the data region starts


def read_header(path: Path) -> tuple[dict[str, Any], int]:
    """The JSON header of a safetensors file and the offset where its data region starts."""
    try:
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                raise PlanError(f"{path}: not a safetensors file (shorter than 8 bytes)")
            (n,) = struct.unpack("<Q", raw)
            if n > 100 << 20:
                raise PlanError(f"{path}: not a safetensors file (header length {n})")
            header = json.loads(f.read(n))
    except (OSError, ValueError) as e:
        raise PlanError(f"{path}: unreadable safetensors header ({e})") from e
    return header, 8 + n


def shard_names(model_dir: Path) -> list[str]:
    """Shard file names, from ``model.safetensors.index.json`` when there is one, else ``model.safetensors``."""
    index = model_dir / INDEX_NAME
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError, TypeError) as e:
            raise PlanError(f"{index}: no readable weight_map ({e})") from e
        names = sorted(set(weight_map.values()))
        missing = [n for n in names if not (model_dir / n).is_file()]
        if missing:
            raise PlanError(f"{index}: names shard(s) not in the folder: {', '.join(missing[:3])}")
        return names
    if (model_dir / SINGLE_NAME).is_file():
        return [SINGLE_NAME]
    raise PlanError(
        f"{model_dir}: no {SINGLE_NAME} and no {INDEX_NAME} (only safetensors checkpoints are read)"
    )


def read_index(model_dir: str | Path) -> tuple[list[ShardInfo], dict[str, TensorInfo]]:
    """Shards and tensors of a checkpoint folder, from the safetensors headers alone (no tensor data read)."""
    model_dir = Path(model_dir)
    shards: list[ShardInfo] = []
    tensors: dict[str, TensorInfo] = {}
    for sname in shard_names(model_dir):
        path = model_dir / sname
        header, start = read_header(path)
        size = path.stat().st_size
        shards.append(ShardInfo(sname, size, start))
        for name, meta in header.items():
            if name == "__metadata__":
                continue
            b, e = meta["data_offsets"]
            if name in tensors:
                raise PlanError(f"{path}: tensor {name} also in {tensors[name].shard}")
            if start + e > size:
                raise PlanError(f"{path}: tensor {name} runs past the end of the file (truncated download?)")
            tensors[name] = TensorInfo(name, sname, meta["dtype"], tuple(meta["shape"]), start + b, start + e)
    return shards, tensors


def read_config(model_dir: str | Path) -> dict[str, Any]:
    path = Path(model_dir) / "config.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as e:
        raise PlanError(f"{path}: not found (the base checkpoint needs its config.json)") from e
    except ValueError as e:
        raise PlanError(f"{path}: not valid JSON ({e})") from e


def text_config(config: dict[str, Any]) -> dict[str, Any]:
    """The language model's config: ``text_config`` of a VLM wrapper, else the config itself."""
    tc = config.get("text_config")
    return tc if isinstance(tc, dict) else config


def config_facts(config: dict[str, Any], where: str = "config.json") -> tuple[str, int, int]:
    """``(model_type, hidden_size, num_hidden_layers)`` of the language model."""
    tc = text_config(config)
    model_type = config.get("model_type") or tc.get("model_type")
    d = tc.get("hidden_size", config.get("hidden_size"))
    n = tc.get("num_hidden_layers", config.get("num_hidden_layers"))
    if not model_type or not isinstance(d, int) or not isinstance(n, int):
        raise PlanError(
            f"{where}: needs model_type, hidden_size and num_hidden_layers (text_config for VLMs)"
        )
    return str(model_type), d, n


# ====================================================================== name-pattern tables

# How a matched tensor is edited, decided from the pattern and checked against its shape:
#   "embed"   [vocab, d]              rows
#   "matrix"  [d, in]                 cols
#   "bias"    [d] or [E, d]           rows
#   "experts" [E, d, i] or [E, i, d]  cols / rows by which axis has size d (family.fused_d_last breaks ties)
_O_PROJ = (r"self_attn\.o_proj\.weight", "matrix"), (r"self_attn\.o_proj\.bias", "bias")
_DOWN = (r"mlp\.down_proj\.weight", "matrix"), (r"mlp\.down_proj\.bias", "bias")
_LINEAR_ATTN = ((r"linear_attn\.out_proj\.weight", "matrix"),)
_EXPERTS = (
    (r"mlp\.experts\.\d+\.down_proj\.weight", "matrix"),  # per-expert tensors
    (r"mlp\.experts\.\d+\.down_proj\.bias", "bias"),
    (r"mlp\.experts\.down_proj", "experts"),  # fused [E, d, i] / [E, i, d]
    (r"mlp\.experts\.down_proj_bias", "bias"),  # fused bias [E, d]
    (
        r"mlp\.shared_experts?\.down_proj\.weight",
        "matrix",
    ),  # Qwen2-MoE / Qwen3.5-MoE / DeepSeek shared expert
)
_MIXTRAL = (
    (r"block_sparse_moe\.experts\.\d+\.w2\.weight", "matrix"),
    (r"mlp\.experts\.\d+\.w2\.weight", "matrix"),
)
_SANDWICH = (
    "post-attention / post-feedforward norms rescale each block's write per coordinate, so r is removed from "
    "the pre-norm writes only (the seed recipe's convention)"
)


@dataclass(frozen=True)
class Family:
    """Where one architecture family keeps the tensors that write into the residual stream."""

    name: str
    model_types: tuple[str, ...]
    roots: tuple[str, ...]  # prefixes of the decoder (tried in order): "model.", "model.language_model.", ...
    attn_out: tuple[tuple[str, str], ...]
    mlp_down: tuple[tuple[str, str], ...]
    embed: tuple[str, ...] = ("embed_tokens.weight",)
    lm_head: tuple[str, ...] = ("lm_head.weight", "language_model.lm_head.weight")
    fused_d_last: bool = False
    notes: tuple[str, ...] = ()


_VLM_ROOTS = ("model.", "model.language_model.", "language_model.model.")

FAMILIES: tuple[Family, ...] = (
    Family("llama", ("llama",), ("model.",), _O_PROJ, _DOWN),
    Family("mistral", ("mistral", "mistral3", "ministral"), _VLM_ROOTS, _O_PROJ, _DOWN),
    Family("qwen2", ("qwen2",), ("model.",), _O_PROJ, _DOWN),
    Family("qwen3", ("qwen3",), ("model.",), _O_PROJ, _DOWN),
    Family(
        "qwen3_5",
        ("qwen3_5", "qwen3_5_text", "qwen3_5_moe", "qwen3_5_moe_text", "qwen3_next"),
        ("model.language_model.", "model."),
        _O_PROJ + _LINEAR_ATTN,  # hybrid: Gated DeltaNet blocks write through linear_attn.out_proj
        _DOWN + _EXPERTS,
    ),
    Family("gemma", ("gemma",), ("model.",), _O_PROJ, _DOWN),
    Family(
        "gemma2",
        ("gemma2", "gemma3", "gemma3_text"),
        _VLM_ROOTS,
        _O_PROJ,
        _DOWN,
        notes=(_SANDWICH,),
    ),
    Family("mixtral", ("mixtral",), ("model.",), _O_PROJ, _DOWN + _MIXTRAL + _EXPERTS),
    Family("qwen_moe", ("qwen2_moe", "qwen3_moe"), ("model.",), _O_PROJ, _DOWN + _EXPERTS),
    Family("gpt_oss", ("gpt_oss",), ("model.",), _O_PROJ, _DOWN + _EXPERTS, fused_d_last=True),
)

#: used, with a note in the plan, for a model_type no table names; the per-block coverage check still applies
GENERIC = Family("generic", (), _VLM_ROOTS, _O_PROJ + _LINEAR_ATTN, _DOWN + _EXPERTS + _MIXTRAL, notes=())


def family_for(model_type: str) -> Family:
    for fam in FAMILIES:
        if model_type in fam.model_types:
            return fam
    return GENERIC


# ====================================================================== the plan


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

    @property
    def nbytes(self) -> int:
        return self.end - self.begin

    @property
    def formula(self) -> str:
        return "W − (W r) rᵀ" if self.kind == "rows" else "W − r (rᵀ W)"


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
        lines.append(f"{'tensor':<{width}}  {'target':<12} {'op':<13} {'shape':<18} dtype  shard")
        for op in sorted(self.ops, key=lambda o: (o.shard, _natural(o.name))):
            shape = "×".join(map(str, op.shape))
            lines.append(
                f"{op.name:<{width}}  {op.target:<12} {op.formula:<13} {shape:<18} {op.dtype:<6} {op.shard}"
            )
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
        if info.dtype not in _FLOAT_DTYPES:
            raise PlanError(
                f"{info.shard}: {info.name} is {info.dtype}; only float tensors (BF16, F16, F32, F64) can be "
                "orthogonalized (use an unquantized base checkpoint)"
            )
        kind = _kind_for(info, how, d, fam)
        ops.append(
            TensorOp(info.name, info.shard, target, layer, kind, info.shape, info.dtype, info.begin, info.end)
        )

    embed_name = next((root + e for e in fam.embed if root + e in tensors), None)
    lm_head_name = next((h for h in fam.lm_head if h in tensors), None)
    tie_flag = bool(config.get("tie_word_embeddings", text_config(config).get("tie_word_embeddings", False)))
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


def _torch_dtype(code: str) -> torch.dtype:
    import torch

    return {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64}[code]


def compute_dtype(code: str) -> torch.dtype:
    """float32 for 16-bit storage (exact upcast), float64 for 32/64-bit storage."""
    import torch

    return torch.float32 if code in ("BF16", "F16") else torch.float64


class Kernels:
    """The few array operations the math needs beyond ``+ - * @``, slicing and ``reshape`` (which numpy arrays
    and torch tensors share), for one storage dtype on one array library; ``r`` is the unit direction in the
    compute dtype there. The math below is written once against this, so both libraries give the same bytes.
    """

    r: Any
    where = "cpu"  # the device the arithmetic runs on
    group = 1  # compute chunks per block: few on CPU (cache-sized), many on CUDA (to fill the device)

    def up(self, x: Any) -> Any:  # storage → compute dtype (exact)
        raise NotImplementedError

    def down(self, y: Any) -> Any:  # compute → storage dtype, round to nearest-even
        raise NotImplementedError

    def cat(self, parts: list[Any], axis: int) -> Any:
        raise NotImplementedError

    def matvec(self, a: Any, b: Any) -> Any:  # a @ b with a vector, for the checks only
        return a @ b

    def load(self, x: Any) -> Any:  # a block of the memory-mapped tensor, onto the compute device
        return x

    def as_bytes(self, y: Any) -> memoryview:
        return memoryview(y).cast("B")

    def mode(self) -> Any:
        return nullcontext()


class NumpyKernels(Kernels):
    """CPU arithmetic with numpy, so a CPU run never imports torch (seconds of a run on a GPU machine's CUDA
    build). bfloat16, which numpy lacks, is kept as its uint16 bits: the upcast is a shift, the downcast the
    integer round-to-nearest-even of torch's conversions (NaN becomes 0x7FC0, the canonical quiet NaN)."""

    def __init__(self, code: str, r64: Any):
        import numpy as np

        self.np, self.code, self.group = np, code, CPU_GROUP
        self.storage = _NP_DTYPES[code]
        self.r = r64.astype(np.float32 if code in ("BF16", "F16") else np.float64)

    def up(self, x: Any) -> Any:
        return bf16_to_float32(x) if self.code == "BF16" else x.astype(self.r.dtype)

    def down(self, y: Any) -> Any:
        np = self.np
        if self.code != "BF16":
            with np.errstate(over="ignore"):  # beyond the storage range rounds to ±inf, as in torch
                return y.astype(self.storage)
        bits = y.view(np.uint32)
        t = bits >> 16
        t &= 1  # the lowest kept bit: ties go to even
        t += 0x7FFF
        t += bits
        t >>= 16
        out = t.astype(np.uint16)
        nan = np.isnan(y)
        if nan.any():
            out[nan] = 0x7FC0
        return out

    def cat(self, parts: list[Any], axis: int) -> Any:
        return self.np.concatenate(parts, axis)

    def matvec(self, a: Any, b: Any) -> Any:
        # einsum's own loop: numpy's BLAS would start a thread per core for each block (on a 16-core machine
        # that made a CPU run 3x slower, 278 s of CPU time spinning)
        return self.np.einsum("ij,j->i" if a.ndim == 2 else "i,ij->j", a, b)

    def as_bytes(self, y: Any) -> memoryview:
        return memoryview(self.np.ascontiguousarray(y)).cast("B")


def bf16_to_float32(bits: Any) -> Any:
    """bfloat16 values held as their uint16 bits (numpy has no bfloat16) → float32, exactly."""
    import numpy as np

    wide = bits.astype(np.uint32)
    wide <<= 16  # in place: every pass over a block counts, numpy fuses nothing
    return wide.view(np.float32)


class TorchKernels(Kernels):
    """torch arithmetic on ``device`` (CUDA, or the CPU for :func:`orthogonalize` on tensors)."""

    def __init__(self, code: str, r64: Any, device: str = "cpu", group: int | None = None):
        import torch

        self.torch = torch
        self.storage, self.device, self.where = _torch_dtype(code), device, device
        self.group = group or CPU_GROUP
        self.r = torch.from_numpy(r64).to(compute_dtype(code)).to(device)

    def up(self, x: Any) -> Any:
        return x.to(self.r.dtype)

    def down(self, y: Any) -> Any:
        return y.to(self.storage)

    def cat(self, parts: list[Any], axis: int) -> Any:
        return self.torch.cat(parts, axis)

    def load(self, x: Any) -> Any:
        return x.to(self.device)

    def as_bytes(self, y: Any) -> memoryview:
        y = y.detach().to("cpu").contiguous()
        return memoryview(y.view(self.torch.uint8).numpy()).cast("B")

    def mode(self) -> Any:
        return self.torch.inference_mode()


def tree_sum(x: Any, dim: int, k: Kernels) -> Any:
    """Sum along ``dim`` by repeated halving.

    Each step is one elementwise add, so the summation order is fixed by the shape alone and the result is
    bit-identical on every IEEE device and array library (unlike BLAS or a library's sum, whose order depends
    on the hardware).
    """
    n = x.shape[dim]
    if n == 0:
        return x.sum(dim)
    lead = (slice(None),) * dim
    while n > 1:
        h = n // 2
        y = x[(*lead, slice(0, h))] + x[(*lead, slice(h, 2 * h))]
        if n % 2:
            y = k.cat([y, x[(*lead, slice(2 * h, n))]], dim)
        x, n = y, y.shape[dim]
    return x[(*lead, 0)]


class _Acc:
    """Orthogonality measures of one tensor, summed on its device (no sync per chunk)."""

    def __init__(self) -> None:
        self.before: Any = 0.0  # Σ (rᵀw)² over the input
        self.after: Any = 0.0  # Σ (rᵀw)² over the rounded output
        self.norm: Any = 0.0  # ‖W‖² of the rounded output

    def add(self, other: _Acc) -> None:
        self.before, self.after, self.norm = (
            self.before + other.before,
            self.after + other.after,
            self.norm + other.norm,
        )

    def ratios(self) -> tuple[float, float]:
        norm = float(self.norm)
        denom = math.sqrt(norm) if norm > 0 else 1.0
        return math.sqrt(float(self.before)) / denom, math.sqrt(float(self.after)) / denom


def rows_block(x: Any, k: Kernels, acc: _Acc | None = None) -> Any:
    """``x − (x r) rᵀ`` for rows ``x [n, d]`` (storage dtype); each row is independent, so any blocking
    gives the same bytes."""
    xc = k.up(x)
    s = tree_sum(xc * k.r, 1, k)
    y = k.down(xc - s[:, None] * k.r)
    if acc is not None:
        yc = k.up(y)
        acc.before = acc.before + (s * s).sum()
        acc.after = acc.after + (k.matvec(yc, k.r) ** 2).sum()
        acc.norm = acc.norm + (yc * yc).sum()
    return y


def cols_partials(x: Any, r_rows: Any, step: int, k: Kernels) -> Any:
    """Per-chunk partial sums of rᵀW over consecutive ``step``-row chunks of ``x [n, m]``: ``[ceil(n/step), m]``.

    A block holding several chunks (the GPU path) gives bit-for-bit the partials of one chunk at a time.
    """
    n, m = x.shape
    prod = k.up(x) * r_rows[:, None]
    full = n - n % step
    parts = []
    if full:
        parts.append(tree_sum(prod[:full].reshape(full // step, step, m), 1, k))
    if n > full:
        parts.append(tree_sum(prod[full:], 0, k)[None])
    return parts[0] if len(parts) == 1 else k.cat(parts, 0)


def cols_block(x: Any, r_rows: Any, s: Any, k: Kernels, acc: _Acc | None = None) -> Any:
    """``W − r s`` on a block of rows (``s = rᵀW`` of the whole matrix), cast back to the storage dtype."""
    y = k.down(k.up(x) - r_rows[:, None] * s[None, :])
    if acc is not None:
        yc = k.up(y)
        acc.after = acc.after + k.matvec(r_rows, yc)  # a vector [m], squared when the matrix is done
        acc.norm = acc.norm + (yc * yc).sum()
    return y


def _chunk_rows(width: int) -> int:
    return max(1, CHUNK_ELEMS // max(width, 1))


def orthogonalize(weight: torch.Tensor, r: Any, kind: str) -> torch.Tensor:
    """The whole-tensor form of what :func:`execute_plan` streams (the same bytes), for tests and small uses.

    ``weight`` a torch tensor in its storage dtype (BF16/F16/F32/F64); ``r`` any float vector ``[d]``
    (renormalized in float64 here); ``kind`` ``rows`` or ``cols`` as in :class:`TensorOp`.
    """
    import torch

    code = {torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32", torch.float64: "F64"}[
        weight.dtype
    ]
    k = TorchKernels(code, _unit(r), str(weight.device))
    if kind == "rows":
        return rows_block(weight.reshape(-1, weight.shape[-1]), k).reshape(weight.shape)
    d, m = weight.shape[-2], weight.shape[-1]
    out = []
    for mat in weight.reshape(-1, d, m):
        s = _accumulate(cols_partials(mat, k.r, _chunk_rows(m), k), None)
        out.append(cols_block(mat, k.r, s, k))
    return torch.stack(out).reshape(weight.shape)


def _accumulate(partials: Any, s: Any) -> Any:
    """Add chunk partials one after another, in order: the cross-chunk part of the fixed summation order.
    (Nothing is updated in place, so ``s`` may start as the first partial itself.)"""
    for p in partials:
        s = p if s is None else s + p
    assert s is not None
    return s


def _unit(r: Any) -> Any:
    """``r / ‖r‖`` in float64 numpy, the norm an exactly rounded sum (``math.fsum``): the same on every machine
    and library, whatever their reduction order. ``r``: a numpy array or a torch tensor, any float dtype."""
    import numpy as np

    if hasattr(r, "detach"):
        r = r.detach().to("cpu").double().numpy()
    r64 = np.asarray(r, dtype=np.float64).reshape(-1)
    norm = math.sqrt(math.fsum((r64 * r64).tolist())) if np.isfinite(r64).all() else math.nan
    if not math.isfinite(norm) or norm == 0.0:
        raise HubkitError("direction: zero or non-finite vector, can't orthogonalize against it")
    return r64 / norm


# ====================================================================== streaming executor


@dataclass
class TensorCheck:
    """Orthogonality of one written tensor: ‖rᵀW‖/‖W‖ (‖W r‖/‖W‖ for rows ops), before and after."""

    name: str
    target: str
    dtype: str
    before: float
    after: float
    device: str = "cpu"  # where it was computed

    @property
    def threshold(self) -> float:
        return _DTYPE_EPS[self.dtype]

    @property
    def ok(self) -> bool:
        return self.after <= self.threshold


@dataclass
class ExecutionResult:
    shards_sha256: dict[str, str]
    checks: list[TensorCheck]

    @property
    def worst(self) -> TensorCheck | None:
        return max(self.checks, key=lambda c: c.after / c.threshold, default=None)

    @property
    def all_orthogonal(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def devices(self) -> dict[str, int]:
        """Tensors computed per device (a CUDA run computes on the CPU until the GPU is ready)."""
        out: dict[str, int] = {}
        for c in self.checks:
            out[c.device] = out.get(c.device, 0) + 1
        return out


class _Stop(Exception):
    """Another stream failed or the run was interrupted; this one winds down quietly."""


@dataclass
class _Shared:
    """What the three streams of a run share: the error that stops them all, the progress bar."""

    bar: Any
    error: BaseException | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    flush: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)  # (fd, begin, end) for _flush_stream

    def fail(self, e: BaseException) -> None:
        if self.error is None and not isinstance(e, _Stop):
            self.error = e
        self.stop.set()

    def check(self) -> None:
        if self.stop.is_set():
            raise _Stop


class _Shard:
    """One shard's open source (fd + read-only map) and output fd."""

    def __init__(self, info: ShardInfo, ops: list[TensorOp], src_dir: Path, dst_dir: Path | None):
        self.info, self.ops = info, ops
        path = src_dir / info.name
        self.src = open(path, "rb")  # noqa: SIM115 - closed in close()
        size = os.fstat(self.src.fileno()).st_size
        if size != info.size:
            self.src.close()
            raise PlanError(f"{path}: changed size since it was planned ({info.size} → {size} bytes)")
        self.mm = mmap.mmap(self.src.fileno(), 0, access=mmap.ACCESS_READ)
        self.dst: int | None = None
        if dst_dir is not None:
            self.dst = os.open(dst_dir / info.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)

    def close(self) -> None:
        try:
            self.mm.close()
        except BufferError:  # a view is still referenced somewhere; the GC unmaps it
            pass
        if self.dst is not None:
            os.close(self.dst)
        self.src.close()


class _WriteOut:
    """One writer's written ranges of one output file, handed to the flusher every FLUSH_BYTES."""

    def __init__(self, fd: int, shared: _Shared):
        self.fd, self.shared = fd, shared
        self.begin = self.end = 0

    def wrote(self, a: int, b: int) -> None:
        if a != self.end:
            self.done()
            self.begin = a
        self.end = b
        if self.end - self.begin >= FLUSH_BYTES:
            self.done()

    def done(self) -> None:
        if self.end > self.begin:
            self.shared.flush.put((self.fd, self.begin, self.end))
        self.begin = self.end


def _copy_stream(shards: list[_Shard], shared: _Shared) -> None:
    """Stream 1a: every untouched byte range of the output shards, in file order, source → output inside the
    kernel (``copy_file_range``: never through Python, the GIL released).

    Needs neither torch nor the direction, so it starts before either is loaded and never waits for compute.
    """
    try:
        for sh in shards:
            assert sh.dst is not None
            out = _WriteOut(sh.dst, shared)
            for seg in _segments(sh):
                if seg.op is None:
                    shared.check()
                    _copy_range(sh, seg.begin, seg.end)
                    shared.bar.update(seg.end - seg.begin)
                    out.wrote(seg.begin, seg.end)
            out.done()
    except BaseException as e:  # noqa: BLE001 - handed to the main thread
        shared.fail(e)


def _write_stream(shards: list[_Shard], computed: queue.Queue, to_hash: queue.Queue, shared: _Shared) -> None:
    """Stream 1b: the computed chunks of the output shards, in file order, passed on to the hasher.

    Writes at disjoint offsets of one file need no ordering against :func:`_copy_stream`'s.
    """
    try:
        for sh in shards:
            assert sh.dst is not None
            out = _WriteOut(sh.dst, shared)
            for op in sh.ops:
                pos = op.begin
                while pos < op.end:
                    at, buf = _get(computed, shared)
                    assert at == pos, (op.name, at, pos)
                    _pwrite_buf(sh.dst, buf, at)
                    shared.bar.update(len(buf))
                    _put(to_hash, (at, buf), shared)
                    out.wrote(pos, pos + len(buf))
                    pos += len(buf)
            out.done()
    except BaseException as e:  # noqa: BLE001 - handed to the main thread
        shared.fail(e)


def _flush_stream(shared: _Shared) -> None:
    """Start the kernel's write-out of each written range at once (``POSIX_FADV_DONTNEED`` writes dirty pages back
    asynchronously, then drops the clean ones): the disk writes while the run goes on, instead of the closing
    fsync waiting for all of it (on the H100 machine that fsync was over half of a warm run). A thread of its
    own, because starting write-out can block on a busy device queue."""
    while (item := shared.flush.get()) is not None:
        fd, begin, end = item
        try:
            os.posix_fadvise(fd, begin, end - begin, os.POSIX_FADV_DONTNEED)
        except OSError:
            pass


class _Segment(NamedTuple):
    """A piece of a shard in file order: an untouched block (``op`` None) or one rewritten tensor."""

    begin: int
    end: int
    op: TensorOp | None
    run_end: int  # for an untouched block: where its run of untouched bytes ends (the next op, or EOF)


def _segments(sh: _Shard) -> Iterator[_Segment]:
    """The one walk over a shard that the copier and the hasher both follow: untouched bytes in blocks of at
    most COPY_BLOCK, each rewritten tensor whole (its bytes arrive in chunks from the compute stream)."""
    pos = 0
    for op in [*sh.ops, None]:
        stop = sh.info.size if op is None else op.begin
        while pos < stop:
            end = min(stop, pos + COPY_BLOCK)
            yield _Segment(pos, end, None, stop)
            pos = end
        if op is not None:
            yield _Segment(op.begin, op.end, op, op.end)
            pos = op.end


def _copy_range(sh: _Shard, a: int, b: int) -> None:
    src, dst = sh.src.fileno(), sh.dst
    assert dst is not None
    pos = a
    try:
        while pos < b:
            n = os.copy_file_range(src, dst, b - pos, pos, pos)
            if n == 0:
                raise OSError(f"{sh.info.name}: copy_file_range copied nothing at byte {pos}")
            pos += n
    except OSError:
        if pos != a:
            raise
        _pwrite_all(dst, sh.mm, a, b)  # copy_file_range not supported here (EXDEV, ENOSYS, ...)


def _pwrite_all(fd: int, mm: mmap.mmap, a: int, b: int) -> None:
    pos = a
    while pos < b:
        pos += os.pwrite(fd, memoryview(mm)[pos : min(b, pos + COPY_BLOCK)], pos)


class _Compute:
    """The kernels the compute streams use for their next tensor: the CPU's, until a GPU's are ready."""

    def __init__(self, cpu: dict[str, Kernels], helpers: ThreadPoolExecutor | None):
        self.cpu, self.helpers = cpu, helpers
        self.gpu: dict[str, Kernels] | None = None  # set once by _start_gpu

    def for_op(self, op: TensorOp) -> tuple[Kernels, ThreadPoolExecutor | None]:
        gpu = self.gpu
        return (gpu[op.dtype], None) if gpu is not None else (self.cpu[op.dtype], self.helpers)


def _start_gpu(compute: _Compute, r64: Any, device: str, shared: _Shared) -> None:
    """Import torch, check the device and hand its kernels to the compute streams (which meanwhile compute on
    the CPU: the bytes are the same, and torch's CUDA build takes 4-6 s to import on the H100 machine)."""
    try:
        device = _resolve_device(device)
        compute.gpu = {code: TorchKernels(code, r64, device, CUDA_GROUP) for code in compute.cpu}
    except BaseException as e:  # noqa: BLE001 - handed to the main thread
        shared.fail(e)


def _compute_ops(
    shards: list[_Shard],
    compute: _Compute,
    out: queue.Queue,
    checks: list[TensorCheck],
    shared: _Shared,
) -> None:
    """Stream 2: every op of every shard in file order; output chunks go on through ``out`` (to the writer, or
    straight to the hasher when nothing is written). The queue is deep, so compute runs well ahead."""
    try:
        for sh in shards:
            for op in sh.ops:
                k, helpers = compute.for_op(op)
                with k.mode():
                    sink = lambda at, buf: _put(out, (at, buf), shared)  # noqa: E731
                    checks.append(_compute_op(op, sh.mm, k, sink, shared, helpers))
    except BaseException as e:  # noqa: BLE001 - handed to the main thread
        shared.fail(e)


def _get(q: queue.Queue, shared: _Shared) -> Any:
    while True:
        shared.check()
        try:
            return q.get(timeout=0.2)
        except queue.Empty:
            pass


def _put(q: queue.Queue, item: Any, shared: _Shared) -> None:
    while True:
        shared.check()
        try:
            q.put(item, timeout=0.2)
            return
        except queue.Full:
            pass


def _compute_op(
    op: TensorOp,
    mm: mmap.mmap,
    k: Kernels,
    sink: Any,
    shared: _Shared,
    helpers: ThreadPoolExecutor | None = None,
) -> TensorCheck:
    """Orthogonalize one tensor block by block; each output block is handed on with its byte offset.

    ``k.group`` chunks are computed per block (few on CPU, to stay in cache; many on CUDA, to fill the device);
    chunk boundaries themselves depend on the shape only, so the bytes don't depend on the group. ``helpers``
    (CPU, many cores) compute the blocks side by side: with one thread per shard the compute was the critical
    path on a 16-core machine while most cores idled.
    """
    t = _tensor_over(mm, op, isinstance(k, TorchKernels))
    acc = _Acc()
    pos = op.begin
    asked = released = op.begin  # read-ahead requested up to here; source pages dropped up to here

    def emit(y: Any) -> None:
        nonlocal pos, asked, released
        shared.check()
        buf = k.as_bytes(y)
        sink(pos, buf)
        pos += len(buf)
        if pos - released >= COPY_BLOCK or pos == op.end:  # the source rows behind pos are read for good
            _advise(mm, mmap.MADV_DONTNEED, released, pos)
            released = pos
        if PREFETCH_BYTES and asked < op.end and asked - pos < PREFETCH_BYTES // 2:
            _advise(mm, mmap.MADV_WILLNEED, asked, asked := min(op.end, pos + PREFETCH_BYTES))

    if PREFETCH_BYTES:  # the window ahead of the chunk being computed (a matrix's second pass finds it cached)
        _advise(mm, mmap.MADV_WILLNEED, op.begin, asked := min(op.end, op.begin + PREFETCH_BYTES))

    def on_helpers(fn: Any, starts: range) -> Iterator[Any]:
        return _in_order(helpers, fn, starts, k)

    if op.kind == "rows":
        d = op.shape[-1]
        flat = t.reshape(-1, d)
        rows = _chunk_rows(d) * k.group

        def rows_at(a: int) -> tuple[Any, _Acc]:
            sub = _Acc()
            return rows_block(k.load(flat[a : a + rows]), k, sub), sub

        for y, sub in on_helpers(rows_at, range(0, flat.shape[0], rows)):
            emit(y)
            acc.add(sub)
    else:
        d, m = op.shape[-2], op.shape[-1]
        step = _chunk_rows(m)
        rows = step * k.group
        for mat in t.reshape(-1, d, m):

            def partials_at(a: int, mat: Any = mat) -> Any:
                return cols_partials(k.load(mat[a : a + rows]), k.r[a : a + rows], step, k)

            s = None
            for part in on_helpers(partials_at, range(0, d, rows)):  # pass 1: s = rᵀW, partials in a fixed order
                s = _accumulate(part, s)
            assert s is not None
            acc.before = acc.before + (s * s).sum()

            def block_at(a: int, mat: Any = mat, s: Any = s) -> tuple[Any, _Acc]:
                sub = _Acc()
                return cols_block(k.load(mat[a : a + rows]), k.r[a : a + rows], s, k, sub), sub

            after_vec: Any = 0.0
            for y, sub in on_helpers(block_at, range(0, d, rows)):  # pass 2: W − r s, cast back
                emit(y)
                after_vec = after_vec + sub.after
                acc.norm = acc.norm + sub.norm
            acc.after = acc.after + (after_vec * after_vec).sum()
    assert pos == op.end, (op.name, pos, op.end)
    del t
    before, after = acc.ratios()
    return TensorCheck(op.name, op.target, op.dtype, before, after, k.where)


def _in_order(helpers: ThreadPoolExecutor | None, fn: Any, starts: range, k: Kernels) -> Iterator[Any]:
    """``fn(a)`` for each block start, in order: on the helper threads when there are some (blocks are
    independent, so the results are the ones one thread would give; a bounded number is in flight)."""
    if helpers is None:
        yield from map(fn, starts)
        return

    def run(a: int) -> Any:
        with k.mode():  # torch's inference mode is per thread
            return fn(a)

    pending: deque[Future] = deque()
    try:
        for a in starts:
            pending.append(helpers.submit(run, a))
            while pending and (len(pending) > IN_FLIGHT or pending[0].done()):
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for f in pending:
            f.cancel()


def _hash_stream(shards: list[_Shard], ops_out: queue.Queue, shared: _Shared) -> dict[str, str]:
    """Stream 3: each shard's output bytes in file order through sha256.

    Untouched bytes are hashed from the source map (they are the output's bytes), computed chunks as the compute
    stream hands them over. Untouched source pages are dropped once hashed, in batches (each drop flushes TLBs),
    so resident memory stays bounded whatever the model's size.
    """
    hashes: dict[str, str] = {}
    for sh in shards:
        sha = hashlib.sha256()
        for seg in _segments(sh):
            if seg.op is None:
                shared.check()
                _advise(sh.mm, mmap.MADV_WILLNEED, seg.end, min(seg.run_end, seg.end + COPY_BLOCK))
                with memoryview(sh.mm) as view:
                    sha.update(view[seg.begin : seg.end])
                _advise(sh.mm, mmap.MADV_DONTNEED, seg.begin, seg.end)
                continue
            pos = seg.begin  # a rewritten tensor: its source pages are the compute stream's to drop
            while pos < seg.end:
                at, buf = _get(ops_out, shared)
                assert at == pos, (seg.op.name, at, pos)
                sha.update(buf)
                pos += len(buf)
        hashes[sh.info.name] = sha.hexdigest()
    return hashes


def _pwrite_buf(fd: int, buf: memoryview, at: int) -> None:
    view = buf
    while view:
        n = os.pwrite(fd, view, at)
        view, at = view[n:], at + n


def _advise(mm: mmap.mmap, advice: int, begin: int, end: int) -> None:
    """``madvise`` over the pages of ``[begin, end)`` of a source map; a hint, so a refusal is ignored.

    ``MADV_WILLNEED`` asks the kernel to read ahead (a no-op when cached; not MADV_POPULATE_READ: mapping pages
    ahead of use made the kernel-side copy and the hashing contend). ``MADV_DONTNEED`` drops our mapping of pages
    already consumed (the page cache keeps them), which bounds resident memory whatever the model's size.
    """
    start = begin - begin % _PAGE
    if end > start:
        try:
            mm.madvise(advice, start, end - start)
        except (OSError, ValueError):
            pass


def _tensor_over(mm: mmap.mmap, op: TensorOp, torch_view: bool) -> Any:
    """The op's tensor as a zero-copy view of the memory-mapped shard: a torch tensor or a numpy array."""
    if not torch_view:
        import numpy as np

        dtype = np.dtype(_NP_DTYPES[op.dtype])
        return np.frombuffer(mm, dtype, op.nbytes // dtype.itemsize, op.begin).reshape(op.shape)
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # read-only buffer: we never write through it
        raw = torch.frombuffer(mm, dtype=torch.uint8, count=op.nbytes, offset=op.begin)
    return raw.view(_torch_dtype(op.dtype)).reshape(op.shape)


def _check_device(device: str) -> str:
    if not (device == "cpu" or device.startswith("cuda")):
        raise HubkitError(f"--device {device}: use cpu or cuda")
    return device


def _resolve_device(device: str) -> str:
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise HubkitError(f"--device {device}: torch.cuda.is_available() is False on this machine")
    return device


def execute_plan(
    plan: TensorPlan,
    src_dir: str | Path,
    dst_dir: str | Path | None,
    direction: torch.Tensor | Callable[[], torch.Tensor],
    *,
    device: str = "cpu",
    progress: bool = True,
) -> ExecutionResult:
    """Stream every shard of ``src_dir`` into ``dst_dir`` (same names), rewriting the plan's tensors.

    Each group of shards (one per three cores, see :func:`parallel_pipelines`) gets four streams: a copier
    moves the untouched ranges inside the kernel (``copy_file_range``), a compute thread orthogonalizes the
    targeted tensors block by block (on helper threads when cores are to spare), a writer writes the computed
    blocks, and a hasher hashes each shard in file order (untouched bytes from the source map, computed blocks
    passed on by the writer). The copiers and hashers start first; ``direction`` may be a callable, called
    while they already move bytes. CPU runs compute with numpy and never import torch; with ``device="cuda"``
    the compute starts on the CPU all the same and moves to the GPU, tensor by tensor, once torch is imported
    and the device is up (the bytes are the same either way; :attr:`ExecutionResult.devices` says which did
    what). ``dst_dir=None`` only hashes (what ``publish --record-regeneration`` needs). Shards are fsynced at
    the end; the caller makes ``dst_dir`` appear atomically (see :func:`staging_dir`).
    """
    from tqdm.auto import tqdm

    device = _check_device(device)
    src_dir = Path(src_dir)
    dst = None if dst_dir is None else Path(dst_dir)
    group = CPU_GROUP if device == "cpu" else max(CPU_GROUP, CUDA_GROUP)  # the largest blocks, for the queues
    bar = tqdm(
        total=plan.total_bytes,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc="regenerate",
        disable=not progress or dst is None,
    )
    shared = _Shared(bar)
    shards: list[_Shard] = []
    checks: list[TensorCheck] = []
    hashes: dict[str, str] = {}
    workers: list[threading.Thread] = []
    flusher = threading.Thread(target=_flush_stream, args=(shared,), daemon=True, name="hubkit-flush")
    helpers: ThreadPoolExecutor | None = None
    threads_before: int | None = None

    def start(target: Any, *args: Any) -> None:
        workers.append(threading.Thread(target=target, args=(*args, shared), daemon=True, name=f"hubkit{target.__name__}"))
        workers[-1].start()

    try:
        for info in plan.shards:
            shards.append(_Shard(info, plan.ops_in(info.name), src_dir, dst))
        depth = max(4, QUEUE_BYTES // (2 * CHUNK_ELEMS * group))
        parts = [(part, queue.Queue(maxsize=depth), queue.Queue(maxsize=depth))
                 for part in _partition(shards, parallel_pipelines())]
        flusher.start()
        for part, to_hash, _ in parts:  # torch-free: bytes move before the direction is even read
            if dst is not None:
                start(_copy_stream, part)
            start(_hash_into, part, to_hash, hashes)

        r64 = _unit(direction() if callable(direction) else direction)
        if r64.size != plan.hidden_size:
            raise HubkitError(f"direction has d={r64.size}, the checkpoint's hidden size is {plan.hidden_size}")
        dtypes = {op.dtype for op in plan.ops}
        if CPU_LIBRARY == "torch":
            import torch

            # One intra-op thread: the chunks are cache-sized, where OpenMP fan-out costs more than it gives
            # (and collapses on a busy machine); the other streams use the other cores.
            threads_before = torch.get_num_threads()
            torch.set_num_threads(1)
        cpu: dict[str, Kernels] = {
            code: TorchKernels(code, r64) if CPU_LIBRARY == "torch" else NumpyKernels(code, r64) for code in dtypes
        }
        n_helpers = compute_helpers()
        helpers = ThreadPoolExecutor(n_helpers, thread_name_prefix="hubkit-blocks") if n_helpers > 1 else None
        compute = _Compute(cpu, helpers)
        if device != "cpu":
            start(_start_gpu, compute, r64, device)
        for part, to_hash, computed in parts:
            start(_compute_ops, part, compute, to_hash if dst is None else computed, checks)
            if dst is not None:
                start(_write_stream, part, computed, to_hash)
        while any(w.is_alive() for w in workers):  # a timed join, so Ctrl-C reaches this thread
            for w in workers:
                w.join(0.2)
        if shared.error is not None:
            raise shared.error
        if dst is not None:  # durable before the caller renames the folder into place; side by side
            with ThreadPoolExecutor(len(shards), thread_name_prefix="hubkit-fsync") as ex:
                list(ex.map(os.fsync, [sh.dst for sh in shards]))
    except BaseException as e:
        shared.fail(e)
        for w in workers:
            w.join()
        raise
    finally:
        if flusher.is_alive():  # stopped before the shards' descriptors close
            shared.flush.put(None)
            flusher.join()
        if helpers is not None:
            helpers.shutdown(cancel_futures=True)
        if threads_before is not None:
            __import__("torch").set_num_threads(threads_before)
        for sh in shards:
            sh.close()
        bar.close()
    return ExecutionResult(dict(sorted(hashes.items())), sorted(checks, key=lambda c: c.name))


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def parallel_pipelines() -> int:
    """How many shards stream at once: one pipeline (compute, write and hash threads) per three cores.

    sha256 runs at about 1-2 GB/s on one core, so on a many-core machine hashing shards side by side is what
    brings the run down to the disk's speed; on two cores one pipeline already keeps both busy.
    """
    return max(1, min(MAX_PIPELINES, _cpus() // 3))


def compute_helpers() -> int:
    """Threads that compute blocks on CPU: half the cores (at most HELPERS_MAX), none below eight cores, where
    the pipelines already keep every core busy. The array library releases the GIL inside each operation."""
    cpus = _cpus()
    return min(HELPERS_MAX, cpus // 2) if cpus >= 8 else 1


def _partition(shards: list[_Shard], n: int) -> list[list[_Shard]]:
    """Split shards into ``n`` groups of about equal bytes (largest first), each kept in file-name order."""
    groups: list[list[_Shard]] = [[] for _ in range(max(1, min(n, len(shards))))]
    sizes = [0] * len(groups)
    for sh in sorted(shards, key=lambda s: -s.info.size):
        i = sizes.index(min(sizes))
        groups[i].append(sh)
        sizes[i] += sh.info.size
    return [sorted(g, key=lambda s: s.info.name) for g in groups if g]


def _hash_into(shards: list[_Shard], q: queue.Queue, out: dict[str, str], shared: _Shared) -> None:
    try:
        out.update(_hash_stream(shards, q, shared))
    except BaseException as e:  # noqa: BLE001 - handed to the main thread
        shared.fail(e)


# ====================================================================== output folder handling


@contextmanager
def staging_dir(target: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """A temporary folder beside ``target``, renamed onto it only when the block finishes.

    An interrupted or failed run removes the temporary folder, so ``target`` never holds half a model.
    """
    target = Path(target).absolute()
    if target.exists() and not overwrite and (not target.is_dir() or any(target.iterdir())):
        raise HubkitError(f"{target}: already exists and is not empty (choose another --out or remove it)")
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(target)
    tmp = target.parent / f".{target.name}.hubkit-tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
        if target.exists():
            old = target.parent / f".{target.name}.hubkit-old-{os.getpid()}"
            os.rename(target, old)
            os.rename(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, target)
        _fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _remove_stale(target: Path) -> None:
    """Remove temporary folders of earlier runs that were killed (their process is gone)."""
    for p in target.parent.glob(f".{target.name}.hubkit-tmp-*"):
        pid = p.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(p, ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def abliterate_checkpoint(
    src_dir: str | Path,
    out_dir: str | Path,
    direction: torch.Tensor,
    targets: Iterable[str] = DEFAULT_TARGETS,
    *,
    device: str = "cpu",
    progress: bool = True,
    copy_files: Iterable[str] = (),
) -> tuple[TensorPlan, ExecutionResult]:
    """Plan and stream a checkpoint folder into ``out_dir`` atomically (no card, no provenance checks).

    The index file (if any) and ``copy_files`` present in ``src_dir`` are copied as they are.
    """
    src_dir = Path(src_dir)
    plan = plan_checkpoint(src_dir, targets)
    with staging_dir(out_dir) as tmp:
        result = execute_plan(plan, src_dir, tmp, direction, device=device, progress=progress)
        for name in (INDEX_NAME, *copy_files):
            if (src_dir / name).is_file():
                shutil.copyfile(src_dir / name, tmp / name)
    return plan, result
