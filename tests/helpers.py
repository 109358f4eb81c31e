"""Small builders shared by the foundation tests: a minimal valid run on disk."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

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
