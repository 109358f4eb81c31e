"""hubkit.weights.plan: the name-pattern tensor plan (``build_plan``), pure: fake checkpoint indexes, no files.

Which tensors each family's plan touches (residual writers only, rows or columns), the targets subset and the
lm_head opt-in, the notes, and the refusals (nothing matches, quantized or misshapen targets, lm_head when the
embeddings are tied).
"""

from __future__ import annotations

import pytest
import torch

from hubkit.errors import PlanError
from hubkit.formats import safetensors_io as stio
from hubkit.weights import plan as wplan
from tests import tiny_models as tm

D = tm.HIDDEN

def _index(shapes: dict[str, tuple[int, ...]], dtype: str = "BF16") -> tuple[dict, list]:
    """(tensors, shards) of a fake one-shard checkpoint: build_plan's inputs without any file."""
    tensors, off = {}, 0
    for name, shape in shapes.items():
        n = 2 * int(torch.tensor(shape).prod()) if shape else 2
        tensors[name] = stio.TensorInfo(name, "model.safetensors", dtype, shape, off, off + n)
        off += n
    return tensors, [stio.ShardInfo("model.safetensors", off, 0)]


def _qwen3_5_names(layers: int = 4) -> dict[str, tuple[int, ...]]:
    p = "model.language_model."
    names = {
        p + "embed_tokens.weight": (100, D),
        p + "norm.weight": (D,),
        "model.visual.blocks.0.attn.proj.weight": (32, 32),
        "model.visual.merger.linear_fc2.weight": (D, 128),
        "mtp.layers.0.self_attn.o_proj.weight": (D, 64),
        "mtp.layers.0.mlp.down_proj.weight": (D, 128),
        "mtp.fc.weight": (D, 2 * D),
    }
    for i in range(layers):
        b = f"{p}layers.{i}."
        if (i + 1) % 4:
            names[b + "linear_attn.out_proj.weight"] = (D, 64)
            names[b + "linear_attn.in_proj_qkv.weight"] = (128, D)
        else:
            names[b + "self_attn.o_proj.weight"] = (D, 64)
            names[b + "self_attn.q_proj.weight"] = (128, D)
        names[b + "mlp.down_proj.weight"] = (D, 128)
        names[b + "mlp.up_proj.weight"] = (128, D)
        names[b + "input_layernorm.weight"] = (D,)
    return names


QWEN3_5_CONFIG = {
    "model_type": "qwen3_5",
    "tie_word_embeddings": True,
    "text_config": {"model_type": "qwen3_5_text", "hidden_size": D, "num_hidden_layers": 4},
}


def test_plan_qwen3_5_hybrid_vlm_touches_only_residual_writers() -> None:
    tensors, shards = _index(_qwen3_5_names())
    plan = wplan.build_plan(QWEN3_5_CONFIG, tensors, shards)
    got = {op.name: (op.target, op.kind, op.layer) for op in plan.ops}
    p = "model.language_model."
    assert got == {
        p + "embed_tokens.weight": ("embed_tokens", "rows", None),
        **{f"{p}layers.{i}.linear_attn.out_proj.weight": ("attn_out", "cols", i) for i in (0, 1, 2)},
        p + "layers.3.self_attn.o_proj.weight": ("attn_out", "cols", 3),
        **{f"{p}layers.{i}.mlp.down_proj.weight": ("mlp_down", "cols", i) for i in range(4)},
    }
    assert plan.root == p and plan.tied and plan.family == "qwen3_5"
    assert any("unembedding" in n for n in plan.notes)
    assert "linear_attn.out_proj" in plan.render() and "mtp." not in plan.render()


def test_plan_targets_subset_and_lm_head_opt_in() -> None:
    names = {"model.embed_tokens.weight": (100, D), "lm_head.weight": (100, D)}
    for i in range(2):
        names[f"model.layers.{i}.self_attn.o_proj.weight"] = (D, D)
        names[f"model.layers.{i}.mlp.down_proj.weight"] = (D, 96)
    cfg = {"model_type": "llama", "hidden_size": D, "num_hidden_layers": 2, "tie_word_embeddings": False}
    tensors, shards = _index(names)
    plan = wplan.build_plan(cfg, tensors, shards)
    assert "lm_head.weight" not in {op.name for op in plan.ops} and not plan.tied
    assert any("left alone" in n for n in plan.notes)
    plan = wplan.build_plan(cfg, tensors, shards, ["mlp_down", "lm_head"])
    assert {op.target for op in plan.ops} == {"mlp_down", "lm_head"}
    assert plan.counts() == {"mlp_down": 2, "lm_head": 1}


def test_plan_moe_layouts() -> None:
    e, i = 4, 32
    names = {"model.embed_tokens.weight": (100, D)}
    names["model.layers.0.self_attn.o_proj.weight"] = (D, D)
    names["model.layers.0.mlp.experts.down_proj"] = (e, i, D)  # GPT-OSS: d last
    names["model.layers.0.mlp.experts.down_proj_bias"] = (e, D)
    names["model.layers.0.mlp.experts.gate_up_proj"] = (e, D, 2 * i)
    cfg = {"model_type": "gpt_oss", "hidden_size": D, "num_hidden_layers": 1}
    kinds = {op.name: op.kind for op in wplan.build_plan(cfg, *_index(names)).ops}
    assert kinds == {
        "model.embed_tokens.weight": "rows",
        "model.layers.0.self_attn.o_proj.weight": "cols",
        "model.layers.0.mlp.experts.down_proj": "rows",
        "model.layers.0.mlp.experts.down_proj_bias": "rows",
    }

    fused = {
        "model.embed_tokens.weight": (100, D),
        "model.layers.0.self_attn.o_proj.weight": (D, D),
        "model.layers.0.mlp.experts.down_proj": (e, D, i),
        "model.layers.0.mlp.shared_expert.down_proj.weight": (D, 48),
    }
    tensors, shards = _index(fused)
    plan = wplan.build_plan(
        {"model_type": "qwen3_moe", "hidden_size": D, "num_hidden_layers": 1}, tensors, shards
    )
    by = {op.name: op.kind for op in plan.ops}
    assert by["model.layers.0.mlp.experts.down_proj"] == "cols"
    assert "model.layers.0.mlp.shared_expert.down_proj.weight" in by

    mixtral = {
        "model.embed_tokens.weight": (100, D),
        "model.layers.0.self_attn.o_proj.weight": (D, D),
        **{f"model.layers.0.block_sparse_moe.experts.{j}.w2.weight": (D, i) for j in range(e)},
    }
    tensors, shards = _index(mixtral)
    plan = wplan.build_plan({"model_type": "mixtral", "hidden_size": D, "num_hidden_layers": 1}, tensors, shards)
    assert plan.counts() == {"embed_tokens": 1, "attn_out": 1, "mlp_down": e}


def test_plan_gemma2_notes_sandwich_norms() -> None:
    names = {
        "model.embed_tokens.weight": (100, D),
        "model.layers.0.self_attn.o_proj.weight": (D, D),
        "model.layers.0.mlp.down_proj.weight": (D, 96),
    }
    plan = wplan.build_plan({"model_type": "gemma2", "hidden_size": D, "num_hidden_layers": 1}, *_index(names))
    assert any("post-attention" in n for n in plan.notes)


def test_nothing_matches_is_an_error() -> None:
    cfg = {"model_type": "llama", "hidden_size": D, "num_hidden_layers": 2}
    with pytest.raises(PlanError, match="no decoder blocks"):
        wplan.build_plan(cfg, *_index({"transformer.h.0.attn.c_proj.weight": (D, D)}))
    names = {
        "model.embed_tokens.weight": (100, D),
        "model.layers.0.self_attn.o_proj.weight": (D, D),
        "model.layers.0.mlp.down_proj.weight": (D, 96),
        "model.layers.1.mlp.down_proj.weight": (D, 96),
        "model.layers.1.mixer.out.weight": (D, D),
    }
    with pytest.raises(PlanError, match=r"block\(s\) 1 have no attn_out"):
        wplan.build_plan(cfg, *_index(names))
    with pytest.raises(PlanError, match="unknown"):
        wplan.build_plan(cfg, *_index(names), ["everything"])


def test_quantized_or_misshapen_targets_are_refused() -> None:
    names = {
        "model.embed_tokens.weight": (100, D),
        "model.layers.0.self_attn.o_proj.weight": (D, D),
        "model.layers.0.mlp.down_proj.weight": (D, 96),
    }
    tensors, shards = _index(names)
    tensors["model.layers.0.self_attn.o_proj.weight"] = stio.TensorInfo(
        "model.layers.0.self_attn.o_proj.weight", "model.safetensors", "U8", (D, D // 2), 0, 1
    )
    cfg = {"model_type": "llama", "hidden_size": D, "num_hidden_layers": 1}
    with pytest.raises(PlanError, match="U8.*unquantized"):
        wplan.build_plan(cfg, tensors, shards)
    tensors, shards = _index({**names, "model.layers.0.mlp.down_proj.weight": (96, D)})
    with pytest.raises(PlanError, match=r"down_proj.weight has shape \[96, 64\]"):
        wplan.build_plan(cfg, tensors, shards)


def test_lm_head_target_with_tied_embeddings_is_refused() -> None:
    tensors, shards = _index(_qwen3_5_names())
    with pytest.raises(PlanError, match="no lm_head tensor"):
        wplan.build_plan(QWEN3_5_CONFIG, tensors, shards, ["attn_out", "lm_head"])


def test_tie_word_embeddings_must_be_a_boolean(tmp_path) -> None:
    """The string "false" is truthy: read as a flag, it would edit a stored lm_head like the embedding."""
    import json

    src = tm.save_llama(tmp_path / "llama")
    cfg = json.loads((src / "config.json").read_text())
    cfg["tie_word_embeddings"] = "false"
    (src / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(PlanError, match="tie_word_embeddings must be true or false, got 'false'"):
        wplan.plan_checkpoint(src)


def test_an_index_with_an_empty_or_doubled_weight_map_names_the_index(tmp_path) -> None:
    import json

    src = tm.save_qwen3_5(tmp_path / "q", max_shard_size="100KB")
    index = src / stio.INDEX_NAME
    good = json.loads(index.read_text())
    index.write_text(json.dumps({"weight_map": {}}))
    with pytest.raises(PlanError, match="model.safetensors.index.json: weight_map is empty"):
        wplan.plan_checkpoint(src)
    text = json.dumps(good)
    index.write_text(text[:-1] + ', "weight_map": {}}')  # the key twice: which one is meant?
    with pytest.raises(PlanError, match="model.safetensors.index.json: no readable weight_map"):
        wplan.plan_checkpoint(src)
