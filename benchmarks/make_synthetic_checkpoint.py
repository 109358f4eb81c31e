"""Write a synthetic checkpoint with the real Qwen3.5-4B shapes (bf16, random values, ~9.3 GB), no download.

The config below is written down from the public ``Qwen/Qwen3.5-4B`` config.json (the values that fix tensor
shapes: 32 blocks, d=2560, FFN 9216, vocab 248320, every 4th block full attention with an output gate,
Gated DeltaNet elsewhere, tied embeddings, a 24-block vision tower, one MTP block). Tensor names and shapes
are computed from the config (``tensor_specs``; ``--check`` compares them with
``Qwen3_5ForConditionalGeneration`` built on the meta device), plus the ``mtp.*`` tensors that the real
checkpoint holds and transformers drops. Values are random bf16 bit patterns with magnitudes in
[2^-8, 2^-4) from a PCG64 raw stream, so every machine writes the same bytes.

    python benchmarks/make_synthetic_checkpoint.py OUT_DIR [--shard-gb 3] [--layers 32] [--seed 0]

``--layers`` makes smaller variants with the same per-block shapes (for the RSS-vs-size check).
"""

from __future__ import annotations

import argparse
import copy
import json
import struct
import time
from pathlib import Path

import numpy as np

QWEN3_5_4B_CONFIG: dict = {
    "architectures": ["Qwen3_5ForConditionalGeneration"],
    "model_type": "qwen3_5",
    "image_token_id": 248056,
    "video_token_id": 248057,
    "vision_start_token_id": 248053,
    "vision_end_token_id": 248054,
    "tie_word_embeddings": True,
    "dtype": "bfloat16",
    "text_config": {
        "model_type": "qwen3_5_text",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "attn_output_gate": True,
        "dtype": "bfloat16",
        "eos_token_id": 248044,
        "full_attention_interval": 4,
        "head_dim": 256,
        "hidden_act": "silu",
        "hidden_size": 2560,
        "initializer_range": 0.02,
        "intermediate_size": 9216,
        "linear_conv_kernel_dim": 4,
        "linear_key_head_dim": 128,
        "linear_num_key_heads": 16,
        "linear_num_value_heads": 32,
        "linear_value_head_dim": 128,
        "max_position_embeddings": 262144,
        "mtp_num_hidden_layers": 1,
        "mtp_use_dedicated_embeddings": False,
        "num_attention_heads": 16,
        "num_hidden_layers": 32,
        "num_key_value_heads": 4,
        "rms_norm_eps": 1e-06,
        "tie_word_embeddings": True,
        "use_cache": True,
        "vocab_size": 248320,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 10000000,
            "partial_rotary_factor": 0.25,
            "mrope_interleaved": True,
            "mrope_section": [11, 11, 10],
        },
    },
    "vision_config": {
        "model_type": "qwen3_5_vision",
        "depth": 24,
        "hidden_act": "gelu_pytorch_tanh",
        "hidden_size": 1024,
        "in_channels": 3,
        "initializer_range": 0.02,
        "intermediate_size": 4096,
        "num_heads": 16,
        "num_position_embeddings": 2304,
        "out_hidden_size": 2560,
        "patch_size": 16,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    },
}


def config_for(layers: int) -> dict:
    cfg = copy.deepcopy(QWEN3_5_4B_CONFIG)
    tc = cfg["text_config"]
    tc["num_hidden_layers"] = layers
    tc["layer_types"] = ["full_attention" if (i + 1) % 4 == 0 else "linear_attention" for i in range(layers)]
    return cfg


#: Qwen3-30B-A3B's shapes (d=2048, 128 experts of 768, vocab 151936, untied lm_head): thousands of small
#: per-expert down_projs, where per-tensor overhead would show
QWEN3_MOE_CONFIG = {
    "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "hidden_size": 2048,
    "intermediate_size": 6144, "moe_intermediate_size": 768, "num_experts": 128, "num_experts_per_tok": 8,
    "num_attention_heads": 32, "num_key_value_heads": 4, "head_dim": 128, "num_hidden_layers": 48,
    "vocab_size": 151936, "tie_word_embeddings": False, "torch_dtype": "bfloat16", "rms_norm_eps": 1e-6,
    "decoder_sparse_step": 1, "mlp_only_layers": [],
}


def moe_config_for(layers: int) -> dict:
    cfg = copy.deepcopy(QWEN3_MOE_CONFIG)
    cfg["num_hidden_layers"] = layers
    return cfg


def moe_tensor_specs(cfg: dict) -> list[tuple[str, tuple[int, ...]]]:
    d, i, e, v = cfg["hidden_size"], cfg["moe_intermediate_size"], cfg["num_experts"], cfg["vocab_size"]
    nh, nkv, hd = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    specs = {"model.embed_tokens.weight": (v, d), "model.norm.weight": (d,), "lm_head.weight": (v, d)}
    for k in range(cfg["num_hidden_layers"]):
        b = f"model.layers.{k}."
        specs.update({b + "input_layernorm.weight": (d,), b + "post_attention_layernorm.weight": (d,),
                      b + "self_attn.q_proj.weight": (nh * hd, d), b + "self_attn.k_proj.weight": (nkv * hd, d),
                      b + "self_attn.v_proj.weight": (nkv * hd, d), b + "self_attn.o_proj.weight": (d, nh * hd),
                      b + "self_attn.q_norm.weight": (hd,), b + "self_attn.k_norm.weight": (hd,),
                      b + "mlp.gate.weight": (e, d)})
        for x in range(e):
            specs.update({f"{b}mlp.experts.{x}.gate_proj.weight": (i, d), f"{b}mlp.experts.{x}.up_proj.weight": (i, d),
                          f"{b}mlp.experts.{x}.down_proj.weight": (d, i)})
    return sorted(specs.items())


def tensor_specs(cfg: dict) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every tensor the real checkpoint stores, sorted by name, computed from the config alone.

    Written out by hand (no transformers needed, so it runs where transformers lacks Qwen3.5);
    :func:`specs_from_transformers` gives the same list where it has it (checked by ``--check``).
    """
    if cfg.get("model_type") == "qwen3_moe":
        return moe_tensor_specs(cfg)
    tc, vc = cfg["text_config"], cfg["vision_config"]
    d, f, hd, v = tc["hidden_size"], tc["intermediate_size"], tc["head_dim"], tc["vocab_size"]
    nh, nkv = tc["num_attention_heads"], tc["num_key_value_heads"]
    nk, nv, dk, dv = (
        tc["linear_num_key_heads"],
        tc["linear_num_value_heads"],
        tc["linear_key_head_dim"],
        tc["linear_value_head_dim"],
    )
    specs: dict[str, tuple[int, ...]] = {}
    p = "model.language_model."
    specs[p + "embed_tokens.weight"] = (v, d)
    specs[p + "norm.weight"] = (d,)
    for i, kind in enumerate(tc["layer_types"]):
        b = f"{p}layers.{i}."
        specs[b + "input_layernorm.weight"] = (d,)
        specs[b + "post_attention_layernorm.weight"] = (d,)
        specs[b + "mlp.gate_proj.weight"] = (f, d)
        specs[b + "mlp.up_proj.weight"] = (f, d)
        specs[b + "mlp.down_proj.weight"] = (d, f)
        if kind == "full_attention":
            specs[b + "self_attn.q_proj.weight"] = (nh * hd * 2, d)  # query and output gate
            specs[b + "self_attn.k_proj.weight"] = (nkv * hd, d)
            specs[b + "self_attn.v_proj.weight"] = (nkv * hd, d)
            specs[b + "self_attn.o_proj.weight"] = (d, nh * hd)
            specs[b + "self_attn.q_norm.weight"] = (hd,)
            specs[b + "self_attn.k_norm.weight"] = (hd,)
        else:  # Gated DeltaNet
            conv = 2 * nk * dk + nv * dv
            specs[b + "linear_attn.A_log"] = (nv,)
            specs[b + "linear_attn.dt_bias"] = (nv,)
            specs[b + "linear_attn.conv1d.weight"] = (conv, 1, tc["linear_conv_kernel_dim"])
            specs[b + "linear_attn.norm.weight"] = (dv,)
            specs[b + "linear_attn.in_proj_qkv.weight"] = (conv, d)
            specs[b + "linear_attn.in_proj_z.weight"] = (nv * dv, d)
            specs[b + "linear_attn.in_proj_b.weight"] = (nv, d)
            specs[b + "linear_attn.in_proj_a.weight"] = (nv, d)
            specs[b + "linear_attn.out_proj.weight"] = (d, nv * dv)
    hv, iv, out = vc["hidden_size"], vc["intermediate_size"], vc["out_hidden_size"]
    m = hv * vc["spatial_merge_size"] ** 2
    q = "model.visual."
    specs[q + "patch_embed.proj.weight"] = (
        hv,
        vc["in_channels"],
        vc["temporal_patch_size"],
        vc["patch_size"],
        vc["patch_size"],
    )
    specs[q + "patch_embed.proj.bias"] = (hv,)
    specs[q + "pos_embed.weight"] = (vc["num_position_embeddings"], hv)
    for i in range(vc["depth"]):
        b = f"{q}blocks.{i}."
        for norm in ("norm1", "norm2"):
            specs[b + norm + ".weight"] = (hv,)
            specs[b + norm + ".bias"] = (hv,)
        for name, shape in (
            ("attn.qkv", (3 * hv, hv)),
            ("attn.proj", (hv, hv)),
            ("mlp.linear_fc1", (iv, hv)),
            ("mlp.linear_fc2", (hv, iv)),
        ):
            specs[b + name + ".weight"] = shape
            specs[b + name + ".bias"] = (shape[0],)
    specs[q + "merger.norm.weight"] = (hv,)
    specs[q + "merger.norm.bias"] = (hv,)
    specs[q + "merger.linear_fc1.weight"] = (m, m)
    specs[q + "merger.linear_fc1.bias"] = (m,)
    specs[q + "merger.linear_fc2.weight"] = (out, m)
    specs[q + "merger.linear_fc2.bias"] = (out,)
    specs.update(mtp_specs(cfg))
    return sorted(specs.items())


def mtp_specs(cfg: dict) -> dict[str, tuple[int, ...]]:
    """One full-attention block under ``mtp.*``, as the Qwen3.5 checkpoints hold it (transformers drops it)."""
    tc = cfg["text_config"]
    d, f, hd = tc["hidden_size"], tc["intermediate_size"], tc["head_dim"]
    nh, nkv = tc["num_attention_heads"], tc["num_key_value_heads"]
    return {
        "mtp.fc.weight": (d, 2 * d),
        "mtp.pre_fc_norm_embedding.weight": (d,),
        "mtp.pre_fc_norm_hidden.weight": (d,),
        "mtp.norm.weight": (d,),
        "mtp.layers.0.input_layernorm.weight": (d,),
        "mtp.layers.0.post_attention_layernorm.weight": (d,),
        "mtp.layers.0.self_attn.q_proj.weight": (nh * hd * 2, d),
        "mtp.layers.0.self_attn.k_proj.weight": (nkv * hd, d),
        "mtp.layers.0.self_attn.v_proj.weight": (nkv * hd, d),
        "mtp.layers.0.self_attn.o_proj.weight": (d, nh * hd),
        "mtp.layers.0.self_attn.q_norm.weight": (hd,),
        "mtp.layers.0.self_attn.k_norm.weight": (hd,),
        "mtp.layers.0.mlp.gate_proj.weight": (f, d),
        "mtp.layers.0.mlp.up_proj.weight": (f, d),
        "mtp.layers.0.mlp.down_proj.weight": (d, f),
    }


def specs_from_transformers(cfg: dict) -> list[tuple[str, tuple[int, ...]]]:
    """The same list from ``Qwen3_5ForConditionalGeneration`` on the meta device (no memory) + ``mtp.*``."""
    import torch
    from transformers import Qwen3_5Config, Qwen3_5ForConditionalGeneration

    config = Qwen3_5Config(**{k: v for k, v in cfg.items() if k not in ("architectures", "model_type")})
    with torch.device("meta"):
        model = Qwen3_5ForConditionalGeneration(config)
    specs = {k: tuple(v.shape) for k, v in model.state_dict().items() if k != "lm_head.weight"}
    specs.update(mtp_specs(cfg))
    return sorted(specs.items())


class _Bits:
    """Deterministic random bf16 values from a PCG64 raw stream (stable across numpy versions and machines)."""

    def __init__(self, seed: int):
        self.bg = np.random.PCG64(seed)

    def bf16(self, n: int) -> np.ndarray:
        raw = self.bg.random_raw((n + 3) // 4).view(np.uint16)[:n]
        sign = raw & np.uint16(0x8000)
        mant = raw & np.uint16(0x007F)
        exp = (np.uint16(119) + ((raw >> np.uint16(7)) & np.uint16(3))) << np.uint16(7)
        return sign | exp | mant


def write_checkpoint(out: Path, cfg: dict, shard_bytes: int, seed: int = 0, log=print) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    specs = tensor_specs(cfg)
    shards: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    for name, shape in specs:
        nbytes = int(np.prod(shape)) * 2
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, shape))
        size += nbytes
    bits = _Bits(seed)
    weight_map: dict[str, str] = {}
    total = 0
    for k, shard in enumerate(shards):
        sname = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        header: dict = {"__metadata__": {"format": "pt"}}
        off = 0
        for name, shape in shard:
            nbytes = int(np.prod(shape)) * 2
            header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [off, off + nbytes]}
            off += nbytes
            weight_map[name] = sname
        hb = json.dumps(header, separators=(",", ":")).encode()
        hb += b" " * (-len(hb) % 8)
        with open(out / sname, "wb") as fh:
            fh.write(struct.pack("<Q", len(hb)) + hb)
            for _name, shape in shard:
                n = int(np.prod(shape))
                for a in range(0, n, 1 << 25):
                    fh.write(bits.bf16(min(1 << 25, n - a)).tobytes())
        total += off
        log(f"  {sname}: {len(shard)} tensors, {off / 1e9:.2f} GB")
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    (out / "generation_config.json").write_text(
        json.dumps({"bos_token_id": 248044, "eos_token_id": [248046, 248044], "do_sample": True}, indent=2)
        + "\n"
    )
    (out / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "Qwen2Tokenizer"}) + "\n")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--shard-gb", type=float, default=3.0)
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--check", action="store_true", help="Also check the tensor list against transformers.")
    args = ap.parse_args()
    if args.check:
        cfg = config_for(args.layers)
        assert tensor_specs(cfg) == specs_from_transformers(cfg), "tensor list differs from transformers'"
    t = time.perf_counter()
    write_checkpoint(args.out, config_for(args.layers), int(args.shard_gb * 1e9), args.seed)
    size = sum(p.stat().st_size for p in args.out.glob("*.safetensors"))
    print(f"wrote {args.out}: {size / 1e9:.2f} GB in {time.perf_counter() - t:.1f} s")


if __name__ == "__main__":
    main()
