"""``vector_sets:`` and ``compare:``: sets of named vectors (personas, traits) published as canonical files,
and their geometry computed from the published float32 values (cosines, bootstrap intervals, compare pairs)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hubkit.run.kinds.base import ArtifactKind, DatasetTable, Generated, LoadContext, Named, register

if TYPE_CHECKING:
    from hubkit.run.manifest import Manifest
    from hubkit.run.model import Run


def set_path(name: str) -> str:
    return f"vectors/{name}.safetensors"


def bootstrap(m: Manifest) -> tuple[int, int]:
    """(seed, resamples) of every interval: ``geometry.seed``, else the run's first seed, else 0."""
    seed = m.geometry.seed if m.geometry.seed is not None else (m.seeds[0] if m.seeds else 0)
    return seed, m.geometry.resamples


@register
class VectorSets(ArtifactKind):
    name = "vector_sets"
    section = "vector_sets"

    def named(self, m: Manifest) -> list[Named]:
        return [Named(s.file, f"vector_sets[{i}].file", "vector_set") for i, s in enumerate(m.vector_sets)]

    def load(self, ctx: LoadContext) -> None:
        from hubkit.formats.vector_sets import read_vector_set
        from hubkit.run.geometry import set_geometry

        run, m = ctx.run, ctx.run.manifest
        seed, resamples = bootstrap(m)
        for i, s in enumerate(m.vector_sets):
            p = ctx.folder_or_file(Named(s.file, f"vector_sets[{i}].file", "vector_set"))
            if p is None:
                continue
            vs = ctx.attempt(read_vector_set, p, name=s.name, layers=s.layers, members=s.members,
                             layer_convention=s.layer_convention, labels=s.labels, display=s.file)
            if vs is None:
                continue
            run.vector_sets[s.name] = vs
            run.set_geometry[s.name] = set_geometry(s.name, vs.float64(), vs.layers,
                                                    layer_convention=vs.layer_convention, seed=seed,
                                                    n_resamples=resamples)

    def cross_check(self, ctx: LoadContext) -> None:
        from hubkit.run.geometry import PRINCIPAL, compare_sets

        run, m = ctx.run, ctx.run.manifest
        seed, resamples = bootstrap(m)
        for i, c in enumerate(m.compare):
            b, a = run.vector_sets.get(c.before), run.vector_sets.get(c.after)
            if b is None or a is None:
                continue  # its own problem is reported already
            at = f"{ctx.where}: compare[{i}]"
            if set(b.members) != set(a.members):
                only = sorted(set(b.members) ^ set(a.members))
                ctx.problems.append(f"{at}: '{c.before}' and '{c.after}' have different members (e.g. '{only[0]}')")
            elif b.layers != a.layers or b.layer_convention != a.layer_convention:
                ctx.problems.append(f"{at}: '{c.before}' has layers {b.layers} ({b.layer_convention}), "
                                    f"'{c.after}' has {a.layers} ({a.layer_convention}); a pair must share both")
            elif b.d != a.d:
                ctx.problems.append(f"{at}: '{c.before}' has d={b.d}, '{c.after}' d={a.d}")
            elif c.axis is not None and c.axis != PRINCIPAL and c.axis not in b.members:
                ctx.problems.append(f"{at}.axis: '{c.axis}' is neither a member of '{c.before}' "
                                    f"({', '.join(b.members)}) nor '{PRINCIPAL}'")
            else:
                try:
                    run.compares.append(compare_sets(b.float64(), a.float64(), b.layers, before_name=c.before,
                                                     after_name=c.after, layer_convention=b.layer_convention,
                                                     seed=seed, n_resamples=resamples, axis=c.axis))
                except ValueError as e:  # e.g. the axis member did not move
                    ctx.problems.append(f"{at}: {e}")

    def generated(self, run: Run) -> list[Generated]:
        from hubkit.formats.vector_sets import canonical_bytes

        return [Generated(set_path(n), canonical_bytes(vs), "vector_set") for n, vs in run.vector_sets.items()]

    def describe(self, run: Run) -> dict[str, str]:
        out = {}
        for n, vs in run.vector_sets.items():
            out[set_path(n)] = (f"vector set `{n}`, canonical: float32 `<member>.layer.<i>`, {len(vs.members)} "
                                f"members × layers {vs.layers} ({vs.layer_convention}), d={vs.d}, values as given")
            spec = next(s for s in run.manifest.vector_sets if s.name == n)
            if spec.file != set_path(n):
                out[spec.file] = f"vector set `{n}` as the run saved it"
        return out

    def dataset_tables(self, run: Run) -> list[DatasetTable]:
        if not run.set_geometry:
            return []
        tables = [DatasetTable("geometry", "members", "(computed)", "per set, layer and member: norm and mean "
                               "cosine with the other members", lambda: _geometry_table(run))]
        if run.compares:
            tables.append(DatasetTable("geometry", "shifts", "(computed)", "per compare pair, layer and member: "
                                       "cos(before, after), norm ratio, and the projection on the pair's shift "
                                       "axis when it names one", lambda: _shifts_table(run)))
        return tables

    def records(self, run: Run) -> dict[str, Any]:
        if not run.vector_sets:
            return {}
        seed, resamples = bootstrap(run.manifest)
        return {
            "vector_sets": [{"name": n, "canonical": set_path(n), "members": vs.members, "layers": vs.layers,
                             "layer_convention": vs.layer_convention, "d": vs.d, "labels": vs.labels}
                            for n, vs in run.vector_sets.items()],
            "geometry": {"bootstrap": {"seed": seed, "resamples": resamples},
                         "sets": [g.to_json() for g in run.set_geometry.values()],
                         "compare": [c.to_json() for c in run.compares]},
        }


def _geometry_table(run: Run) -> Any:
    import numpy as np
    import pyarrow as pa

    rows = []
    for name, geom in run.set_geometry.items():
        for lg in geom.layers:
            c = np.asarray(lg.cosine)
            n = c.shape[0]
            for i, member in enumerate(geom.members):
                rows.append({"set": name, "layer": lg.layer, "layer_convention": geom.layer_convention,
                             "member": member, "norm": float(lg.norms[i]),
                             "mean_cos_to_others": float((c[i].sum() - c[i, i]) / (n - 1)) if n > 1 else None})
    return pa.Table.from_pylist(rows)


def _shifts_table(run: Run) -> Any:
    import pyarrow as pa

    def num(v: Any) -> float | None:
        v = float(v)
        return None if v != v else v  # NaN (a member that did not move): null

    rows = []
    for c in run.compares:
        for cl in c.layers:
            ax = cl.axis
            for i, member in enumerate(c.members):
                rows.append({"before": c.before, "after": c.after, "layer": cl.layer,
                             "layer_convention": c.layer_convention, "member": member,
                             "cos_before_after": float(cl.member_cos[i]), "norm_ratio": float(cl.norm_ratio[i]),
                             "shift_axis": c.axis,
                             "cos_before_axis": None if ax is None else float(ax.cos_before[i]),
                             "cos_after_axis": None if ax is None else float(ax.cos_after[i]),
                             "shift_along_axis": None if ax is None else float(ax.along[i]),
                             "orthogonal_share": None if ax is None else num(ax.orthogonal_share[i])})
    schema = pa.schema([("before", pa.string()), ("after", pa.string()), ("layer", pa.int64()),
                        ("layer_convention", pa.string()), ("member", pa.string()),
                        ("cos_before_after", pa.float64()), ("norm_ratio", pa.float64()),
                        ("shift_axis", pa.string()), ("cos_before_axis", pa.float64()),
                        ("cos_after_axis", pa.float64()), ("shift_along_axis", pa.float64()),
                        ("orthogonal_share", pa.float64())])
    return pa.Table.from_pylist(rows, schema=schema)
