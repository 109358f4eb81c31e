"""Where each architecture family keeps the tensors that write into the residual stream (data, not code)."""

from __future__ import annotations

from dataclasses import dataclass

TARGETS = ("embed_tokens", "attn_out", "mlp_down", "lm_head")
DEFAULT_TARGETS = ("embed_tokens", "attn_out", "mlp_down")

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

