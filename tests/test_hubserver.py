"""The test Hub server, driven only through the real client (HfApi, hf_hub_download, snapshot_download,
datasets.load_dataset): if these pass, hubkit's tests exercise the same protocol as the real Hub."""

from __future__ import annotations

import json
import os
from pathlib import Path

import datasets
import httpx2
import pandas as pd
import pytest
from huggingface_hub import (
    CommitOperationAdd,
    CommitOperationCopy,
    CommitOperationDelete,
    HfApi,
    hf_hub_download,
    snapshot_download,
)
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.hf_api import RepoFile, RepoFolder

from tests.hubserver import DEFAULT_BAD_TOKEN, HubServer


def _write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A small published-run-like folder: a card, a regular JSON, and an LFS tensor file."""
    root = tmp_path / "run"
    _write(root / "README.md", "---\nlicense: apache-2.0\ntags:\n- steering\n---\n# Run\n")
    _write(root / "config.json", json.dumps({"layer": 14, "alpha": 4.0}))
    _write(root / "directions" / "refusal.safetensors", b"\x00\x01" * 2048)
    return root


def _puts(hub: HubServer) -> list:
    return hub.requests_matching("/_lfs/upload/", method="PUT")


# --- repos, auth ----------------------------------------------------------------------------------------------


def test_create_repo_exist_ok_and_conflict(hub: HubServer, api: HfApi, repo_id: str) -> None:
    url = api.create_repo(repo_id)
    assert url.repo_id == repo_id and url.repo_type == "model"
    assert api.create_repo(repo_id, exist_ok=True) == url  # 409 body carries the url
    with pytest.raises(HfHubHTTPError) as exc:
        api.create_repo(repo_id)
    assert exc.value.response.status_code == 409
    info = api.model_info(repo_id)
    assert [s.rfilename for s in info.siblings] == [".gitattributes"]  # the Hub's initial commit
    assert api.whoami()["name"] == "tester"


def test_bad_token_is_401(hub: HubServer, api: HfApi, repo_id: str) -> None:
    with pytest.raises(HfHubHTTPError, match="Invalid user token") as exc:
        api.whoami(token=DEFAULT_BAD_TOKEN)
    assert exc.value.response.status_code == 401
    with pytest.raises(HfHubHTTPError) as exc:
        api.create_repo(repo_id, token=DEFAULT_BAD_TOKEN)
    assert exc.value.response.status_code == 401
    assert not hub.repo_exists(repo_id)


def test_private_repo_hidden_from_other_users(hub: HubServer, api: HfApi, repo_id: str) -> None:
    api.create_repo(repo_id, private=True)
    assert api.model_info(repo_id).private is True
    hub.add_user("hf_outsider", "outsider")
    with pytest.raises(RepositoryNotFoundError):
        api.model_info(repo_id, token="hf_outsider")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(repo_id, ".gitattributes", token=False)
    with pytest.raises(HfHubHTTPError) as exc:  # outsider can't write into tester's namespace
        api.create_repo(f"tester/{repo_id.split('/')[1]}-x", token="hf_outsider")
    assert exc.value.response.status_code == 403


def test_not_found_kinds_map_to_client_errors(
    hub: HubServer, api: HfApi, repo_id: str, hf_cache: Path
) -> None:
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("tester/does-not-exist")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("tester/does-not-exist", "x.txt")
    api.create_repo(repo_id)
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(repo_id, ".gitattributes", revision="no-such-branch")
    with pytest.raises(RevisionNotFoundError):
        api.list_repo_commits(repo_id, revision="no-such-branch")
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(repo_id, "missing.txt")
    assert not api.file_exists(repo_id, "missing.txt") and api.file_exists(repo_id, ".gitattributes")
    assert hub.unhandled == []


# --- uploads --------------------------------------------------------------------------------------------------


def test_upload_folder_regular_and_lfs(hub: HubServer, api: HfApi, repo_id: str, run_dir: Path) -> None:
    api.create_repo(repo_id)
    info = api.upload_folder(repo_id=repo_id, folder_path=run_dir, commit_message="publish run")
    assert info.oid == hub.head(repo_id)
    assert len(_puts(hub)) == 1  # only the .safetensors goes through LFS
    entries = {e.path: e for e in api.list_repo_tree(repo_id, recursive=True)}
    assert entries["directions/refusal.safetensors"].lfs is not None
    assert entries["config.json"].lfs is None and isinstance(entries["directions"], RepoFolder)
    assert hub.read_file(repo_id, "directions/refusal.safetensors") == b"\x00\x01" * 2048
    assert api.model_info(repo_id).card_data.license == "apache-2.0"  # cardData from README front matter


def test_size_threshold_makes_text_lfs(hub: HubServer, api: HfApi, repo_id: str) -> None:
    api.create_repo(repo_id)
    hub.lfs_threshold = 1024  # reset by the `hub` fixture; the Hub's real threshold is 10 MB
    api.create_commit(
        repo_id,
        commit_message="two texts",
        operations=[
            CommitOperationAdd("small.txt", b"x" * 100),
            CommitOperationAdd("big.txt", b"y" * 4096),
        ],
    )
    lfs = {f.path: f.lfs for f in api.get_paths_info(repo_id, ["small.txt", "big.txt"])}
    assert lfs["small.txt"] is None and lfs["big.txt"].size == 4096
    assert hub.lfs_upload_bytes() == 4096


def test_republish_unchanged_uploads_nothing(hub: HubServer, api: HfApi, repo_id: str, run_dir: Path) -> None:
    api.create_repo(repo_id)
    first = api.upload_folder(repo_id=repo_id, folder_path=run_dir)
    hub.clear_log()
    again = api.upload_folder(repo_id=repo_id, folder_path=run_dir)
    assert again.oid == first.oid  # no new commit
    assert _puts(hub) == [] and hub.requests_matching("/commit/") == []
    # change only the small file: a commit happens but the LFS blob is not re-sent
    _write(run_dir / "config.json", json.dumps({"layer": 15}))
    hub.clear_log()
    third = api.upload_folder(repo_id=repo_id, folder_path=run_dir)
    assert third.oid != first.oid and _puts(hub) == [] and len(hub.requests_matching("/commit/")) == 1


def test_parent_commit_mismatch_is_412(hub: HubServer, api: HfApi, repo_id: str) -> None:
    api.create_repo(repo_id)
    stale = hub.head(repo_id)
    hub.server_commit(repo_id, {"other.txt": b"someone else"})  # a concurrent writer
    with pytest.raises(HfHubHTTPError, match="A commit has happened since") as exc:
        api.upload_file(
            path_or_fileobj=b"mine", path_in_repo="mine.txt", repo_id=repo_id, parent_commit=stale
        )
    assert exc.value.response.status_code == 412
    # same race, injected between the client's preupload and its commit
    head = hub.head(repo_id)
    hub.before_next(lambda: hub.server_commit(repo_id, {"race.txt": b"r"}), match="/commit/")
    with pytest.raises(HfHubHTTPError) as exc:
        api.upload_file(path_or_fileobj=b"mine", path_in_repo="mine.txt", repo_id=repo_id, parent_commit=head)
    assert exc.value.response.status_code == 412
    assert "mine.txt" not in hub.list_files(repo_id)


def test_copy_and_delete(hub: HubServer, api: HfApi, repo_id: str, run_dir: Path) -> None:
    api.create_repo(repo_id)
    api.upload_folder(repo_id=repo_id, folder_path=run_dir)
    api.create_commit(
        repo_id,
        commit_message="cp",
        operations=[
            CommitOperationCopy(
                "directions/refusal.safetensors", "v1/refusal.safetensors"
            ),  # LFS: server-side
            CommitOperationCopy("config.json", "v1/config.json"),  # regular: client downloads and re-uploads
        ],
    )
    assert hub.read_file(repo_id, "v1/refusal.safetensors") == b"\x00\x01" * 2048
    api.create_commit(
        repo_id,
        commit_message="rm",
        operations=[
            CommitOperationDelete("config.json"),
            CommitOperationDelete("directions/"),
            CommitOperationDelete("v1/"),
        ],
    )
    assert hub.list_files(repo_id) == [".gitattributes", "README.md"]
    with pytest.raises(EntryNotFoundError):
        api.delete_file("config.json", repo_id=repo_id)


# --- refs, history, listings ----------------------------------------------------------------------------------


def test_tags_pin_content(hub: HubServer, api: HfApi, repo_id: str, hf_cache: Path) -> None:
    api.create_repo(repo_id)
    api.upload_file(path_or_fileobj=b"version one", path_in_repo="direction.txt", repo_id=repo_id)
    api.create_tag(repo_id, tag="v1")
    assert api.resolve_revision(repo_id, revision="v1").resolved == hub.head(repo_id)
    api.upload_file(path_or_fileobj=b"version two", path_in_repo="direction.txt", repo_id=repo_id)
    api.create_tag(repo_id, tag="v2", tag_message="second")
    assert Path(hf_hub_download(repo_id, "direction.txt", revision="v1")).read_bytes() == b"version one"
    assert Path(hf_hub_download(repo_id, "direction.txt", revision="v2")).read_bytes() == b"version two"
    assert str(hf_cache) in hf_hub_download(repo_id, "direction.txt")
    with pytest.raises(HfHubHTTPError) as exc:
        api.create_tag(repo_id, tag="v1")
    assert exc.value.response.status_code == 409
    api.create_tag(repo_id, tag="v1", exist_ok=True)
    refs = api.list_repo_refs(repo_id)
    assert {t.name for t in refs.tags} == {"v1", "v2"} and refs.branches[0].name == "main"
    api.delete_tag(repo_id, tag="v1")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(repo_id, "direction.txt", revision="v1", force_download=True)


def test_branches_commits_tree_paths_info(hub: HubServer, api: HfApi, repo_id: str, run_dir: Path) -> None:
    api.create_repo(repo_id)
    api.upload_folder(repo_id=repo_id, folder_path=run_dir, commit_message="first", commit_description="why")
    api.create_branch(repo_id, branch="exp")
    api.upload_file(path_or_fileobj=b"e", path_in_repo="exp.txt", repo_id=repo_id, revision="exp")
    assert "exp.txt" not in api.list_repo_files(repo_id)
    assert "exp.txt" in api.list_repo_files(repo_id, revision="exp")
    commits = api.list_repo_commits(repo_id)
    assert [c.title for c in commits] == ["first", "initial commit"] and commits[0].message == "why"
    assert [c.title for c in api.list_repo_commits(repo_id, revision="exp")][0].startswith("Upload exp.txt")
    top = {e.path for e in api.list_repo_tree(repo_id)}
    assert top == {".gitattributes", "README.md", "config.json", "directions"}
    sub = list(api.list_repo_tree(repo_id, path_in_repo="directions", expand=True))
    assert [e.path for e in sub] == ["directions/refusal.safetensors"] and sub[0].last_commit.title == "first"
    infos = api.get_paths_info(repo_id, ["config.json", "directions", "nope"], revision=commits[0].commit_id)
    assert [(type(i), i.path) for i in infos] == [(RepoFile, "config.json"), (RepoFolder, "directions")]
    api.delete_branch(repo_id, branch="exp")
    assert [b.name for b in api.list_repo_refs(repo_id).branches] == ["main"]


def test_create_pr(hub: HubServer, api: HfApi, repo_id: str, hf_cache: Path) -> None:
    api.create_repo(repo_id)
    main_before = hub.head(repo_id)
    info = api.upload_file(path_or_fileobj=b"proposal", path_in_repo="p.txt", repo_id=repo_id, create_pr=True)
    assert info.pr_revision == "refs/pr/1" and info.pr_num == 1
    assert hub.head(repo_id) == main_before
    assert Path(hf_hub_download(repo_id, "p.txt", revision="refs/pr/1")).read_bytes() == b"proposal"
    prs = api.list_repo_refs(repo_id, include_pull_requests=True).pull_requests
    assert [(p.ref, p.target_commit) for p in prs] == [("refs/pr/1", info.oid)]
    api.upload_file(path_or_fileobj=b"more", path_in_repo="q.txt", repo_id=repo_id, revision="refs/pr/1")
    assert hub.list_files(repo_id, revision="refs/pr/1") == [".gitattributes", "p.txt", "q.txt"]


# --- downloads ------------------------------------------------------------------------------------------------


def test_snapshot_download(hub: HubServer, api: HfApi, repo_id: str, run_dir: Path, hf_cache: Path) -> None:
    api.create_repo(repo_id)
    info = api.upload_folder(repo_id=repo_id, folder_path=run_dir)
    snap = Path(snapshot_download(repo_id))
    assert snap.name == info.oid and snap.is_relative_to(hf_cache)
    assert (snap / "directions" / "refusal.safetensors").read_bytes() == b"\x00\x01" * 2048
    only = Path(snapshot_download(repo_id, allow_patterns=["*.json"], local_dir=hf_cache.parent / "local"))
    assert sorted(p.name for p in only.iterdir() if not p.name.startswith(".")) == ["config.json"]
    # a second snapshot of the same commit is served from cache: no file downloads
    hub.clear_log()
    snapshot_download(repo_id, revision=info.oid)
    assert hub.requests_matching("/resolve/") == []


# --- datasets -------------------------------------------------------------------------------------------------


def test_load_dataset_jsonl(hub: HubServer, api: HfApi, repo_id: str, tmp_path: Path) -> None:
    api.create_repo(repo_id, repo_type="dataset")
    rows = [{"prompt": f"p{i}", "refused": i % 2 == 0} for i in range(6)]
    api.upload_file(
        path_or_fileobj="".join(json.dumps(r) + "\n" for r in rows).encode(),
        path_in_repo="data/contrast.jsonl",
        repo_id=repo_id,
        repo_type="dataset",
    )
    ds = datasets.load_dataset(repo_id, split="train", cache_dir=str(tmp_path / "ds"))
    assert ds.to_list() == rows
    assert hub.unhandled == [] and hub.server_errors == []


def test_load_dataset_configs(hub: HubServer, api: HfApi, repo_id: str, tmp_path: Path) -> None:
    """Several parquet/CSV configs declared in README ``configs:``. (``datasets`` infers ONE builder per repo
    from the most common extension, so configs of one repo must share a file format.)"""
    root = tmp_path / "ds"
    _write(
        root / "README.md",
        "---\nconfigs:\n"
        "- config_name: ranking\n  data_files:\n  - split: train\n    path: ranking/*.parquet\n"
        "- config_name: tasks\n  data_files:\n  - split: test\n    path: tasks.parquet\n---\n# Data\n",
    )
    (root / "ranking").mkdir()
    pd.DataFrame({"layer": [1, 2], "score": [0.1, 0.9]}).to_parquet(root / "ranking" / "a.parquet")
    pd.DataFrame({"layer": [3], "score": [0.5]}).to_parquet(root / "ranking" / "b.parquet")
    pd.DataFrame({"task": ["mmlu"], "acc": [0.61]}).to_parquet(root / "tasks.parquet")
    csv_root = tmp_path / "csv"
    _write(csv_root / "train.csv", "layer,score\n1,0.5\n2,0.7\n")
    _write(csv_root / "test.csv", "layer,score\n3,0.1\n")
    api.create_repo(repo_id, repo_type="dataset")
    api.upload_folder(repo_id=repo_id, repo_type="dataset", folder_path=root)
    assert api.dataset_info(repo_id).card_data.configs[0]["config_name"] == "ranking"
    cache = str(tmp_path / "cache")
    ranking = datasets.load_dataset(repo_id, "ranking", split="train", cache_dir=cache)
    assert sorted(ranking["layer"]) == [1, 2, 3]
    assert datasets.load_dataset(repo_id, "tasks", split="test", cache_dir=cache)["task"] == ["mmlu"]
    csv_repo = repo_id + "-csv"
    api.create_repo(csv_repo, repo_type="dataset")
    api.upload_folder(repo_id=csv_repo, repo_type="dataset", folder_path=csv_root)
    splits = datasets.load_dataset(csv_repo, cache_dir=cache)
    assert splits["train"]["score"] == [0.5, 0.7] and splits["test"]["layer"] == [3]


# --- fault injection ------------------------------------------------------------------------------------------


def test_fail_then_retry_succeeds(
    hub: HubServer, api: HfApi, repo_id: str, fast_retries: list[float]
) -> None:
    api.create_repo(repo_id)
    hub.fail_next(1, 500, match="/preupload/")
    hub.fail_next(1, 503, match="/_lfs/upload/")
    api.upload_file(path_or_fileobj=b"\x00w" * 100, path_in_repo="w.safetensors", repo_id=repo_id)
    assert [r.status for r in hub.requests_matching("/preupload/")] == [500, 200]
    assert [r.status for r in _puts(hub)] == [503, 200] and fast_retries == [1, 1]
    assert hub.pending_faults() == 0
    # the commit POST is not retried by the client: a 500 there surfaces
    hub.fail_next(1, 500, match="/commit/", message="boom")
    with pytest.raises(HfHubHTTPError, match="boom") as exc:
        api.upload_file(path_or_fileobj=b"t", path_in_repo="t.txt", repo_id=repo_id)
    assert exc.value.response.status_code == 500


def test_dropped_connections(
    hub: HubServer, api: HfApi, repo_id: str, fast_retries: list[float], hf_cache: Path
) -> None:
    api.create_repo(repo_id)
    hub.drop_next(match="/commit/")
    with pytest.raises(httpx2.TransportError):  # the commit POST is not retried: the drop surfaces
        api.upload_file(path_or_fileobj=b"t", path_in_repo="t.txt", repo_id=repo_id)
    assert hub.list_files(repo_id) == [".gitattributes"]
    # mid-upload drop: the client retries the whole PUT
    payload = os.urandom(11 * 1024 * 1024)
    hub.drop_next(match="/_lfs/upload/", after_bytes=1024 * 1024)
    api.upload_file(path_or_fileobj=payload, path_in_repo="big.bin", repo_id=repo_id)
    puts = _puts(hub)
    assert [(r.dropped, r.status) for r in puts] == [(True, 0), (False, 200)]
    assert puts[0].bytes_received <= 1024 * 1024 < puts[1].bytes_received == len(payload)
    # mid-download drop: the client resumes with a Range request (it only tracks progress per 10 MiB chunk)
    hub.drop_next(match="/resolve/", method="GET", phase="response", after_bytes=10 * 1024 * 1024 + 5)
    assert Path(hf_hub_download(repo_id, "big.bin")).read_bytes() == payload
    gets = hub.requests_matching("/resolve/", method="GET")
    assert [g.headers.get("range") for g in gets] == [None, f"bytes={10 * 1024 * 1024}-"]
    assert gets[-1].status == 206


def test_range_reads_through_hffilesystem(hub: HubServer, api: HfApi, repo_id: str) -> None:
    from huggingface_hub import HfFileSystem

    api.create_repo(repo_id)
    api.upload_file(path_or_fileobj=bytes(range(256)) * 40, path_in_repo="blob.bin", repo_id=repo_id)
    fs = HfFileSystem(endpoint=hub.endpoint, token=hub.token)
    with fs.open(f"{repo_id}/blob.bin", "rb", block_size=64) as fh:
        fh.seek(300)
        assert fh.read(4) == bytes([44, 45, 46, 47])
    assert any(r.status == 206 for r in hub.requests_matching("/resolve/", method="GET"))
    assert fs.info(f"{repo_id}/blob.bin")["size"] == 10240 and fs.ls(repo_id, detail=False)


def test_slow_metadata_times_out_then_recovers(
    hub: HubServer, api: HfApi, repo_id: str, hf_cache: Path
) -> None:
    api.create_repo(repo_id)
    hub.delay_next(2.5, match="/resolve/", method="HEAD")  # > HF_HUB_ETAG_TIMEOUT=2
    assert Path(hf_hub_download(repo_id, ".gitattributes")).read_bytes().startswith(b"*.7z")
    assert len(hub.requests_matching("/resolve/", method="HEAD")) == 2
