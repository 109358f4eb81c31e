"""hubkit.weights.executor: the streaming shard rewrite, against the seed reference.

The reference here edits the *loaded transformers modules* the seed way (float64, module by module, found by
walking the model rather than by tensor names), so it shares no code with hubkit's name tables or chunked
math. hubkit's output must equal it within one rounding step of the dtype, leave every other byte alone,
load with transformers, and give blocks whose writes have no component along r. Then: the same bytes however
the work is cut (shards, chunks, pipelines, helpers, kernels), nothing left behind when any stream dies, and
the refusals.
"""

from __future__ import annotations

import json
import os
import struct
import threading
import time
from pathlib import Path

import pytest
import torch

from hubkit.errors import HubkitError, PlanError
from hubkit.formats import safetensors_io as stio
from hubkit.weights import executor as ab
from hubkit.weights import kernels
from hubkit.weights import plan as wplan
from hubkit.weights.recipes import orthogonalize as ortho
from tests import tiny_models as tm

D = tm.HIDDEN


def _r(seed: int = 1) -> torch.Tensor:
    return torch.randn(D, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ckpts")
    return {
        "qwen3_5": tm.save_qwen3_5(root / "qwen3_5", max_shard_size="100KB"),
        "qwen3_5_bf16": tm.save_qwen3_5(root / "qwen3_5_bf16", dtype=torch.bfloat16),
        "llama": tm.save_llama(root / "llama"),
        "llama_bias_bf16": tm.save_llama(root / "llama_bias", bias=True, dtype=torch.bfloat16),
        "qwen3_moe": tm.save_qwen3_moe(root / "qwen3_moe"),
        "qwen3_moe_fused": tm.save_qwen3_moe_fused(root / "qwen3_moe_fused"),
        "gpt_oss_f16": tm.save_gpt_oss(root / "gpt_oss", dtype=torch.float16),
    }


# ---------------------------------------------------------------- reference: the seed recipe on modules


def _decoder_layers(model) -> torch.nn.ModuleList:
    return next(
        m
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.ModuleList) and n.endswith("layers") and "visual" not in n
    )


def _cols_(w: torch.Tensor, r: torch.Tensor) -> None:  # W [d, in] ← W − r (rᵀ W)
    w64 = w.double()
    w.copy_((w64 - torch.outer(r, r @ w64)).to(w.dtype))


def _rows_(w: torch.Tensor, r: torch.Tensor) -> None:  # W [n, d] ← W − (W r) rᵀ
    w64 = w.double().reshape(-1, w.shape[-1])
    w.copy_((w64 - torch.outer(w64 @ r, r)).reshape(w.shape).to(w.dtype))


def seed_abliterate(model, r: torch.Tensor) -> set[str]:
    """The seed recipe: embedding rows, and every block's attention-out / MLP-down output columns.

    Returns the names of the parameters it edited.
    """
    r = r.double() / r.double().norm()
    ids = {id(p): n for n, p in model.named_parameters()}
    edited = set()
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        _rows_(emb, r)
        edited.add(ids[id(emb)])
        for layer in _decoder_layers(model):
            attn = getattr(layer, "self_attn", None) or layer.linear_attn
            out = getattr(attn, "o_proj", None) or attn.out_proj
            mods = [out]
            mlp = layer.mlp
            experts = getattr(mlp, "experts", None)
            if experts is None:
                mods.append(mlp.down_proj)
            elif type(experts).__name__.startswith("GptOss"):  # y = h @ W[e] + b[e]: d is the last axis
                for w in (experts.down_proj, experts.down_proj_bias):
                    _rows_(w, r)
                    edited.add(ids[id(w)])
            else:  # fused [E, d, i]: F.linear(h, W[e])
                for e in range(experts.down_proj.shape[0]):
                    _cols_(experts.down_proj[e], r)
                edited.add(ids[id(experts.down_proj)])
            for mod in mods:
                _cols_(mod.weight, r)
                edited.add(ids[id(mod.weight)])
                if mod.bias is not None:
                    _rows_(mod.bias, r)
                    edited.add(ids[id(mod.bias)])
    return edited


def _rounding(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps


# ---------------------------------------------------------------- streaming vs the seed reference


CASES = ["qwen3_5", "qwen3_5_bf16", "llama", "llama_bias_bf16", "qwen3_moe", "qwen3_moe_fused", "gpt_oss_f16"]


@pytest.mark.parametrize("case", CASES)
def test_matches_seed_reference_and_leaves_other_bytes(
    case: str, ckpts: dict[str, Path], tmp_path: Path
) -> None:
    src = ckpts[case]
    r = _r()
    plan, result = ab.abliterate_checkpoint(
        src, tmp_path / "out", r, progress=False, copy_files=["config.json"]
    )
    out = tmp_path / "out"

    # every byte outside the rewritten tensors is the base's, header included
    for shard in plan.shards:
        a, b = (src / shard.name).read_bytes(), (out / shard.name).read_bytes()
        assert len(a) == len(b)
        pos = 0
        for op in plan.ops_in(shard.name):
            assert a[pos : op.begin] == b[pos : op.begin], f"{shard.name}: bytes before {op.name} changed"
            assert a[op.begin : op.end] != b[op.begin : op.end], f"{op.name} unchanged"
            pos = op.end
        assert a[pos:] == b[pos:]

    # equal to the seed recipe applied to the loaded modules, within one rounding step
    ref = tm.load_checkpoint(src)
    edited = seed_abliterate(ref, r)
    for name in ["generation_config.json", "tokenizer.json", "tokenizer_config.json"]:
        (out / name).write_bytes((src / name).read_bytes())
    got = tm.load_checkpoint(out)
    got_params = dict(got.named_parameters())
    assert edited, "the reference edited nothing"
    for name, p_ref in ref.named_parameters():
        p = got_params[name]
        if name in edited:
            tol = _rounding(p.dtype) * float(p_ref.detach().abs().max())
            assert torch.allclose(p.double(), p_ref.double(), rtol=2 * _rounding(p.dtype), atol=tol), name
        else:
            assert torch.equal(p, p_ref), f"{name} changed but the seed recipe leaves it alone"
    assert result.all_orthogonal
    assert result.worst is not None and result.worst.after < result.worst.before / 10


@pytest.mark.parametrize("case", ["qwen3_5", "llama", "gpt_oss_f16"])
def test_block_outputs_have_no_component_along_r(case: str, ckpts: dict[str, Path], tmp_path: Path) -> None:
    src = ckpts[case]
    r = _r(5)
    ab.abliterate_checkpoint(
        src, tmp_path / "out", r, progress=False, copy_files=["config.json", "generation_config.json"]
    )
    model = tm.load_checkpoint(tmp_path / "out")
    stored = next(model.parameters()).dtype
    tol = 1e-5 if stored == torch.float32 else _rounding(stored)  # one rounding step of the stored weights
    model = model.float()
    r_unit = r / r.norm()
    writes: list[tuple[float, float]] = []

    def hook(module, args, kwargs, output):
        x = args[0] if args else kwargs["hidden_states"]
        y = output[0] if isinstance(output, tuple) else output
        delta = (y - x).double()
        writes.append((float((delta @ r_unit.double()).abs().max()), float(delta.norm(dim=-1).max())))

    handles = [layer.register_forward_hook(hook, with_kwargs=True) for layer in _decoder_layers(model)]
    ids = torch.tensor([[1, 5, 9, 33, 70, 2, 200, 17]])
    with torch.no_grad():
        emb = model.get_input_embeddings()(ids)
        model(input_ids=ids)
    for h in handles:
        h.remove()
    assert len(writes) == tm.LAYERS
    assert float((emb.double() @ r_unit.double()).abs().max()) < tol * float(emb.abs().max())
    for along, size in writes:
        assert size > 0 and along < tol * size


def test_sharded_and_unsharded_give_the_same_tensors(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    one = tm.save_llama(tmp_path / "one", bias=True)
    many = tm.save_llama(tmp_path / "many", bias=True, max_shard_size="50KB")
    assert (many / stio.INDEX_NAME).is_file() and not (one / stio.INDEX_NAME).exists()
    r = _r(2)
    plan1, _ = ab.abliterate_checkpoint(one, tmp_path / "o1", r, progress=False)
    plan2, _ = ab.abliterate_checkpoint(many, tmp_path / "o2", r, progress=False)
    assert len(plan2.shards) > 1 and (tmp_path / "o2" / stio.INDEX_NAME).is_file()

    def tensors(d: Path) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for f in sorted(d.glob("*.safetensors")):
            out.update(load_file(f))
        return out

    a, b = tensors(tmp_path / "o1"), tensors(tmp_path / "o2")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_deterministic_and_blocking_invariant(
    ckpts: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = ckpts["qwen3_5_bf16"]
    monkeypatch.setattr(kernels, "CHUNK_ELEMS", 300)  # many chunks per matrix, and an odd tail chunk
    r = _r(3)
    plan = wplan.plan_checkpoint(src)
    first = ab.execute_plan(plan, src, None, r, progress=False).shards_sha256
    monkeypatch.setattr(kernels, "CPU_GROUP", 1)
    again = ab.execute_plan(plan, src, None, r, progress=False).shards_sha256
    monkeypatch.setattr(kernels, "CPU_GROUP", 7)
    grouped = ab.execute_plan(plan, src, None, r, progress=False).shards_sha256
    assert first == again == grouped
    sharded = wplan.plan_checkpoint(ckpts["qwen3_5"])
    single = ab.execute_plan(sharded, ckpts["qwen3_5"], None, r, progress=False)
    one = single.shards_sha256
    monkeypatch.setattr(ab, "parallel_pipelines", lambda: 3)  # shards streamed side by side
    assert ab.execute_plan(sharded, ckpts["qwen3_5"], None, r, progress=False).shards_sha256 == one
    monkeypatch.setattr(ab, "compute_helpers", lambda: 3)  # blocks computed side by side
    monkeypatch.setattr(ab, "IN_FLIGHT", 2)
    helped = ab.execute_plan(sharded, ckpts["qwen3_5"], None, r, progress=False)
    assert helped.shards_sha256 == one
    assert [(c.name, c.before, c.after) for c in helped.checks] == [(c.name, c.before, c.after) for c in single.checks]
    assert all(c.ok for c in helped.checks)
    for library in ("numpy", "torch"):  # the reference kernels, on numpy and on torch, helped or not
        monkeypatch.setattr(ab, "CPU_LIBRARY", library)
        assert ab.execute_plan(sharded, ckpts["qwen3_5"], None, r, progress=False).shards_sha256 == one
    monkeypatch.setattr(ab, "CPU_LIBRARY", "fused")

    # the streamed bytes are exactly orthogonalize() of each tensor
    from safetensors.torch import load_file

    out = tmp_path / "o"
    out.mkdir()
    ab.execute_plan(plan, src, out, r, progress=False)
    base, new = load_file(src / "model.safetensors"), load_file(out / "model.safetensors")
    for op in plan.ops:
        assert torch.equal(ortho.orthogonalize(base[op.name], r, op.kind), new[op.name]), op.name


#: each dtype's positive quiet NaN (IEEE 754; BF16 is float32's top half), and its bits as an integer view
NAN_BITS = {torch.float64: (torch.int64, 0x7FF8000000000000), torch.float32: (torch.int32, 0x7FC00000),
            torch.float16: (torch.int16, 0x7E00), torch.bfloat16: (torch.int16, 0x7FC0)}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_nan_outputs_are_the_same_bytes_in_every_library(
    dtype: torch.dtype, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A NaN in a targeted tensor (negative, with a payload, beside a positive one) makes NaN outputs whose sign
    and payload would depend on the arithmetic's operand order: every library writes the one canonical NaN, so
    a recorded shard hash is reproducible on any machine, with or without numba."""
    import dataclasses

    from safetensors.torch import load_file, save_file

    src = tm.save_llama(tmp_path / "src", dtype=dtype)
    shard = src / "model.safetensors"
    tensors = load_file(shard)
    itype, canonical = NAN_BITS[dtype]
    width = torch.finfo(dtype).bits
    neg_payload = -(1 << (width - 1)) + (canonical | 0x1)  # sign set, quiet, payload 1: a -NaN
    pos_payload = canonical | 0x2
    poisoned = [n for n in tensors if n.endswith(("down_proj.weight", "o_proj.weight", "embed_tokens.weight"))]
    for name in poisoned:
        bits = tensors[name].view(itype)
        bits[0, 0] = neg_payload
        bits[1, 2] = pos_payload
    save_file(tensors, str(shard), metadata={"format": "pt"})
    plan = wplan.plan_checkpoint(src)
    r = _r(5)
    for norm in ("none", "pre", "preserve"):
        normed = dataclasses.replace(plan, ops=[
            dataclasses.replace(op, norm=norm if op.kind == "cols" and op.how != "bias" else "none")
            for op in plan.ops])
        hashes = {}
        for library in ("fused", "numpy", "torch"):
            monkeypatch.setattr(ab, "CPU_LIBRARY", library)
            out = tmp_path / f"{norm}-{library}"
            out.mkdir()
            res = ab.execute_plan(normed, src, out, r, progress=False)
            assert res.library == library and not res.numba_missing
            hashes[library] = res.shards_sha256
            written = load_file(out / "model.safetensors")
            nans = 0
            for name in poisoned:
                t = written[name]
                nan = t.float().isnan()
                nans += int(nan.sum())
                assert (t.view(itype)[nan] == canonical).all(), (library, norm, name)
            assert nans > 0
        assert hashes["fused"] == hashes["numpy"] == hashes["torch"], norm


@pytest.mark.parametrize(
    ("where", "exc"),
    [
        ("_compute_op", KeyboardInterrupt),
        ("_pwrite_buf", KeyboardInterrupt),
        ("_copy_range", OSError),
        ("_get", KeyboardInterrupt),
    ],
)
def test_interrupted_write_leaves_nothing(
    where: str,
    exc: type[BaseException],
    ckpts: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Whichever stream dies (compute thread, the hashing/writing main thread, the kernel copy), no folder."""
    real = getattr(ab, where)
    calls = []

    def dies(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise exc("stop here")
        return real(*args, **kwargs)

    monkeypatch.setattr(ab, where, dies)
    monkeypatch.setattr(ab, "parallel_pipelines", lambda: 1)  # one thread per stream: the 3rd call is the last
    with pytest.raises(exc, match="stop here"):
        ab.abliterate_checkpoint(ckpts["qwen3_5"], tmp_path / "out", _r(), progress=False)
    assert len(calls) == 3
    assert os.listdir(tmp_path) == []
    calls.clear()
    monkeypatch.setattr(ab, "parallel_pipelines", lambda: 3)  # shards side by side: others may call once more
    with pytest.raises(exc, match="stop here"):
        ab.abliterate_checkpoint(ckpts["qwen3_5"], tmp_path / "out", _r(), progress=False)
    assert len(calls) >= 3
    assert os.listdir(tmp_path) == []


def test_untouched_bytes_move_before_the_direction_is_loaded(ckpts: dict[str, Path], tmp_path: Path) -> None:
    """The copier starts before the direction (and numba) is needed: a loader that waits for the copy."""
    src = ckpts["llama"]
    plan = wplan.plan_checkpoint(src)
    shards, tensors = stio.read_index(src)
    planned = {op.name for op in plan.ops}
    last = max((t for t in tensors.values() if t.name not in planned), key=lambda t: t.end)
    expected = (src / last.shard).read_bytes()[last.begin : last.end]
    out = tmp_path / "o"
    out.mkdir()
    waited = []

    def loader() -> torch.Tensor:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            data = (out / last.shard).read_bytes()
            if data[last.begin : last.end] == expected:
                waited.append(True)
                break
            time.sleep(0.01)
        return _r()

    lazy = ab.execute_plan(plan, src, out, loader, progress=False)
    assert waited == [True], "the untouched bytes were not copied while the direction was being loaded"
    assert lazy.shards_sha256 == ab.execute_plan(plan, src, None, _r(), progress=False).shards_sha256


def test_a_failing_direction_loader_leaves_nothing(ckpts: dict[str, Path], tmp_path: Path) -> None:
    def loader() -> torch.Tensor:
        raise HubkitError("vectors/refusal.safetensors: layer 3 is the zero vector")

    with pytest.raises(HubkitError, match="zero vector"):
        ab.abliterate_checkpoint(ckpts["qwen3_5"], tmp_path / "out", loader, progress=False)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("library", ["fused", "numpy"])
def test_a_failing_helper_thread_stops_the_run_and_leaves_nothing(
    library: str, ckpts: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A block computed on a helper thread raises: the error reaches the caller, no folder is left."""
    from hubkit.weights import fused

    module, name = (fused, "cols_update") if library == "fused" else (ab, "cols_block")
    real, calls = getattr(module, name), []

    def dies(*args, **kwargs):
        calls.append(threading.current_thread().name)
        if len(calls) == 5:
            raise FloatingPointError("block 5 failed")
        return real(*args, **kwargs)

    monkeypatch.setattr(ab, "CPU_LIBRARY", library)
    monkeypatch.setattr(ab, "compute_helpers", lambda: 3)
    monkeypatch.setattr(kernels, "CPU_GROUP", 1)
    monkeypatch.setattr(module, name, dies)
    with pytest.raises(FloatingPointError, match="block 5 failed"):
        ab.abliterate_checkpoint(ckpts["qwen3_5"], tmp_path / "out", _r(), progress=False)
    assert all(name.startswith("hubkit-blocks") for name in calls)
    assert os.listdir(tmp_path) == []


def test_existing_output_is_not_clobbered(ckpts: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(HubkitError, match="already exists"):
        ab.abliterate_checkpoint(ckpts["llama"], out, _r(), progress=False)
    assert sorted(os.listdir(out)) == ["keep.txt"]


def test_wrong_direction_size_and_changed_shard_are_refused(ckpts: dict[str, Path], tmp_path: Path) -> None:
    plan = wplan.plan_checkpoint(ckpts["llama"])
    with pytest.raises(HubkitError, match="d=32"):
        ab.execute_plan(plan, ckpts["llama"], None, torch.randn(32), progress=False)
    with pytest.raises(HubkitError, match="zero"):
        ab.execute_plan(plan, ckpts["llama"], None, torch.zeros(D), progress=False)


def test_checkpoint_without_weights_or_with_truncated_shard(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(PlanError, match="no model.safetensors"):
        stio.read_index(tmp_path)
    header = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode()
    (tmp_path / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 8)
    with pytest.raises(PlanError, match="truncated"):
        stio.read_index(tmp_path)
