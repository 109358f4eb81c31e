"""Write beside, fsync, rename: the one way hubkit makes a file or folder appear (staging, regenerate, pull,
export). A killed run leaves only a temporary sibling, which the next run in that folder removes."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hubkit.errors import HubkitError


@contextmanager
def staging_file(target: str | Path) -> Iterator[Path]:
    """A temporary file beside ``target`` (same folder, so the rename is atomic), fsynced and renamed onto
    it only when the block finishes; removed on any failure. Leftovers of killed runs are removed first."""
    target = Path(target).absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(target)
    tmp = target.parent / f".{target.name}.hubkit-tmp-{os.getpid()}"
    tmp.unlink(missing_ok=True)  # a link planted under this name is removed, never written through
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_bytes(target: str | Path, data: bytes) -> Path:
    """``target`` holds ``data`` whole, or keeps what it had: never a torn file."""
    with staging_file(target) as tmp:
        tmp.write_bytes(data)
    return Path(target)


@contextmanager
def staging_dir(target: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """A temporary folder beside ``target``, renamed onto it only when the block finishes.

    An interrupted or failed run removes the temporary folder, so ``target`` never holds half a model.
    """
    target = Path(target).absolute()
    if target.is_symlink():
        raise HubkitError(f"{target}: is a symbolic link (give the folder itself)")
    if target.exists() and not overwrite and (not target.is_dir() or any(target.iterdir())):
        raise HubkitError(f"{target}: already exists and is not empty (choose another --out or remove it)")
    made = [p for p in target.parents if not p.exists()]  # removed again if the run fails (when still empty)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(target)
    tmp = target.parent / f".{target.name}.hubkit-tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
        if overwrite and target.exists():
            old = target.parent / f".{target.name}.hubkit-old-{os.getpid()}"
            os.rename(target, old)
            os.rename(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            try:  # atomic: onto nothing or an empty folder; refused when another run filled it meanwhile
                os.rename(tmp, target)
            except OSError as e:
                raise HubkitError(f"{target}: appeared while this run was writing (another run?); nothing "
                                  f"of this run was kept ({e.strerror})") from e
        _fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for folder in made:  # deepest first
            try:
                folder.rmdir()
            except OSError:
                break
        raise


#: the names hubkit gives its temporary siblings (and nothing else may be removed as one)
_OURS = re.compile(r"^\..+\.hubkit-(?:tmp|old)-(?P<pid>[0-9]{1,10})$")


def _remove_stale(target: Path) -> None:
    """Remove what earlier runs that were killed left beside any target in this folder (their process is
    gone): a ``kill -9`` leaves its temporary sibling, and the next run here, whatever its target, cleans it.
    Only names of exactly hubkit's form (``.<name>.hubkit-tmp-<pid>``, ``-old-``) are touched."""
    for p in target.parent.glob(".*.hubkit-*-*"):
        m = _OURS.match(p.name)
        if m is None:
            continue
        pid = m["pid"]
        if int(pid) != os.getpid() and not Path(f"/proc/{pid}").exists():
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)

