"""Inference-time interventions on Hugging Face transformers models: additive steering and ablation.

``steer`` adds ``alpha * r`` to the residual stream at the output of one decoder block: the additive
intervention that suits symmetric persona axes, which weight orthogonalization cannot express.
``ablate`` projects ``r`` out of the residual stream everywhere, the runtime twin of ``regenerate``: it
projects the input of every block and the output of every residual writer inside it (token mixer, MLP),
which for pre-norm blocks is exactly what orthogonalizing embed / o_proj / out_proj / down_proj does to
the weights, so the two implementations check each other.

Both are context managers that install forward hooks and remove them on exit, also on exceptions. They
work under ``torch.no_grad()`` and ``model.generate`` (hooks fire on every forward, prompt and new tokens).

Layer numbers follow the direction's convention (see DESIGN.md, "Layer numbering"): ``block`` i is the
output of decoder block i (HF ``hidden_states[i + 1]``); ``hidden_states`` i is ``hidden_states[i]``,
whose 0 is the embeddings, which no block outputs, so it cannot be steered.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hubkit.errors import DirectionError, PlanError
from hubkit.formats.directions import DirectionSet, to_block_index

if TYPE_CHECKING:  # torch stays a lazy import: `import hubkit` must not pay for it
    import torch
    from torch import nn

# Where decoder blocks live, most specific first. Qwen3.5's VLM wrapper keeps them under
# model.language_model; a text-only CausalLM under model.
_LAYER_PATHS = (
    "model.language_model.layers",
    "model.language_model.model.layers",
    "language_model.model.layers",
    "language_model.layers",
    "model.text_model.layers",
    "model.layers",
    "model.decoder.layers",
    "model.model.layers",  # PEFT-wrapped CausalLM
    "base_model.model.model.layers",
    "transformer.h",
    "transformer.layers",
    "transformer.blocks",
    "gpt_neox.layers",
    "backbone.layers",
    "decoder.layers",
    "layers",
    "h",
)
# Module-list paths that hold encoder towers, never the text decoder.
_NOT_DECODER = ("vision", "visual", "vit", "image", "audio", "speech", "encoder", "mtp")
# Children of a block whose output is added to the residual stream.
_WRITER_NAMES = (
    "self_attn", "linear_attn", "attn", "attention", "self_attention", "mixer", "token_mixer",
    "mlp", "feed_forward", "ffn", "block_sparse_moe", "moe",
)
_NOT_WRITER = ("norm", "ln", "dropout", "drop", "rotary", "act")

DirectionLike = Any  # torch.Tensor | DirectionSet | numpy array | sequence of floats


def find_decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The model's decoder blocks, in order.

    Known attribute paths first; otherwise the largest homogeneous ``nn.ModuleList`` outside vision/audio
    towers, preferring one whose length is the text config's ``num_hidden_layers``.
    """
    from torch import nn

    for path in _LAYER_PATHS:
        obj: Any = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, nn.ModuleList) and len(obj) > 0:
            return obj

    n_layers = getattr(_text_config(model), "num_hidden_layers", None)
    best: tuple[tuple[bool, int], nn.ModuleList] | None = None
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.ModuleList) or len(mod) == 0:
            continue
        if any(tag in name.lower() for tag in _NOT_DECODER):
            continue
        if len({type(m) for m in mod}) != 1:
            continue
        key = (len(mod) == n_layers, len(mod))
        if best is None or key > best[0]:
            best = (key, mod)
    if best is None:
        raise PlanError(
            f"{type(model).__name__}: no decoder layers found (looked for {', '.join(_LAYER_PATHS[:6])}, ... "
            "and any nn.ModuleList of blocks)"
        )
    return best[1]


def hidden_size(model: nn.Module) -> int | None:
    """The residual-stream width: the text config's hidden_size, else the input embedding width."""
    size = getattr(_text_config(model), "hidden_size", None)
    if isinstance(size, int):
        return size
    get_emb = getattr(model, "get_input_embeddings", None)
    if callable(get_emb):
        try:
            emb = get_emb()
        except (NotImplementedError, AttributeError):
            emb = None
        weight = getattr(emb, "weight", None)
        if weight is not None and weight.dim() == 2:
            return int(weight.shape[1])
    return None


def _text_config(model: nn.Module) -> Any:
    config = getattr(model, "config", None)
    if config is None:
        return None
    get_text = getattr(config, "get_text_config", None)
    if callable(get_text):
        try:
            return get_text()
        except Exception:  # noqa: BLE001 - an odd config must not stop layer discovery
            return config
    return config


def _resolve(
    direction: DirectionLike, layer: int | None, layer_convention: str | None, need_layer: bool
) -> tuple[torch.Tensor, int | None, str]:
    """(vector [d] float32, layer in its convention or None, convention) from any direction-like input."""
    import numpy as np
    import torch

    if isinstance(direction, DirectionSet):
        if layer_convention is not None and layer_convention != direction.layer_convention:
            raise DirectionError(
                f"{direction.source or direction.name}: layers are numbered in the "
                f"'{direction.layer_convention}' convention, not '{layer_convention}'"
            )
        layer = layer if layer is not None else direction.selected_layer
        return direction.vector(layer), layer, direction.layer_convention
    is_seq = isinstance(direction, Sequence) and not isinstance(direction, str)
    if isinstance(direction, np.ndarray) or is_seq:
        direction = torch.as_tensor(np.asarray(direction))
    if not isinstance(direction, torch.Tensor):
        raise DirectionError(
            f"expected a tensor or DirectionSet as the direction, got {type(direction).__name__}")
    vec = direction.detach()
    if vec.dim() != 1 or not vec.is_floating_point():
        raise DirectionError(f"a direction is a floating-point [d] vector, got {vec.dtype} {list(vec.shape)}")
    if need_layer and layer is None:
        raise DirectionError(
            "a bare tensor carries no layer: pass layer= (and layer_convention= if not 'block')")
    return vec.float().cpu(), layer, layer_convention or "block"


def _check_d(model: nn.Module, vec: torch.Tensor) -> None:
    d = hidden_size(model)
    if d is not None and vec.shape[0] != d:
        raise DirectionError(f"direction has d={vec.shape[0]} but {type(model).__name__} has hidden size {d}")


def _first(output: Any) -> torch.Tensor | None:
    import torch

    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    return None


def _replace_first(output: Any, new: torch.Tensor) -> Any:
    if isinstance(output, tuple):
        return (new, *output[1:])
    if isinstance(output, list):
        return [new, *output[1:]]
    return new


class _Cast:
    """A vector cached per (dtype, device), so hooks don't copy it on every forward."""

    def __init__(self, vec: torch.Tensor):
        self.vec = vec
        self._cache: dict[tuple[Any, Any], torch.Tensor] = {}

    def like(self, h: torch.Tensor, dtype: Any = None) -> torch.Tensor:
        key = (dtype or h.dtype, h.device)
        out = self._cache.get(key)
        if out is None:
            out = self._cache[key] = self.vec.to(device=h.device, dtype=key[0])
        return out


@contextmanager
def _hooks(installers: list[Callable[[], Any]]) -> Iterator[None]:
    handles = []
    try:
        for install in installers:
            handles.append(install())
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def steer(
    model: nn.Module,
    direction: DirectionLike,
    layer: int | None = None,
    alpha: float = 1.0,
    *,
    layer_convention: str | None = None,
) -> Iterator[None]:
    """Add ``alpha * r`` to the residual stream at the output of one decoder block, at every position.

    ``direction`` is a ``[d]`` tensor (then ``layer`` is required, numbered in ``layer_convention``,
    default ``block``) or a :class:`DirectionSet` / loaded direction, whose own convention and selected
    layer are used (``layer`` picks another of its layers). ``r`` is added as given, not renormalized, so
    ``alpha`` is in units of the published vector (unit-norm for hubkit-published directions).
    """
    vec, layer, convention = _resolve(direction, layer, layer_convention, need_layer=True)
    assert layer is not None
    _check_d(model, vec)
    blocks = find_decoder_layers(model)
    block = to_block_index(layer, convention)
    if block < 0:
        raise DirectionError(
            f"layer {layer} ({convention} convention) is the embedding output, which no decoder block "
            "outputs; steer at layer 1 or later"
        )
    if block >= len(blocks):
        raise DirectionError(
            f"layer {layer} ({convention} convention) is block {block}, "
            f"but the model has {len(blocks)} blocks"
        )
    delta = _Cast(vec.double() * float(alpha))

    def add(module: nn.Module, args: Any, output: Any) -> Any:
        h = _first(output)
        if h is None:
            return None
        return _replace_first(output, h + delta.like(h))

    with _hooks([lambda: blocks[block].register_forward_hook(add)]):
        yield


@contextmanager
def ablate(
    model: nn.Module,
    direction: DirectionLike,
    layer: int | None = None,
    *,
    layer_convention: str | None = None,
) -> Iterator[None]:
    """Project ``r`` out of the residual stream everywhere, without touching the weights.

    ``direction`` may also be a published run (a Hub repo id, a staged or pulled folder, or a run folder):
    then its regenerate recipe is applied at inference time (``layer_convention`` is then the Hub revision),
    each writer's output losing ``w (y·r) r`` with its block's direction and weight, which gives the
    regenerated model's logits for the ``orthogonalize`` recipe. Row-norm recipes (``pre``, ``preserve``)
    depend on W row by row and are refused: use ``hubkit export lora`` or ``hubkit regenerate``.

    Hooks: every block's input (which covers the embeddings), the output of every residual writer
    inside each block (attention / linear attention / MLP / MoE), every block's output, and the lm_head's
    input when it is tied to the embedding (orthogonalizing a tied embedding edits the lm_head too). That
    is the weight edit of ``regenerate``'s default targets (embed_tokens, attn_out, mlp_down). ``r`` is
    normalized first. ``layer`` only picks which vector of a multi-layer :class:`DirectionSet` to use
    (default: its selected layer); the projection applies at all layers whatever the convention.
    """
    if isinstance(direction, (str, os.PathLike)):  # a published run: its recipe, block by block
        with _ablate_recipe(model, direction, revision=layer_convention):
            yield
        return
    vec, _, _ = _resolve(direction, layer, layer_convention, need_layer=False)
    _check_d(model, vec)
    blocks = find_decoder_layers(model)
    r64 = vec.double()
    r = _Cast(r64 / r64.norm())
    d = int(vec.shape[0])

    def project(h: torch.Tensor) -> torch.Tensor:
        import torch

        if h.shape[-1] != d:
            return h
        work = torch.float64 if h.dtype == torch.float64 else torch.float32
        hw = h.to(work)
        rw = r.like(h, work)
        return (hw - (hw @ rw).unsqueeze(-1) * rw).to(h.dtype)

    def pre(module: nn.Module, args: tuple, kwargs: dict) -> Any:
        if args and _first(args) is not None:
            return (_replace_first(args, project(args[0])), kwargs)
        if "hidden_states" in kwargs:
            return (args, {**kwargs, "hidden_states": project(kwargs["hidden_states"])})
        return None

    def post(module: nn.Module, args: Any, output: Any) -> Any:
        h = _first(output)
        return None if h is None else _replace_first(output, project(h))

    installers: list[Callable[[], Any]] = []
    bare = []
    for i, block in enumerate(blocks):
        installers.append(lambda b=block: b.register_forward_pre_hook(pre, with_kwargs=True))
        writers = _residual_writers(block)
        if not writers:
            bare.append(i)
        installers += [lambda w=w: w.register_forward_hook(post) for w in writers]
        installers.append(lambda b=block: b.register_forward_hook(post))
    tied = _tied_output_embeddings(model)
    if tied is not None:
        # Orthogonalizing a tied embedding also changes the lm_head: W' h = W P h, i.e. the lm_head input
        # projected. Without this the final norm's gain could reintroduce r and the twins would differ.
        installers.append(lambda: tied.register_forward_pre_hook(pre, with_kwargs=True))
    if bare:
        warnings.warn(
            f"ablate: blocks {bare} of {type(model).__name__} have no recognizable attention/MLP children; "
            "projecting only block inputs and outputs (not equivalent to orthogonalized weights)",
            stacklevel=3,
        )
    with _hooks(installers):
        yield


@contextmanager
def _ablate_recipe(model: nn.Module, source: str | os.PathLike, *, revision: str | None = None) -> Iterator[None]:
    import torch

    from hubkit.weights.kernels import unit_vector
    from hubkit.weights.regenerate import load_recipe

    published = load_recipe(Path(source) if Path(source).exists() else str(source), revision=revision)
    recipe = published.recipe
    if not recipe.has_hook_equivalent:
        raise PlanError(f"{published.source}: recipe {recipe.name} (norm {recipe.spec.norm}) depends on each weight "
                        "row's norm, so no hook reproduces it; use `hubkit export lora` or `hubkit regenerate`")
    blocks = find_decoder_layers(model)
    n = len(blocks)
    d = hidden_size(model)
    if d is not None and d != published.d:
        raise DirectionError(f"{published.direction_file}: d={published.d}, the model's hidden size is {d}")
    keys = {b: recipe.source_for_block(b)[0] for b in range(n)}
    vectors = {k: torch.from_numpy(unit_vector(v)) for k, v in recipe.vectors(sorted(set(keys.values()))).items()}
    spec = published.spec

    def remove(u: torch.Tensor, w: float) -> Callable[[torch.Tensor], torch.Tensor]:
        cast = _Cast(u)

        def f(h: torch.Tensor) -> torch.Tensor:
            work = torch.float64 if h.dtype == torch.float64 else torch.float32
            hw, uw = h.to(work), cast.like(h, work)
            return (hw - w * (hw @ uw).unsqueeze(-1) * uw).to(h.dtype)

        return f

    def post(fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> Any:
            h = _first(output)
            return None if h is None else _replace_first(output, fn(h))
        return hook

    def pre(fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> Any:
            if args and _first(args) is not None:
                return (_replace_first(args, fn(args[0])), kwargs)
            return None
        return hook

    edits: list[tuple[nn.Module, bool, Callable[[torch.Tensor], torch.Tensor]]] = []  # (module, on input?, fn)
    for b, block in enumerate(blocks):
        u = vectors[keys[b]]
        for child_name, child in block.named_children():
            if child not in _residual_writers(block):
                continue
            mlp = any(s in child_name.lower() for s in ("mlp", "moe", "ffn", "feed_forward"))
            target = "mlp_down" if mlp else "attn_out"
            w = spec.weight_at(target, b) if target in spec.targets else 0.0
            if w != 0.0:
                edits.append((child, False, remove(u, w)))
    tied = _tied_output_embeddings(model)
    if "embed_tokens" in spec.targets:
        f = remove(vectors[keys[0]], spec.weight_at("embed_tokens", 0))
        edits.append((model.get_input_embeddings(), False, f))
        if tied is not None:  # the tied unembedding changes with the embedding: W' h = W (h − w r rᵀh)
            edits.append((tied, True, f))
    if "lm_head" in spec.targets and tied is None:
        edits.append((model.get_output_embeddings(), True,
                      remove(vectors[keys[n - 1]], spec.weight_at("lm_head", n - 1))))
    installers = [
        (lambda m=m, f=f: m.register_forward_pre_hook(pre(f), with_kwargs=True)) if on_input
        else (lambda m=m, f=f: m.register_forward_hook(post(f)))
        for m, on_input, f in edits
    ]
    with _hooks(installers):
        yield


def _tied_output_embeddings(model: nn.Module) -> nn.Module | None:
    """The lm_head when it shares its weight with the input embedding, else None."""
    get_in = getattr(model, "get_input_embeddings", None)
    get_out = getattr(model, "get_output_embeddings", None)
    if not (callable(get_in) and callable(get_out)):
        return None
    try:
        emb_in, emb_out = get_in(), get_out()
    except (NotImplementedError, AttributeError):
        return None
    w_in, w_out = getattr(emb_in, "weight", None), getattr(emb_out, "weight", None)
    if w_in is None or w_out is None or w_in.shape != w_out.shape:
        return None
    same = w_in is w_out or (w_in.device == w_out.device and w_in.data_ptr() == w_out.data_ptr())
    return emb_out if same else None


def _residual_writers(block: nn.Module) -> list[nn.Module]:
    """Direct children of a block whose output is added to the residual stream (not norms)."""
    writers = []
    for name, child in block.named_children():
        lname, cname = name.lower(), type(child).__name__.lower()
        if "norm" in cname or "dropout" in cname:
            continue
        if any(lname.startswith(t) or lname.endswith(t) for t in _NOT_WRITER):
            continue
        if lname in _WRITER_NAMES or any(True for _ in child.parameters()):
            writers.append(child)
    return writers
