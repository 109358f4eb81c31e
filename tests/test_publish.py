"""End-to-end publish tests: hubkit → the real huggingface_hub client → the Hub-compatible test server.

Every scenario of the publish issue: v1, v2 with history, unchanged re-publish, downloads by tag, snapshot,
racing publishers, a planted token, injected 500s and dropped connections, weights, the companion dataset.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from hubkit.cli import main
from hubkit.errors import HubError, HubkitError, SecretFound
from hubkit.hub import Hub
from hubkit.publish.commit import publish
from tests.helpers import ARTIFACTS, copy_example, write_run

EXAMPLE = "refusal-abliteration"


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hf_cache: Path) -> None:
    """Own hash cache, own HF download cache, instant hubkit back-off."""
    monkeypatch.setenv("HUBKIT_CACHE", str(tmp_path / "hubkit-cache"))
    monkeypatch.setenv("HUBKIT_RETRY_WAIT", "0")


@pytest.fixture
def run(tmp_path: Path) -> Path:
    return copy_example(EXAMPLE, tmp_path)


def pub(run: Path, repo_id: str, **kw):
    return publish(run, repo_id=repo_id, progress=False, **kw)


def writes(hub) -> list:
    """Requests that change something on the server (reads are GET/HEAD; preupload/paths-info are reads)."""
    return [r for r in hub.requests
            if r.method in ("POST", "PUT", "DELETE") and "/preupload/" not in r.path
            and "/paths-info/" not in r.path and "validate-yaml" not in r.path]


def meta(hub, repo_id: str, revision: str = "main", repo_type: str = "model") -> dict:
    return json.loads(hub.read_file(repo_id, "hubkit.json", revision, repo_type))


# --------------------------------------------------------------------------- versions and history


def test_v1_then_v2_with_history_and_downloads_by_tag(hub, repo_id, run, tmp_path):
    from huggingface_hub import hf_hub_download, snapshot_download

    r1 = pub(run, repo_id)
    assert (r1.version, r1.tagged, r1.nothing_changed) == ("v1", True, False)
    assert hub.head(repo_id, "v1") == r1.commit == hub.head(repo_id)
    files_v1 = hub.list_files(repo_id)
    assert {"README.md", "hubkit.json", "vectors/refusal.safetensors", "notes/smoke.log",
            "notes/full_par.log", ".gitattributes"} <= set(files_v1)
    assert "activations/refusal_acts.npz" not in files_v1  # excluded by the manifest
    m1 = meta(hub, repo_id)
    assert m1["version"] == "v1" and [h["version"] for h in m1["history"]] == ["v1"]
    assert m1["history"][0]["summary"].startswith("first publish")
    assert len(hub.requests_matching("/commit/", method="POST")) == 1

    (run / "notes" / "smoke.log").write_text("smoke: 3/3 ok after the parser fix\n")
    (run / "notes" / "full_par.log").unlink()
    (run / "notes" / "extra.md").write_text("# more notes\n")
    r2 = pub(run, repo_id, message="parser fix")
    assert (r2.version, r2.tagged) == ("v2", True)
    assert hub.head(repo_id, "v2") == r2.commit != r1.commit
    assert hub.head(repo_id, "v1") == r1.commit  # v1 did not move
    m2 = meta(hub, repo_id)
    hist = m2["history"]
    assert [h["version"] for h in hist] == ["v1", "v2"] and all(re.fullmatch(r"\d{4}-\d\d-\d\d", h["date"])
                                                                for h in hist)
    assert hist[1]["summary"] == ("parser fix (added notes/extra.md; changed notes/smoke.log; "
                                  "removed notes/full_par.log)")
    card = hub.read_file(repo_id, "README.md").decode()
    assert "v1" in card and "v2" in card and "removed notes/full_par.log" in card
    assert "notes/full_par.log" not in hub.list_files(repo_id)  # hubkit put it there: hubkit removes it
    assert sorted(r2.plan.deletes[i].path for i in range(len(r2.plan.deletes))) == ["notes/full_par.log"]

    old = Path(hf_hub_download(repo_id, "notes/smoke.log", revision="v1")).read_text()
    new = Path(hf_hub_download(repo_id, "notes/smoke.log", revision="v2")).read_text()
    assert old == (ARTIFACTS / EXAMPLE / "notes" / "smoke.log").read_text()
    assert new == "smoke: 3/3 ok after the parser fix\n"
    assert json.loads(Path(hf_hub_download(repo_id, "hubkit.json", revision="v1")).read_text())["version"] == "v1"

    snap = Path(snapshot_download(repo_id, revision="v2", local_dir=tmp_path / "snap"))
    assert (snap / "notes" / "smoke.log").read_text() == new
    assert not (snap / "notes" / "full_par.log").exists()
    for entry in m2["files"]:  # every file hubkit.json lists is in the snapshot with the recorded sha256
        assert hashlib.sha256((snap / entry["path"]).read_bytes()).hexdigest() == entry["sha256"], entry["path"]


def test_unchanged_republish_makes_no_commit_and_no_tag(hub, repo_id, run):
    r1 = pub(run, repo_id)
    hub.clear_log()
    r2 = pub(run, repo_id)
    assert r2.nothing_changed and r2.version == "v1" and r2.commit == r1.commit and not r2.tagged
    assert writes(hub) == [] and hub.lfs_upload_bytes() == 0
    assert hub.head(repo_id) == r1.commit
    res = CliRunner().invoke(main, ["publish", str(run), "--repo-id", repo_id, "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "nothing changed; v1 is current" in res.output


def test_unchanged_republish_loads_no_tensors(hub, repo_id, run):
    """The common re-publish is decided from hashes alone: no torch import, no card rendering."""
    pub(run, repo_id)
    probe = ("import sys\nfrom hubkit.publish.commit import publish\n"
             "r = publish(sys.argv[1], repo_id=sys.argv[2], progress=False)\n"
             "print(r.nothing_changed, 'torch' in sys.modules, 'matplotlib' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", probe, str(run), repo_id], capture_output=True, text=True,
                         env=dict(os.environ), timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "False", "False"]


def test_a_file_removed_on_the_hub_is_restored(hub, repo_id, run):
    pub(run, repo_id)
    hub.server_commit(repo_id, delete=["notes/smoke.log"])
    r = pub(run, repo_id)
    assert r.version == "v2" and "restored notes/smoke.log" in r.plan.summary
    assert hub.read_file(repo_id, "notes/smoke.log") == (run / "notes" / "smoke.log").read_bytes()


def test_version_flag_and_tag_numbering(hub, repo_id, run, api):
    pub(run, repo_id, version="v7")
    assert "v7" in {t.name for t in api.list_repo_refs(repo_id).tags}
    (run / "notes" / "smoke.log").write_text("changed\n")
    assert pub(run, repo_id).version == "v8"  # highest vN + 1
    (run / "notes" / "smoke.log").write_text("changed again\n")
    with pytest.raises(HubkitError, match=r"--version v7 already exists.*next free version is v9"):
        pub(run, repo_id, version="v7")
    with pytest.raises(HubkitError, match="must look like v3"):
        pub(run, repo_id, version="7")


def test_a_missing_tag_is_restored_by_a_rerun(hub, repo_id, run, api):
    r1 = pub(run, repo_id)
    api.delete_tag(repo_id, tag="v1")  # e.g. the tag request failed after the commit landed
    r2 = pub(run, repo_id)
    assert r2.nothing_changed and r2.tagged and hub.head(repo_id, "v1") == r1.commit
    assert len(hub.requests_matching("/commit/", method="POST")) == 1


# --------------------------------------------------------------------------- ownership, races, the card


def test_files_hubkit_did_not_put_there_are_never_deleted(hub, repo_id, run):
    pub(run, repo_id)
    hub.server_commit(repo_id, add={"someone-else.txt": b"mine\n"})
    (run / "notes" / "smoke.log").unlink()
    r = pub(run, repo_id)
    files = hub.list_files(repo_id)
    assert "someone-else.txt" in files and ".gitattributes" in files and "notes/smoke.log" not in files
    assert [d.path for d in r.plan.deletes] == ["notes/smoke.log"]


def test_a_racing_publisher_gets_a_clear_error_and_nothing_is_lost(hub, repo_id, run):
    r1 = pub(run, repo_id)
    racer = {}

    def other_writer() -> None:
        racer["commit"] = hub.server_commit(repo_id, add={"RACE.md": b"the other publisher\n"})

    hub.before_next(other_writer, match="/commit/", method="POST")
    (run / "notes" / "smoke.log").write_text("mine\n")
    with pytest.raises(HubError, match=rf"the repo changed since {r1.commit[:12]}.*re-run"):
        pub(run, repo_id)
    assert hub.head(repo_id) == racer["commit"]  # theirs is the head; nothing of ours was committed
    assert hub.read_file(repo_id, "RACE.md") == b"the other publisher\n"
    assert meta(hub, repo_id)["version"] == "v1"
    assert "v2" not in {t for t in _tags(hub, repo_id)}
    r2 = pub(run, repo_id)  # the re-run publishes on top of the other commit, keeping it
    assert r2.version == "v2" and "RACE.md" in hub.list_files(repo_id)
    assert hub.read_file(repo_id, "notes/smoke.log") == b"mine\n"


def _tags(hub, repo_id: str) -> list[str]:
    from huggingface_hub import HfApi

    return [t.name for t in HfApi(endpoint=hub.endpoint, token=hub.token).list_repo_refs(repo_id).tags]


def test_front_matter_added_on_the_hub_is_kept(hub, repo_id, run):
    pub(run, repo_id)
    readme = hub.read_file(repo_id, "README.md").decode()
    edited = readme.replace("---\n", "---\npipeline_tag: text-generation\n", 1)
    hub.server_commit(repo_id, add={"README.md": edited.encode()})
    (run / "notes" / "smoke.log").write_text("changed\n")
    r = pub(run, repo_id)
    new = hub.read_file(repo_id, "README.md").decode()
    assert new.startswith("---\n") and "pipeline_tag: text-generation" in new.split("\n---\n", 1)[0]
    assert any("pipeline_tag" in n for n in r.notes)
    m = meta(hub, repo_id)  # hubkit.json records the bytes that were committed
    assert next(f for f in m["files"] if f["path"] == "README.md")["sha256"] == hashlib.sha256(
        new.encode()).hexdigest()


# --------------------------------------------------------------------------- secrets


def test_a_planted_token_stops_the_publish_with_nothing_uploaded(hub, repo_id, run):
    token = "hf_" + "Zq8rT2vLm4Nx7Kp1Wy5Bc9Hd3Fg6Js0Ae"
    (run / "notes" / "run.log").write_text(f"starting\nexport HF_TOKEN={token}\n")
    with pytest.raises(SecretFound, match=r"notes/run\.log:2: Hugging Face token hf_Zq…\w{4}") as e:
        pub(run, repo_id)
    assert token not in str(e.value)
    assert hub.requests == [] and not hub.repo_exists(repo_id)  # not even a read left the machine
    res = CliRunner().invoke(main, ["publish", str(run), "--repo-id", repo_id])
    assert res.exit_code == 1 and "notes/run.log:2: Hugging Face token" in res.stderr


# --------------------------------------------------------------------------- faults


def test_injected_500s_are_retried(hub, repo_id, run):
    hub.fail_next(2, 500, match="/refs", method="GET")
    hub.fail_next(2, 503, match="/commit/", method="POST")
    hub.fail_next(1, 502, match="/tag/", method="POST")
    hub.drop_next(1, match="/tag/", method="POST", phase="response")  # tagged, but the answer is lost
    r = pub(run, repo_id)
    assert r.version == "v1" and hub.head(repo_id, "v1") == r.commit
    commits = hub.requests_matching("/commit/", method="POST")
    assert [c.status for c in commits] == [503, 503, 200]
    tags = [t.status for t in hub.requests_matching("/tag/", method="POST")]
    assert len(tags) == 3 and tags[0] == 502 and tags[2] == 409  # the 409 says: already there, at our commit
    assert hub.pending_faults() == 0


def test_persistent_500s_fail_cleanly_and_a_rerun_completes_without_reuploading(hub, repo_id, tmp_path):
    run = _run_with_weights(tmp_path, shards=2, size=256 * 1024)
    r1 = pub(run, repo_id, with_weights=True)
    head = r1.commit
    for i in range(2):
        (run / "model" / f"model-0000{i + 1}-of-00002.safetensors").write_bytes(_shard(i + 10, 256 * 1024))
    hub.clear_log()
    hub.fail_next(50, 500, match="/commit/", method="POST")
    with pytest.raises(HubError, match=r"committing to .*: the Hub answered 500 after 4 tries"):
        pub(run, repo_id)
    hub.clear_faults()
    assert hub.head(repo_id) == head and _tags(hub, repo_id) == ["v1"]  # the repo is as it was
    sent = hub.lfs_upload_bytes()
    assert sent >= 2 * 256 * 1024  # both new shards arrived before the commit failed
    hub.clear_log()
    r2 = pub(run, repo_id)
    assert r2.version == "v2" and hub.head(repo_id, "v2") == r2.commit
    assert hub.lfs_upload_bytes() == 0  # the re-run did not send them again


def test_a_dropped_upload_connection_is_retried(hub, repo_id, tmp_path, fast_retries):
    run = _run_with_weights(tmp_path, shards=1, size=512 * 1024)
    hub.drop_next(1, match="/_lfs/upload/", method="PUT", after_bytes=64 * 1024)
    r = pub(run, repo_id, with_weights=True)
    assert r.version == "v1"
    shard = "model/model-00001-of-00001.safetensors"
    assert hub.read_file(repo_id, shard) == (run / shard).read_bytes()
    puts = hub.requests_matching("/_lfs/upload/", method="PUT")
    assert len(puts) == 2 and puts[0].bytes_received < 512 * 1024


def test_a_lost_commit_answer_is_recognized_as_our_commit(hub, repo_id, run):
    hub.drop_next(1, match="/commit/", method="POST", phase="response")  # applied, but the answer is lost
    r = pub(run, repo_id)
    assert r.version == "v1" and hub.head(repo_id) == r.commit == hub.head(repo_id, "v1")
    assert len(hub.requests_matching("/commit/", method="POST")) == 1  # not committed twice
    assert meta(hub, repo_id)["version"] == "v1"


def test_an_unreachable_hub_is_a_one_line_error(run, monkeypatch):
    from huggingface_hub import HfApi

    hub = Hub(HfApi(endpoint="http://127.0.0.1:9", token="hf_x"), retries=2, wait=0)
    with pytest.raises(HubError, match=r"^reading tester/x: network error talking to http://127\.0\.0\.1:9 "
                                       r"after 2 tries"):
        publish(run, repo_id="tester/x", progress=False, hub=hub)


# --------------------------------------------------------------------------- auth and permissions


def test_auth_errors_say_how_to_log_in(hub, repo_id, run):
    from huggingface_hub import HfApi

    bad = Hub(HfApi(endpoint=hub.endpoint, token="hf_bad_token"), wait=0)
    with pytest.raises(HubError, match=r"not logged in or token invalid: run `hf auth login` or set HF_TOKEN"):
        publish(run, repo_id=repo_id, progress=False, hub=bad)
    anonymous = Hub(HfApi(endpoint=hub.endpoint, token=False), wait=0)
    with pytest.raises(HubError, match=r"creating .*: not logged in or token invalid: run `hf auth login`"):
        publish(run, repo_id=repo_id, progress=False, hub=anonymous)
    assert not hub.repo_exists(repo_id)


def test_no_permission_and_missing_repo_say_so(hub, repo_id, run):
    from huggingface_hub import HfApi

    pub(run, repo_id)  # owned by tester
    hub.add_user("hf_alice_token_0000000000000000000", "alice")
    alice = Hub(HfApi(endpoint=hub.endpoint, token="hf_alice_token_0000000000000000000"), wait=0)
    (run / "notes" / "smoke.log").write_text("alice was here\n")
    with pytest.raises(HubError, match=rf"no permission to write to {repo_id}"):
        publish(run, repo_id=repo_id, progress=False, hub=alice)
    assert meta(hub, repo_id)["version"] == "v1"
    HfApi(endpoint=hub.endpoint, token=hub.token).create_repo(repo_id + "-private", private=True)
    anonymous = Hub(HfApi(endpoint=hub.endpoint, token=False), wait=0)
    with pytest.raises(HubError, match=rf"repo {repo_id}-private not found, or private and you are not logged in"):
        anonymous.read_state(repo_id + "-private")


# --------------------------------------------------------------------------- plan, branches, PRs, CLI


def test_dry_run_prints_the_plan_and_writes_nothing(hub, repo_id, run):
    res = CliRunner().invoke(main, ["publish", str(run), "--repo-id", repo_id, "--dry-run"])
    assert res.exit_code == 0, res.output
    out = res.output
    assert f"{repo_id}@main: would commit v1" in out and f"would create the model repo {repo_id}" in out
    assert re.search(r"\+ vectors/refusal\.safetensors \(\d", out) and "+ hubkit.json" in out
    assert "----- README.md -----" in out and "# Refusal-direction abliteration" in out
    assert writes(hub) == [] and not hub.repo_exists(repo_id)
    pub(run, repo_id)
    (run / "notes" / "smoke.log").write_text("x\n")
    (run / "notes" / "abliterate.log").unlink()
    plan = pub(run, repo_id, dry_run=True).plan
    assert [c.path for c in plan.changes if c.path.startswith("notes")] == ["notes/smoke.log"]
    assert [d.path for d in plan.deletes] == ["notes/abliterate.log"] and plan.version == "v2"
    assert "- notes/abliterate.log (was" in plan.render()
    assert hub.head(repo_id) == hub.head(repo_id, "v1")


def test_repo_id_falls_back_to_the_manifest_and_neither_is_a_usage_error(hub, tmp_path):
    run = write_run(tmp_path / "r", """
        title: tiny
        status: inconclusive
        repo_id: tester/from-manifest
    """, {"notes/a.md": "hello\n"})
    r = publish(run, progress=False)
    assert r.repo_id == "tester/from-manifest" and hub.head("tester/from-manifest", "v1") == r.commit
    bare = write_run(tmp_path / "b", "title: tiny\nstatus: inconclusive\n", {"notes/a.md": "x\n"})
    res = CliRunner().invoke(main, ["publish", str(bare)])
    assert res.exit_code == 2 and "--repo-id" in res.output
    res = CliRunner().invoke(main, ["publish", str(bare), "--out", str(tmp_path / "o"), "--dry-run"])
    assert res.exit_code == 2 and "--dry-run only apply to a Hub publish" in res.output


def test_revision_branch_and_create_pr(hub, repo_id, run, api):
    r1 = pub(run, repo_id)
    (run / "notes" / "smoke.log").write_text("on a branch\n")
    r2 = pub(run, repo_id, revision="dev")
    assert hub.head(repo_id, "dev") == r2.commit == hub.head(repo_id, "v2")
    assert hub.head(repo_id, "main") == r1.commit
    (run / "notes" / "smoke.log").write_text("as a PR\n")
    r3 = pub(run, repo_id, create_pr=True)
    assert r3.pr_url and r3.pr_url.endswith("/discussions/1") and not r3.tagged
    assert hub.head(repo_id, "main") == r1.commit and hub.head(repo_id, "refs/pr/1") == r3.commit
    assert "v3" not in _tags(hub, repo_id)


# --------------------------------------------------------------------------- weights


def _shard(seed: int, size: int) -> bytes:
    import random

    header = b'{"__metadata__":{"format":"pt"}}'
    header += b" " * (-len(header) % 8)
    body = random.Random(seed).randbytes(size)
    return len(header).to_bytes(8, "little") + header + body


def _run_with_weights(tmp_path: Path, shards: int, size: int) -> Path:
    files: dict[str, str | bytes] = {"notes/a.md": "notes\n", "model/config.json": '{"model_type": "llama"}\n',
                                     "model/tokenizer_config.json": "{}\n"}
    for i in range(shards):
        files[f"model/model-0000{i + 1}-of-0000{shards}.safetensors"] = _shard(i, size)
    return write_run(tmp_path / "wrun", """
        title: weights run
        status: positive
        weights: {path: model}
    """, files)


def test_weights_upload_once_and_only_changed_shards_again(hub, repo_id, tmp_path, monkeypatch):

    run = _run_with_weights(tmp_path, shards=3, size=300 * 1024)
    r0 = pub(run, repo_id)
    assert not any(p.startswith("model/") for p in hub.list_files(repo_id))  # not asked for: not uploaded
    (run / "notes" / "a.md").write_text("notes v2\n")
    r1 = pub(run, repo_id, with_weights=True)
    assert r1.version == "v2" and r0.version == "v1"
    assert {f"model/model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)} <= set(hub.list_files(repo_id))

    hashed: list[str] = []
    import hubkit.formats.hashing as hashing

    real = hashing.sha256_file
    monkeypatch.setattr(hashing, "sha256_file", lambda p, progress=None: hashed.append(str(p)) or real(p, progress))
    hub.clear_log()
    r2 = pub(run, repo_id)  # no --with-weights: published weights stay; nothing changed
    assert r2.nothing_changed and hub.lfs_upload_bytes() == 0 and hashed == []  # hashes came from the cache
    assert any("keeping them published" in n for n in r2.notes)

    (run / "model" / "model-00002-of-00003.safetensors").write_bytes(_shard(99, 300 * 1024))
    hub.clear_log()
    r3 = pub(run, repo_id)
    assert r3.version == "v3" and [c.path for c in r3.plan.changes if c.kind == "weights"] == [
        "model/model-00002-of-00003.safetensors"]
    assert hub.lfs_upload_bytes() == (run / "model" / "model-00002-of-00003.safetensors").stat().st_size
    assert [p for p in hashed if p.endswith(".safetensors")] == [str(run / "model" / "model-00002-of-00003.safetensors")]


# --------------------------------------------------------------------------- companion dataset


def test_dataset_repo_round_trips_through_load_dataset(hub, repo_id, run, tmp_path):
    import datasets

    ds_repo = repo_id + "-data"
    r = pub(run, repo_id, dataset_repo=ds_repo)
    assert r.dataset_repo == ds_repo and meta(hub, repo_id)["dataset_repo"] == ds_repo
    assert ds_repo in hub.read_file(repo_id, "README.md").decode()  # the card links the dataset
    assert hub.head(ds_repo, "v1", repo_type="dataset") == r.dataset_commit
    cache = str(tmp_path / "ds-cache")
    refuse = datasets.load_dataset(ds_repo, "contrast_refuse", split="train", cache_dir=cache)
    lines = [json.loads(x) for x in (run / "contrast_refuse.jsonl").read_text().splitlines() if x.strip()]
    assert refuse["prompt"] == [x["prompt"] for x in lines] and set(refuse["label"]) == {"refuse"}
    abl = datasets.load_dataset(ds_repo, "results_abl", split="train", cache_dir=cache, revision="v1")
    assert abl.num_rows == 89 and "reward" in abl.column_names
    base = datasets.load_dataset(ds_repo, "results_base", split="train", cache_dir=cache)
    assert sum(base["passed"]) == 3

    hub.clear_log()
    r2 = pub(run, repo_id)  # the dataset link is remembered; nothing changed anywhere
    assert r2.nothing_changed and r2.dataset_repo == ds_repo and writes(hub) == []
    (run / "contrast_refuse.jsonl").write_text((run / "contrast_refuse.jsonl").read_text()
                                                + '{"prompt": "Delete the build cache.", "bucket": "refuse"}\n')
    r3 = pub(run, repo_id)
    assert r3.version == "v2" and hub.head(ds_repo, "v2", repo_type="dataset") == r3.dataset_commit
    new = datasets.load_dataset(ds_repo, "contrast_refuse", split="train", cache_dir=cache, revision="v2")
    assert new["prompt"][-1] == "Delete the build cache." and new.num_rows == refuse.num_rows + 1


def test_record_regeneration_puts_shard_hashes_in_the_recipe(hub, repo_id, run, tmp_path, monkeypatch):
    import hubkit.weights.regenerate as regenerate

    seen = {}

    def fake_record(source, base_dir, **kw):
        seen["base"], seen["title"] = Path(base_dir), source.manifest.title
        return {"model-00001-of-00001.safetensors": "ab" * 32}

    monkeypatch.setattr(regenerate, "record_regeneration", fake_record)
    (tmp_path / "base").mkdir()
    res = CliRunner().invoke(main, ["publish", str(run), "--repo-id", repo_id, "--no-progress",
                                    "--record-regeneration", str(tmp_path / "base")])
    assert res.exit_code == 0, res.output
    assert seen == {"base": tmp_path / "base", "title": "Refusal-direction abliteration of Qwen3.5-4B"}
    assert meta(hub, repo_id)["regenerate"]["shards_sha256"] == {"model-00001-of-00001.safetensors": "ab" * 32}
    assert re.search(rf"published v1 to .*/{repo_id}/tree/v1 \(commit [0-9a-f]{{12}}\)", res.output)


# --------------------------------------------------------------------------- a regenerated model folder


def test_push_model_folder_versions_and_skips_unchanged_shards(hub, repo_id, tmp_path):
    from huggingface_hub import hf_hub_download

    from hubkit.publish.push import push_model_folder

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama", "hidden_size": 64}')
    (folder / "model.safetensors").write_bytes(os.urandom(64 * 1024))
    (folder / "README.md").write_text("# regenerated\n")
    first = push_model_folder(folder, repo_id, progress=False, source={"repo_id": "a/b", "commit": "c" * 40})
    assert first.version == "v1" and first.tagged
    assert set(hub.list_files(repo_id)) >= {"config.json", "model.safetensors", "README.md", "hubkit.json"}
    m = meta(hub, repo_id)
    assert m["kind"] == "regenerated-weights" and m["source"]["repo_id"] == "a/b"
    shard = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    assert {f["path"]: f["sha256"] for f in m["files"]}["model.safetensors"] == shard

    hub.clear_log()
    again = push_model_folder(folder, repo_id, progress=False)
    assert again.nothing_changed and writes(hub) == []

    (folder / "README.md").write_text("# regenerated, with notes\n")
    hub.clear_log()
    second = push_model_folder(folder, repo_id, progress=False)
    assert second.version == "v2" and hub.lfs_upload_bytes() == 0  # the shard is not sent again
    assert [h["version"] for h in meta(hub, repo_id)["history"]] == ["v1", "v2"]
    assert "1 file(s) changed" in meta(hub, repo_id)["history"][-1]["summary"]
    v1 = hf_hub_download(repo_id, "README.md", revision="v1")
    assert Path(v1).read_text() == "# regenerated\n"


def test_push_model_folder_refuses_a_secret(hub, repo_id, tmp_path):
    from hubkit.publish.push import push_model_folder

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text('{"note": "hf_' + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7" + '"}')
    with pytest.raises(SecretFound, match="config.json:1"):
        push_model_folder(folder, repo_id, progress=False)
    assert not hub.repo_exists(repo_id)


def test_two_first_publishes_to_a_new_repo_the_second_fails_and_a_rerun_completes(hub, repo_id, run):
    """The repo appears between our look and our commit: refused, not overwritten; tag and card agree after."""
    theirs = b'{"version": "v1", "history": [{"version": "v1"}], "files": [], "owned": []}\n'

    def another_first_publish() -> None:
        hub._create_repo("model", repo_id, False)
        hub.server_commit(repo_id, add={"THEIRS.md": b"the other first publish\n", "hubkit.json": theirs})

    hub.before_next(another_first_publish, match="/api/repos/create", method="POST")
    with pytest.raises(HubError, match=r"the repo changed since hubkit looked: .* did not exist then.*re-run"):
        pub(run, repo_id)
    assert hub.read_file(repo_id, "THEIRS.md") == b"the other first publish\n"
    assert "README.md" not in hub.list_files(repo_id)  # nothing of ours was committed
    again = pub(run, repo_id)  # the re-run builds on what is there: the next version, its tag and card agree
    assert again.version == "v2" and "v2" in _tags(hub, repo_id)
    assert meta(hub, repo_id)["version"] == "v2" and "THEIRS.md" in hub.list_files(repo_id)


def test_a_publish_killed_after_creating_the_repo_is_completed_by_a_rerun(hub, repo_id, run):
    hub._create_repo("model", repo_id, False)  # what a publish killed right after create_repo leaves
    r = pub(run, repo_id)
    assert r.version == "v1" and meta(hub, repo_id)["version"] == "v1" and "v1" in _tags(hub, repo_id)


def test_out_may_not_be_the_run_inside_it_or_holding_it(tmp_path: Path) -> None:
    """`publish P --out P` replaced a pulled run's folder, losing its unpublished files; --out inside the run
    would be shipped as run content by the next publish."""
    from hubkit.publish.commit import stage_run

    run = copy_example("persona-vector", tmp_path)
    (run / "local.key").write_text("mine")
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    for out in (run, run / "build", tmp_path):
        with pytest.raises(HubkitError, match="is the run .*, inside it or holding it"):
            stage_run(run, out)
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before
    assert (run / "local.key").read_text() == "mine"
