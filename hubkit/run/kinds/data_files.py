"""``data:``, ``seeds:`` and ``tests:``: what a reproducibility card quotes (each data file's MD5 and sha256, the
seeds) and the run's own statistical results, reported with Holm and BH adjustments within each family."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hubkit.run.kinds.base import ArtifactKind, LoadContext, Named, register

if TYPE_CHECKING:
    from hubkit.run.manifest import Manifest
    from hubkit.run.model import Run


@register
class DataFiles(ArtifactKind):
    name = "data"
    section = "data"

    def named(self, m: Manifest) -> list[Named]:
        return [Named(d.file, f"data[{i}].file", "data") for i, d in enumerate(m.data)]

    def load(self, ctx: LoadContext) -> None:
        from hubkit.formats.safefiles import file_hashes
        from hubkit.run.reported_tests import adjust

        m = ctx.run.manifest
        for d, named in zip(m.data, self.named(m), strict=True):
            p = ctx.file(named)
            if p is not None:
                ctx.run.data_files.append((d, file_hashes(p, d.file)))
        ctx.run.reported_tests = adjust(m.tests)

    def describe(self, run: Run) -> dict[str, str]:
        return {d.file: f"data: {d.description}" if d.description else "data the run used" for d, _ in run.data_files}

    def records(self, run: Run) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if run.data_files:
            out["data"] = [{**h.to_json(), "description": d.description} for d, h in run.data_files]
        if run.manifest.seeds:
            out["seeds"] = list(run.manifest.seeds)
        if run.reported_tests:
            out["tests"] = [t.to_json() for t in run.reported_tests]
        return out
