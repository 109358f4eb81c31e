"""The publish pipeline: run dir → Run → Package → staged tree (``--out``) or one Hub commit."""

from __future__ import annotations

from pathlib import Path

from .package import Package, build_package, stage
from .run import load_run


def stage_run(run_dir: str | Path, out: str | Path, *, template_dir: str | Path | None = None) -> Package:
    """Validate the run and write exactly the tree a publish would commit; no network, no token."""
    run = load_run(run_dir)
    package = build_package(run, template_dir=template_dir)
    stage(package, out)
    return package
