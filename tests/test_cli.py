"""The CLI surface of the foundation: exit codes, one-line errors, --debug, staging, light imports."""

import subprocess
import sys

from click.testing import CliRunner

from hubkit.cli import main

from .helpers import copy_example, write_run


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_validate_ok_and_problems(tmp_path):
    run = copy_example("refusal-abliteration", tmp_path)
    r = invoke("validate", str(run))
    assert r.exit_code == 0, r.output
    assert "ok: Refusal-direction abliteration" in r.output
    assert "direction refusal: layers 1–32 (32, hidden_states convention), d=64, selected layer 22" in r.output
    assert "note: activations/refusal_acts.npz: left out (matches exclude)" in r.output
    (run / "contrast_comply.jsonl").write_text('{"prompt": "x"}\n{oops}\n')
    r = invoke("validate", str(run))
    assert r.exit_code == 1
    assert r.stderr.strip().splitlines() == [
        "error: contrast_comply.jsonl:2: not valid JSON (Expecting property name enclosed in double quotes at "
        "column 2)"]


def test_bad_manifest_is_one_line_without_traceback(tmp_path):
    run = write_run(tmp_path / "run", "title: t\nstatus: positive\nlayer: 3\n")
    r = invoke("validate", str(run))
    assert r.exit_code == 1
    assert r.stderr == f"error: {run}/hubkit.yaml:3: unknown key 'layer' (allowed: title, status, base_model, " \
        "repo_id, date, base_model_revision, license, tags, status_note, summary, summary_file, authors, " \
        "compute, directions, ranking, contrast, evaluations, caveats, sections, related, weights, regenerate, " \
        "include, exclude, allow_secrets, max_file_size_mb, vector_sets, compare, adapters, data, seeds, tests, geometry, alpha)\n"
    r = invoke("--debug", "validate", str(run))
    assert r.exit_code == 1 and "Traceback" in r.stderr and "ManifestError" in r.stderr
    r = invoke("validate", str(run), "--debug")  # after the subcommand too
    assert r.exit_code == 1 and "Traceback" in r.stderr and "ManifestError" in r.stderr


def test_a_full_disk_while_staging_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    import errno
    import shutil

    from tests.helpers import copy_example

    run = copy_example("persona-vector", tmp_path)
    real = shutil.copyfile

    def full(src, dst, *a, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
        if str(dst).endswith(".pt"):
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        return real(src, dst, *a, **kw)

    monkeypatch.setattr(shutil, "copyfile", full)
    r = invoke("publish", str(run), "--out", str(tmp_path / "out"))
    assert r.exit_code == 1 and r.stderr.count("\n") == 1, r.stderr
    assert "No space left on device (nothing was left half-written)" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_sigterm_while_staging_winds_down_like_ctrl_c(tmp_path, monkeypatch):
    """``kill`` / ``timeout`` mid-publish: "interrupted", exit 130, nothing half-written; the process's own
    SIGTERM handler is back afterwards."""
    import os
    import shutil
    import signal
    import time

    from tests.helpers import copy_example

    run = copy_example("persona-vector", tmp_path)
    real = shutil.copyfile

    def killed(src, dst, *a, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
        if str(dst).endswith(".pt"):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler interrupts this
        return real(src, dst, *a, **kw)

    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(shutil, "copyfile", killed)
    r = invoke("publish", str(run), "--out", str(tmp_path / "out"))
    assert r.exit_code == 130 and r.stderr.strip() == "interrupted", r.stderr
    assert not (tmp_path / "out").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
    assert signal.getsignal(signal.SIGTERM) is before


def test_run_dir_that_is_a_file_or_empty(tmp_path):
    f = tmp_path / "f.txt"
    f.write_text("x")
    r = invoke("validate", str(f))
    assert r.exit_code == 1 and r.stderr == f"error: {f}: is a file, not a run directory\n"
    (tmp_path / "empty").mkdir()
    r = invoke("publish", str(tmp_path / "empty"), "--out", str(tmp_path / "out"))
    assert r.exit_code == 1 and "no manifest (the directory is empty)" in r.stderr
    assert not (tmp_path / "out").exists()


def test_usage_errors_exit_2(tmp_path):
    r = invoke("validate")
    assert r.exit_code == 2
    r = invoke("frobnicate")
    assert r.exit_code == 2


def test_publish_out_stages(tmp_path, monkeypatch):
    monkeypatch.setenv("HUBKIT_CACHE", str(tmp_path / "cache"))
    run = copy_example("persona-vector", tmp_path)
    r = invoke("publish", str(run), "--out", str(tmp_path / "build"))
    assert r.exit_code == 0, r.output
    assert (tmp_path / "build" / "vectors" / "persona.safetensors").is_file()
    assert (tmp_path / "build" / "vectors" / "persona_dir.pt").is_file()


def test_init_command(tmp_path):
    run = copy_example("persona-vector", tmp_path)
    (run / "hubkit.yaml").unlink()
    r = invoke("init", str(run))
    assert r.exit_code == 0 and "fill in 4 field(s) marked TODO: status, base_model" in r.output
    r = invoke("init", str(run))
    assert r.exit_code == 1 and "already exists (use --force to overwrite)" in r.stderr


def test_help_does_not_import_torch():
    code = ("import sys\nfrom hubkit.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'transformers', 'pandas', 'scipy', 'datasets', 'huggingface_hub')"
            " if m in sys.modules]\nassert not heavy, heavy\n")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_card_output_is_written_whole_or_not_at_all(tmp_path):
    """A file where the card's figures go, or a device as -o, writes nothing (the card was written first, and
    `-o /dev/stdout` put its figures in /dev/assets)."""
    run = copy_example("persona-vector", tmp_path)
    d = tmp_path / "d"
    d.mkdir()
    (d / "assets").write_text("x")
    r = invoke("card", str(run), "-o", str(d / "README.md"))
    assert r.exit_code == 1 and "in the way of the card's figure" in r.stderr and r.stderr.count("\n") == 1
    assert sorted(p.name for p in d.iterdir()) == ["assets"]
    r = invoke("card", str(run), "-o", "/dev/null")
    assert r.exit_code == 1 and "not a regular file" in r.stderr
    r = invoke("card", str(run), "-o", str(tmp_path / "ok" / "README.md"))
    assert r.exit_code == 0 and (tmp_path / "ok" / "README.md").is_file() and (tmp_path / "ok" / "assets").is_dir()


def test_a_token_quoted_by_an_error_is_masked(tmp_path):
    """Errors quote the value they refuse; a token pasted in the wrong place must not reach a CI log whole."""
    token = "hf_" + "Zq8" + "xK2vP9mN4rT7wY1bC5dF8gH3jL6sA0eU"
    run = copy_example("persona-vector", tmp_path)
    text = (run / "hubkit.yaml").read_text()
    status = next(line for line in text.splitlines() if line.startswith("status:"))
    (run / "hubkit.yaml").write_text(text.replace(status, f"status: {token}", 1))
    r = invoke("validate", str(run))
    assert r.exit_code == 1 and token not in r.stderr and "hf_Zq…" in r.stderr, r.stderr
