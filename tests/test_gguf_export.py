"""hubkit export gguf: llama.cpp control vectors that read back with gguf.GGUFReader as written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType

from hubkit.errors import PlanError
from hubkit.use.gguf_export import export_gguf, gguf_layer, llama_cpp_usage, parse_layers
from tests.test_loading import EXAMPLES, example_direction, stage_tree


@pytest.fixture(scope="module")
def staged(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("staged")
    return {ex: stage_tree(ex, root / ex) for ex in EXAMPLES}


def _field(reader: GGUFReader, key: str):
    f = reader.get_field(key)
    assert f is not None, f"missing {key}"
    return f.contents()


def _read(path: Path) -> tuple[GGUFReader, dict[str, np.ndarray]]:
    reader = GGUFReader(path)
    return reader, {t.name: t for t in reader.tensors}


def test_block_convention_layers_map_to_same_direction_index(staged, tmp_path):
    ds, _ = example_direction("capability-vector-v1")
    out = export_gguf(staged["capability-vector-v1"], tmp_path / "cap.gguf", layers="10-20", scale=2.0)
    reader, tensors = _read(out)
    assert _field(reader, "general.architecture") == "controlvector"
    assert _field(reader, "controlvector.model_hint") == "Qwen/Qwen3.5-4B"
    assert _field(reader, "controlvector.layer_count") == 11
    assert reader.get_field("controlvector.layer_count").types == [GGUFValueType.UINT32]
    assert _field(reader, "hubkit.layer_convention") == "block"
    assert _field(reader, "hubkit.layers") == ",".join(map(str, range(10, 21)))
    assert _field(reader, "hubkit.scale") == pytest.approx(2.0)
    assert sorted(tensors) == sorted(f"direction.{i}" for i in range(10, 21))
    for i in range(10, 21):
        t = tensors[f"direction.{i}"]
        assert t.tensor_type == GGMLQuantizationType.F32
        assert list(t.shape) == [64] and t.data.dtype == np.float32
        np.testing.assert_array_equal(np.asarray(t.data), (ds.layers[i].double() * 2.0).float().numpy())


def test_hidden_states_convention_shifts_by_one(staged, tmp_path):
    ds, _ = example_direction("refusal-abliteration")
    out = export_gguf(staged["refusal-abliteration"], tmp_path / "ref.gguf", layers=[2, 3, 5])
    _, tensors = _read(out)
    assert sorted(tensors) == ["direction.1", "direction.2", "direction.4"]  # hidden_states i = block i-1
    np.testing.assert_array_equal(np.asarray(tensors["direction.4"].data), ds.layers[5].numpy())


def test_default_is_the_selected_layer(staged, tmp_path):
    reader, tensors = _read(export_gguf(staged["persona-vector"], tmp_path / "p.gguf"))
    assert list(tensors) == ["direction.22"] and _field(reader, "controlvector.layer_count") == 1
    _, tensors = _read(export_gguf(staged["refusal-abliteration"], tmp_path / "r.gguf"))
    assert list(tensors) == ["direction.21"]  # selected hidden_states 22 = output of block 21


def test_unrepresentable_layers_are_errors_not_dropped(staged, tmp_path):
    out = tmp_path / "x.gguf"
    with pytest.raises(PlanError, match="block 0.*direction.0"):
        export_gguf(staged["capability-vector-v1"], out, layers="0-3")
    with pytest.raises(PlanError, match="block 0"):
        export_gguf(staged["refusal-abliteration"], out, layers=[1])  # hidden_states 1 = block 0 output
    with pytest.raises(PlanError, match="no layer 32–40"):
        export_gguf(staged["capability-vector-v1"], out, layers="30-40")
    assert not out.exists() and not list(tmp_path.glob(".x.gguf*"))  # no partial file left behind


def test_gguf_layer_and_parse_layers():
    assert gguf_layer(22, "block") == 22 and gguf_layer(22, "hidden_states") == 21
    with pytest.raises(PlanError, match="embeddings"):
        gguf_layer(0, "hidden_states")
    assert parse_layers("10-12") == [10, 11, 12]
    assert parse_layers("4, 8,12-13") == [4, 8, 12, 13]
    for bad in ("x", "5-3", "-2", "", "all", "0-999999999"):  # a range no model has is a typo, not 1e9 layers
        with pytest.raises(PlanError, match="--layers"):
            parse_layers(bad)


def test_a_scale_that_is_not_a_finite_float32_is_refused(staged, tmp_path):
    out = tmp_path / "s.gguf"
    for scale in (float("nan"), float("inf"), 1e39):
        with pytest.raises(PlanError, match="--scale .*not a finite float32"):
            export_gguf(staged["persona-vector"], out, scale=scale)
    assert not out.exists() and not list(tmp_path.glob(".s.gguf*"))


def test_usage_line_shows_control_vector_scaled():
    line = llama_cpp_usage("persona.gguf", 4.0, [22])
    assert "--control-vector-scaled persona.gguf:4 " in line + " " and " 4 " not in line
    assert "--control-vector-layer-range 22 22" in line


def test_cli_export_gguf(staged, tmp_path):
    from click.testing import CliRunner

    from hubkit.cli import main

    out = tmp_path / "cap.gguf"
    res = CliRunner().invoke(main, ["export", "gguf", str(staged["capability-vector-v1"]), "-o", str(out),
                                    "--layers", "20-22", "--scale", "4"])
    assert res.exit_code == 0, res.output
    assert res.output.count("\n") == 1
    assert "direction.20–22" in res.output and "--control-vector-scaled cap.gguf:1" in res.output
    _, tensors = _read(out)
    ds, _ = example_direction("capability-vector-v1")
    np.testing.assert_array_equal(np.asarray(tensors["direction.21"].data), (ds.layers[21] * 4).numpy())
    res = CliRunner().invoke(main, ["export", "gguf", str(staged["capability-vector-v1"]), "-o", str(out),
                                    "--layers", "0"])
    assert res.exit_code == 1 and res.output.startswith("error: ") and "direction.0" in res.output
