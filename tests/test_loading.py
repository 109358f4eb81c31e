"""load_direction / load_directions / pull: local trees, the Hub-compatible test server, the HF cache."""

from __future__ import annotations

import hashlib
import itertools
import json
import shutil
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from hubkit.errors import DirectionError, HubError, PickleRefused
from hubkit.formats.directions import read_direction_file, write_canonical
from hubkit.use.loading import LoadedDirections, load_direction, load_directions

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
EXAMPLES = ("capability-vector-v1", "persona-vector", "refusal-abliteration")


def example_direction(example: str):
    """The example run's direction as hubkit reads it from the run (its manifest says layer/convention)."""
    run = ARTIFACTS / example
    spec = yaml.safe_load((run / "hubkit.yaml").read_text())["directions"][0]
    ds = read_direction_file(run / spec["file"], name=spec["name"], layer=spec.get("layer"),
                             layer_convention=spec.get("layer_convention", "block"))
    ds.base_model = yaml.safe_load((run / "hubkit.yaml").read_text())["base_model"]
    return ds, spec


def stage_tree(example: str, out: Path, *, canonical: bool = True, negate: bool = False) -> Path:
    """A repo tree as publish lays it out: the run's original direction file, the canonical safetensors and
    hubkit.json (files with size/sha256, directions). ``canonical=False``: only the original file;
    ``negate``: the canonical vectors are negated (a "v2" with other values)."""
    run = ARTIFACTS / example
    ds, spec = example_direction(example)
    if negate:
        ds.layers = {k: -v for k, v in ds.layers.items()}
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run / "hubkit.yaml", out / "hubkit.yaml")
    (out / spec["file"]).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run / spec["file"], out / spec["file"])
    (out / "README.md").write_text(f"# {example}\n")
    if not canonical:
        return out
    rel = f"vectors/{ds.name}.safetensors"
    write_canonical(ds, out / rel)
    files = []
    for p in sorted(out.rglob("*")):
        if p.is_file():
            data = p.read_bytes()
            files.append({"path": p.relative_to(out).as_posix(), "size": len(data),
                          "sha256": hashlib.sha256(data).hexdigest(), "kind": "file"})
    meta = {
        "hubkit_version": "0.1.0", "version": "v1",
        "run": {"title": example, "base_model": ds.base_model},
        "files": files,
        "directions": [{"name": ds.name, "file": spec["file"], "canonical": rel, "layers": ds.layer_ids,
                        "d": ds.d, "selected_layer": ds.selected_layer,
                        "layer_convention": ds.layer_convention,
                        "unit_norm": ds.unit_norm}],
        "regenerate": None, "owned": [f["path"] for f in files] + ["hubkit.json"],
    }
    (out / "hubkit.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out


def refuse_unpickling(monkeypatch) -> None:
    """From now on in this test, any torch.load / pickle.load is a failure."""
    import pickle

    def refuse(*a, **k):
        raise AssertionError("something was unpickled")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)


@pytest.fixture
def no_unpickling(monkeypatch) -> None:
    refuse_unpickling(monkeypatch)


def _assert_same(loaded: LoadedDirections, expected) -> None:
    assert loaded.layer_ids == expected.layer_ids
    for i in expected.layer_ids:
        assert loaded.layers[i].dtype == torch.float32
        assert torch.equal(loaded.layers[i], expected.layers[i].float())
    assert loaded.selected_layer == expected.selected_layer
    assert loaded.layer_convention == expected.layer_convention


# --------------------------------------------------------------------------- local trees


@pytest.fixture(scope="module")
def staged(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("staged")
    return {ex: stage_tree(ex, root / ex) for ex in EXAMPLES}


@pytest.fixture(scope="module")
def expected() -> dict:
    return {ex: example_direction(ex)[0] for ex in EXAMPLES}


@pytest.mark.parametrize("example", EXAMPLES)
def test_local_tree_loads_every_example_format(example, staged, expected, no_unpickling):
    loaded = load_directions(staged[example])
    _assert_same(loaded, expected[example])
    assert loaded.base_model == "Qwen/Qwen3.5-4B"
    assert loaded.commit is None and loaded.repo_id is None
    assert loaded.declared_unit_norm == expected[example].unit_norm
    vec = load_direction(staged[example])
    assert vec.shape == (64,) and vec.dtype == torch.float32
    assert torch.equal(vec, expected[example].vector())


def test_layer_argument_selects_and_validates(staged, expected):
    cap = expected["capability-vector-v1"]
    assert torch.equal(load_direction(staged["capability-vector-v1"], layer=5), cap.layers[5])
    assert load_directions(staged["capability-vector-v1"], layer=5).selected_layer == 5
    with pytest.raises(DirectionError, match="no layer 99"):
        load_direction(staged["capability-vector-v1"], layer=99)
    refusal = load_directions(staged["refusal-abliteration"])
    assert refusal.layer_convention == "hidden_states" and refusal.selected_layer == 22
    assert 0 not in refusal.layers  # hidden_states numbering starts at 1 for this run


def test_corrupted_canonical_file_is_caught_by_sha256(staged, tmp_path):
    tree = shutil.copytree(staged["persona-vector"], tmp_path / "t")
    ds = example_direction("persona-vector")[0]
    ds.layers = {k: -v for k, v in ds.layers.items()}
    write_canonical(ds, tree / "vectors" / "persona.safetensors")  # same size, other bytes
    with pytest.raises(DirectionError, match="sha256"):
        load_direction(tree)


def test_pickle_only_tree_is_refused_with_what_to_ask_for(tmp_path, monkeypatch):
    tree = stage_tree("capability-vector-v1", tmp_path / "t", canonical=False)
    refuse_unpickling(monkeypatch)
    with pytest.raises(PickleRefused, match=r"vectors/dir\.pt.*hubkit publish.*safetensors"):
        load_direction(tree)


def test_plain_safetensors_and_npy_without_hubkit_json(tmp_path, no_unpickling):
    from safetensors.torch import save_file

    v = torch.randn(3, 64)
    save_file({"dir": v}, str(tmp_path / "dir.safetensors"))
    loaded = load_directions(tmp_path)
    assert loaded.layer_ids == [0, 1, 2] and torch.equal(loaded.layers[2], v[2])
    assert torch.equal(load_direction(tmp_path, layer=1), v[1])
    np.save(tmp_path / "other.npy", v[0].numpy())
    with pytest.raises(DirectionError, match="pass name="):
        load_direction(tmp_path)
    assert torch.equal(load_direction(tmp_path, name="other", layer=7), v[0])
    assert torch.equal(load_direction(tmp_path / "other.npy", layer=7), v[0])  # a single local file


def test_several_directions_need_a_name(staged, tmp_path):
    tree = shutil.copytree(staged["persona-vector"], tmp_path / "t")
    meta = json.loads((tree / "hubkit.json").read_text())
    meta["directions"].append(dict(meta["directions"][0], name="other"))
    (tree / "hubkit.json").write_text(json.dumps(meta))
    with pytest.raises(DirectionError, match="persona, other.*pass name="):
        load_direction(tree)
    assert load_directions(tree, name="other").name == "other"
    with pytest.raises(DirectionError, match="no direction 'nope'"):
        load_direction(tree, name="nope")


def test_revision_is_refused_for_a_local_dir(staged):
    with pytest.raises(HubError, match="revision"):
        load_direction(staged["persona-vector"], revision="v1")


# --------------------------------------------------------------------- the Hub (test server) and its cache


_COUNTER = itertools.count(1)


@pytest.fixture
def rid() -> str:
    """A fresh repo id: conftest's ``repo_id`` can produce '--' for long test names, which the client
    rejects."""
    return f"tester/loading-{next(_COUNTER)}-{uuid.uuid4().hex[:8]}"


def _publish(api, repo_id: str, tree: Path, tag: str | None) -> str:
    api.create_repo(repo_id, exist_ok=True)
    info = api.upload_folder(folder_path=str(tree), repo_id=repo_id, commit_message=f"publish {tag or ''}")
    if tag:
        api.create_tag(repo_id, tag=tag, revision=info.oid)
    return info.oid


@pytest.mark.parametrize("example", EXAMPLES)
def test_hub_round_trip_by_tag_by_commit_and_offline(example, staged, expected, hub, api, rid, hf_cache,
                                                     tmp_path, monkeypatch, fast_retries):
    repo_id = rid
    from huggingface_hub import constants

    v1 = _publish(api, repo_id, staged[example], "v1")
    v2 = _publish(api, repo_id, stage_tree(example, tmp_path / "v2", negate=True), "v2")
    refuse_unpickling(monkeypatch)

    hub.clear_log()
    by_tag = load_directions(repo_id, revision="v1")
    # The tag was resolved by one API call; every file came by commit, none by tag.
    assert len(hub.requests_matching("/revision/v1")) == 1
    assert not hub.requests_matching("/resolve/v1/")
    assert hub.requests_matching(f"/resolve/{v1}/vectors/")
    _assert_same(by_tag, expected[example])
    assert (by_tag.repo_id, by_tag.revision, by_tag.commit) == (repo_id, "v1", v1)
    assert by_tag.path.is_relative_to(hf_cache)
    _assert_same(load_directions(repo_id, revision=v1), expected[example])
    latest = load_directions(repo_id)  # main is v2
    assert latest.commit == v2 and torch.equal(latest.vector(), -expected[example].vector())
    assert torch.equal(load_direction(repo_id, revision="v2"), -expected[example].vector())

    # The Hub is down (5xx on the revision lookup): the recorded ref and the cached files answer.
    hub.fail_next(5, 503, "/revision/v1")
    _assert_same(load_directions(repo_id, revision="v1"), expected[example])
    assert hub.requests_matching("/revision/v1")[-1].status == 503

    # Offline: every request is refused, the cache answers (tag -> commit via the recorded ref).
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    n_requests = len(hub.requests)
    off = load_directions(repo_id, revision="v1")
    _assert_same(off, expected[example])
    assert off.commit == v1
    assert torch.equal(load_direction(repo_id, revision=v1), expected[example].vector())
    assert torch.equal(load_direction(repo_id), -expected[example].vector())
    assert len(hub.requests) == n_requests
    with pytest.raises(HubError, match="not in the local HF cache"):
        load_direction(repo_id + "-never-downloaded")


def test_hub_pickle_only_repo_is_refused(api, rid, hf_cache, tmp_path, monkeypatch):
    _publish(api, rid, stage_tree("persona-vector", tmp_path / "t", canonical=False), "v1")
    refuse_unpickling(monkeypatch)
    with pytest.raises(PickleRefused, match=r"persona_dir\.pt.*arbitrary code.*hubkit publish.*safetensors"):
        load_direction(rid, revision="v1")


def test_hub_plain_safetensors_repo_loads(api, rid, hf_cache, tmp_path, no_unpickling):
    from safetensors.torch import save_file

    v = torch.randn(64)
    (tmp_path / "t").mkdir()
    save_file({"direction": v}, str(tmp_path / "t" / "steer.safetensors"))
    (tmp_path / "t" / "model.safetensors").write_bytes(b"not a direction")  # checkpoints are never candidates
    commit = _publish(api, rid, tmp_path / "t", None)
    loaded = load_directions(rid, layer=12)
    assert loaded.commit == commit and loaded.selected_layer == 12 and torch.equal(loaded.vector(), v)


def test_hub_errors_are_one_line_hub_errors(api, rid, hf_cache, staged):
    with pytest.raises(HubError, match="repo tester/does-not-exist not found"):
        load_direction("tester/does-not-exist")
    _publish(api, rid, staged["persona-vector"], "v1")
    with pytest.raises(HubError, match="no such revision"):
        load_direction(rid, revision="v9")
    with pytest.raises(HubError, match="not a valid Hub repo id"):
        load_direction("./no/such/dir")


def test_pull_downloads_the_published_tree(api, rid, hf_cache, staged, tmp_path):
    from hubkit.use.loading import pull

    v1 = _publish(api, rid, staged["capability-vector-v1"], "v1")
    _publish(api, rid, stage_tree("capability-vector-v1", tmp_path / "v2", negate=True), "v2")
    res = pull(rid, revision="v1", out=tmp_path / "pulled")
    assert res.commit == v1 and res.path == tmp_path / "pulled"
    src = staged["capability-vector-v1"]
    want = sorted(p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file())
    assert [f for f in res.files if f != ".gitattributes"] == want
    for rel in want:
        assert (res.path / rel).read_bytes() == (src / rel).read_bytes()
    _assert_same(load_directions(res.path), expected_direction("capability-vector-v1"))  # loadable as a dir
    with pytest.raises(HubError, match="not an empty directory"):  # stale files would be re-published
        pull(rid, revision="v2", out=res.path)


def expected_direction(example: str):
    return example_direction(example)[0]


def test_cli_pull(api, rid, hf_cache, staged, tmp_path):
    from click.testing import CliRunner

    from hubkit.cli import main

    v1 = _publish(api, rid, staged["persona-vector"], "v1")
    res = CliRunner().invoke(main, ["pull", rid, "--revision", "v1", "-o", str(tmp_path / "p")])
    assert res.exit_code == 0, res.output
    assert res.output.startswith(f"pulled {rid}@{v1[:12]}") and (tmp_path / "p" / "hubkit.json").is_file()
    res = CliRunner().invoke(main, ["pull", rid, "--revision", "v7", "-o", str(tmp_path / "q")])
    assert res.exit_code == 1 and res.output.startswith("error: ") and "no such revision" in res.output


def test_pull_then_publish_the_pulled_folder(api, rid, hf_cache, staged, tmp_path, hub):
    """The documented round trip: pull leaves no .cache/ or .gitattributes, so publish takes the folder as a run."""
    from hubkit.publish.commit import publish
    from hubkit.use.loading import pull

    run = tmp_path / "run"
    shutil.copytree(ARTIFACTS / "persona-vector", run)
    first = publish(run, repo_id=rid, progress=False)
    res = pull(rid, revision=first.version, out=tmp_path / "pulled", progress=False)
    assert not (res.path / ".cache").exists() and not (res.path / ".gitattributes").exists()
    again = publish(res.path, repo_id=rid + "-copy", progress=False)
    assert again.version == "v1" and not again.nothing_changed


def test_a_failed_pull_verification_leaves_nothing(api, rid, hf_cache, staged, tmp_path):
    tree = tmp_path / "t"
    shutil.copytree(staged["persona-vector"], tree)
    meta = json.loads((tree / "hubkit.json").read_text())
    meta["files"][0]["sha256"] = "0" * 64
    (tree / "hubkit.json").write_text(json.dumps(meta))
    _publish(api, rid, tree, None)
    with pytest.raises(DirectionError, match="sha256"):
        from hubkit.use.loading import pull

        pull(rid, out=tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists() and not [p for p in tmp_path.iterdir() if ".out.hubkit" in p.name]
