"""``contrast:``: the contrast-prompt JSONL files a direction was computed from (a dataset config each)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from hubkit.run.kinds.base import ArtifactKind, DatasetTable, LoadContext, Named, register

if TYPE_CHECKING:
    from pathlib import Path

    from hubkit.run.manifest import Manifest
    from hubkit.run.model import Run


@register
class ContrastSets(ArtifactKind):
    name = "contrast"
    section = "contrast"

    def named(self, m: Manifest) -> list[Named]:
        return [Named(c.file, f"contrast[{i}].file", "contrast") for i, c in enumerate(m.contrast)]

    def load(self, ctx: LoadContext) -> None:
        from hubkit.run.contrast import read_contrast

        for c, named in zip(ctx.run.manifest.contrast, self.named(ctx.run.manifest), strict=True):
            p = ctx.file(named)
            if p is None or (cs := ctx.attempt(read_contrast, p, c.file, c.label)) is None:
                continue
            ctx.run.contrasts.append(cs)
            for line, first in cs.duplicates:
                ctx.run.notes.append(f"{c.file}:{line}: duplicate prompt (same as line {first})")

    def describe(self, run: Run) -> dict[str, str]:
        return {c.file: f"contrast prompts `{c.label}` ({c.count})" for c in run.contrasts}

    def dataset_tables(self, run: Run) -> list[DatasetTable]:
        return [DatasetTable("contrast", cs.label, cs.file, f"contrast set '{cs.label}'",
                             lambda cs=cs: _contrast_table(run.root / cs.file, cs.label, cs.prompts))
                for cs in run.contrasts]


def _contrast_table(path: Path, label: str, prompts: list[str]) -> Any:
    """The JSONL objects as rows (plus ``label``); prompts only when the objects don't share a schema."""
    import pyarrow as pa

    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    try:
        rows = [dict(r, label=r.get("label", label)) for r in rows]
        return pa.Table.from_pylist(rows)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError):
        return pa.table({"prompt": prompts, "label": [label] * len(prompts),
                         "raw": [json.dumps(r, ensure_ascii=False, sort_keys=True) for r in rows]})
