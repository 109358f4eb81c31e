"""``ranking:``: per-layer metric tables (AUC, margin, cosines) for a direction; plotted on the card."""

from __future__ import annotations

from typing import TYPE_CHECKING

from hubkit.run.kinds.base import ArtifactKind, LoadContext, Named, register

if TYPE_CHECKING:
    from hubkit.run.manifest import Manifest
    from hubkit.run.model import Run


@register
class Rankings(ArtifactKind):
    name = "rankings"
    section = "ranking"

    def named(self, m: Manifest) -> list[Named]:
        return [Named(r, f"ranking[{i}]", "ranking") for i, r in enumerate(m.ranking)]

    def load(self, ctx: LoadContext) -> None:
        from hubkit.run.ranking import read_ranking

        for named in self.named(ctx.run.manifest):
            p = ctx.file(named)
            if p is not None and (rk := ctx.attempt(read_ranking, p, named.path)) is not None:
                ctx.run.rankings.append(rk)

    def cross_check(self, ctx: LoadContext) -> None:
        """A direction's ranking covers its selected layer and only layers the direction has."""
        for d in ctx.run.directions:
            rk = ctx.run.ranking_for(d.name)
            if rk is None:
                continue
            if d.selected_layer is not None and d.selected_layer not in rk.layers:
                ctx.problems.append(f"{rk.file}: no row for {d.name}'s selected layer {d.selected_layer} "
                                    f"({d.layer_convention} convention)")
            if len(d.layers) > 1 and not set(rk.layers) <= set(d.layers):
                extra = sorted(set(rk.layers) - set(d.layers))
                ctx.problems.append(f"{rk.file}: layers {extra[:5]} not in {d.source} (has {d.layer_ids[0]}–"
                                    f"{d.layer_ids[-1]})")

    def describe(self, run: Run) -> dict[str, str]:
        out = {}
        owners = {rk.file: ds.name for ds in run.directions if (rk := run.ranking_for(ds.name)) is not None}
        for rk in run.rankings:
            who = f" of `{owners[rk.file]}`" if rk.file in owners else ""
            out[rk.file] = f"per-layer ranking{who}: {', '.join(rk.columns)}"
        return out
