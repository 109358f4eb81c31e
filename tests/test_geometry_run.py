"""A persona-geometry run (seed 004) end to end: validate, publish to the test Hub, load the sets back by repo
id, load an adapter with PEFT from the repo's subfolder, steer with a member; and the refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from hubkit.errors import DirectionError
from hubkit.publish.commit import publish, stage_run
from hubkit.run.run import validate_run
from tests.helpers import copy_example
from tests.persona_geometry_example import tiny_base_model

RUN = "persona-geometry"


def test_the_example_validates_and_its_hubkit_json_holds_the_geometry(tmp_path: Path) -> None:
    report = validate_run(copy_example(RUN, tmp_path))
    assert report.ok, report.problems
    run = report.run
    assert len(run.vector_sets) == 7 and len(run.compares) == 4 and len(run.adapters) == 2
    assert run.manifest.seeds == [42] and len(run.reported_tests) == 20
    stage_run(copy_example(RUN, tmp_path / "b"), tmp_path / "out")
    meta = json.loads((tmp_path / "out" / "hubkit.json").read_text())
    assert meta["geometry"]["bootstrap"] == {"seed": 42, "resamples": 1000}
    staged = {p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*") if p.is_file()}
    assert {"vectors/a_base.safetensors", "assets/a_base_cosine.png", "assets/a_base__a_em_delta.png",
            "adapters/em_lora/adapter_config.json"} <= staged


def test_an_adapter_trained_on_another_base_is_refused_in_one_line(tmp_path: Path) -> None:
    """Seed 004: the EM adapter's config named a local merged model, not the base the plan assumed."""
    run = copy_example(RUN, tmp_path)
    cfg_path = run / "adapters" / "em_lora" / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = "/workspace/marker_transfer_issue125/confab_zlt_merged"
    cfg_path.write_text(json.dumps(cfg))
    report = validate_run(run)
    [problem] = [p for p in report.problems if "adapter_config.json" in p]
    assert "/workspace/marker_transfer_issue125/confab_zlt_merged" in problem
    assert "Qwen/Qwen2.5-7B-Instruct" in problem and "\n" not in problem


def test_a_compare_pair_over_different_members_is_refused(tmp_path: Path) -> None:
    run = copy_example(RUN, tmp_path)
    rows = torch.load(run / "vectors" / "method_a" / "em.pt", weights_only=True)
    rows.pop("villain")
    torch.save(rows, run / "vectors" / "method_a" / "em.pt")
    report = validate_run(run)
    assert any("compare[0]" in p and "different members" in p and "villain" in p for p in report.problems)


def test_published_sets_load_by_repo_id_and_adapters_load_with_peft(hub, api, repo_id: str, hf_cache: Path,
                                                                    tmp_path: Path) -> None:
    from peft import PeftModel

    import hubkit
    from hubkit.use.steering import steer

    run = copy_example(RUN, tmp_path)
    res = publish(run, repo_id=repo_id, progress=False)
    vs = hubkit.load_vector_set(repo_id, "a_em", revision=res.version)
    local = validate_run(run).run.vector_sets["a_em"]
    assert vs.members == local.members and vs.layers == [7, 14, 20, 21, 27]
    assert vs.layer_convention == "hidden_states" and vs.labels["checkpoint"] == "em"
    assert torch.equal(vs["villain"], torch.from_numpy(local.arrays["villain"]))  # values as given, not normalized
    with pytest.raises(DirectionError, match="7 vector sets .* pass name="):
        hubkit.load_vector_set(repo_id)

    base = tiny_base_model()
    peft = PeftModel.from_pretrained(base, repo_id, subfolder="adapters/em_lora", revision=res.commit)
    assert any("lora_A" in n for n, _ in peft.named_parameters())

    model = tiny_base_model()
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        plain = model(input_ids=ids).logits
        with steer(model, _two_layers(vs.direction("villain")), layer=2, alpha=4.0):
            steered = model(input_ids=ids).logits
    assert not torch.allclose(plain, steered)


def test_geometry_in_the_card_is_the_published_vectors_geometry(tmp_path: Path) -> None:
    """The card's numbers are recomputed from the canonical files a downloader gets (an independent numpy
    computation here: mean over ordered pairs of distinct members of the cosine)."""
    from hubkit.formats.vector_sets import read_canonical

    out = tmp_path / "out"
    stage_run(copy_example(RUN, tmp_path), out)
    meta = json.loads((out / "hubkit.json").read_text())
    for entry in meta["geometry"]["sets"]:
        vs = read_canonical(out / f"vectors/{entry['name']}.safetensors")
        for layer in entry["layers"]:
            x = np.stack([vs.vector(m, layer["layer"]).astype(np.float64) for m in vs.members])
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            c = x @ x.T
            n = len(vs.members)
            want = (c.sum() - np.trace(c)) / (n * (n - 1))
            assert abs(layer["mean_offdiag_cos"] - want) < 1e-9
    shutil.rmtree(out)


def _two_layers(ds):  # noqa: ANN001, ANN202
    """The tiny test model has 2 blocks; the example's layers are 7–27 of a real model: renumber two of them."""
    from hubkit.formats.directions import DirectionSet

    return DirectionSet(ds.name, {1: ds.layers[7], 2: ds.layers[14]}, layer_convention="hidden_states")


def test_the_card_compares_directions_with_related_runs(hub, api, hf_cache: Path, tmp_path: Path) -> None:
    """cos(this direction, a related run's) at the shared layers, read from the related repo by commit."""
    import re

    import torch

    from hubkit.formats.directions import read_direction_file
    from hubkit.publish.repo_tree import card_for_run

    earlier = copy_example("capability-vector-v1", tmp_path / "a")
    res = publish(earlier, repo_id="tester/capvec-earlier", progress=False)
    run = copy_example("persona-vector", tmp_path / "b")
    text = (run / "hubkit.yaml").read_text()
    text = re.sub(r"related:\n(  - .*\n)+", "related:\n  - {repo_id: tester/capvec-earlier, relation: see-also}\n"
                                           "  - {repo_id: tester/not-there, relation: see-also}\n", text)
    (run / "hubkit.yaml").write_text(text)
    card = card_for_run(run).text
    ours = read_direction_file(run / "vectors" / "persona_dir.pt", layer=22)
    theirs = torch.load(earlier / "vectors" / "dir.pt", weights_only=True)[22]
    want = float(torch.nn.functional.cosine_similarity(ours.vector(22).double(), theirs.double(), dim=0))
    line = next(ln for ln in card.splitlines() if "tester/capvec-earlier" in ln and "cos(" in ln)
    assert f"@ `{res.commit[:12]}`" in line and f"at layer 22 (selected) = {want:.3f}" in line
    assert "`tester/not-there`: could not be read" in card


def test_the_companion_dataset_holds_the_geometry_table(tmp_path: Path) -> None:
    import io

    import pyarrow.parquet as pq

    from hubkit.publish.dataset import build_dataset
    from hubkit.run.run import load_run

    run = load_run(copy_example(RUN, tmp_path))
    package, configs = build_dataset(run, model_repo="me/geometry")
    [cfg] = [c for c in configs if c.name == "geometry_members"]
    table = pq.read_table(io.BytesIO(package.file(cfg.path).data))
    assert cfg.rows == 7 * 5 * 12 and {"set", "layer", "member", "norm", "mean_cos_to_others"} <= set(table.column_names)
    row = table.to_pylist()[0]
    vs = run.vector_sets[row["set"]]
    assert abs(row["norm"] - float(np.linalg.norm(vs.vector(row["member"], row["layer"]).astype(np.float64)))) < 1e-9
    # the compare pairs' shifts, one row per pair, layer and member; the axis columns only where one is named
    [cfg] = [c for c in configs if c.name == "geometry_shifts"]
    rows = pq.read_table(io.BytesIO(package.file(cfg.path).data)).to_pylist()
    assert cfg.rows == len(rows) == 4 * 5 * 12
    for r in rows:
        b = run.vector_sets[r["before"]].vector(r["member"], r["layer"]).astype(np.float64)
        a = run.vector_sets[r["after"]].vector(r["member"], r["layer"]).astype(np.float64)
        assert abs(r["cos_before_after"] - a @ b / (np.linalg.norm(a) * np.linalg.norm(b))) < 1e-9
        assert (r["shift_axis"] is None) == (r["shift_along_axis"] is None) == (r["after"].endswith("benign"))
        if r["shift_axis"] == "assistant" and r["member"] == "assistant":  # the axis member lies on its axis
            assert abs(r["shift_along_axis"] - np.linalg.norm(a - b)) < 1e-9 and abs(r["orthogonal_share"]) < 1e-9


def test_the_shift_axis_reaches_the_card_and_hubkit_json(tmp_path: Path) -> None:
    """Seed 004's "EM axis": the example names the assistant's shift (method A) and the principal shift
    (method B); the card's table and hubkit.json hold each member's projection, recomputed here with numpy
    from the canonical files a downloader gets."""
    from hubkit.formats.vector_sets import read_canonical

    out = tmp_path / "out"
    stage_run(copy_example(RUN, tmp_path), out)
    meta = json.loads((out / "hubkit.json").read_text())
    by_pair = {(c["before"], c["after"]): c for c in meta["geometry"]["compare"]}
    assert by_pair[("a_base", "a_em")]["shift_axis"] == "assistant"
    assert by_pair[("b_base", "b_em")]["shift_axis"] == "principal"
    assert "shift_axis" not in by_pair[("a_base", "a_benign")]
    cmp = by_pair[("a_base", "a_em")]
    vb, va = read_canonical(out / "vectors/a_base.safetensors"), read_canonical(out / "vectors/a_em.safetensors")
    for layer in cmp["layers"]:
        xb = np.stack([vb.vector(m, layer["layer"]).astype(np.float64) for m in cmp["members"]])
        xa = np.stack([va.vector(m, layer["layer"]).astype(np.float64) for m in cmp["members"]])
        e = xa[0] - xb[0]  # the assistant is the first member
        e /= np.linalg.norm(e)
        assert np.allclose(layer["shift_axis"]["along"], (xa - xb) @ e, atol=1e-9)
        assert np.allclose(layer["shift_axis"]["cos_after"], xa @ e / np.linalg.norm(xa, axis=1), atol=1e-9)
    card = (out / "README.md").read_text()
    assert "**Projection on the shift axis** e: the shift of `assistant`" in card
    assert "the first principal direction of the 12 members' shifts" in card
    shift = by_pair[("a_base", "a_em")]["layers"][0]["shift_axis"]["along"][1]
    assert "| 7 | confab | " in card and f"| {shift:.3f} |" in card


def test_a_shift_axis_that_is_not_a_member_is_refused(tmp_path: Path) -> None:
    run = copy_example(RUN, tmp_path)
    path = run / "hubkit.yaml"
    path.write_text(path.read_text().replace("axis: assistant", "axis: asistant"))
    report = validate_run(run)
    [problem] = [p for p in report.problems if "axis" in p]
    assert "compare[0].axis" in problem and "'asistant'" in problem and "principal" in problem
    assert "\n" not in problem


def test_a_shift_axis_must_be_a_string(tmp_path: Path) -> None:
    from hubkit.errors import ManifestError

    run = copy_example(RUN, tmp_path)
    path = run / "hubkit.yaml"
    path.write_text(path.read_text().replace("axis: assistant", "axis: [assistant, villain]"))
    with pytest.raises(ManifestError, match=r"hubkit\.yaml:53: compare\[0\]\.axis must be a string, got a list"):
        validate_run(run)
