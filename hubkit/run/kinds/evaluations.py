"""``evaluations:``: arms with pass counts or per-task tables; the card's statistics come from these."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hubkit.run.kinds.base import ArtifactKind, DatasetTable, LoadContext, Named, register

if TYPE_CHECKING:
    from pathlib import Path

    from hubkit.run.manifest import Manifest
    from hubkit.run.model import Run


@register
class Evaluations(ArtifactKind):
    name = "evaluations"
    section = "evaluations"

    def named(self, m: Manifest) -> list[Named]:
        return [Named(a.per_task, f"evaluations[{i}].arms[{j}].per_task", "results")
                for i, e in enumerate(m.evaluations) for j, a in enumerate(e.arms) if a.per_task]

    def load(self, ctx: LoadContext) -> None:
        from hubkit.run.evaluations import load_evaluation

        for i, e in enumerate(ctx.run.manifest.evaluations):
            files = [Named(a.per_task, f"evaluations[{i}].arms[{j}].per_task", "results")
                     for j, a in enumerate(e.arms) if a.per_task]
            if all([ctx.file(n) is not None for n in files]):  # every one checked, each problem reported
                ev = ctx.attempt(load_evaluation, e, ctx.run.root, ctx.where)
                if ev is not None:
                    ctx.run.evaluations.append(ev)

    def cross_check(self, ctx: LoadContext) -> None:
        """The status note claims no more than the tests carry ("significant", "p < 0.05")."""
        from hubkit.run.stats import analyze_evaluation, check_claims

        m = ctx.run.manifest
        problems, _ = check_claims(m.status, m.status_note, [analyze_evaluation(e) for e in ctx.run.evaluations],
                                   m.alpha)
        ctx.problems += [f"{ctx.where}: {p}" for p in problems]

    def describe(self, run: Run) -> dict[str, str]:
        per_task: dict[str, list[str]] = {}
        for ev in run.evaluations:
            for a in ev.arms:
                if a.per_task_file:
                    per_task.setdefault(a.per_task_file, []).append(f"{a.label} on {ev.name}")
        return {path: "per-task results: " + "; ".join(uses) for path, uses in per_task.items()}

    def dataset_tables(self, run: Run) -> list[DatasetTable]:
        out, seen = [], set()
        for ev in run.evaluations:
            for arm in ev.arms:
                if not arm.per_task_file or arm.per_task_file in seen:
                    continue
                seen.add(arm.per_task_file)
                name = arm.id if len(run.evaluations) == 1 else f"{ev.name}_{arm.id}"
                out.append(DatasetTable("results", name, arm.per_task_file,
                                        f"per-task results of '{arm.label}' ({ev.name})",
                                        lambda f=arm.per_task_file: _results_table(run.root / f)))
        return out


def _results_table(path: Path) -> Any:
    import pandas as pd
    import pyarrow as pa

    return pa.Table.from_pandas(pd.read_csv(path), preserve_index=False)
