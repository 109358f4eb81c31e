"""Direction tensors: reading every format researchers leave behind, and the canonical safetensors file.

Readers return a :class:`DirectionSet` (``{layer: float32 tensor [d]}`` plus metadata). ``.pt`` files are
read with ``torch.load(weights_only=True)`` only: a file that needs full unpickling is refused, because
a pickle can run code. The canonical file ``vectors/<name>.safetensors`` holds one float32 tensor per
layer named ``layer.<i>`` and string metadata, so downstream users need neither torch.load nor hubkit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hubkit.errors import DirectionError, PickleRefused, first_line
from hubkit.formats.safefiles import load_torch_tensors
from hubkit.formats.safetensors_io import (
    TensorEntry,
    read_safetensors,
    read_tensors,
    safetensors_bytes,
    safetensors_header,
)
from hubkit.formatting import layer_span

if TYPE_CHECKING:  # torch is imported lazily: `hubkit --help` and `validate` without tensors skip it
    import torch

LAYER_CONVENTIONS = ("block", "hidden_states")
DIRECTION_SUFFIXES = (".pt", ".pth", ".safetensors", ".npy")
UNIT_NORM_TOL = 1e-3


@dataclass
class DirectionSet:
    """Per-layer direction vectors of one named direction, in one layer convention."""

    name: str
    layers: dict[int, torch.Tensor]
    layer_convention: str = "block"
    selected_layer: int | None = None
    base_model: str | None = None
    source: str | None = None
    method: str | None = None
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def d(self) -> int:
        return int(next(iter(self.layers.values())).shape[0])

    @property
    def layer_ids(self) -> list[int]:
        return sorted(self.layers)

    @property
    def norms(self) -> dict[int, float]:
        return {i: float(t.double().norm()) for i, t in sorted(self.layers.items())}

    @property
    def unit_norm(self) -> bool:
        return all(abs(n - 1.0) <= UNIT_NORM_TOL for n in self.norms.values())

    def vector(self, layer: int | None = None) -> torch.Tensor:
        """The direction at ``layer`` (default: the selected layer, or the only one)."""
        if layer is None:
            layer = self.selected_layer
        if layer is None:
            if len(self.layers) == 1:
                return next(iter(self.layers.values()))
            raise DirectionError(
                f"{self.source or self.name}: {len(self.layers)} layers and no selected layer; pass layer="
            )
        if layer not in self.layers:
            raise DirectionError(
                f"{self.source or self.name}: no layer {layer} ({self.layer_convention} convention); "
                f"has {layer_span(self.layer_ids, 'none')}"
            )
        return self.layers[layer]

    def metadata(self) -> dict[str, str]:
        """String metadata written into the canonical safetensors header."""
        meta = {
            "format": "hubkit-direction",
            "name": self.name,
            "layer_convention": self.layer_convention,
            "unit_norm": "true" if self.unit_norm else "false",
            "d": str(self.d),
            "layers": ",".join(str(i) for i in self.layer_ids),
        }
        if self.selected_layer is not None:
            meta["selected_layer"] = str(self.selected_layer)
        if self.base_model:
            meta["base_model"] = self.base_model
        if self.source:
            meta["source"] = self.source
        if self.method:
            meta["method"] = self.method
        meta.update(self.extra)
        return meta


def read_direction_file(
    path: str | Path,
    *,
    name: str | None = None,
    layer: int | None = None,
    layer_convention: str = "block",
    display: str | None = None,
) -> DirectionSet:
    """Read a direction from .pt / .safetensors / .npy into a validated :class:`DirectionSet`.

    Accepted shapes: ``[d]`` (needs ``layer``), ``[L, d]`` (row i is layer i), ``{layer: [d]}`` and a list
    of ``[d]`` tensors. ``display`` is the path shown in errors (the run-relative path).
    """
    path = Path(path)
    where = display or str(path)
    obj, meta = _read_raw(path, where)
    if meta.get("format") == "hubkit-direction":
        layer_convention = meta.get("layer_convention", layer_convention)
        if layer is None and meta.get("selected_layer"):
            layer = _layer_key(meta["selected_layer"], where)
    layers = _to_layers(obj, layer, where)
    _check_values(layers, where)
    ds = DirectionSet(
        name=name or meta.get("name") or path.stem,
        layers=layers,
        layer_convention=layer_convention,
        selected_layer=layer if layer is not None else (next(iter(layers)) if len(layers) == 1 else None),
        base_model=meta.get("base_model"),
        source=meta.get("source") or where,
        method=meta.get("method"),
    )
    if ds.selected_layer is not None and ds.selected_layer not in layers:
        raise DirectionError(
            f"{where}: selected layer {ds.selected_layer} ({layer_convention}) not among the file's layers "
            f"{layer_span(ds.layer_ids, 'none')}"
        )
    return ds


def inspect_direction(path: str | Path, display: str | None = None) -> tuple[list[int] | None, int]:
    """Layers and d of a direction file without choosing a layer (``None``: one bare [d] vector)."""
    where = display or str(path)
    obj, _ = _read_raw(Path(path), where)
    if not isinstance(obj, (dict, list, tuple)) and getattr(obj, "ndim", 0) == 1:
        layers = _to_layers(obj, 0, where)
        _check_values(layers, where)
        return None, int(layers[0].shape[0])
    layers = _to_layers(obj, None, where)
    _check_values(layers, where)
    return sorted(layers), int(next(iter(layers.values())).shape[0])


def _read_raw(path: Path, where: str) -> tuple[Any, dict[str, str]]:
    """The file's object (tensor, dict, list or array) and safetensors metadata; never unpickles."""
    import torch

    if not path.is_file():
        raise DirectionError(f"{where}: file not found")
    suffix = path.suffix.lower()
    if suffix in (".pt", ".pth"):
        return _load_pt(path, where), {}
    if suffix == ".safetensors":
        return _load_safetensors(path, where)
    if suffix == ".npy":
        import numpy as np

        try:
            arr = np.load(path, allow_pickle=False)
        except ValueError as e:
            raise PickleRefused(f"{where}: .npy holds Python objects (needs allow_pickle); refused") from e
        except Exception as e:
            raise DirectionError(f"{where}: not a readable .npy file ({first_line(e)})") from e
        try:
            return torch.from_numpy(np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("="))), {}
        except (TypeError, ValueError) as e:
            raise DirectionError(f"{where}: .npy of dtype {arr.dtype} is not a float array") from e
    raise DirectionError(f"{where}: unsupported direction format '{suffix}' (use .pt, .safetensors or .npy)")


def _load_pt(path: Path, where: str) -> Any:
    return load_torch_tensors(path, where, error=DirectionError, holds="tensors, dicts and lists of tensors")


def _load_safetensors(path: Path, where: str) -> tuple[Any, dict[str, str]]:
    meta, arrays, _ = read_safetensors(path, where, error=DirectionError)
    tensors = {k: arrays[k] for k in sorted(arrays)}
    if len(tensors) == 1 and "layer." not in next(iter(tensors)):
        return next(iter(tensors.values())), meta
    return tensors, meta


def _layer_key(key: Any, where: str) -> int:
    if isinstance(key, int):
        return key
    s = str(key)
    def ok(t: str) -> bool:
        t = t[1:] if t.startswith("-") else t  # one sign at most: int() refuses '--5'
        return t.isascii() and t.isdigit() and len(t) < 10
    for prefix in ("layer.", "layer_", "layers.", "layer", "l", "L"):
        if s.startswith(prefix) and ok(s[len(prefix) :]):
            return int(s[len(prefix) :])
    if ok(s):
        return int(s)
    raise DirectionError(f"{where}: key '{s}' is not a layer index (use ints or 'layer.<i>')")


def _to_layers(obj: Any, layer: int | None, where: str) -> dict[int, torch.Tensor]:

    if isinstance(obj, dict):
        if not obj:
            raise DirectionError(f"{where}: empty dict, no direction")
        out: dict[int, Any] = {}
        keys: dict[int, Any] = {}
        for k, v in obj.items():
            i = _layer_key(k, where)
            if i in keys:  # 22 and "layer.22": one of the two vectors would silently win
                raise DirectionError(f"{where}: keys {keys[i]!r} and {k!r} both name layer {i}")
            keys[i] = k
            t = _as_tensor(v, f"{where}[{k!r}]")
            if t.dim() != 1:
                raise DirectionError(f"{where}[{k!r}]: expected a 1-D tensor [d], got shape {list(t.shape)}")
            out[i] = t
        return dict(sorted(out.items()))
    if isinstance(obj, (list, tuple)):
        if not obj:
            raise DirectionError(f"{where}: empty list, no direction")
        out = {}
        for i, v in enumerate(obj):
            t = _as_tensor(v, f"{where}[{i}]")
            if t.dim() != 1:
                raise DirectionError(f"{where}[{i}]: expected a 1-D tensor [d], got shape {list(t.shape)}")
            out[i] = t
        return out
    t = _as_tensor(obj, where)
    if t.dim() == 1:
        if layer is None:
            raise DirectionError(f"{where}: a single [d] vector needs its layer (set 'layer:' in hubkit.yaml)")
        return {int(layer): t}
    if t.dim() == 2 and t.shape[0] > 0:
        return {i: t[i] for i in range(t.shape[0])}
    raise DirectionError(f"{where}: expected shape [d] or [layers, d], got {list(t.shape)}")


def _as_tensor(v: Any, where: str) -> torch.Tensor:
    import numpy as np
    import torch

    if isinstance(v, np.ndarray):
        v = torch.from_numpy(v)
    if not isinstance(v, torch.Tensor):
        raise DirectionError(f"{where}: expected a tensor, got {type(v).__name__}")
    if not (v.is_floating_point()):
        raise DirectionError(f"{where}: expected floating point values, got {v.dtype}")
    if v.layout != torch.strided or v.device.type != "cpu" or v.is_nested or v.numel() > 1 << 32:
        raise DirectionError(f"{where}: expected a dense CPU tensor, got {v.layout} on {v.device.type}")
    return v.detach().to(torch.float32).contiguous().clone()


def _check_values(layers: dict[int, Any], where: str) -> None:
    """Same d everywhere, finite, non-zero, non-negative layer ids; torch tensors or numpy vectors."""
    import numpy as np

    _check_same_d({i: int(t.shape[0]) for i, t in layers.items()}, where)
    for i, t in layers.items():
        v = np.asarray(t.detach().to("cpu").double().numpy() if hasattr(t, "detach") else t, dtype=np.float64)
        if not np.isfinite(v).all():
            raise DirectionError(f"{where}: layer {i} has non-finite values (NaN or inf)")
        if not (v != 0).any():
            raise DirectionError(f"{where}: layer {i} is the zero vector")
        if i < 0:
            raise DirectionError(f"{where}: negative layer index {i}")


def _check_same_d(dims: dict[int, int], where: str) -> None:
    if len(set(dims.values())) > 1:
        by_d: dict[int, int] = {}
        for i, d in sorted(dims.items()):
            by_d.setdefault(d, i)
        parts = ", ".join(f"d={d} (layer {i})" for d, i in sorted(by_d.items()))
        raise DirectionError(f"{where}: mixed d across layers: {parts}")


def canonical_bytes(ds: DirectionSet) -> bytes:
    """The canonical file's bytes: float32 ``layer.<i>`` tensors, data in layer order, and the string metadata,
    byte for byte the same every time (the layout: :func:`~hubkit.formats.safetensors_io.safetensors_bytes`)."""
    import torch

    tensors = {f"layer.{i}": ds.layers[i].detach().to("cpu", torch.float32).contiguous().numpy().reshape(-1)
               for i in ds.layer_ids}
    return safetensors_bytes(tensors, ds.metadata(), in_order=True)


def write_canonical(ds: DirectionSet, path: str | Path) -> None:
    """Write ``vectors/<name>.safetensors``: float32 ``layer.<i>`` tensors + string metadata."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(canonical_bytes(ds))


def _canonical_header(path: str | Path, where: str) -> tuple[dict[str, str], dict[int, TensorEntry], int]:
    """The format's checks (:func:`~hubkit.formats.safetensors_io.safetensors_header`), then a direction file's:
    one ``[d]`` vector per layer key, no layer twice, at least one, one d."""
    meta, tensors, start = safetensors_header(path, where, error=DirectionError)
    entries: dict[int, TensorEntry] = {}
    for key, t in tensors.items():
        if len(t.shape) != 1 or not 0 < t.shape[0] < 1 << 40:
            raise DirectionError(f"{where}: tensor {key!r} has shape {list(t.shape)}, a direction is one [d] vector a layer")
        i = _layer_key(key, where)
        if i in entries:
            raise DirectionError(f"{where}: keys {entries[i].key!r} and {key!r} both name layer {i}")
        entries[i] = t
    if not entries:
        raise DirectionError(f"{where}: no tensors")
    _check_same_d({i: t.shape[0] for i, t in entries.items()}, where)
    return meta, dict(sorted(entries.items())), start


def canonical_layout(path: str | Path, display: str | None = None) -> tuple[dict[str, str], dict[int, int]]:
    """A canonical file's metadata and ``{layer: d}``, from its header alone.

    Needs no torch: ``regenerate`` checks a recipe against the base and starts moving bytes first, and reads
    the vector itself (:func:`canonical_vector`) only when the compute starts.
    """
    meta, entries, _ = _canonical_header(path, display or str(path))
    return meta, {i: t.shape[0] for i, t in entries.items()}


def _canonical_arrays(path: str | Path, where: str, only: int | None = None) -> tuple[dict[str, str], dict[int, Any]]:
    """A canonical file's metadata and its layers (or layer ``only``) as float32 numpy vectors, checked.

    The one reader of the format, torch-free: :func:`canonical_vector` (what a CPU ``regenerate`` needs) and
    :func:`read_canonical` (a :class:`DirectionSet`) both go through it.
    """
    meta, entries, start = _canonical_header(path, where)
    if only is not None:
        if only not in entries:
            raise DirectionError(f"{where}: no layer {only}; has {layer_span(list(entries), 'none')}")
        entries = {only: entries[only]}
    vectors = read_tensors(path, where, entries.values(), start, error=DirectionError)
    arrays = {i: vectors[t.key] for i, t in entries.items()}
    _check_values(arrays, where)
    return meta, arrays


def canonical_vector(path: str | Path, layer: int, display: str | None = None) -> Any:
    """One layer of a canonical file as a float32 numpy vector, checked like :func:`read_canonical` checks
    every layer; torch-free, so a CPU ``regenerate`` never imports torch."""
    return _canonical_arrays(path, display or str(path), only=layer)[1][layer]


def read_canonical(path: str | Path, display: str | None = None) -> DirectionSet:
    """Read a canonical direction file back (the format :func:`write_canonical` writes)."""
    import torch

    meta, arrays = _canonical_arrays(path, display or str(path))
    layers = {i: torch.from_numpy(v) for i, v in arrays.items()}
    if meta.get("selected_layer") not in (None, "") and _layer_key(meta["selected_layer"], display or str(path)) not in layers:
        raise DirectionError(f"{display or path}: selected layer not among the file's layers")
    known = {"format", "name", "layer_convention", "unit_norm", "d", "layers", "selected_layer", "base_model",
             "source", "method"}
    sel = meta.get("selected_layer")
    sel = _layer_key(sel, display or str(path)) if sel not in (None, "") else None
    return DirectionSet(
        name=meta.get("name") or Path(path).stem,
        layers=layers,
        layer_convention=meta.get("layer_convention", "block"),
        selected_layer=sel if sel is not None else (next(iter(layers)) if len(layers) == 1 else None),
        base_model=meta.get("base_model"),
        source=meta.get("source"),
        method=meta.get("method"),
        extra={k: v for k, v in meta.items() if k not in known},
    )


def to_block_index(layer: int, convention: str) -> int:
    """Map a layer number in ``convention`` to the decoder-block index whose output it is.

    ``block`` i is the output of block i; ``hidden_states`` i is ``hidden_states[i]`` = output of block i-1
    (``hidden_states[0]`` is the embeddings, which no block outputs: -1).
    """
    if convention == "block":
        return layer
    if convention == "hidden_states":
        return layer - 1
    raise DirectionError(f"unknown layer convention '{convention}' (use block or hidden_states)")
