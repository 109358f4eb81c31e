import re

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from hubkit.errors import DirectionError, PickleRefused
from hubkit.formats.directions import (
    DirectionSet,
    canonical_layout,
    canonical_vector,
    inspect_direction,
    read_canonical,
    read_direction_file,
    to_block_index,
    write_canonical,
)

D = 16


def unit(n: int, seed: int = 0) -> torch.Tensor:
    t = torch.randn(n, D, generator=torch.Generator().manual_seed(seed))
    return t / t.norm(dim=1, keepdim=True)


def test_pt_1d_needs_layer(tmp_path):
    p = tmp_path / "persona_dir.pt"
    torch.save(unit(1)[0], p)
    with pytest.raises(DirectionError, match="needs its layer"):
        read_direction_file(p)
    ds = read_direction_file(p, layer=22)
    assert ds.layer_ids == [22] and ds.d == D and ds.selected_layer == 22 and ds.unit_norm
    assert inspect_direction(p) == (None, D)


def test_pt_2d_rows_are_layers(tmp_path):
    p = tmp_path / "dir.pt"
    rows = unit(32)
    torch.save(rows, p)
    ds = read_direction_file(p, layer=22)
    assert ds.layer_ids == list(range(32)) and torch.equal(ds.vector(), rows[22])
    assert inspect_direction(p) == (list(range(32)), D)


@pytest.mark.parametrize("kind", ["int", "str", "layer.", "list"])
def test_pt_containers(tmp_path, kind):
    rows = unit(4)
    obj = {"int": {i + 1: rows[i] for i in range(4)},
           "str": {str(i + 1): rows[i] for i in range(4)},
           "layer.": {f"layer.{i + 1}": rows[i] for i in range(4)},
           "list": [rows[i] for i in range(4)]}[kind]
    p = tmp_path / "d.pt"
    torch.save(obj, p)
    ds = read_direction_file(p, layer=2)
    expected = list(range(4)) if kind == "list" else [1, 2, 3, 4]
    assert ds.layer_ids == expected
    assert torch.equal(ds.vector(2), rows[2] if kind == "list" else rows[1])


def test_safetensors_and_npy(tmp_path):
    rows = unit(3)
    save_file({"direction": rows[0].contiguous()}, tmp_path / "a.safetensors")
    assert read_direction_file(tmp_path / "a.safetensors", layer=5).layer_ids == [5]
    save_file({f"layer.{i}": rows[i].contiguous() for i in range(3)}, tmp_path / "b.safetensors")
    assert read_direction_file(tmp_path / "b.safetensors").layer_ids == [0, 1, 2]
    np.save(tmp_path / "c.npy", rows.numpy().astype(np.float16))
    ds = read_direction_file(tmp_path / "c.npy", layer=1)
    assert ds.layers[1].dtype == torch.float32 and torch.allclose(ds.layers[1], rows[1], atol=1e-3)


def test_bfloat16_becomes_float32(tmp_path):
    torch.save(unit(2).to(torch.bfloat16), tmp_path / "d.pt")
    assert read_direction_file(tmp_path / "d.pt", layer=0).layers[0].dtype == torch.float32


class Payload:
    def __reduce__(self):
        return (print, ("this would run on load",))


def test_pickle_is_refused(tmp_path):
    p = tmp_path / "dir.pt"
    torch.save({"vec": unit(1)[0], "meta": Payload()}, p)
    with pytest.raises(PickleRefused, match=r"dir.pt: needs full unpickling \(weights_only=False\)"):
        read_direction_file(p, display="vectors/dir.pt", layer=0)
    np.save(tmp_path / "o.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(PickleRefused, match="allow_pickle"):
        read_direction_file(tmp_path / "o.npy", layer=0)


def test_a_legacy_pickle_of_an_object_is_the_same_refusal_and_never_runs(tmp_path, recwarn, capfd):
    """A non-zip pickle (``pickle.dump``, torch < 1.6) of an object: torch's weights-only unpickler stops at an
    opcode, not a global; it is the same "needs full unpickling" refusal, without torch's protocol warning."""
    import pickle

    p = tmp_path / "legacy.pt"
    p.write_bytes(pickle.dumps(Payload(), protocol=4))
    with pytest.raises(PickleRefused, match="legacy.pt: needs full unpickling"):
        read_direction_file(p, layer=0)
    assert not [w for w in recwarn if "pickle protocol" in str(w.message)]
    assert "this would run" not in capfd.readouterr().out


def test_bad_values(tmp_path):
    rows = unit(3)
    rows[1, 3] = float("nan")
    torch.save(rows, tmp_path / "nan.pt")
    with pytest.raises(DirectionError, match="nan.pt: layer 1 has non-finite values"):
        read_direction_file(tmp_path / "nan.pt")
    torch.save({0: torch.ones(8), 1: torch.ones(9)}, tmp_path / "mixed.pt")
    with pytest.raises(DirectionError, match=r"mixed d across layers: d=8 \(layer 0\), d=9 \(layer 1\)"):
        read_direction_file(tmp_path / "mixed.pt")
    torch.save(torch.zeros(8), tmp_path / "zero.pt")
    with pytest.raises(DirectionError, match="zero vector"):
        read_direction_file(tmp_path / "zero.pt", layer=0)
    torch.save(torch.ones(2, 2, 2), tmp_path / "cube.pt")
    with pytest.raises(DirectionError, match=r"expected shape \[d\] or \[layers, d\]"):
        read_direction_file(tmp_path / "cube.pt")
    torch.save(torch.arange(8), tmp_path / "int.pt")
    with pytest.raises(DirectionError, match="floating point"):
        read_direction_file(tmp_path / "int.pt", layer=0)
    (tmp_path / "junk.pt").write_bytes(b"not a zip")
    with pytest.raises(DirectionError, match="junk.pt: not a readable torch file"):
        read_direction_file(tmp_path / "junk.pt", layer=0)
    (tmp_path / "x.bin").write_bytes(b"x")
    with pytest.raises(DirectionError, match="unsupported direction format"):
        read_direction_file(tmp_path / "x.bin")
    torch.save(unit(3), tmp_path / "three.pt")
    with pytest.raises(DirectionError, match="selected layer 7 .* not among"):
        read_direction_file(tmp_path / "three.pt", layer=7)
    for key in ("--5", "layer.--2", "layer.-+1"):  # one sign at most: int() would raise past the check
        torch.save({key: torch.ones(8)}, tmp_path / "keys.pt")
        with pytest.raises(DirectionError, match=f"key '{re.escape(key)}' is not a layer index"):
            read_direction_file(tmp_path / "keys.pt")


def test_norms_reported(tmp_path):
    torch.save(unit(2) * 3.0, tmp_path / "d.pt")
    ds = read_direction_file(tmp_path / "d.pt")
    assert not ds.unit_norm and abs(ds.norms[0] - 3.0) < 1e-5


def test_canonical_roundtrip_is_deterministic(tmp_path):
    ds = DirectionSet("refusal", {i + 1: unit(4)[i] for i in range(4)}, "hidden_states", 3,
                      base_model="Qwen/Qwen3.5-4B", source="vectors/refusal_dir.pt", method="mean diff")
    write_canonical(ds, tmp_path / "a.safetensors")
    write_canonical(ds, tmp_path / "b.safetensors")
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()
    with safe_open(str(tmp_path / "a.safetensors"), "pt") as f:
        assert sorted(f.keys()) == ["layer.1", "layer.2", "layer.3", "layer.4"]
        meta = f.metadata()
        assert f.get_tensor("layer.3").dtype == torch.float32
    assert meta["layer_convention"] == "hidden_states" and meta["selected_layer"] == "3"
    assert meta["unit_norm"] == "true" and meta["base_model"] == "Qwen/Qwen3.5-4B"
    back = read_canonical(tmp_path / "a.safetensors")
    assert back.selected_layer == 3 and back.layer_convention == "hidden_states"
    assert all(torch.equal(back.layers[i], ds.layers[i]) for i in ds.layer_ids)
    again = read_direction_file(tmp_path / "a.safetensors")  # the generic reader honours the metadata
    assert again.selected_layer == 3 and again.layer_convention == "hidden_states"


def test_canonical_layout_reads_the_header_without_torch(tmp_path):
    ds = DirectionSet("refusal", {i + 1: unit(4)[i] for i in range(4)}, "hidden_states", 3)
    write_canonical(ds, tmp_path / "a.safetensors")
    meta, dims = canonical_layout(tmp_path / "a.safetensors")
    assert dims == {1: D, 2: D, 3: D, 4: D} and meta["layer_convention"] == "hidden_states"
    save_file({"layer.0": torch.zeros(4), "layer.1": torch.zeros(5)}, str(tmp_path / "mixed.safetensors"))
    with pytest.raises(DirectionError, match=r"mixed.safetensors: mixed d across layers: d=4 \(layer 0\), d=5"):
        canonical_layout(tmp_path / "mixed.safetensors")
    save_file({"layer.0": torch.zeros(2, 4)}, str(tmp_path / "flat.safetensors"))
    with pytest.raises(DirectionError, match=r"flat.safetensors: tensor 'layer.0' has shape \[2, 4\]"):
        canonical_layout(tmp_path / "flat.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(DirectionError, match="vectors/junk.safetensors: not a safetensors file"):
        canonical_layout(tmp_path / "junk.safetensors", display="vectors/junk.safetensors")


def test_canonical_readers_share_one_parser(tmp_path):
    """read_canonical (torch) and canonical_vector (numpy) read the same header and bytes, bf16 included."""
    v = unit(2)
    save_file({"layer.3": v[0].to(torch.bfloat16), "layer.5": v[1].to(torch.bfloat16)}, str(tmp_path / "b.safetensors"))
    ds = read_canonical(tmp_path / "b.safetensors")
    assert ds.layer_ids == [3, 5] and ds.layers[3].dtype == torch.float32
    assert torch.equal(ds.layers[5], v[1].to(torch.bfloat16).float())
    assert np.array_equal(canonical_vector(tmp_path / "b.safetensors", 5), ds.layers[5].numpy())
    with pytest.raises(DirectionError, match=r"vectors/b.safetensors: no layer 4; has 3, 5"):
        canonical_vector(tmp_path / "b.safetensors", 4, display="vectors/b.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(DirectionError, match="junk.safetensors: not a safetensors file"):
        read_canonical(tmp_path / "junk.safetensors")


def test_layer_conventions():
    assert to_block_index(22, "block") == 22
    assert to_block_index(22, "hidden_states") == 21
    assert to_block_index(0, "hidden_states") == -1
    with pytest.raises(DirectionError):
        to_block_index(1, "residual")
