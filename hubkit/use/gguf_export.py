"""Export a published direction as a llama.cpp control vector (GGUF).

The file is what llama.cpp's ``--control-vector`` / ``--control-vector-scaled`` loads:
``general.architecture = "controlvector"``, ``controlvector.model_hint``, ``controlvector.layer_count``
and one float32 1-D tensor ``direction.N`` per steered layer.

Layer numbering, confirmed by reading llama.cpp (common.cpp ``common_control_vector_load_one`` and
llama-adapter.cpp ``llama_adapter_cvec::apply``/``apply_to``): the loader writes ``direction.N`` at offset
``n_embd * (N - 1)`` of a flat buffer and rejects N = 0 ("invalid (zero) direction tensor layer index");
the applier fills ``tensors[il]`` from offset ``n_embd * (il - 1)`` for ``il >= 1`` (``tensors[0]`` is
always null) and adds ``tensors[il]`` to ``l_out`` of the 0-based block ``il``. So ``direction.N`` is
added to the **output of block N**: hubkit ``block`` i maps to ``direction.i`` and ``hidden_states`` i to
``direction.(i - 1)``. Block 0's output (``hidden_states`` 1) and the embeddings (``hidden_states`` 0)
cannot be represented, and asking for them is an error rather than a silently dropped layer.
"""

from __future__ import annotations

import math
from pathlib import Path

from hubkit.errors import PlanError
from hubkit.formats.atomic import staging_file
from hubkit.formats.directions import to_block_index
from hubkit.formatting import layer_span
from hubkit.use.loading import LoadedDirections, load_directions

ARCH = "controlvector"


def gguf_layer(layer: int, convention: str) -> int:
    """The llama.cpp ``direction.N`` index for ``layer`` in ``convention``; PlanError if unrepresentable."""
    n = to_block_index(layer, convention)
    if n < 1:
        what = "the embeddings" if n < 0 else "the output of block 0"
        raise PlanError(
            f"layer {layer} ({convention} convention) is {what}, which a llama.cpp control vector can't "
            "steer (direction.N is added to block N's output and llama.cpp rejects direction.0)"
        )
    return n


FLOAT32_MAX = 3.4028234663852886e38
#: no model has more blocks than this: a wider range is a typo (and would be expanded in memory)
MAX_LAYER_SPAN = 10_000


def parse_layers(spec: str) -> list[int]:
    """``"10-20"``, ``"22"``, ``"4,8,12-14"`` → sorted layer list (inclusive ranges)."""
    out: set[int] = set()
    try:
        for part in spec.split(","):
            part = part.strip()
            if "-" in part:
                lo, hi = part.split("-", 1)
                a, b = int(lo), int(hi)
                if a < 0 or b < a or b - a > MAX_LAYER_SPAN:
                    raise ValueError
                out.update(range(a, b + 1))
            elif int(part) >= 0:
                out.add(int(part))
            else:
                raise ValueError
    except ValueError:
        raise PlanError(f"--layers '{spec}': use N, A-B or a comma list of those (e.g. 10-20)") from None
    return sorted(out)


def export_gguf(
    repo_or_dir: str | Path | LoadedDirections,
    out: str | Path,
    layers: list[int] | str | None = None,
    scale: float = 1.0,
    name: str | None = None,
    revision: str | None = None,
) -> Path:
    """Write a llama.cpp control vector for one direction and return its path.

    ``layers`` are in the run's layer convention (as hubkit shows them); the default is the run's
    selected layer, which is what the card recommends steering at; several layers add the direction at
    each of them. Values are ``scale * r``; llama.cpp then multiplies by the ``--control-vector-scaled``
    factor.
    """
    import gguf
    import numpy as np

    if not (math.isfinite(scale) and abs(scale) <= FLOAT32_MAX):
        raise PlanError(f"--scale {scale}: not a finite float32 number")
    ds = repo_or_dir if isinstance(repo_or_dir, LoadedDirections) else load_directions(
        repo_or_dir, name=name, revision=revision)
    if isinstance(layers, str):
        layers = parse_layers(layers)
    where = f"{ds.name} ({ds.repo_id or ds.path})"
    if layers is None:
        if ds.selected_layer is None:
            raise PlanError(f"{where}: no selected layer; pass --layers (e.g. --layers "
                            f"{ds.layer_ids[0]}-{ds.layer_ids[-1]})")
        wanted = [ds.selected_layer]
    else:
        wanted = sorted(set(layers))
    if not wanted:
        raise PlanError(f"{where}: no layers to export")
    missing = [i for i in wanted if i not in ds.layers]
    if missing:
        raise PlanError(f"{where}: no layer {layer_span(missing, 'none')} ({ds.layer_convention} convention); "
                        f"has {layer_span(ds.layer_ids, 'none')}")
    mapping = {i: gguf_layer(i, ds.layer_convention) for i in wanted}

    out = Path(out)
    with staging_file(out) as tmp:
        writer = gguf.GGUFWriter(tmp, ARCH)  # writes general.architecture
        writer.add_string(f"{ARCH}.model_hint", ds.base_model or "unknown")
        writer.add_uint32(f"{ARCH}.layer_count", len(mapping))
        writer.add_string("hubkit.direction", ds.name)
        writer.add_string("hubkit.layer_convention", ds.layer_convention)
        writer.add_string("hubkit.layers", ",".join(str(i) for i in wanted))
        writer.add_float32("hubkit.scale", float(scale))
        if ds.repo_id:
            writer.add_string("hubkit.source", ds.repo_id)
        if ds.commit:
            writer.add_string("hubkit.source_commit", ds.commit)
        for layer, n in mapping.items():
            vec = (ds.layers[layer].double() * float(scale)).float().numpy().astype(np.float32)
            if not np.isfinite(vec).all():
                raise PlanError(f"--scale {scale}: direction.{n} overflows float32")
            writer.add_tensor(f"direction.{n}", vec)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return out


def llama_cpp_usage(gguf_name: str, strength: float = 1.0, layers: list[int] | None = None) -> str:
    """The llama.cpp command line a card's quick use shows for an exported control vector.

    ``layers`` are llama.cpp ``direction.N`` indices (block indices), used for the optional range flag.
    """
    line = f"llama-cli -m BASE_MODEL.gguf --control-vector-scaled {gguf_name}:{strength:g}"
    if layers:
        line += f" --control-vector-layer-range {min(layers)} {max(layers)}"
    return line


def gguf_summary(path: str | Path) -> str:
    """One line describing a written control vector (read back from the file, so it shows what is there)."""
    from gguf import GGUFReader

    reader = GGUFReader(path)

    def field(key: str) -> str:
        f = reader.get_field(key)
        return str(f.contents()) if f is not None else "?"

    ids = sorted(int(t.name.split(".", 1)[1]) for t in reader.tensors if t.name.startswith("direction."))
    path = Path(path)
    return (f"wrote {path}: {field('hubkit.direction')} layers {field('hubkit.layers')} "
            f"({field('hubkit.layer_convention')}) as direction.{layer_span(ids, 'none')}, "
            f"d={reader.tensors[0].n_elements}; "
            f"use: {llama_cpp_usage(path.name, 1.0, ids)}")
