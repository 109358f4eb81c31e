"""hubkit.run.kinds: the artifact-kind registry, and confinement of every path a manifest names."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hubkit.publish.commit import stage_run
from hubkit.run import kinds as kinds_mod
from hubkit.run.kinds.base import _KINDS, ArtifactKind, Generated, LoadContext, Named
from hubkit.run.run import validate_run
from tests.helpers import copy_example

SECRET_KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\n"


def test_the_builtin_kinds_are_registered_in_card_order() -> None:
    assert [k.name for k in kinds_mod.kinds()] == ["directions", "rankings", "contrast", "evaluations", "texts",
                                                    "weights", "vector_sets", "adapters", "data"]


def test_a_new_kind_is_one_class(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Registered once, it is loaded by validate, its files are published and described, its output staged."""
    class Notebook(ArtifactKind):
        name, section = "notebook", "caveats"

        def named(self, m):  # noqa: ANN001, ANN202
            return [Named("notes/analysis.md", "caveats", "report")]

        def load(self, ctx: LoadContext) -> None:
            if ctx.file(self.named(ctx.run.manifest)[0]) is None:
                return
            ctx.run.notes.append("notebook seen")

        def generated(self, run):  # noqa: ANN001, ANN202
            return [Generated("assets/notebook.txt", b"made by the kind\n", "asset")]

        def describe(self, run):  # noqa: ANN001, ANN202
            return {"assets/notebook.txt": "the notebook kind's output"}

    monkeypatch.setattr(kinds_mod.base, "_KINDS", [*_KINDS])
    kinds_mod.base.register(Notebook)
    run = copy_example("persona-vector", tmp_path)
    (run / "notes").mkdir(exist_ok=True)
    (run / "notes" / "analysis.md").write_text("# analysis\n")
    report = validate_run(run)
    assert report.ok and "notebook seen" in report.notes
    stage_run(run, tmp_path / "out")
    assert (tmp_path / "out" / "assets" / "notebook.txt").read_bytes() == b"made by the kind\n"
    assert "the notebook kind's output" in (tmp_path / "out" / "README.md").read_text()


@pytest.mark.parametrize("how", ["file", "folder"])
def test_a_manifest_path_through_a_symlink_out_of_the_run_is_refused(how: str, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "id_ed25519").write_text(SECRET_KEY)
    run = copy_example("persona-vector", tmp_path)
    if how == "file":
        (run / "summary.md").symlink_to(outside / "id_ed25519")
        target = "summary.md"
    else:
        (run / "notes" / "etc").symlink_to(outside)  # notes/etc -> a folder outside the run
        target = "notes/etc/id_ed25519"
    text = (run / "hubkit.yaml").read_text().replace("summary_file: RESULTS_FINAL.md", f"summary_file: {target}")
    (run / "hubkit.yaml").write_text(text)
    report = validate_run(run)
    assert any("summary_file" in p and "outside the run" in p for p in report.problems), report.problems
    with pytest.raises(Exception, match="outside the run"):
        stage_run(run, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_symlinks_inside_the_run_are_published_as_content_and_outside_ones_left_out(tmp_path: Path) -> None:
    """A copied HF snapshot (snapshots/<sha>/file -> ../../blobs/<hash>) publishes; a link out never is read."""
    run = copy_example("persona-vector", tmp_path)
    blobs = run / "model" / "blobs"
    blobs.mkdir(parents=True)
    (blobs / "abc123").write_text('{"model_type": "llama"}')
    snap = run / "model" / "snapshots" / "0"
    snap.mkdir(parents=True)
    (snap / "config.json").symlink_to(os.path.relpath(blobs / "abc123", snap))
    (tmp_path / "private.txt").write_text(SECRET_KEY)
    (run / "notes" / "leak.txt").symlink_to(tmp_path / "private.txt")
    (run / ".cache" / "huggingface").mkdir(parents=True)
    (run / ".cache" / "huggingface" / "x.lock").write_text("")
    (run / ".gitattributes").write_text("*.safetensors filter=lfs\n")
    report = validate_run(run)
    assert report.ok, report.problems
    by = {f.path: f for f in report.run.files}
    assert by["model/snapshots/0/config.json"].included
    assert not by["notes/leak.txt"].included and "outside the run" in by["notes/leak.txt"].reason
    assert not by[".cache/"].included and "bookkeeping" in by[".cache/"].reason
    assert not by[".gitattributes"].included
    pkg = stage_run(run, tmp_path / "out")
    assert (tmp_path / "out" / "model/snapshots/0/config.json").read_text() == '{"model_type": "llama"}'
    assert not (tmp_path / "out" / "notes" / "leak.txt").exists()
    assert SECRET_KEY.splitlines()[1] not in (tmp_path / "out" / "README.md").read_text()
    assert all(".cache" not in f.path for f in pkg.files)
