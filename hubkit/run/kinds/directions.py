"""``directions:``: per-layer direction tensors, republished as byte-deterministic canonical safetensors."""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import TYPE_CHECKING

from hubkit.run.kinds.base import ArtifactKind, Generated, LoadContext, Named, register

if TYPE_CHECKING:
    from hubkit.run.manifest import Manifest
    from hubkit.run.model import Run


def canonical_path(name: str) -> str:
    return f"vectors/{name}.safetensors"


@register
class Directions(ArtifactKind):
    name = "directions"
    section = "directions"

    def named(self, m: Manifest) -> list[Named]:
        return [Named(d.file, f"directions[{i}].file", "direction") for i, d in enumerate(m.directions)]

    def load(self, ctx: LoadContext) -> None:
        from hubkit.formats.directions import read_direction_file

        run, m = ctx.run, ctx.run.manifest
        for d, named in zip(m.directions, self.named(m), strict=True):
            p = ctx.file(named)
            if p is None:
                continue
            ds = ctx.attempt(read_direction_file, p, name=d.name, layer=d.layer,
                             layer_convention=d.layer_convention, display=d.file)
            if ds is None:
                continue
            ds.base_model, ds.method, ds.source = m.base_model, d.method, d.file
            run.directions.append(ds)
            if not ds.unit_norm:
                run.notes.append(f"{d.file}: not unit-norm (norms {min(ds.norms.values()):.3g}–"
                                 f"{max(ds.norms.values()):.3g}); canonical copy keeps the values as they are")

    def cross_check(self, ctx: LoadContext) -> None:
        dims = {d.name: d.d for d in ctx.run.directions}
        if len(set(dims.values())) > 1:
            parts = ", ".join(f"{n}: d={d}" for n, d in dims.items())
            ctx.problems.append(f"{ctx.where}: directions have different d ({parts})")

    def generated(self, run: Run) -> list[Generated]:
        from hubkit.formats.directions import canonical_bytes

        return [Generated(canonical_path(ds.name), canonical_bytes(ds), "direction") for ds in run.directions]

    def describe(self, run: Run) -> dict[str, str]:
        out: dict[str, str] = {}
        for ds in run.directions:
            n = len(ds.layers)
            span = f"{n} layers" if n > 1 else f"layer {ds.layer_ids[0]} ({ds.layer_convention})"
            out[canonical_path(ds.name)] = (f"direction `{ds.name}`, canonical: float32 `layer.<i>` "
                                            f"tensors, {span}, d={ds.d}")
            spec = run.manifest.direction(ds.name)
            if spec:
                fmt = PurePosixPath(spec.file).suffix
                note = " (a pickle container: prefer the safetensors copy)" if fmt in (".pt", ".pth") else ""
                out[spec.file] = f"direction `{ds.name}` as the run saved it{note}"
        return out
