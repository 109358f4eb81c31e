"""steer / ablate on tiny Qwen3.5 (VLM wrapper, hybrid, tied) and Llama (untied) models."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hubkit.errors import DirectionError, PlanError
from hubkit.formats.directions import DirectionSet
from hubkit.use.steering import ablate, find_decoder_layers, steer
from tests.tiny_models import (
    HIDDEN,
    LAYERS,
    VOCAB,
    build_gpt_oss_model,
    build_llama_model,
    build_qwen3_5_model,
    build_qwen3_moe_model,
    save_model,
)

FAMILIES = {"qwen3_5": build_qwen3_5_model, "llama": build_llama_model}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def model64(request):
    """A float64 copy, so "exactly alpha * r" can be checked to 1e-12."""
    return FAMILIES[request.param]().double()


@pytest.fixture(scope="module")
def r() -> torch.Tensor:
    g = torch.Generator().manual_seed(123)
    v = torch.randn(HIDDEN, generator=g)
    return v / v.norm()


@pytest.fixture(scope="module")
def ids() -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, 6), generator=torch.Generator().manual_seed(7))


def _record(model: nn.Module) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor], list]:
    """Block outputs and block inputs, via hooks added now (so they run after any hook already there)."""
    outs: dict[int, torch.Tensor] = {}
    ins: dict[int, torch.Tensor] = {}
    handles = []
    for i, block in enumerate(find_decoder_layers(model)):
        def post(mod, args, out, i=i):
            outs[i] = (out[0] if isinstance(out, tuple) else out).detach().clone()

        def pre(mod, args, kwargs, i=i):
            ins[i] = (args[0] if args else kwargs["hidden_states"]).detach().clone()

        handles.append(block.register_forward_hook(post))
        handles.append(block.register_forward_pre_hook(pre, with_kwargs=True))
    return outs, ins, handles


Tensors = dict[int, torch.Tensor]


def _run(model: nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, Tensors, Tensors]:
    outs, ins, handles = _record(model)
    try:
        with torch.no_grad():
            logits = model(ids).logits
    finally:
        for h in handles:
            h.remove()
    return logits, outs, ins


def _hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_finds_decoder_layers_of_vlm_wrapper_and_causal_lm():
    qwen, llama = build_qwen3_5_model(), build_llama_model()
    assert find_decoder_layers(qwen) is qwen.model.language_model.layers
    assert find_decoder_layers(llama) is llama.model.layers


def test_fallback_discovery_skips_vision_tower_and_prefers_num_hidden_layers():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.mlp = nn.Linear(4, 4)

    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.vision_tower = nn.ModuleList(Block() for _ in range(8))
            self.mixed = nn.ModuleList([Block(), nn.Linear(4, 4), Block()])
            self.stack = nn.Sequential(nn.Identity())
            self.stack.blocks = nn.ModuleList(Block() for _ in range(3))

    odd = Odd()
    assert find_decoder_layers(odd) is odd.stack.blocks
    with pytest.raises(PlanError, match="no decoder layers"):
        find_decoder_layers(nn.Linear(2, 2))


@pytest.mark.parametrize("block", [0, 2, LAYERS - 1])
def test_steer_adds_alpha_r_at_block_output_and_nothing_before(model64, r, ids, block):
    alpha = 4.0
    base_logits, base_out, base_in = _run(model64, ids)
    with steer(model64, r, layer=block, alpha=alpha):
        logits, out, ins = _run(model64, ids)
    delta = (alpha * r).double()
    for i in range(block):
        assert torch.equal(out[i], base_out[i]), f"block {i} before the steered block changed"
    torch.testing.assert_close(out[block] - base_out[block], delta.expand_as(out[block]), atol=1e-12, rtol=0)
    if block + 1 < LAYERS:  # what the next block reads is the steered residual stream
        torch.testing.assert_close(ins[block + 1], base_out[block] + delta, atol=1e-12, rtol=0)
        assert not torch.allclose(out[block + 1], base_out[block + 1] + delta)  # it propagates non-trivially
    assert not torch.allclose(logits, base_logits)


def test_steer_honours_layer_convention(model64, r, ids):
    _, base_out, _ = _run(model64, ids)
    ds = DirectionSet(name="x", layers={3: r, 4: -r}, layer_convention="hidden_states", selected_layer=3)
    with steer(model64, ds, alpha=2.0):  # hidden_states 3 = output of block 2
        _, out, _ = _run(model64, ids)
    torch.testing.assert_close(out[2] - base_out[2], (2.0 * r).double().expand_as(out[2]), atol=1e-12, rtol=0)
    assert torch.equal(out[1], base_out[1])
    with steer(model64, ds, layer=4, alpha=2.0):  # another layer of the set: its own vector, at block 3
        _, out, _ = _run(model64, ids)
    want = (-2.0 * r).double().expand_as(out[3])
    torch.testing.assert_close(out[3] - base_out[3], want, atol=1e-12, rtol=0)


def test_steer_rejects_unsteerable_layers_and_wrong_d(model64, r):
    with pytest.raises(DirectionError, match="embedding"), steer(model64, r, layer=0, alpha=1.0,
                                                                  layer_convention="hidden_states"):
        pass
    with pytest.raises(DirectionError, match=f"has {LAYERS} blocks"), steer(model64, r, layer=LAYERS):
        pass
    with pytest.raises(DirectionError, match="d=8"), steer(model64, torch.ones(8), layer=1):
        pass
    with pytest.raises(DirectionError, match="pass layer="), steer(model64, r):
        pass
    ds = DirectionSet(name="x", layers={1: r}, layer_convention="block", selected_layer=1)
    with pytest.raises(DirectionError, match="convention"), \
            steer(model64, ds, layer_convention="hidden_states"):
        pass
    assert _hook_count(model64) == 0


def test_hooks_removed_on_exit_and_on_exception(model64, r, ids):
    base_logits, _, _ = _run(model64, ids)
    before = _hook_count(model64)
    with pytest.raises(RuntimeError, match="boom"), steer(model64, r, layer=1, alpha=3.0):
        assert _hook_count(model64) == before + 1
        raise RuntimeError("boom")
    assert _hook_count(model64) == before
    with pytest.raises(RuntimeError, match="boom"), ablate(model64, r):
        assert _hook_count(model64) > before
        raise RuntimeError("boom")
    assert _hook_count(model64) == before
    logits, _, _ = _run(model64, ids)
    assert torch.equal(logits, base_logits)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_steer_and_ablate_under_generate_in_bf16(family, r, ids):
    model = FAMILIES[family]().to(torch.bfloat16)
    kwargs = dict(max_new_tokens=4, do_sample=False, attention_mask=torch.ones_like(ids), pad_token_id=0)
    with torch.no_grad():
        base = model.generate(ids, **kwargs)
        with steer(model, r, layer=1, alpha=200.0):
            steered = model.generate(ids, **kwargs)
        with ablate(model, r):
            ablated = model.generate(ids, **kwargs)
        after = model.generate(ids, **kwargs)
    assert steered.shape == base.shape and not torch.equal(steered[:, ids.shape[1]:], base[:, ids.shape[1]:])
    assert ablated.shape == base.shape
    assert torch.equal(after, base)
    assert _hook_count(model) == _hook_count(FAMILIES[family]())


def test_ablate_leaves_every_block_output_orthogonal(model64, r, ids):
    _, base_out, _ = _run(model64, ids)
    assert max(float((h @ r.double()).abs().max()) for h in base_out.values()) > 1e-2  # not trivially so
    with ablate(model64, r * 4.0):  # r is normalized inside (x4 is exact in float32)
        _, out, ins = _run(model64, ids)
    for i in range(LAYERS):
        assert float((out[i] @ r.double()).abs().max()) < 1e-12, f"block {i} output has an r component"
        assert float((ins[i] @ r.double()).abs().max()) < 1e-12, f"block {i} input has an r component"


def test_ablate_uses_a_direction_sets_selected_layer(model64, r, ids):
    other = torch.roll(r, 1)
    ds = DirectionSet(name="x", layers={1: other, 2: r}, layer_convention="block", selected_layer=2)
    with ablate(model64, ds):
        _, out, _ = _run(model64, ids)
    assert float((out[LAYERS - 1] @ r.double()).abs().max()) < 1e-12
    with ablate(model64, ds, layer=1):
        _, out, _ = _run(model64, ids)
    assert float((out[LAYERS - 1] @ other.double()).abs().max()) < 1e-12


def _randomize_norms(model: nn.Module) -> nn.Module:
    """Non-trivial norm gains, so a missing projection (e.g. before a tied lm_head) shows in the logits."""
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and p.dim() == 1:
                p.copy_(0.3 + 0.5 * torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype))
    return model


TWIN_FAMILIES = {
    **FAMILIES,
    "llama_bias": lambda: build_llama_model(bias=True),
    "qwen3_moe": build_qwen3_moe_model,
    "gpt_oss": build_gpt_oss_model,
}


@pytest.mark.parametrize("family", sorted(TWIN_FAMILIES))
def test_ablate_logits_equal_abliterated_checkpoint(family, r, ids, tmp_path):
    """The runtime twin of regenerate: ablate's logits equal those of the checkpoint hubkit.abliterate
    writes (embed_tokens, attention / linear-attention out, MLP / expert down projections, biases), within
    float32 rounding. Qwen3.5 is tied, so its lm_head changes with the embedding; random norm gains make a
    missing projection before the lm_head visible."""
    from hubkit.weights.executor import abliterate_checkpoint
    from hubkit.weights.families import DEFAULT_TARGETS

    model = _randomize_norms(TWIN_FAMILIES[family]())
    save_model(model, tmp_path / "src", tokenizer=False)
    abliterate_checkpoint(tmp_path / "src", tmp_path / "out", r, DEFAULT_TARGETS, progress=False,
                          copy_files=["config.json", "generation_config.json"])
    edited = type(model).from_pretrained(tmp_path / "out").eval()
    assert edited.dtype == torch.float32
    with torch.no_grad():
        base = model(ids).logits
        with ablate(model, r):
            hooked = model(ids).logits
        weights = edited(ids).logits
    assert (base - weights).abs().max() > 1e-2  # the edit does something
    torch.testing.assert_close(hooked, weights, atol=2e-5, rtol=1e-5)


def test_loaded_directions_plug_into_steer_and_ablate(model64, ids, tmp_path):
    from hubkit.use.loading import load_directions
    from tests.test_loading import stage_tree

    cap = load_directions(stage_tree("capability-vector-v1", tmp_path / "cap"))  # block convention, 0–31
    _, base_out, _ = _run(model64, ids)
    with steer(model64, cap, layer=2, alpha=-2.0):
        _, out, _ = _run(model64, ids)
    want = (-2.0 * cap.layers[2]).double().expand_as(out[2])
    torch.testing.assert_close(out[2] - base_out[2], want, atol=1e-12, rtol=0)
    with pytest.raises(DirectionError, match="layer 22 .*block 22, but the model has 4 blocks"):
        with steer(model64, cap):  # the selected layer of a 32-block model
            pass
    refusal = load_directions(stage_tree("refusal-abliteration", tmp_path / "ref"))  # hidden_states, 1–32
    with steer(model64, refusal, layer=4, alpha=1.0):  # hidden_states 4 = output of block 3
        _, out, _ = _run(model64, ids)
    torch.testing.assert_close(out[3] - base_out[3], refusal.layers[4].double().expand_as(out[3]),
                               atol=1e-12, rtol=0)
    with ablate(model64, refusal, layer=4):
        _, out, _ = _run(model64, ids)
    r = refusal.layers[4].double() / refusal.layers[4].double().norm()
    assert float((out[LAYERS - 1] @ r).abs().max()) < 1e-12
