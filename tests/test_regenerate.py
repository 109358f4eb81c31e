"""hubkit.regenerate: recipe + base checkpoint → a verified model folder, with provenance refused early."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hubkit.errors import DirectionError, HubError, HubkitError, PlanError, ProvenanceError
from hubkit.formats.directions import DirectionSet, write_canonical
from hubkit.formats.safetensors_io import INDEX_NAME
from hubkit.publish.push import regenerate_and_push
from hubkit.weights import plan as wplan
from hubkit.weights import regenerate as rg
from tests import tiny_models as tm
from tests.helpers import without_numba

BASE_ID = "Qwen/Qwen3.5-4B"


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tm.save_qwen3_5(
        tmp_path_factory.mktemp("base") / "qwen3_5", dtype=torch.bfloat16, max_shard_size="200KB"
    )


def make_recipe(
    root: Path,
    *,
    d: int = tm.HIDDEN,
    layer: int = 2,
    convention: str = "block",
    targets: list[str] | None = None,
    shards: dict[str, str] | None = None,
    **regen: object,
) -> Path:
    """A staged tree as the publish side writes it: hubkit.json + the canonical direction file."""
    g = torch.Generator().manual_seed(11)
    layers = list(range(max(4, layer + 1)))
    ds = DirectionSet(
        "persona",
        {i: torch.randn(d, generator=g) for i in layers},
        selected_layer=layer,
        layer_convention=convention,
    )
    root.mkdir(parents=True, exist_ok=True)
    write_canonical(ds, root / "vectors" / "persona.safetensors")
    entry = {
        "direction": "persona",
        "layer": layer,
        "layer_convention": convention,
        "targets": targets or ["embed_tokens", "attn_out", "mlp_down"],
        "base_model": BASE_ID,
        "base_model_revision": None,
        **regen,
    }
    if shards:
        entry["shards_sha256"] = shards
    meta = {
        "hubkit_version": "0.1.0",
        "version": "v1",
        "run": {"title": "Persona vector", "base_model": BASE_ID, "base_model_revision": None},
        "files": [],
        "directions": [
            {
                "name": "persona",
                "file": "vectors/persona_dir.pt",
                "canonical": "vectors/persona.safetensors",
                "layers": layers,
                "d": d,
                "selected_layer": layer,
                "layer_convention": convention,
                "unit_norm": False,
            }
        ],
        "regenerate": entry,
        "owned": ["README.md", "hubkit.json"],
    }
    (root / "hubkit.json").write_text(json.dumps(meta, indent=2))
    return root


def test_regenerates_a_complete_folder(base: Path, tmp_path: Path) -> None:
    recipe = make_recipe(tmp_path / "staged")
    out = tmp_path / "out"
    res = rg.regenerate(recipe, base_model=base, out=out, progress=False)
    names = sorted(os.listdir(out))
    shards = sorted(p.name for p in base.glob("*.safetensors"))
    assert names == sorted(
        [
            "README.md",
            "config.json",
            "generation_config.json",
            INDEX_NAME,
            "tokenizer.json",
            "tokenizer_config.json",
            *shards,
        ]
    )
    assert (out / INDEX_NAME).read_bytes() == (base / INDEX_NAME).read_bytes()
    assert set(res.shards_sha256) == set(shards) and res.out == out
    assert res.verification == "not recorded" and res.orthogonal
    card = (out / "README.md").read_text()
    assert "base_model: Qwen/Qwen3.5-4B" in card and "Tied embeddings" in card
    assert "layer 2 (block convention)" in card
    assert all(sha in card for sha in res.shards_sha256.values())
    assert "origin can't be checked" in res.summary()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left

    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(out)
    assert model.config.model_type == "qwen3_5"


def test_record_then_verify_bit_identical_and_name_the_differing_shard(base: Path, tmp_path: Path) -> None:
    staged = make_recipe(tmp_path / "staged")
    recorded = rg.record_regeneration(staged, base)
    assert not (tmp_path / "staged" / "model.safetensors").exists()
    meta = json.loads((staged / "hubkit.json").read_text())
    meta["regenerate"]["shards_sha256"] = recorded
    (staged / "hubkit.json").write_text(json.dumps(meta))
    res = rg.regenerate(staged, base_model=base, out=tmp_path / "ok", progress=False)
    assert res.verification == "bit-identical" and res.shards_sha256 == recorded
    assert "bit-identical to the published recipe" in res.summary()
    assert "bit-identical to the published recipe" in (tmp_path / "ok" / "README.md").read_text()

    shard = sorted(recorded)[1]
    meta["regenerate"]["shards_sha256"] = {**recorded, shard: "0" * 64}
    (staged / "hubkit.json").write_text(json.dumps(meta))
    with pytest.raises(rg.VerificationFailed, match=shard) as exc:
        rg.regenerate(staged, base_model=base, out=tmp_path / "bad", progress=False)
    assert exc.value.result.differing == [shard] and (tmp_path / "bad").is_dir()
    res = rg.regenerate(staged, base_model=base, out=tmp_path / "bad2", verify=False, progress=False)
    assert res.verification == "differs" and res.differing == [shard]


def test_plan_only_writes_nothing(base: Path, tmp_path: Path) -> None:
    res = rg.regenerate(
        make_recipe(tmp_path / "staged"), base_model=base, out=tmp_path / "out", plan_only=True
    )
    assert res.out is None and not (tmp_path / "out").exists()
    assert res.plan.counts() == {"embed_tokens": 1, "attn_out": 4, "mlp_down": 4}
    assert "linear_attn.out_proj" in res.plan.render()


@pytest.mark.parametrize(
    ("kwargs", "base_model", "pattern"),
    [
        ({"d": 32}, None, r"hidden_size 64 ≠ d=32"),
        ({"layer": 3, "convention": "hidden_states"}, None, None),  # block 2: fine
        ({"layer": 9}, None, r"recipe layer 9 \(block\) is block 9, the model has blocks 0–3"),
        ({"model_type": "llama"}, None, r"model_type qwen3_5 ≠ llama"),
        ({}, "Other/Model", r"--base-model Other/Model ≠ Qwen/Qwen3.5-4B"),
    ],
)
def test_provenance_refusals(
    base: Path, tmp_path: Path, kwargs: dict, base_model: str | None, pattern: str | None
) -> None:
    staged = make_recipe(tmp_path / "staged", **kwargs)
    out = tmp_path / "out"
    if pattern is None:
        assert rg.regenerate(staged, base_model=base, out=out, progress=False).orthogonal
        return
    with pytest.raises(ProvenanceError, match=pattern):
        rg.regenerate(staged, base_model=base_model or base, out=out, progress=False)
    assert not out.exists()


def test_snapshot_of_another_revision_is_refused(base: Path, tmp_path: Path) -> None:
    snap = tmp_path / "hub" / "models--Qwen--Qwen3.5-4B" / "snapshots" / ("a" * 40)
    shutil.copytree(base, snap)
    staged = make_recipe(tmp_path / "staged")
    meta = json.loads((staged / "hubkit.json").read_text())
    meta["regenerate"]["base_model_revision"] = "b" * 40
    (staged / "hubkit.json").write_text(json.dumps(meta))
    with pytest.raises(ProvenanceError, match="at aaaaaaaaaaaa, the recipe records revision bbbbbbbbbbbb"):
        rg.regenerate(staged, base_model=snap, out=tmp_path / "out", progress=False)
    other = tmp_path / "hub2" / "models--meta--Llama" / "snapshots" / ("a" * 40)
    shutil.copytree(base, other)
    with pytest.raises(ProvenanceError, match="a snapshot of meta/Llama"):
        rg.regenerate(staged, base_model=other, out=tmp_path / "out", progress=False)


def test_a_local_snapshot_named_folder_is_not_called_verified(base: Path, tmp_path: Path) -> None:
    """A folder laid out like the Hub cache's snapshot says a repo and commit by its name only: the card says
    so, and a note says its files were not checked (a fetched snapshot is)."""
    snap = tmp_path / "hub" / "models--Qwen--Qwen3.5-4B" / "snapshots" / ("a" * 40)
    shutil.copytree(base, snap)
    res = rg.regenerate(make_recipe(tmp_path / "staged"), base_model=snap, out=tmp_path / "out", progress=False)
    card = (tmp_path / "out" / "README.md").read_text()
    assert "by its folder's name" in card and "resolved and fetched" not in card
    assert any("its files were not checked against the Hub" in n for n in res.notes)


def test_a_base_file_leading_outside_the_folder_is_refused(base: Path, tmp_path: Path) -> None:
    """A symbolic link in the base folder (a tokenizer to /etc/passwd, a shard elsewhere) would be read, and
    copied into the output, as the model's: refused before anything is written."""
    staged = make_recipe(tmp_path / "staged")
    outside = tmp_path / "outside.txt"
    outside.write_text("secret")
    for name in ("tokenizer.model", "config.json"):
        folder = tmp_path / f"base-{name}"
        shutil.copytree(base, folder)
        (folder / name).unlink(missing_ok=True)
        (folder / name).symlink_to(outside)
        with pytest.raises(ProvenanceError, match=f"{name}: leads outside the base folder"):
            rg.regenerate(staged, base_model=folder, out=tmp_path / "out", progress=False)
        assert not (tmp_path / "out").exists()
    # a folder of links into a Hub cache's content store (as a snapshot is) is a downloaded model: accepted
    blobs = tmp_path / "cache" / "models--Qwen--Qwen3.5-4B" / "blobs"
    blobs.mkdir(parents=True)
    linked = tmp_path / "linked"
    linked.mkdir()
    for i, f in enumerate(sorted(base.iterdir())):
        shutil.copyfile(f, blobs / f"{i:040x}")
        (linked / f.name).symlink_to(blobs / f"{i:040x}")
    assert rg.regenerate(staged, base_model=linked, out=tmp_path / "out", progress=False).orthogonal


def test_non_finite_results_are_refused_and_nothing_is_written(base: Path, tmp_path: Path) -> None:
    """A weight that overflows the storage dtype, or a NaN already in a targeted base tensor, would write NaN or
    inf: refused in one line naming the tensor, no folder (and no hashes recorded)."""
    with pytest.raises(PlanError, match="would write NaN or inf .*overflows the storage dtype"):
        rg.regenerate(make_recipe(tmp_path / "big", weight=1e300), base_model=base, out=tmp_path / "o1",
                      progress=False)
    assert not (tmp_path / "o1").exists()
    from safetensors.torch import load_file, save_file

    poisoned = tmp_path / "nan-base"
    shutil.copytree(base, poisoned)
    plan = wplan.plan_checkpoint(poisoned)
    op = next(o for o in plan.ops if o.target == "mlp_down")
    shard = poisoned / op.shard
    tensors = load_file(shard)
    tensors[op.name][1, 2] = float("nan")
    save_file(tensors, str(shard), metadata={"format": "pt"})
    with pytest.raises(PlanError, match=f"{op.name}.*would write NaN or inf .*base tensor already holds"):
        rg.regenerate(make_recipe(tmp_path / "staged"), base_model=poisoned, out=tmp_path / "o2", progress=False)
    assert not (tmp_path / "o2").exists()
    with pytest.raises(PlanError, match="would write NaN or inf"):
        rg.record_regeneration(make_recipe(tmp_path / "staged2"), poisoned)


@pytest.mark.parametrize(("config", "pattern"), [
    ([1, 2], "not a JSON object"),
    ("[" * 100_000 + "]" * 100_000, "not valid JSON"),
    ({"num_hidden_layers": 10**12}, "out of range"),
    ({"hidden_size": 0}, "out of range"),
    ({"model_type": 5}, "needs model_type"),
])
def test_a_hostile_config_is_one_line_and_quick(base: Path, tmp_path: Path, config: object, pattern: str) -> None:
    folder = tmp_path / "b"
    shutil.copytree(base, folder)
    if isinstance(config, dict):
        cfg = json.loads((base / "config.json").read_text())
        (cfg.get("text_config") or cfg).update(config)
        cfg.update({k: v for k, v in config.items() if k == "model_type"})
        text = json.dumps(cfg)
    else:
        text = config if isinstance(config, str) else json.dumps(config)
    (folder / "config.json").write_text(text)
    with pytest.raises(HubkitError, match=pattern):
        rg.regenerate(make_recipe(tmp_path / "staged"), base_model=folder, out=tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_tampered_direction_file_is_refused(base: Path, tmp_path: Path) -> None:
    staged = make_recipe(tmp_path / "staged")
    meta = json.loads((staged / "hubkit.json").read_text())
    size = (staged / "vectors/persona.safetensors").stat().st_size
    meta["files"] = [
        {"path": "vectors/persona.safetensors", "size": size, "sha256": "0" * 64, "kind": "direction"}
    ]
    (staged / "hubkit.json").write_text(json.dumps(meta))
    with pytest.raises(ProvenanceError, match="vectors/persona.safetensors: sha256"):
        rg.regenerate(staged, base_model=base, out=tmp_path / "out", progress=False)


def test_recipe_problems_are_one_line_errors(base: Path, tmp_path: Path) -> None:
    with pytest.raises(HubkitError, match="neither hubkit.json"):
        rg.regenerate(tmp_path, base_model=base, out=tmp_path / "o")
    with pytest.raises(HubkitError, match="not a Hub repo id"):
        rg.regenerate("no such thing", base_model=base, out=tmp_path / "o")
    staged = make_recipe(tmp_path / "staged")
    meta = json.loads((staged / "hubkit.json").read_text())
    meta["regenerate"]["layer"] = 7  # the file has layers 0-3
    (staged / "hubkit.json").write_text(json.dumps(meta))
    with pytest.raises(DirectionError, match="no layer 7"):
        rg.regenerate(staged, base_model=base, out=tmp_path / "o")
    del meta["regenerate"]
    (staged / "hubkit.json").write_text(json.dumps(meta))
    with pytest.raises(HubkitError, match="no 'regenerate' recipe"):
        rg.regenerate(staged, base_model=base, out=tmp_path / "o")


def test_a_cpu_regeneration_never_imports_torch(base: Path, tmp_path: Path) -> None:
    """Recipe, provenance, plan and the CPU compute are torch-free: on a GPU machine importing torch's CUDA build
    takes longer than the rest of a warm run. The bytes equal an in-process run's (which has torch loaded)."""
    staged = make_recipe(tmp_path / "staged")
    code = (
        "import sys; from hubkit.weights import regenerate as rg\n"
        f"res = rg.regenerate({str(staged)!r}, base_model={str(base)!r}, out={str(tmp_path / 'fresh')!r}, "
        "progress=False)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch')[:3], res.shards_sha256)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    here = rg.regenerate(staged, base_model=base, out=tmp_path / "here", progress=False)
    assert done.stdout.strip() == f"[] {here.shards_sha256}"


def test_regenerate_says_when_numba_is_missing(base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without numba the run still succeeds (the numpy kernels, the same bytes) and says why it was slow and how
    to mend it; with numba it says nothing of the kind."""
    recipe = make_recipe(tmp_path / "staged")
    with_numba = rg.regenerate(recipe, base_model=base, out=tmp_path / "a", progress=False)
    without_numba(monkeypatch)
    without = rg.regenerate(recipe, base_model=base, out=tmp_path / "b", progress=False)
    assert with_numba.shards_sha256 == without.shards_sha256
    assert not any("numba could not be imported" in n for n in with_numba.notes)
    assert any("numba could not be imported" in n and "pip install numba" in n for n in without.notes)


def test_a_bad_direction_file_is_a_one_line_error_and_leaves_nothing(base: Path, tmp_path: Path) -> None:
    staged = make_recipe(tmp_path / "staged")
    vec = staged / "vectors" / "persona.safetensors"
    vec.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}")
    with pytest.raises(DirectionError, match="vectors/persona.safetensors: unreadable safetensors header"):
        rg.regenerate(staged, base_model=base, out=tmp_path / "out", progress=False)
    write_canonical(DirectionSet("persona", {2: torch.full((tm.HIDDEN,), float("nan"))}, selected_layer=2), vec)
    with pytest.raises(DirectionError, match="vectors/persona.safetensors: layer 2 has non-finite values"):
        rg.regenerate(staged, base_model=base, out=tmp_path / "out", progress=False)
    assert sorted(os.listdir(tmp_path)) == ["staged"]


def test_a_bad_push_to_id_fails_before_any_work(base: Path, tmp_path: Path) -> None:
    with pytest.raises(HubkitError, match="--push-to 'nobody' must look like owner/name"):
        regenerate_and_push(make_recipe(tmp_path / "staged"), base_model=base, out=tmp_path / "out",
                            push_to="nobody")
    assert not (tmp_path / "out").exists()


def test_example_run_regenerates_from_its_manifest_and_staged_tree(tmp_path: Path) -> None:
    """artifacts/refusal-abliteration: layer 22 (hidden_states) of a d=64 direction, Qwen3.5 base."""
    from hubkit.publish.commit import stage_run

    run_dir = Path(__file__).resolve().parents[1] / "artifacts" / "refusal-abliteration"
    deep = tm.save_qwen3_5(tmp_path / "deep", layers=24)  # hidden_states 22 = block 21
    staged = tmp_path / "staged"
    stage_run(run_dir, staged)
    from_run = rg.record_regeneration(run_dir, deep)
    res = rg.regenerate(staged, base_model=deep, out=tmp_path / "out", progress=False)
    assert res.shards_sha256 == from_run
    assert res.recipe.layer == 22 and res.recipe.layer_convention == "hidden_states"
    assert res.plan.counts() == {"embed_tokens": 1, "attn_out": 24, "mlp_down": 24}
    with pytest.raises(ProvenanceError, match="is block 21, the model has blocks 0–3"):
        rg.regenerate(staged, base_model=tm.save_qwen3_5(tmp_path / "shallow"), out=tmp_path / "o2")


def test_hub_source_resolved_once_and_base_fetched_selectively(
    base: Path, tmp_path: Path, api, repo_id: str, hub, hf_cache: Path
) -> None:
    base_repo = repo_id + "-base"
    api.create_repo(base_repo)
    api.upload_folder(folder_path=str(base), repo_id=base_repo)
    api.upload_file(path_or_fileobj=b"not weights", path_in_repo="pytorch_model.bin", repo_id=base_repo)
    staged = make_recipe(tmp_path / "staged")
    meta = json.loads((staged / "hubkit.json").read_text())
    meta["regenerate"]["base_model"] = base_repo
    (staged / "hubkit.json").write_text(json.dumps(meta))
    api.create_repo(repo_id)
    commit = api.upload_folder(folder_path=str(staged), repo_id=repo_id).oid
    api.create_tag(repo_id, tag="v1", revision=commit)
    meta["regenerate"]["layer"] = 1  # a later commit on main must not leak into v1
    api.upload_file(path_or_fileobj=json.dumps(meta).encode(), path_in_repo="hubkit.json", repo_id=repo_id)

    res = rg.regenerate(repo_id, revision="v1", out=tmp_path / "out", progress=False)
    assert res.recipe.source_revision == commit and res.recipe.layer == 2
    assert res.base.repo_id == base_repo and res.base.commit
    assert not list(hf_cache.rglob("pytorch_model.bin"))
    assert f"{repo_id} @ {commit}" in (tmp_path / "out" / "README.md").read_text()
    local = rg.regenerate(staged, base_model=base, out=tmp_path / "local", progress=False)
    assert local.shards_sha256 == res.shards_sha256

    with pytest.raises(HubError, match="no such revision"):
        rg.regenerate(repo_id, revision="v9", out=tmp_path / "o")


def test_cli_plan_and_exit_1_on_mismatch(base: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from hubkit.cli import main

    staged = make_recipe(tmp_path / "staged", shards={"model-00001-of-00099.safetensors": "0" * 64})
    runner = CliRunner()
    res = runner.invoke(main, ["regenerate", str(staged), "--base-model", str(base), "--plan"])
    assert res.exit_code == 0, res.output
    assert "linear_attn.out_proj" in res.output and not (tmp_path / "out").exists()
    args = ["regenerate", str(staged), "--base-model", str(base), "--no-progress", "--out"]
    res = runner.invoke(main, [*args, str(tmp_path / "out")])
    assert res.exit_code == 1 and "differ from the published recipe" in res.output
    res = runner.invoke(main, [*args, str(tmp_path / "out2"), "--no-verify"])
    assert res.exit_code == 0 and "differs from the published recipe in: " in res.output


def test_push_to_publishes_the_folder(base: Path, tmp_path: Path, api, repo_id: str, hub) -> None:
    res = regenerate_and_push(
        make_recipe(tmp_path / "staged"),
        base_model=base,
        out=tmp_path / "out",
        push_to=repo_id,
        progress=False,
    )
    files = set(api.list_repo_files(repo_id))
    assert set(res.shards_sha256) | {"README.md", "config.json", INDEX_NAME} <= files
    meta = json.loads(Path(api.hf_hub_download(repo_id, "hubkit.json")).read_text())
    shard, sha = next(iter(res.shards_sha256.items()))
    assert {"path": shard, "sha256": sha}.items() <= next(
        f for f in meta["files"] if f["path"] == shard
    ).items()
    assert "bit-identical" not in (tmp_path / "out" / "README.md").read_text()  # nothing recorded to compare


def test_a_killed_runs_leftover_is_cleaned_by_the_next_run_in_that_folder(base: Path, tmp_path: Path) -> None:
    """kill -9 leaves `.OUT.hubkit-tmp-PID`; the next run with any --out in that parent removes it."""
    dead = tmp_path / ".other-out.hubkit-tmp-999999"  # no such process
    dead.mkdir()
    (dead / "model-00001-of-00002.safetensors").write_bytes(b"half a shard")
    alive = tmp_path / f".mine.hubkit-tmp-{os.getpid()}"
    alive.mkdir()
    rg.regenerate(make_recipe(tmp_path / "staged"), base_model=base, out=tmp_path / "fresh", progress=False)
    assert not dead.exists() and alive.exists() and (tmp_path / "fresh" / "config.json").is_file()
