"""hubkit.hub without a server: version numbering, the diff (what may be deleted), error classification."""

from __future__ import annotations

import pytest

from hubkit.errors import HubError
from hubkit.formats.hashing import sha256_bytes
from hubkit.formats.hubjson import HubJson
from hubkit.hub import Hub, RemoteFile, RemoteState, hub_error, is_stale, is_transient
from hubkit.publish.plan import diff_package, git_blob_sha1
from hubkit.publish.repo_tree import Package, PackageFile


def _pf(path: str, data: bytes, kind: str = "data") -> PackageFile:
    return PackageFile(path, len(data), sha256_bytes(data), kind, data=data)


def test_next_version_is_highest_tag_or_hubkit_json_plus_one():
    s = RemoteState("o/r", tags={"v1": "a", "v3": "b", "release-9": "c", "v10x": "d"})
    assert s.next_version() == "v4"
    s.meta = HubJson(version="v5")  # committed, its tag lost: never reuse v5
    assert s.next_version() == "v6" and s.missing_tag() == "v5"
    assert RemoteState("o/r").next_version() == "v1"


def test_diff_compares_lfs_by_sha256_regular_by_git_oid_and_deletes_only_owned():
    same_lfs, same_txt, changed = _pf("w.safetensors", b"\0" * 64), _pf("a.txt", b"hello\n"), _pf("b.txt", b"new\n")
    added = _pf("c.txt", b"c\n")
    state = RemoteState("o/r", exists=True, branch_exists=True, head="h" * 40, files={
        "w.safetensors": RemoteFile("w.safetensors", 64, "x" * 40, same_lfs.sha256),
        "a.txt": RemoteFile("a.txt", 6, git_blob_sha1(same_txt)),
        "b.txt": RemoteFile("b.txt", 4, git_blob_sha1(_pf("b.txt", b"old\n"))),
        "gone.txt": RemoteFile("gone.txt", 3, "y" * 40),
        "theirs.txt": RemoteFile("theirs.txt", 3, "z" * 40),
        ".gitattributes": RemoteFile(".gitattributes", 3, "q" * 40),
    }, meta=HubJson(owned=["w.safetensors", "a.txt", "b.txt", "gone.txt", ".gitattributes", "never-there.txt"]))
    adds, changes, deletes, unchanged = diff_package(Package([same_lfs, same_txt, changed, added], {}), state)
    assert [f.path for f in adds] == ["c.txt"] and [f.path for f in changes] == ["b.txt"]
    assert sorted(f.path for f in unchanged) == ["a.txt", "w.safetensors"]
    assert [f.path for f in deletes] == ["gone.txt"]  # not theirs.txt, not .gitattributes, not absent paths


def test_git_blob_sha1_matches_git():
    # `printf 'hello\n' | git hash-object --stdin`
    assert git_blob_sha1(_pf("a", b"hello\n")) == "ce013625030ba8dba906f756967f9e9ca394464a"


def _http_error(status: int, code: str | None = None, message: str = "boom"):
    import httpx2
    from huggingface_hub.utils import hf_raise_for_status

    headers = {"X-Error-Message": message, **({"X-Error-Code": code} if code else {})}
    request = httpx2.Request("POST", "http://hub.test/api/models/o/r/commit/main")
    response = httpx2.Response(status, headers=headers, request=request, json={"error": message})
    try:
        hf_raise_for_status(response)
    except Exception as e:  # noqa: BLE001 - we want exactly what the client raises
        return e
    raise AssertionError("no error raised")


@pytest.mark.parametrize(("status", "transient"), [(500, True), (502, True), (503, True), (429, True),
                                                   (400, False), (404, False), (412, False)])
def test_transient_statuses(status, transient):
    assert is_transient(_http_error(status)) is transient


def test_network_errors_are_transient_and_412_is_stale():
    import httpx2

    assert is_transient(httpx2.ConnectError("refused")) and is_transient(httpx2.RemoteProtocolError("cut"))
    wrapped = RuntimeError("Error while uploading 'x' to the Hub.")
    wrapped.__cause__ = httpx2.ReadError("reset")
    assert is_transient(wrapped)
    assert is_stale(_http_error(412)) and not is_transient(ValueError("bug"))


def test_error_messages_are_one_actionable_line():
    from huggingface_hub import HfApi

    api = HfApi(endpoint="http://hub.test", token="hf_x")
    e401 = hub_error(_http_error(401, message="Invalid credentials in Authorization header"), "committing", "o/r", api)
    assert str(e401) == "committing: not logged in or token invalid: run `hf auth login` or set HF_TOKEN"
    e403 = hub_error(_http_error(403), "committing", "o/r", api)
    assert "no permission to write to o/r" in str(e403) and "'o'" in str(e403)
    e404 = hub_error(_http_error(404, "RepoNotFound"), "reading o/r", "o/r", api)
    assert str(e404) == "reading o/r: repo o/r not found, or your token cannot see it"
    e500 = hub_error(_http_error(500, message="database down"), "committing", "o/r", api, attempts=4)
    assert str(e500) == "committing: the Hub answered 500 after 4 tries: database down"
    assert all("\n" not in str(e) for e in (e401, e403, e404, e500))


def test_call_retries_transient_failures_then_gives_up():
    hub = Hub(retries=3, wait=0)
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise _http_error(503)
        return "ok"

    assert hub.call("doing it", "o/r", flaky) == "ok" and len(calls) == 3 and hub.slept == [0, 0]
    calls.clear()

    def failing(status: int):
        def fn() -> None:
            calls.append(1)
            raise _http_error(status)
        return fn

    with pytest.raises(HubError, match=r"^doing it: the Hub answered 503 after 3 tries"):
        hub.call("doing it", "o/r", failing(503))
    assert len(calls) == 3
    calls.clear()
    with pytest.raises(HubError, match=r"the Hub answered 400"):
        hub.call("doing it", "o/r", failing(400))
    assert len(calls) == 1  # a 400 is not retried
    with pytest.raises(ZeroDivisionError):  # a bug keeps its traceback
        hub.call("doing it", "o/r", lambda: 1 / 0)
