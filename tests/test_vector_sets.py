"""Vector sets: every input shape, validation refusals, the canonical file (round trip, bytes), loading."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from hubkit.errors import DirectionError, PickleRefused
from hubkit.formats import vector_sets as v

MEMBERS = ["assistant", "villain", "french_person"]
LAYERS = [7, 14, 20]
D = 8


@pytest.fixture
def rows() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {m: (rng.standard_normal((len(LAYERS), D)) * (i + 1)).astype(np.float32)
            for i, m in enumerate(MEMBERS)}


def _read(path: Path, **kw):
    kw.setdefault("layers", LAYERS)
    return v.read_vector_set(path, name="s", labels={"method": "A", "checkpoint": "base"},
                             display="vectors/x", **kw)


def _one_line(e: pytest.ExceptionInfo, start: str = "vectors/x") -> str:
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(start), msg
    return msg


# --------------------------------------------------------------------------- the four input shapes


def test_every_shape_gives_the_same_canonical_bytes(tmp_path, rows):
    # 1. {member: [n_layers, d]}
    torch.save({m: torch.from_numpy(a) for m, a in rows.items()}, tmp_path / "dict.pt")
    # 2. [n_members, n_layers, d] with members:
    torch.save(torch.from_numpy(np.stack([rows[m] for m in MEMBERS])), tmp_path / "tensor.pt")
    np.save(tmp_path / "tensor.npy", np.stack([rows[m] for m in MEMBERS]))
    # 3. safetensors <member>.layer.<i> (written by the library, not by us)
    save_file({f"{m}.layer.{i}": torch.from_numpy(rows[m][k].copy())
               for m in MEMBERS for k, i in enumerate(LAYERS)}, str(tmp_path / "keys.safetensors"))
    # 4. a folder of <member>.pt
    (tmp_path / "folder").mkdir()
    for m in MEMBERS:
        torch.save(torch.from_numpy(rows[m]), tmp_path / "folder" / f"{m}.pt")

    sets = [
        _read(tmp_path / "dict.pt"),
        _read(tmp_path / "tensor.pt", members=MEMBERS),
        _read(tmp_path / "tensor.npy", members=MEMBERS),
        _read(tmp_path / "keys.safetensors", members=MEMBERS),
        _read(tmp_path / "keys.safetensors", members=MEMBERS, layers=None),  # layers from the keys
        _read(tmp_path / "folder", members=MEMBERS),
    ]
    blobs = {v.canonical_bytes(s) for s in sets}
    assert len(blobs) == 1
    s = sets[0]
    assert (s.members, s.layers, s.d, s.layer_convention) == (MEMBERS, LAYERS, D, "hidden_states")
    for m in MEMBERS:
        assert np.array_equal(s.arrays[m], rows[m])


def test_default_member_orders(tmp_path, rows):
    torch.save({m: torch.from_numpy(rows[m]) for m in reversed(MEMBERS)}, tmp_path / "d.pt")
    assert _read(tmp_path / "d.pt").members == list(reversed(MEMBERS))  # the dict's order
    assert _read(tmp_path / "d.pt", members=MEMBERS).members == MEMBERS  # members: reorders
    (tmp_path / "f").mkdir()
    for m in MEMBERS:
        np.save(tmp_path / "f" / f"{m}.npy", rows[m])
    assert _read(tmp_path / "f").members == sorted(MEMBERS)  # a folder: by file name


def test_layers_are_stored_sorted_with_their_rows(tmp_path, rows):
    perm = [2, 0, 1]
    torch.save({m: torch.from_numpy(rows[m][perm]) for m in MEMBERS}, tmp_path / "d.pt")
    s = _read(tmp_path / "d.pt", layers=[LAYERS[i] for i in perm])
    assert s.layers == LAYERS
    for m in MEMBERS:
        assert np.array_equal(s.arrays[m], rows[m])


def test_values_kept_as_given_not_normalised(tmp_path, rows):
    torch.save({m: torch.from_numpy(rows[m]) for m in MEMBERS}, tmp_path / "d.pt")
    s = v.read_canonical(_write(tmp_path, _read(tmp_path / "d.pt")))
    for m in MEMBERS:
        np.testing.assert_array_equal(np.linalg.norm(s.arrays[m], axis=1), np.linalg.norm(rows[m], axis=1))


def test_float16_and_bfloat16_inputs_become_float32(tmp_path, rows):
    torch.save({m: torch.from_numpy(rows[m]).to(torch.bfloat16) for m in MEMBERS}, tmp_path / "bf.pt")
    s = _read(tmp_path / "bf.pt")
    assert s.arrays["villain"].dtype == np.float32
    want = torch.from_numpy(rows["villain"]).bfloat16().float().numpy()
    np.testing.assert_array_equal(s.arrays["villain"], want)
    save_file({f"{m}.layer.{i}": torch.from_numpy(rows[m][k].copy()).half() for m in MEMBERS
               for k, i in enumerate(LAYERS)}, str(tmp_path / "h.safetensors"))
    np.testing.assert_array_equal(_read(tmp_path / "h.safetensors").arrays["assistant"],
                                  rows["assistant"].astype(np.float16).astype(np.float32))


# --------------------------------------------------------------------------- refusals


class Payload:  # a class torch.load(weights_only=True) will not rebuild
    def __init__(self, t):
        self.t = t


def test_pickle_needing_pt_refused(tmp_path, rows):
    torch.save({"assistant": Payload(torch.from_numpy(rows["assistant"]))}, tmp_path / "p.pt")
    with pytest.raises(PickleRefused) as e:
        _read(tmp_path / "p.pt")
    assert "full unpickling" in _one_line(e)
    obj = np.empty(2, dtype=object)
    np.save(tmp_path / "o.npy", obj, allow_pickle=True)
    with pytest.raises(PickleRefused):
        _read(tmp_path / "o.npy", members=["a", "b"])


def test_duplicate_members_refused(tmp_path, rows):
    torch.save(torch.from_numpy(np.stack([rows[m] for m in MEMBERS])), tmp_path / "t.pt")
    with pytest.raises(DirectionError, match="member 'villain': listed twice") as e:
        _read(tmp_path / "t.pt", members=["assistant", "villain", "villain"])
    _one_line(e)
    (tmp_path / "f").mkdir()
    torch.save(torch.from_numpy(rows["villain"]), tmp_path / "f" / "villain.pt")
    np.save(tmp_path / "f" / "villain.npy", rows["villain"])
    with pytest.raises(DirectionError, match="two files: villain.npy and villain.pt"):
        _read(tmp_path / "f")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_refused_with_member_and_layer(tmp_path, rows, bad):
    rows["villain"][1, 3] = bad
    torch.save({m: torch.from_numpy(a) for m, a in rows.items()}, tmp_path / "d.pt")
    with pytest.raises(DirectionError) as e:
        _read(tmp_path / "d.pt")
    assert _one_line(e) == "vectors/x: member 'villain' layer 14 (row 1): non-finite values (NaN or inf)"


def test_wrong_rows_mixed_d_zero_and_ints_refused(tmp_path, rows):
    cases = {
        "rows": ({**rows, "villain": rows["villain"][:2]}, "member 'villain': 2 rows but 3 layers declared"),
        "d": ({**rows, "villain": rows["villain"][:, :4]},
              "member 'villain': d=4, but member 'assistant' has d=8"),
        "zero": ({**rows, "villain": np.zeros((3, D), np.float32)}, "layer 7 (row 0): the zero vector"),
        "int": ({**rows, "villain": np.ones((3, D), np.int64)}, "expected floating point values"),
        "1d": ({**rows, "villain": rows["villain"][0]}, "expected [n_layers, d]"),
    }
    for name, (data, msg) in cases.items():
        torch.save({m: torch.from_numpy(np.ascontiguousarray(a)) for m, a in data.items()},
                   tmp_path / f"{name}.pt")
        with pytest.raises(DirectionError) as e:
            _read(tmp_path / f"{name}.pt")
        assert msg in _one_line(e), (name, str(e.value))


@pytest.mark.parametrize("name", ["../etc", "a/b", "a b", "..", ".hidden", "x..y", "", "é", "a" * 129])
def test_unsafe_member_names_refused(tmp_path, rows, name):
    torch.save({name: torch.from_numpy(rows["assistant"]), "ok": torch.from_numpy(rows["villain"])},
               tmp_path / "d.pt")
    with pytest.raises(DirectionError, match="not safe for tensor keys and file names") as e:
        _read(tmp_path / "d.pt")
    _one_line(e)


def test_safe_names_accepted():
    for name in ["assistant", "Persona-1", "a.b_c", "x.layer.3"]:
        assert v.check_name(name, "w") == name


def test_tensor_form_needs_matching_members(tmp_path, rows):
    torch.save(torch.from_numpy(np.stack([rows[m] for m in MEMBERS])), tmp_path / "t.pt")
    with pytest.raises(DirectionError, match="needs members: naming its rows"):
        _read(tmp_path / "t.pt")
    with pytest.raises(DirectionError, match="2 members declared but the tensor has 3 rows"):
        _read(tmp_path / "t.pt", members=["a", "b"])
    torch.save({m: torch.from_numpy(a) for m, a in rows.items()}, tmp_path / "d.pt")
    with pytest.raises(DirectionError, match="not in the file: pirate; not declared: french_person"):
        _read(tmp_path / "d.pt", members=["assistant", "villain", "pirate"])


def test_safetensors_shape_refusals(tmp_path, rows):
    t = {f"{m}.layer.{i}": torch.from_numpy(rows[m][k].copy()) for m in MEMBERS for k, i in enumerate(LAYERS)}
    save_file({k: x for k, x in t.items() if k != "villain.layer.14"}, str(tmp_path / "miss.safetensors"))
    with pytest.raises(DirectionError, match="member 'villain': has layers \\[7, 20\\]"):
        _read(tmp_path / "miss.safetensors", layers=None)
    save_file({**t, "bias": torch.ones(D)}, str(tmp_path / "odd.safetensors"))
    with pytest.raises(DirectionError, match="tensor 'bias': name is not <member>.layer.<i>"):
        _read(tmp_path / "odd.safetensors")
    save_file(t, str(tmp_path / "ok.safetensors"))
    msg = "declared \\[7, 14, 21\\] but the file has layers \\[7, 14, 20\\]"
    with pytest.raises(DirectionError, match=msg):
        _read(tmp_path / "ok.safetensors", layers=[7, 14, 21])


def test_other_refusals(tmp_path, rows):
    with pytest.raises(DirectionError, match="file not found"):
        _read(tmp_path / "none.pt")
    (tmp_path / "x.csv").write_text("1,2\n")
    with pytest.raises(DirectionError, match="unsupported vector-set format"):
        _read(tmp_path / "x.csv")
    torch.save({m: torch.from_numpy(a) for m, a in rows.items()}, tmp_path / "d.pt")
    with pytest.raises(DirectionError, match="layers: required"):
        _read(tmp_path / "d.pt", layers=None)
    with pytest.raises(DirectionError, match="layer 7 listed twice"):
        _read(tmp_path / "d.pt", layers=[7, 7, 20])
    with pytest.raises(DirectionError, match="labels.seeds: must be a string, number or boolean"):
        v.read_vector_set(tmp_path / "d.pt", name="s", layers=LAYERS, labels={"seeds": [1, 2]})
    with pytest.raises(DirectionError, match="layer_convention"):
        v.read_vector_set(tmp_path / "d.pt", name="s", layers=LAYERS, layer_convention="blocks")
    with pytest.raises(DirectionError, match="set name '../s' is not safe"):
        v.read_vector_set(tmp_path / "d.pt", name="../s", layers=LAYERS)


# --------------------------------------------------------------------------- canonical file


def _write(tmp_path: Path, s: v.VectorSet) -> Path:
    path = tmp_path / "vectors" / f"{s.name}.safetensors"
    v.write_canonical(s, path)
    return path


def _set(rows) -> v.VectorSet:
    labels = {"method": "A", "checkpoint": "base", "seed": 42}
    return v.build_vector_set("a_base", rows, LAYERS, where="w", labels=labels, source="vectors/a/base.pt")


def test_canonical_round_trip_and_metadata(tmp_path, rows):
    s = _set(rows)
    path = _write(tmp_path, s)
    back = v.read_canonical(path)
    assert (back.name, back.members, back.layers, back.labels, back.layer_convention, back.source) == (
        "a_base", MEMBERS, LAYERS, {"method": "A", "checkpoint": "base", "seed": 42}, "hidden_states",
        "vectors/a/base.pt")
    for m in MEMBERS:
        assert back.arrays[m].tobytes() == rows[m].tobytes()  # bit for bit
    assert v.canonical_bytes(back) == path.read_bytes()
    # the safetensors library reads it: float32 <member>.layer.<i> and string metadata
    with safe_open(str(path), framework="np") as f:
        meta = f.metadata()
        assert sorted(f.keys()) == sorted(f"{m}.layer.{i}" for m in MEMBERS for i in LAYERS)
        np.testing.assert_array_equal(f.get_tensor("villain.layer.14"), rows["villain"][1])
    assert meta == {"format": "hubkit-vector-set", "format_version": "1", "name": "a_base",
                    "members": json.dumps(MEMBERS, separators=(",", ":")), "layers": "[7,14,20]",
                    "layer_convention": "hidden_states", "d": "8", "source": "vectors/a/base.pt",
                    "labels": '{"checkpoint":"base","method":"A","seed":42}'}


def test_canonical_bytes_are_deterministic_and_sorted(rows):
    a = v.canonical_bytes(_set(rows))
    b = v.canonical_bytes(_set({m: rows[m].copy() for m in MEMBERS}))
    assert a == b
    (n,) = struct.unpack("<Q", a[:8])
    assert (8 + n) % 8 == 0
    header = json.loads(a[8:8 + n])
    keys = list(header)
    assert keys == sorted(keys) and keys[0] == "__metadata__"
    offsets = [header[k]["data_offsets"] for k in keys[1:]]
    assert offsets[0][0] == 0 and all(p[1] == q[0] for p, q in zip(offsets, offsets[1:], strict=False))
    assert offsets[-1][1] == len(a) - 8 - n


def test_canonical_file_as_input(tmp_path, rows):
    path = _write(tmp_path, _set({m: rows[m] for m in reversed(MEMBERS)}))
    s = v.read_vector_set(path, name="again", layers=None)
    assert s.members == list(reversed(MEMBERS))  # the metadata's order, not sorted
    assert all(np.array_equal(s.arrays[m], rows[m]) for m in MEMBERS)
    with pytest.raises(DirectionError, match="the file says 'hidden_states', the manifest 'block'"):
        v.read_vector_set(path, name="again", layer_convention="block")


def test_read_canonical_refusals(tmp_path, rows):
    path = _write(tmp_path, _set(rows))
    good = path.read_bytes()
    (n,) = struct.unpack("<Q", good[:8])
    header = json.loads(good[8:8 + n])

    def rewrite(h: dict, data: bytes | None = None) -> Path:
        text = json.dumps(h).encode()
        p = tmp_path / "bad.safetensors"
        p.write_bytes(struct.pack("<Q", len(text)) + text + (good[8 + n:] if data is None else data))
        return p

    cases = [
        ({**header, "__metadata__": {**header["__metadata__"], "format": "hubkit-direction"}}, None,
         "metadata 'format'"),
        ({**header, "villain.layer.14": {**header["villain.layer.14"], "dtype": "F16",
                                        "shape": [2 * D]}}, None, "the canonical file is F32"),
        ({**header, "__metadata__": {**header["__metadata__"], "members": '["assistant","villain"]'}}, None,
         "not listed in the metadata's members and layers"),
        (header, good[8 + n:-4], "do not hold"),
        ({**header, "__metadata__": {**header["__metadata__"], "layers": "[7,14"}}, None, "not JSON"),
    ]
    for h, data, msg in cases:
        with pytest.raises(DirectionError, match=msg.replace("[", "\\[")):
            v.read_canonical(rewrite(h, data), "vectors/a_base.safetensors")
    p = tmp_path / "dup.safetensors"
    text = good[8:8 + n].replace(b'"__metadata__":', b'"__metadata__":{},"__metadata__":', 1)
    p.write_bytes(struct.pack("<Q", len(text)) + text + good[8 + n:])
    with pytest.raises(DirectionError, match="duplicate key"):
        v.read_canonical(p)
    p.write_bytes(struct.pack("<Q", 1 << 40) + good[8:])
    with pytest.raises(DirectionError, match="not a safetensors file"):
        v.read_canonical(p)


# --------------------------------------------------------------------------- load_vector_set


def test_load_vector_set_from_file_and_folder(tmp_path, rows, monkeypatch):
    def no_unpickling(*a, **k):
        raise AssertionError("load_vector_set must not call torch.load")

    monkeypatch.setattr(torch, "load", no_unpickling)
    path = _write(tmp_path, _set(rows))
    for src, name in [(path, None), (tmp_path, "a_base"), (tmp_path, None)]:
        s = v.load_vector_set(src, name)
        t = s["villain"]
        assert isinstance(t, torch.Tensor) and t.dtype == torch.float32 and tuple(t.shape) == (3, D)
        assert torch.equal(t, torch.from_numpy(rows["villain"]))
        assert (s.members, s.layers, s.layer_convention, s.labels["method"]) == (MEMBERS, LAYERS,
                                                                               "hidden_states", "A")
    t[0, 0] = 123.0  # a copy: the set is unchanged
    assert s.arrays["villain"][0, 0] != 123.0
    with pytest.raises(KeyError):
        s["pirate"]


def test_load_vector_set_hash_checks(tmp_path, rows):
    path = _write(tmp_path, _set(rows))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert v.load_vector_set(path, sha256=digest).name == "a_base"
    with pytest.raises(DirectionError, match="sha256 .* differs from the expected"):
        v.load_vector_set(path, sha256="0" * 64)
    size = path.stat().st_size
    (tmp_path / "hubkit.json").write_text(json.dumps({"files": [{"path": "vectors/a_base.safetensors",
                                                                  "size": size, "sha256": "f" * 64}]}))
    with pytest.raises(DirectionError) as e:
        v.load_vector_set(tmp_path, "a_base")
    assert str(e.value).startswith("vectors/a_base.safetensors: sha256")
    (tmp_path / "hubkit.json").write_text(json.dumps({"files": [{"path": "vectors/a_base.safetensors",
                                                                  "size": size, "sha256": digest}]}))
    assert v.load_vector_set(tmp_path, "a_base").members == MEMBERS


def test_load_vector_set_choosing(tmp_path, rows):
    _write(tmp_path, _set(rows))
    other = v.build_vector_set("a_em", rows, LAYERS, where="w")
    _write(tmp_path, other)
    with pytest.raises(DirectionError, match="2 vector sets \\(a_base, a_em\\); pass name="):
        v.load_vector_set(tmp_path)
    with pytest.raises(DirectionError, match="no vectors/b.safetensors"):
        v.load_vector_set(tmp_path, "b")
    with pytest.raises(DirectionError, match="not safe"):
        v.load_vector_set(tmp_path, "../a_base")
    (tmp_path / "vectors" / "a_em.safetensors").rename(tmp_path / "vectors" / "renamed.safetensors")
    with pytest.raises(DirectionError, match="metadata 'name': 'a_em', expected 'renamed'"):
        v.load_vector_set(tmp_path, "renamed")
