"""``weights:`` (a model folder of the run) and ``regenerate:`` (the recipe that rebuilds it)."""

from __future__ import annotations

from hubkit.run.kinds.base import ArtifactKind, LoadContext, register


@register
class Weights(ArtifactKind):
    name = "weights"
    section = "weights"

    def load(self, ctx: LoadContext) -> None:
        from hubkit.run.model import resolve_in_run

        m = ctx.run.manifest
        if not m.weights:
            return
        try:
            wp = resolve_in_run(ctx.run.root, m.weights.path, f"{ctx.where}: weights.path", folder=True)
        except Exception as e:  # noqa: BLE001 - a HubkitError, recorded like every other problem
            ctx.problems.append(str(e))
            return
        if not wp.is_dir():
            ctx.problems.append(f"{ctx.where}: weights.path: folder '{m.weights.path}' not found")
        elif not (wp / "config.json").is_file():
            ctx.problems.append(f"{ctx.where}: weights.path: '{m.weights.path}' has no config.json")

    def cross_check(self, ctx: LoadContext) -> None:
        """The recipe's direction and layer(s) exist; a recipe needs the base model it rebuilds."""
        run = ctx.run
        r = run.manifest.regenerate
        names = {d.name for d in run.directions}
        if r is None or r.direction not in names:
            return
        d = run.direction(r.direction)
        layer = r.layer if r.layer is not None else d.selected_layer
        if layer is None:
            ctx.problems.append(f"{ctx.where}: regenerate.layer is needed ({d.source} has {len(d.layers)} layers)")
        elif layer != "each":
            wanted = {int(layer), int(layer) + (0 if float(layer).is_integer() else 1)}
            missing = sorted(w for w in wanted if w not in d.layers)
            if missing:
                what = f"{layer}" if missing[0] == layer else f"{layer} needs layer {missing[0]}, which is"
                ctx.problems.append(f"{ctx.where}: regenerate.layer {what} not in {d.source} (layers "
                                    f"{d.layer_ids[0]}–{d.layer_ids[-1]}, {d.layer_convention} convention)")
        if r.project_out and r.project_out in names:
            g = run.direction(r.project_out)
            if g.d != d.d or g.layer_convention != d.layer_convention or not set(d.layers) <= set(g.layers):
                ctx.problems.append(f"{ctx.where}: regenerate.project_out '{g.name}' ({g.layer_convention}, d={g.d}, "
                                    f"{len(g.layers)} layers) must cover the layers of '{d.name}' "
                                    f"({d.layer_convention}, d={d.d}, {len(d.layers)} layers)")
        if not run.manifest.base_model:
            ctx.problems.append(f"{ctx.where}: base_model is required when a regenerate recipe is given")
