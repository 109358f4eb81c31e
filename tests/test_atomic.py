"""hubkit.formats.atomic: a folder or file appears whole or not at all, and only hubkit's own leftovers are
cleaned."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hubkit.errors import HubkitError
from hubkit.formats.atomic import staging_dir, write_bytes


def test_folder_appears_whole_and_a_failure_leaves_nothing(tmp_path: Path) -> None:
    with staging_dir(tmp_path / "out") as tmp:
        (tmp / "a").write_text("x")
        assert not (tmp_path / "out").exists()
    assert (tmp_path / "out" / "a").read_text() == "x"
    with pytest.raises(RuntimeError), staging_dir(tmp_path / "out2") as tmp:
        (tmp / "a").write_text("x")
        raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    with pytest.raises(RuntimeError), staging_dir(tmp_path / "new" / "a" / "out"):
        raise RuntimeError("boom")  # the folders made for it go too
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_folder_filled_by_another_run_meanwhile_is_not_replaced(tmp_path: Path) -> None:
    """Two runs to one --out: the check at the start passes for both; the second to finish must not replace the
    first's folder (a rename onto a non-empty folder fails atomically)."""
    target = tmp_path / "out"
    with pytest.raises(HubkitError, match="appeared while this run was writing"), staging_dir(target) as tmp:
        (tmp / "mine").write_text("second")
        target.mkdir()
        (target / "theirs").write_text("first")
    assert [p.name for p in target.iterdir()] == ["theirs"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # our temporary folder is gone


def test_an_empty_target_folder_is_filled_and_overwrite_replaces(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with staging_dir(tmp_path / "empty") as tmp:
        (tmp / "a").write_text("x")
    assert (tmp_path / "empty" / "a").is_file()
    with pytest.raises(HubkitError, match="already exists and is not empty"), staging_dir(tmp_path / "empty"):
        pass
    with staging_dir(tmp_path / "empty", overwrite=True) as tmp:
        (tmp / "b").write_text("y")
    assert [p.name for p in (tmp_path / "empty").iterdir()] == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


def test_a_symlinked_target_is_refused(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    for name in ("link", "dangling"):
        with pytest.raises(HubkitError, match="symbolic link"), staging_dir(tmp_path / name):
            pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dangling", "link", "real"]


def test_only_hubkits_own_leftovers_of_dead_processes_are_removed(tmp_path: Path) -> None:
    dead = [tmp_path / ".x.hubkit-tmp-999999", tmp_path / ".y.safetensors.hubkit-old-999998"]
    for d in dead:
        d.mkdir()
    foreign = [tmp_path / ".thesis.hubkit-draft-999999", tmp_path / ".cache.hubkit-models-888888",
               tmp_path / ".z.hubkit-tmp-12ab"]
    foreign[0].write_text("precious")
    foreign[1].mkdir()
    foreign[2].write_text("not a pid")
    alive = tmp_path / f".mine.hubkit-tmp-{os.getpid()}"
    alive.mkdir()
    write_bytes(tmp_path / "f.bin", b"data")
    assert (tmp_path / "f.bin").read_bytes() == b"data"
    assert not any(d.exists() for d in dead)
    assert all(f.exists() for f in foreign) and alive.exists()
