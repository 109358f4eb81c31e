"""The secret scan: every credential shape is caught with file:line, kind and a masked value; placeholders,
binary files and allowed files are not; a hit stops staging and publishing before anything is written."""

from __future__ import annotations

import random
import string
from pathlib import Path

import pytest

from hubkit.errors import SecretFound
from hubkit.publish.secrets import LINE_LIMIT, check_secrets, mask, scan_file, scan_text
from tests.helpers import copy_example

# Built at run time so this file itself holds no credential-shaped literal (push protection, our own scan).
_RNG = random.Random(7)


def _rand(n: int, alphabet: str = string.ascii_letters + string.digits) -> str:
    return "".join(_RNG.choice(alphabet) for _ in range(n))


HF = "hf_" + _rand(34)
OPENAI = "sk-" + _rand(48)
OPENAI_PROJ = "sk-proj-" + _rand(40, string.ascii_letters + string.digits + "_-")
ANTHROPIC = "sk-ant-api03-" + _rand(60, string.ascii_letters + string.digits + "_-")
AWS_ID = "AKIA" + _rand(16, string.ascii_uppercase + string.digits)
AWS_SECRET = _rand(40, string.ascii_letters + string.digits + "/+")
GHP = "ghp_" + _rand(36)
GH_PAT = "github_pat_" + _rand(22) + "_" + _rand(59)
PEM = "-----BEGIN RSA PRIVATE KEY-----"


@pytest.mark.parametrize(("line", "kind", "value"), [
    (f"export HF_TOKEN={HF}", "Hugging Face token", HF),
    (f"OPENAI_API_KEY='{OPENAI}'", "OpenAI API key", OPENAI),
    (f'{{"key": "{OPENAI_PROJ}"}}', "OpenAI API key", OPENAI_PROJ),
    (f"client = Anthropic(api_key=\"{ANTHROPIC}\")", "Anthropic API key", ANTHROPIC),
    (f"aws_access_key_id: {AWS_ID}", "AWS access key id", AWS_ID),
    (f"aws_secret_access_key = {AWS_SECRET}", "AWS secret access key", AWS_SECRET),
    (f"git clone https://{GHP}@github.com/x/y", "GitHub token", GHP),
    (f"GH_TOKEN={GH_PAT}", "GitHub token", GH_PAT),
    (PEM, "private key block", PEM),
])
def test_each_kind_is_found_once_and_masked(line, kind, value):
    hits = scan_text(f"first line\n{line}\n", "notes/run.log")
    assert [(h.path, h.line, h.kind) for h in hits] == [("notes/run.log", 2, kind)]
    masked = hits[0].masked
    if kind != "private key block":
        assert value not in str(hits[0]) and masked.endswith(value[-4:]) and "…" in masked
        assert masked.startswith(value[:5])


def test_mask_shape():
    assert mask("hf_abcdefghijklmnopqrstuvwxyz0123456789wxyz") == "hf_ab…wxyz"
    assert mask("sk-ant-api03-abcdefghijklmnopqrstuvwxyz") == "sk-ant-ap…wxyz"
    assert mask("short") == "sho…"


def test_anthropic_key_is_not_also_an_openai_key():
    assert [h.kind for h in scan_text(ANTHROPIC)] == ["Anthropic API key"]


@pytest.mark.parametrize("text", [
    "HF_TOKEN=hf_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
    "aws_access_key_id = AKIAIOSFODNN7EXAMPLE",
    "OPENAI_API_KEY=sk-...",
    "set HF_TOKEN (see huggingface.co/settings/tokens), never hf_ in a log",
    "the ask-me-anything-prompt-collection-v2 dataset",  # 'sk-' inside a word
    "path/to/hf_hub_download_cache_directory_name_here",  # 'hf_' inside a word
])
def test_placeholders_and_lookalikes_are_not_secrets(text):
    assert scan_text(text) == []


def test_binary_files_are_skipped(tmp_path: Path):
    f = tmp_path / "shard.safetensors"
    f.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}" + HF.encode())
    assert scan_file(f) == []


def test_a_token_split_across_a_very_long_line_is_still_found(tmp_path: Path):
    f = tmp_path / "trace.jsonl"
    pad = "a" * (LINE_LIMIT - 10)  # the token straddles the first read boundary
    f.write_text('{"x": 1}\n' + pad + " " + HF + " tail\n" + "ok\n")
    hits = scan_file(f, "trace.jsonl")
    assert [(h.line, h.kind) for h in hits] == [(2, "Hugging Face token")]


def test_allow_secrets_skips_the_file(tmp_path: Path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "format.md").write_text(f"a token looks like {HF}\n")
    (tmp_path / "notes.log").write_text("nothing here\n")
    check_secrets(tmp_path, ["docs/format.md", "notes.log"], allow=["docs/*.md"])
    with pytest.raises(SecretFound, match=r"docs/format\.md:1: Hugging Face token hf_"):
        check_secrets(tmp_path, ["docs/format.md", "notes.log"])


def test_message_lists_three_hits_and_counts_the_rest(tmp_path: Path):
    (tmp_path / "a.log").write_text("\n".join(f"k{i}={'hf_' + _rand(34)}" for i in range(5)) + "\n")
    with pytest.raises(SecretFound) as e:
        check_secrets(tmp_path, ["a.log"])
    msg = str(e.value)
    assert "a.log:1:" in msg and "a.log:3:" in msg and "a.log:4:" not in msg and "(and 2 more)" in msg
    assert "nothing was uploaded" in msg and "allow_secrets" in msg
    assert len(e.value.hits) == 5  # type: ignore[attr-defined]


def test_staging_stops_on_a_secret_and_env_files_are_excluded(tmp_path: Path, monkeypatch):
    from hubkit.publish.commit import stage_run

    monkeypatch.setenv("HUBKIT_CACHE", str(tmp_path / "cache"))
    run = copy_example("persona-vector", tmp_path)
    (run / ".env").write_text(f"HF_TOKEN={HF}\n")  # excluded by default: neither scanned nor staged
    out = stage_run(run, tmp_path / "out1")
    assert out.file(".env") is None and not (tmp_path / "out1" / ".env").exists()
    (run / "notes" / "run.log").write_text(f"step 1\nlogin with {HF}\n")
    with pytest.raises(SecretFound, match=r"notes/run\.log:2: Hugging Face token hf_"):
        stage_run(run, tmp_path / "out2")
    assert not (tmp_path / "out2").exists()
