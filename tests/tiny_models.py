"""Tiny random checkpoints for tests, built from transformers configs (no downloads).

Every model has hidden size :data:`HIDDEN` = 64 (the example runs in ``artifacts/`` ship d=64 directions, so
they regenerate against these), a small vocab, 4 decoder blocks, and seeded weights. Biases that
transformers initialises to zero are filled with random values so that a bias edit is observable.

For each family there is ``build_<family>_model(...)`` (an in-memory model, eval mode) and
``save_<family>(dir, ...) -> Path`` (a folder laid out like a Hub checkpoint: config, generation config,
safetensors shards, a tiny tokenizer). ``max_shard_size`` (e.g. ``"20KB"``) gives a sharded checkpoint
with ``model.safetensors.index.json``. ``load_checkpoint(dir)`` loads such a folder back with transformers.

Families:
- ``qwen3_5``: Qwen3.5 VLM wrapper (``model.language_model.*`` + ``model.visual.*``), hybrid Gated
  DeltaNet / full attention (every 4th block full, as Qwen3.5-4B), tied embeddings; ``save_qwen3_5`` also adds
  ``mtp.*`` tensors like the real checkpoint (transformers drops them on load; they must pass through).
- ``llama``: untied ``lm_head``; ``bias=True`` turns on ``attention_bias`` and ``mlp_bias``.
- ``qwen3_moe``: per-expert tensors ``mlp.experts.<j>.down_proj.weight`` (block 3 dense via mlp_only_layers).
- ``gpt_oss``: fused experts ``mlp.experts.down_proj`` ``[E, i, d]`` with ``down_proj_bias`` ``[E, d]``,
  o_proj bias, untied.
- ``save_qwen3_moe_fused``: the Qwen3-MoE model written with fused ``[E, d, i]`` expert tensors, the
  layout some Hub checkpoints use.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

HIDDEN = 64
VOCAB = 256
LAYERS = 4
SEED = 0

__all__ = [
    "HIDDEN",
    "LAYERS",
    "VOCAB",
    "build_gpt_oss_model",
    "build_llama_model",
    "build_qwen3_5_model",
    "build_qwen3_moe_model",
    "load_checkpoint",
    "save_gpt_oss",
    "save_llama",
    "save_model",
    "save_qwen3_5",
    "save_qwen3_moe",
    "save_qwen3_moe_fused",
    "save_tokenizer",
]


def _seeded(build, seed: int):
    """Build under a fixed seed and randomise zero-initialised biases, so every run gives the same model."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build()
        g = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if ("bias" in name.rsplit(".", 1)[-1] or name.endswith("_bias")) and not p.any():
                    if "dt_bias" in name:
                        continue
                    p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float32).to(p.dtype) * 0.02)
    return model.eval()


# ---------------------------------------------------------------- configs


def qwen3_5_config(layers: int = LAYERS):
    from transformers import Qwen3_5Config

    return Qwen3_5Config(
        text_config=dict(
            vocab_size=VOCAB,
            hidden_size=HIDDEN,
            intermediate_size=128,
            num_hidden_layers=layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            linear_key_head_dim=16,
            linear_value_head_dim=16,
            linear_num_key_heads=2,
            linear_num_value_heads=4,
            full_attention_interval=4,  # blocks 0-2 Gated DeltaNet, block 3 full attention (as Qwen3.5-4B)
            max_position_embeddings=256,
            tie_word_embeddings=True,
        ),
        vision_config=dict(
            depth=1,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            out_hidden_size=HIDDEN,
            patch_size=4,
            num_position_embeddings=16,
        ),
        tie_word_embeddings=True,
    )


def llama_config(bias: bool = False):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=128,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        attention_bias=bias,
        mlp_bias=bias,
    )


def qwen3_moe_config():
    from transformers import Qwen3MoeConfig

    return Qwen3MoeConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=128,
        moe_intermediate_size=32,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        num_experts=4,
        num_experts_per_tok=2,
        decoder_sparse_step=1,
        mlp_only_layers=[3],
        max_position_embeddings=256,
        tie_word_embeddings=False,
    )


def gpt_oss_config():
    from transformers import GptOssConfig

    return GptOssConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=32,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        num_local_experts=4,
        num_experts_per_tok=2,
        layer_types=["sliding_attention", "full_attention"] * (LAYERS // 2),
        tie_word_embeddings=False,
    )


# ---------------------------------------------------------------- builders (in memory)


def build_qwen3_5_model(seed: int = SEED, layers: int = LAYERS):
    """Qwen3_5ForConditionalGeneration: VLM wrapper, hybrid linear/full attention, tied embeddings.

    ``layers`` > 4 (e.g. 24) fits directions recorded at a deep layer, like the example runs' layer 22.
    """
    from transformers import Qwen3_5ForConditionalGeneration

    return _seeded(lambda: Qwen3_5ForConditionalGeneration(qwen3_5_config(layers)), seed)


def build_llama_model(seed: int = SEED, bias: bool = False):
    """LlamaForCausalLM with an untied lm_head; ``bias`` adds attention and MLP biases."""
    from transformers import LlamaForCausalLM

    return _seeded(lambda: LlamaForCausalLM(llama_config(bias)), seed)


def build_qwen3_moe_model(seed: int = SEED):
    """Qwen3MoeForCausalLM: 4 experts in blocks 0-2, a dense MLP in block 3."""
    from transformers import Qwen3MoeForCausalLM

    return _seeded(lambda: Qwen3MoeForCausalLM(qwen3_moe_config()), seed)


def build_gpt_oss_model(seed: int = SEED):
    """GptOssForCausalLM: fused experts [E, i, d] with biases, o_proj bias, untied lm_head."""
    from transformers import GptOssForCausalLM

    return _seeded(lambda: GptOssForCausalLM(gpt_oss_config()), seed)


# ---------------------------------------------------------------- savers (folders)


def save_tokenizer(path: str | Path, vocab_size: int = VOCAB) -> Path:
    """A word-level tokenizer over ``t0 … t<n-1>`` that AutoTokenizer loads offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(vocab_size)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="t0").save_pretrained(str(path))
    return Path(path)


def save_model(
    model,
    path: str | Path,
    *,
    dtype: torch.dtype | None = None,
    max_shard_size: str | int | None = None,
    tokenizer: bool = True,
) -> Path:
    """``save_pretrained(safe_serialization)`` plus a tokenizer; ``dtype`` casts first (e.g. bfloat16)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if dtype is not None:
        model = model.to(dtype)
    kwargs = {"safe_serialization": True}
    if max_shard_size is not None:
        kwargs["max_shard_size"] = max_shard_size
    model.save_pretrained(str(path), **kwargs)
    if tokenizer:
        save_tokenizer(path, model.config.get_text_config().vocab_size)
    return path


def _add_tensors(path: Path, extra: dict[str, torch.Tensor]) -> None:
    """Append tensors to the checkpoint's last shard (and its index), as a real export would hold them."""
    from safetensors.torch import load_file, save_file

    index_path = path / "model.safetensors.index.json"
    if index_path.exists():
        index = json.loads(index_path.read_text())
        shard = sorted(set(index["weight_map"].values()))[-1]
    else:
        index, shard = None, "model.safetensors"
    tensors = load_file(str(path / shard))
    tensors.update({k: v.contiguous() for k, v in extra.items()})
    save_file(tensors, str(path / shard), metadata={"format": "pt"})
    if index is not None:
        for k in extra:
            index["weight_map"][k] = shard
        index["weight_map"] = dict(sorted(index["weight_map"].items()))
        index["metadata"]["total_size"] = sum(
            (path / s).stat().st_size for s in set(index["weight_map"].values())
        )
        index_path.write_text(json.dumps(index, indent=2) + "\n")


def _mtp_tensors(dtype: torch.dtype, seed: int) -> dict[str, torch.Tensor]:
    """Multi-token-prediction tensors named as in Qwen3.5 checkpoints (``mtp.*``), random values."""
    g = torch.Generator().manual_seed(seed + 7)

    def rnd(*shape: int) -> torch.Tensor:
        return (torch.randn(shape, generator=g) * 0.02).to(dtype)

    d, f = HIDDEN, 128
    return {
        "mtp.fc.weight": rnd(d, 2 * d),
        "mtp.pre_fc_norm_embedding.weight": rnd(d),
        "mtp.pre_fc_norm_hidden.weight": rnd(d),
        "mtp.layers.0.self_attn.o_proj.weight": rnd(d, 64),
        "mtp.layers.0.mlp.down_proj.weight": rnd(d, f),
        "mtp.layers.0.mlp.up_proj.weight": rnd(f, d),
        "mtp.norm.weight": rnd(d),
    }


def save_qwen3_5(
    path: str | Path,
    *,
    seed: int = SEED,
    dtype: torch.dtype | None = None,
    max_shard_size: str | int | None = None,
    mtp: bool = True,
    layers: int = LAYERS,
) -> Path:
    """Save the tiny Qwen3.5 VLM; with ``mtp`` the checkpoint also holds ``mtp.*`` tensors (as Qwen3.5 does)."""
    model = build_qwen3_5_model(seed, layers)
    path = save_model(model, path, dtype=dtype, max_shard_size=max_shard_size)
    if mtp:
        _add_tensors(path, _mtp_tensors(dtype or torch.float32, seed))
    return path


def save_llama(
    path: str | Path,
    *,
    seed: int = SEED,
    bias: bool = False,
    dtype: torch.dtype | None = None,
    max_shard_size: str | int | None = None,
) -> Path:
    """Save the tiny untied Llama (``bias=True``: o_proj / down_proj and the other projections have biases)."""
    return save_model(build_llama_model(seed, bias), path, dtype=dtype, max_shard_size=max_shard_size)


def save_qwen3_moe(
    path: str | Path,
    *,
    seed: int = SEED,
    dtype: torch.dtype | None = None,
    max_shard_size: str | int | None = None,
) -> Path:
    """Save the tiny Qwen3-MoE; transformers writes per-expert ``mlp.experts.<j>.down_proj.weight``."""
    return save_model(build_qwen3_moe_model(seed), path, dtype=dtype, max_shard_size=max_shard_size)


def save_qwen3_moe_fused(path: str | Path, *, seed: int = SEED, dtype: torch.dtype | None = None) -> Path:
    """Save the tiny Qwen3-MoE with fused expert tensors ``mlp.experts.down_proj`` ``[E, d, i]`` (one shard).

    This is the in-memory layout of transformers 5, written as is (no per-expert conversion).
    """
    from safetensors.torch import save_file

    model = build_qwen3_moe_model(seed)
    if dtype is not None:
        model = model.to(dtype)
    path = Path(path)
    save_model(model, path, tokenizer=True)  # config, generation config, tokenizer
    for f in path.glob("model*.safetensors*"):
        f.unlink()
    sd = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    sd["lm_head.weight"] = model.lm_head.weight.detach().contiguous().clone()
    save_file(dict(sorted(sd.items())), str(path / "model.safetensors"), metadata={"format": "pt"})
    return path


def save_gpt_oss(
    path: str | Path,
    *,
    seed: int = SEED,
    dtype: torch.dtype | None = None,
    max_shard_size: str | int | None = None,
) -> Path:
    """Save the tiny GPT-OSS; experts stay fused (``down_proj`` ``[E, i, d]``, ``down_proj_bias`` ``[E, d]``)."""
    return save_model(build_gpt_oss_model(seed), path, dtype=dtype, max_shard_size=max_shard_size)


def load_checkpoint(path: str | Path):
    """A saved checkpoint folder loaded with transformers (eval mode): the Qwen3.5 VLM as image-text-to-text,
    every other family as a causal LM."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

    cls = (
        AutoModelForImageTextToText
        if AutoConfig.from_pretrained(path).model_type == "qwen3_5"
        else AutoModelForCausalLM
    )
    return cls.from_pretrained(path).eval()
