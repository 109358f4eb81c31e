"""Small builders shared by the tests: a minimal valid run on disk, an interpreter without numba."""

from __future__ import annotations

import shutil
import sys
import textwrap
from pathlib import Path

import pytest

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
EXAMPLES = ("capability-vector-v1", "refusal-abliteration", "persona-vector")


def copy_example(name: str, tmp_path: Path) -> Path:
    dest = tmp_path / name
    shutil.copytree(ARTIFACTS / name, dest)
    return dest


def write_run(root: Path, manifest: str, files: dict[str, str | bytes] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "hubkit.yaml").write_text(textwrap.dedent(manifest).lstrip("\n"))
    for rel, content in (files or {}).items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            p.write_bytes(content)
        else:
            p.write_text(textwrap.dedent(content).lstrip("\n"))
    return root


def without_numba(m: pytest.MonkeyPatch) -> None:
    """As if numba were not installed: ``import numba`` raises ImportError, and hubkit.weights.fused is imported
    afresh (so the executor's import of it fails and it falls back to the numpy kernels)."""
    import hubkit.weights

    m.setitem(sys.modules, "numba", None)  # import numba → ImportError
    m.delitem(sys.modules, "hubkit.weights.fused", raising=False)
    m.delattr(hubkit.weights, "fused", raising=False)
