"""The whole life of a run, through the real huggingface_hub client and the test Hub:

publish an example run with its regeneration recorded → v1; a downstream user loads the direction by tag,
rebuilds the weights from the repo id (bit-identical to the recorded shards), checks them against inference-
time ablation with the loaded direction, pushes the rebuilt folder, and exports a llama.cpp control vector.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from hubkit.cli import main
from tests.helpers import copy_example
from tests.tiny_models import save_qwen3_5


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hf_cache: Path) -> None:
    monkeypatch.setenv("HUBKIT_CACHE", str(tmp_path / "hubkit-cache"))
    monkeypatch.setenv("HUBKIT_RETRY_WAIT", "0")


def cli(*args: str) -> str:
    r = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert r.exit_code == 0, r.output + r.stderr
    return r.output


def test_publish_regenerate_load_ablate_push_export(hub, api, repo_id, tmp_path):
    import gguf
    from transformers import AutoConfig

    import hubkit
    from hubkit.publish.commit import publish
    from hubkit.weights.regenerate import regenerate

    run = copy_example("persona-vector", tmp_path)  # layer 22 (block), d=64: needs 23+ blocks
    base = save_qwen3_5(tmp_path / "base", layers=24, max_shard_size="40KB")
    assert len(list(base.glob("*.safetensors"))) > 1

    first = publish(run, repo_id=repo_id, record_regeneration=base, progress=False)
    assert first.version == "v1" and first.tagged
    recipe = json.loads(hub.read_file(repo_id, "hubkit.json", "v1", "model"))["regenerate"]
    assert recipe["model_type"] == "qwen3_5" and len(recipe["shards_sha256"]) > 1

    # the downstream side: the vector by tag, no pickle
    r = hubkit.load_direction(repo_id, revision="v1")
    original = torch.load(run / "vectors" / "persona_dir.pt", weights_only=True)
    assert torch.equal(r, original.float())

    # rebuild from the repo id with a local base; the recorded shard hashes make it verifiable
    res = regenerate(repo_id, revision="v1", base_model=base, out=tmp_path / "rebuilt", progress=False)
    assert res.verification == "bit-identical"
    assert sorted(p.name for p in (tmp_path / "rebuilt").glob("*.safetensors")) == \
        sorted(p.name for p in base.glob("*.safetensors"))

    # the two implementations check each other: ablating r at inference == the rebuilt weights
    from transformers import Qwen3_5ForConditionalGeneration

    assert AutoConfig.from_pretrained(tmp_path / "rebuilt").model_type == "qwen3_5"
    model = Qwen3_5ForConditionalGeneration.from_pretrained(base).eval()
    rebuilt = Qwen3_5ForConditionalGeneration.from_pretrained(tmp_path / "rebuilt").eval()
    ids = torch.randint(0, 200, (1, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        plain = model(input_ids=ids).logits
        with hubkit.ablate(model, r):
            hooked = model(input_ids=ids).logits
        weights = rebuilt(input_ids=ids).logits
    assert (plain - weights).abs().max() > 1e-3
    torch.testing.assert_close(hooked, weights, atol=5e-5, rtol=1e-5)

    # push the rebuilt folder, then re-running the same regenerate+push changes nothing
    cli("regenerate", repo_id, "--revision", "v1", "--base-model", str(base), "--out", str(tmp_path / "again"),
        "--push-to", repo_id + "-weights", "--no-progress")
    assert "model.safetensors.index.json" in hub.list_files(repo_id + "-weights")
    assert [t.name for t in api.list_repo_refs(repo_id + "-weights").tags] == ["v1"]

    # llama.cpp control vector from the repo
    out = tmp_path / "persona.gguf"
    cli("export", "gguf", repo_id, "-o", str(out))
    reader = gguf.GGUFReader(str(out))
    names = [t.name for t in reader.tensors]
    assert names == ["direction.22"]
    assert torch.allclose(torch.from_numpy(reader.tensors[0].data.copy()), r)
