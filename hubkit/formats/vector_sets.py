"""Vector sets (named vectors per layer: personas, traits, features), read safely and written canonically.

Input shapes a run may leave behind (``file:`` in a ``vector_sets`` entry):

* ``.pt`` dict ``{member: tensor [n_layers, d]}`` (members in the dict's order, unless ``members:`` reorders);
* ``.pt`` / ``.npy`` tensor ``[n_members, n_layers, d]`` together with ``members:`` naming the rows;
* ``.safetensors`` with one ``[d]`` tensor per ``<member>.layer.<i>`` (the canonical file is one of these);
* a folder of ``<member>.pt`` (or ``.npy``) files, each ``[n_layers, d]``.

``.pt`` files go through ``torch.load(weights_only=True)`` only; a file that needs full unpickling is refused
(:class:`~hubkit.errors.PickleRefused`). Safetensors are parsed by hand (bounded header, checked offsets), so
reading a canonical file needs neither torch nor the safetensors library.

The canonical file ``vectors/<set>.safetensors`` holds float32 ``<member>.layer.<i>`` tensors exactly as given
(never normalised) and string metadata (see :func:`metadata`); :func:`canonical_bytes` writes it byte for byte
the same way every time.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hubkit.errors import DirectionError, PickleRefused, first_line
from hubkit.formats.hashing import sha256_file
from hubkit.formats.safefiles import load_torch_tensors
from hubkit.formats.safetensors_io import read_safetensors, safetensors_bytes

if TYPE_CHECKING:
    import torch

FORMAT = "hubkit-vector-set"
FORMAT_VERSION = "1"
LAYER_CONVENTIONS = ("block", "hidden_states")
TENSOR_SUFFIXES = (".pt", ".pth", ".npy")
MAX_NAME_LEN = 128
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_KEY = re.compile(r"^(?P<member>.+)\.layer\.(?P<layer>[0-9]+)$")


def _fail(where: str, place: str | None, problem: str) -> DirectionError:
    return DirectionError(f"{where}: {place}: {problem}" if place else f"{where}: {problem}")


def check_name(name: Any, where: str, what: str = "member") -> str:
    """A member or set name usable as a tensor key prefix and a file name: ``[A-Za-z0-9_.-]+``, no ``..``,
    not starting with ``.`` (hidden files), at most 128 characters."""
    if not isinstance(name, str):
        raise _fail(where, None, f"{what} name {name!r} is not a string")
    if (not _NAME.match(name) or ".." in name or name.startswith(".") or len(name) > MAX_NAME_LEN):
        raise _fail(where, None, f"{what} name {name!r} is not safe for tensor keys and file names "
                    "(use [A-Za-z0-9_.-], no '..', no leading '.', at most 128 characters)")
    return name


@dataclass
class VectorSet:
    """Named vectors ``[n_layers, d]`` (rows are ``layers``, in ``layer_convention``), float32, as given."""

    name: str
    members: list[str]
    layers: list[int]
    arrays: dict[str, np.ndarray]  # member -> float32 [n_layers, d]
    layer_convention: str = "hidden_states"
    labels: dict[str, Any] = field(default_factory=dict)
    source: str | None = None

    @property
    def d(self) -> int:
        return int(self.arrays[self.members[0]].shape[1])

    def __len__(self) -> int:
        return len(self.members)

    def __contains__(self, member: object) -> bool:
        return member in self.arrays

    def __getitem__(self, member: str) -> torch.Tensor:
        """The member's float32 tensor [n_layers, d] (a copy: the set stays as published)."""
        import torch

        if member not in self.arrays:
            raise KeyError(f"{self.name}: no member '{member}'")
        return torch.from_numpy(self.arrays[member].copy())

    def vector(self, member: str, layer: int) -> np.ndarray:
        """One member's float32 vector at ``layer`` (a layer number, not a row index)."""
        if layer not in self.layers:
            raise KeyError(f"{self.name}: no layer {layer} ({self.layer_convention}); has {self.layers}")
        return self.arrays[member][self.layers.index(layer)]

    def direction(self, member: str) -> Any:
        """One member as a :class:`~hubkit.formats.directions.DirectionSet` (its layers, this set's convention), so
        ``hubkit.steer(model, vs.direction("villain"), layer=20, alpha=4)`` steers along a persona."""

        from hubkit.formats.directions import DirectionSet

        rows = self[member]
        return DirectionSet(f"{self.name}.{member}", {layer: rows[i] for i, layer in enumerate(self.layers)},
                            layer_convention=self.layer_convention)

    def float64(self) -> dict[str, np.ndarray]:
        """``{member: float64 [n_layers, d]}`` in member order: what :mod:`geometry` takes."""
        return {m: self.arrays[m].astype(np.float64) for m in self.members}

    def metadata(self) -> dict[str, str]:
        """Safetensors metadata: strings only; members, layers and labels as compact JSON."""
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "members": _json(self.members),
            "layers": _json(self.layers),
            "layer_convention": self.layer_convention,
            "d": str(self.d),
            "labels": _json(dict(sorted(self.labels.items()))),
        }
        if self.source:
            meta["source"] = self.source
        return meta


def _json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


# --------------------------------------------------------------------------- validation


def _check_labels(labels: Any, where: str) -> dict[str, Any]:
    if labels is None:
        return {}
    if not isinstance(labels, Mapping):
        raise _fail(where, "labels", f"must be a mapping, got {type(labels).__name__}")
    out: dict[str, Any] = {}
    for k, v in labels.items():
        if not isinstance(k, str) or not k:
            raise _fail(where, "labels", f"key {k!r} is not a non-empty string")
        if v is not None and not isinstance(v, (str, int, float, bool)):
            raise _fail(where, f"labels.{k}", f"must be a string, number or boolean, got {type(v).__name__}")
        if isinstance(v, float) and not np.isfinite(v):
            raise _fail(where, f"labels.{k}", "must be finite")
        out[k] = v
    return out


def _check_layers(layers: Any, where: str) -> list[int]:
    if not isinstance(layers, (list, tuple)) or not layers:
        raise _fail(where, "layers", "must be a non-empty list of layer numbers")
    for i in layers:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or i < 0:
            raise _fail(where, "layers", f"{i!r} is not a non-negative integer")
    out = [int(i) for i in layers]
    dup = sorted({i for i in out if out.count(i) > 1})
    if dup:
        raise _fail(where, "layers", f"layer {dup[0]} listed twice")
    return out


def _check_members(members: Sequence[Any], where: str) -> list[str]:
    seen: set[str] = set()
    for m in members:
        check_name(m, where)
        if m in seen:
            raise _fail(where, f"member '{m}'", "listed twice (duplicate members are refused)")
        seen.add(m)
    if not members:
        raise _fail(where, None, "no members")
    return list(members)


def build_vector_set(name: str, rows: Mapping[str, Any], layers: Sequence[int], *, where: str,
                     layer_convention: str = "hidden_states", labels: Mapping[str, Any] | None = None,
                     source: str | None = None) -> VectorSet:
    """Validate ``{member: [n_layers, d]}`` (numpy or torch) into a :class:`VectorSet`.

    Checks: safe names, no duplicates, rows == len(layers), one d, floating point, finite, no zero row (a zero
    vector has no cosine). Layers are stored sorted with their rows, so equal sets give equal bytes.
    """
    check_name(name, where, "set")
    if layer_convention not in LAYER_CONVENTIONS:
        raise _fail(where, "layer_convention",
                    f"'{layer_convention}' is not one of {' | '.join(LAYER_CONVENTIONS)}")
    layers_l = _check_layers(list(layers), where)
    members = _check_members(list(rows), where)
    order = sorted(range(len(layers_l)), key=lambda k: layers_l[k])
    arrays: dict[str, np.ndarray] = {}
    d: tuple[int, str] | None = None
    for m in members:
        place = f"member '{m}'"
        a = _as_float32(rows[m], where, place)
        if a.ndim != 2:
            raise _fail(where, place,
                        f"expected [n_layers, d] = [{len(layers_l)}, d], got shape {list(a.shape)}")
        if a.shape[0] != len(layers_l):
            raise _fail(where, place, f"{a.shape[0]} rows but {len(layers_l)} layers declared {layers_l}")
        if d is None:
            d = (a.shape[1], m)
        elif a.shape[1] != d[0]:
            raise _fail(where, place, f"d={a.shape[1]}, but member '{d[1]}' has d={d[0]}")
        for k, layer in enumerate(layers_l):
            row = a[k]
            if not np.isfinite(row).all():
                raise _fail(where, f"{place} layer {layer} (row {k})", "non-finite values (NaN or inf)")
            if not row.any():
                raise _fail(where, f"{place} layer {layer} (row {k})", "the zero vector (no direction)")
        arrays[m] = np.ascontiguousarray(a[order])
    if d is None or d[0] == 0:
        raise _fail(where, None, "vectors have d=0")
    return VectorSet(name, members, sorted(layers_l), arrays, layer_convention, _check_labels(labels, where),
                     source)


def _as_float32(v: Any, where: str, place: str) -> np.ndarray:
    if hasattr(v, "detach"):  # a torch tensor
        if not v.is_floating_point():
            raise _fail(where, place, f"expected floating point values, got {v.dtype}")
        import torch

        return v.detach().to("cpu", torch.float32).contiguous().numpy().copy()
    if isinstance(v, np.ndarray):
        if v.dtype.kind != "f":
            raise _fail(where, place, f"expected floating point values, got {v.dtype}")
        return np.array(v, dtype=np.float32)
    raise _fail(where, place, f"expected a tensor, got {type(v).__name__}")


# --------------------------------------------------------------------------- readers


def read_vector_set(path: str | Path, *, name: str, layers: Sequence[int] | None = None,
                    members: Sequence[str] | None = None, layer_convention: str = "hidden_states",
                    labels: Mapping[str, Any] | None = None, display: str | None = None) -> VectorSet:
    """Read any of the four input shapes (module docstring) into a validated :class:`VectorSet`.

    ``display`` is the run-relative path shown in errors and recorded as ``source``. ``layers`` is required
    except for safetensors files (their keys carry the layer numbers; if given, they must agree).
    ``members`` names the rows of a ``[n_members, n_layers, d]`` tensor; for the other shapes it must be the
    same set of members and fixes their order.
    """
    path = Path(path)
    where = display or str(path)
    if members is not None:
        members = _check_members(list(members), where)
    if path.is_dir():
        rows = _read_folder(path, where, members)
    elif not path.is_file():
        raise _fail(where, None, "file not found")
    elif path.suffix.lower() == ".safetensors":
        rows, file_layers, meta = _read_safetensors_rows(path, where)
        if layers is not None and sorted(_check_layers(list(layers), where)) != file_layers:
            raise _fail(where, "layers", f"declared {sorted(layers)} but the file has layers {file_layers}")
        layers = file_layers
        if members is None and meta.get("format") == FORMAT:
            members = _check_members(_meta_json(meta, "members", where, list), where)
        if members is None:
            members = sorted(rows)
        file_conv = meta.get("layer_convention") if meta.get("format") == FORMAT else None
        if file_conv is not None and file_conv != layer_convention:
            raise _fail(where, "layer_convention",
                        f"the file says '{file_conv}', the manifest '{layer_convention}'")
    elif path.suffix.lower() in TENSOR_SUFFIXES:
        obj = _load_tensor_file(path, where)
        rows = _rows_from_object(obj, where, members)
    else:
        raise _fail(where, None, f"unsupported vector-set format '{path.suffix}' "
                    "(use .pt, .npy, .safetensors or a folder of <member>.pt)")
    if layers is None:
        raise _fail(where, "layers", "required: the rows of the file are layers, and only you know which")
    if members is not None:
        _same_members(members, rows, where)
        rows = {m: rows[m] for m in members}
    return build_vector_set(name, rows, layers, where=where, layer_convention=layer_convention,
                            labels=labels, source=display)


def _same_members(members: Sequence[str], rows: Mapping[str, Any], where: str) -> None:
    missing = [m for m in members if m not in rows]
    extra = [m for m in rows if m not in members]
    if missing or extra:
        raise _fail(where, "members", f"declared members and the file's differ (not in the file: "
                    f"{', '.join(missing) or '-'}; not declared: {', '.join(map(str, extra)) or '-'})")


def _rows_from_object(obj: Any, where: str, members: Sequence[str] | None) -> dict[str, Any]:
    if isinstance(obj, Mapping):
        if not obj:
            raise _fail(where, None, "empty dict, no members")
        for k in obj:
            if not isinstance(k, str):
                raise _fail(where, None,
                            f"key {k!r} is not a member name (a dict must map names to [n_layers, d])")
            check_name(k, where)
        return dict(obj)
    if isinstance(obj, (list, tuple)):
        raise _fail(where, None,
                    "a list has no member names; save a {member: tensor} dict or a tensor with members:")
    shape = list(getattr(obj, "shape", []))
    if len(shape) != 3:
        raise _fail(where, None, f"expected {{member: [n_layers, d]}} or a [n_members, n_layers, d] tensor, "
                    f"got {type(obj).__name__} of shape {shape}")
    if members is None:
        raise _fail(where, "members",
                    f"a [n_members, n_layers, d] = {shape} tensor needs members: naming its rows")
    if shape[0] != len(members):
        raise _fail(where, "members", f"{len(members)} members declared but the tensor has {shape[0]} rows")
    return {m: obj[i] for i, m in enumerate(members)}


def _read_folder(path: Path, where: str, members: Sequence[str] | None) -> dict[str, Any]:
    files: dict[str, Path] = {}
    for f in sorted(path.iterdir()):
        if f.name.startswith(".") or not f.is_file() or f.suffix.lower() not in TENSOR_SUFFIXES:
            continue
        member = f.stem
        fwhere = f"{where}/{f.name}"
        check_name(member, fwhere)
        if member in files:
            raise _fail(where, f"member '{member}'", f"two files: {files[member].name} and {f.name}")
        files[member] = f
    if not files:
        raise _fail(where, None, "folder holds no <member>.pt or <member>.npy files")
    order = list(members) if members is not None else sorted(files)
    _same_members(order, files, where)
    rows = {}
    for m in order:
        fwhere = f"{where}/{files[m].name}"
        obj = _load_tensor_file(files[m], fwhere)
        if isinstance(obj, (Mapping, list, tuple)):
            raise _fail(fwhere, None, f"expected one tensor [n_layers, d], got {type(obj).__name__}")
        rows[m] = obj
    return rows


def _load_tensor_file(path: Path, where: str) -> Any:
    if path.suffix.lower() == ".npy":
        try:
            return np.load(path, allow_pickle=False)
        except ValueError as e:
            raise PickleRefused(f"{where}: .npy holds Python objects (needs allow_pickle); refused") from e
        except Exception as e:
            raise _fail(where, None, f"not a readable .npy file ({first_line(e)})") from e
    return _load_pt(path, where)


def _load_pt(path: Path, where: str) -> Any:
    return load_torch_tensors(path, where, error=DirectionError, holds="tensors and dicts of tensors")


# --------------------------------------------------------------------------- safetensors by hand


def _read_safetensors_rows(path: Path, where: str) -> tuple[dict[str, np.ndarray], list[int], dict[str, str]]:
    """``<member>.layer.<i>`` tensors -> ``{member: [n_layers, d]}`` with rows in ascending layer order."""
    meta, tensors, _ = read_safetensors(path, where, error=DirectionError)
    per: dict[str, dict[int, np.ndarray]] = {}
    for key, arr in tensors.items():
        match = _KEY.match(key)
        if not match:
            raise _fail(where, f"tensor '{key}'", "name is not <member>.layer.<i>")
        if arr.ndim != 1:
            raise _fail(where, f"tensor '{key}'", f"expected one vector [d], got shape {list(arr.shape)}")
        member = check_name(match["member"], where)
        per.setdefault(member, {})[int(match["layer"])] = arr
    if not per:
        raise _fail(where, None, "no tensors")
    layer_sets = {m: sorted(v) for m, v in per.items()}
    first = next(iter(layer_sets))
    for m, ls in layer_sets.items():
        if ls != layer_sets[first]:
            raise _fail(where, f"member '{m}'",
                        f"has layers {ls} but member '{first}' has {layer_sets[first]}")
    rows = {}
    for m, v in per.items():
        ds = {a.shape[0] for a in v.values()}
        if len(ds) > 1:
            raise _fail(where, f"member '{m}'", f"mixed d across layers: {sorted(ds)}")
        rows[m] = np.stack([v[i] for i in layer_sets[first]])
    return rows, layer_sets[first], meta


def _meta_json(meta: Mapping[str, str], key: str, where: str, kind: type) -> Any:
    try:
        value = json.loads(meta[key])
    except KeyError as e:
        raise _fail(where, f"metadata '{key}'", "missing") from e
    except ValueError as e:
        raise _fail(where, f"metadata '{key}'", f"not JSON ({first_line(e)})") from e
    if not isinstance(value, kind):
        raise _fail(where, f"metadata '{key}'", f"expected a JSON {kind.__name__}")
    return value


def tensor_key(member: str, layer: int) -> str:
    return f"{member}.layer.{layer}"


def canonical_bytes(vs: VectorSet) -> bytes:
    """The canonical ``vectors/<set>.safetensors``: F32 ``<member>.layer.<i>`` and the set's metadata."""
    tensors = {tensor_key(m, i): vs.arrays[m][k] for m in vs.members for k, i in enumerate(vs.layers)}
    return safetensors_bytes(tensors, vs.metadata())


def write_canonical(vs: VectorSet, path: str | Path) -> str:
    """Write the canonical file; returns its sha256."""
    data = canonical_bytes(vs)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def read_canonical(path: str | Path, display: str | None = None) -> VectorSet:
    """Read a canonical file back (torch-free): F32 only, exactly members × layers tensors, checked values."""
    path = Path(path)
    where = display or str(path)
    meta, tensors, header_dtypes = read_safetensors(path, where, error=DirectionError)
    if meta.get("format") != FORMAT:
        raise _fail(where, "metadata 'format'", f"{meta.get('format')!r}, expected '{FORMAT}'")
    members = _check_members(_meta_json(meta, "members", where, list), where)
    layers = _check_layers(_meta_json(meta, "layers", where, list), where)
    labels = _meta_json(meta, "labels", where, dict)
    rows: dict[str, np.ndarray] = {}
    for m in members:
        vecs = []
        for i in layers:
            key = tensor_key(m, i)
            if key not in tensors:
                raise _fail(where, f"tensor '{key}'", "missing (metadata lists this member and layer)")
            if header_dtypes.get(key) != "F32":
                raise _fail(where, f"tensor '{key}'",
                            f"dtype {header_dtypes.get(key)}; the canonical file is F32")
            vecs.append(tensors[key])
        rows[m] = np.stack(vecs)
    extra = sorted(set(tensors) - {tensor_key(m, i) for m in members for i in layers})
    if extra:
        raise _fail(where, f"tensor '{extra[0]}'", "not listed in the metadata's members and layers")
    return build_vector_set(meta.get("name") or path.stem, rows, layers, where=where,
                            layer_convention=meta.get("layer_convention", "hidden_states"), labels=labels,
                            source=meta.get("source"))


# --------------------------------------------------------------------------- downstream


def load_vector_set(folder_or_file: str | Path, name: str | None = None, *,
                    sha256: str | None = None) -> VectorSet:
    """A published vector set, from its canonical file; never unpickles, needs no torch until ``vs[member]``.

    ``folder_or_file``: the canonical ``.safetensors`` file, or a downloaded repo folder holding
    ``vectors/<name>.safetensors`` (``name`` may be left out when there is exactly one). The file's sha256 is
    checked against ``sha256`` if given, else against the folder's ``hubkit.json`` entry if it lists the file.
    """
    root = Path(folder_or_file)
    expected = sha256
    if root.is_dir():
        vec_dir = root / "vectors" if (root / "vectors").is_dir() else root
        if name is None:
            found = sorted(p.stem for p in vec_dir.glob("*.safetensors"))
            if len(found) != 1:
                raise _fail(str(root), None,
                            f"{len(found)} vector sets ({', '.join(found) or 'none'}); pass name=")
            name = found[0]
        check_name(name, str(root), "set")
        path = vec_dir / f"{name}.safetensors"
        rel = path.relative_to(root).as_posix()
        if not path.is_file():
            raise _fail(str(root), None, f"no {rel}")
        if expected is None:
            expected = _hubkit_json_sha(root, rel)
        where = rel
    else:
        path, where = root, str(root)
        if not path.is_file():
            raise _fail(where, None, "file not found")
    if expected is not None:
        got = sha256_file(path)
        if got != expected.lower():
            raise _fail(where, None, f"sha256 {got[:12]}… differs from the expected {expected[:12]}…")
    vs = read_canonical(path, where)
    if name is not None and vs.name != name:
        raise _fail(where, "metadata 'name'", f"'{vs.name}', expected '{name}'")
    return vs


def _hubkit_json_sha(root: Path, rel: str) -> str | None:
    """The sha256 ``hubkit.json`` records for ``rel`` (None if the folder has none or it lists no such file)."""
    from hubkit.formats import hubjson

    meta = root / hubjson.HUBKIT_JSON
    if not meta.is_file():
        return None
    record = hubjson.parse(meta.read_bytes(), str(meta)).file(rel)
    return None if record is None else record.sha256
