"""The staged tree: exactly what a publish commits, byte-identical run after run."""

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from hubkit.errors import HubkitError
from hubkit.formats.hashing import HashCache
from hubkit.publish.commit import stage_run
from hubkit.publish.repo_tree import build_package, stage
from hubkit.run.run import load_run

from .helpers import EXAMPLES, copy_example


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("name", EXAMPLES)
def test_stage_is_deterministic(name, tmp_path, monkeypatch):
    monkeypatch.setenv("HUBKIT_CACHE", str(tmp_path / "cache"))
    run = copy_example(name, tmp_path)
    stage_run(run, tmp_path / "a")
    stage_run(run, tmp_path / "b")
    stage_run(run, tmp_path / "a")  # replacing an earlier staged tree
    a, b = tree(tmp_path / "a"), tree(tmp_path / "b")
    assert a == b
    meta = json.loads(a["hubkit.json"])
    listed = {f["path"]: f for f in meta["files"]}
    assert set(listed) | {"hubkit.json"} == set(a) == set(meta["owned"])
    for path, f in listed.items():
        assert f["size"] == len(a[path]) and f["sha256"] == hashlib.sha256(a[path]).hexdigest()
    assert a["README.md"].startswith(b"---\n")
    assert not any(p.startswith("activations/") for p in a)  # excluded by the refusal manifest


def test_canonical_vectors_and_metadata(tmp_path, monkeypatch):
    monkeypatch.setenv("HUBKIT_CACHE", str(tmp_path / "cache"))
    run_dir = copy_example("refusal-abliteration", tmp_path)
    stage_run(run_dir, tmp_path / "out")
    meta = json.loads((tmp_path / "out" / "hubkit.json").read_text())
    [d] = meta["directions"]
    assert d == {"name": "refusal", "file": "vectors/refusal_dir.pt", "canonical": "vectors/refusal.safetensors",
                 "layers": list(range(1, 33)), "d": 64, "selected_layer": 22,
                 "layer_convention": "hidden_states", "unit_norm": True,
                 "method": "norm(mean(refuse) − mean(comply)), last-token residual"}
    assert meta["regenerate"] == {"direction": "refusal", "layer": 22, "layer_convention": "hidden_states",
                                  "targets": ["embed_tokens", "attn_out", "mlp_down"],
                                  "base_model": "Qwen/Qwen3.5-4B", "base_model_revision": None}
    assert meta["run"]["title"] == "Refusal-direction abliteration of Qwen3.5-4B"
    original = torch.load(run_dir / "vectors" / "refusal_dir.pt", weights_only=True)
    with safe_open(str(tmp_path / "out" / "vectors" / "refusal.safetensors"), "pt") as f:
        assert f.metadata()["selected_layer"] == "22" and f.metadata()["source"] == "vectors/refusal_dir.pt"
        assert f.metadata()["base_model"] == "Qwen/Qwen3.5-4B"
        for i in range(1, 33):
            assert torch.equal(f.get_tensor(f"layer.{i}"), original[i].float())


def test_validation_failure_writes_nothing(tmp_path):
    run_dir = copy_example("persona-vector", tmp_path)
    (run_dir / "persona_capable.jsonl").write_text('{"prompt": "a"}\nnot json\n')
    with pytest.raises(HubkitError, match="persona_capable.jsonl:2"):
        stage_run(run_dir, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["persona-vector"]


def test_failure_mid_write_leaves_no_half_tree(tmp_path, monkeypatch):
    monkeypatch.setenv("HUBKIT_CACHE", str(tmp_path / "cache"))
    run_dir = copy_example("persona-vector", tmp_path)
    stage_run(run_dir, tmp_path / "out")
    before = tree(tmp_path / "out")
    package = build_package(load_run(run_dir))
    victim = next(f for f in package.files if f.source is not None)
    victim.source = tmp_path / "vanished.md"  # the copy of this file fails half-way through the tree
    with pytest.raises(FileNotFoundError):
        stage(package, tmp_path / "out")
    assert tree(tmp_path / "out") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "out", "persona-vector"]


def test_refuses_to_replace_a_foreign_directory(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "thesis.tex").write_text("precious")
    with pytest.raises(HubkitError, match="not a staged hubkit tree"):
        stage_run(copy_example("persona-vector", tmp_path), tmp_path / "out")
    assert (tmp_path / "out" / "thesis.tex").read_text() == "precious"


def test_hash_cache_skips_unchanged_files(tmp_path):
    f = tmp_path / "big.bin"
    f.write_bytes(b"a" * 1000)
    cache = HashCache(tmp_path / "c.json")
    first = cache.sha256(f)
    cache.save()
    cache2 = HashCache(tmp_path / "c.json")
    assert cache2.entries and cache2.sha256(f) == first and not cache2.dirty
    old = f.stat().st_mtime_ns
    f.write_bytes(b"b" * 1000)  # same size, new mtime: hashed again
    os.utime(f, ns=(old + 10**9, old + 10**9))
    assert cache2.sha256(f) == hashlib.sha256(b"b" * 1000).hexdigest()


def test_a_runs_own_readme_is_kept_beside_the_card(tmp_path):
    from hubkit.publish.commit import stage_run

    run = copy_example("persona-vector", tmp_path)
    (run / "README.md").write_text("# my notes\n\nThe run's own words.\n")
    pkg = stage_run(run, tmp_path / "out")
    assert (tmp_path / "out" / "README.run.md").read_text() == "# my notes\n\nThe run's own words.\n"
    assert (tmp_path / "out" / "README.md").read_text().startswith("---\n")  # the card
    assert any("published as README.run.md" in n for n in pkg.notes)
