"""Evaluations: arms with pass counts, optional per-task tables, and the overlap structure between arms."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from hubkit.errors import ArtifactError
from hubkit.formats.tables import parse_float, read_csv
from hubkit.run.manifest import EvaluationSpec

TRUE = {"1", "true", "yes", "pass", "passed", "y", "t"}
FALSE = {"0", "false", "no", "fail", "failed", "n", "f"}


@dataclass
class Arm:
    id: str
    label: str
    passes: int
    n: int
    this: bool = False
    per_task_file: str | None = None
    tasks: dict[str, bool] | None = None  # task -> passed

    @property
    def rate(self) -> float:
        return self.passes / self.n if self.n else 0.0

    @property
    def passed_tasks(self) -> list[str]:
        return sorted(t for t, ok in (self.tasks or {}).items() if ok)


@dataclass
class Evaluation:
    name: str
    arms: list[Arm]
    baseline: str | None
    alternative: str
    pass_threshold: float = 1.0
    description: str | None = None

    def arm(self, arm_id: str) -> Arm:
        return next(a for a in self.arms if a.id == arm_id)

    @property
    def baseline_arm(self) -> Arm | None:
        return self.arm(self.baseline) if self.baseline else None


@dataclass
class Overlap:
    """Which tasks each arm of a pair passes: ``a_only``, ``both``, ``b_only`` (sorted task names)."""

    a: str
    b: str
    a_only: list[str]
    both: list[str]
    b_only: list[str]
    neither: int = 0
    extra: dict[str, list[str]] = field(default_factory=dict)


def read_per_task(path: Path, display: str, threshold: float = 1.0) -> dict[str, bool]:
    """``task`` + ``passed`` (bool/0/1) or ``reward`` (pass = reward >= threshold)."""
    cols, rows = read_csv(path, display)
    if "task" not in cols:
        raise ArtifactError(f"{display}:1: no 'task' column (columns: {', '.join(cols)})")
    use = "passed" if "passed" in cols else "reward" if "reward" in cols else None
    if use is None:
        raise ArtifactError(f"{display}:1: needs a 'passed' or 'reward' column (columns: {', '.join(cols)})")
    out: dict[str, bool] = {}
    lines: dict[str, int] = {}
    for line, r in rows:
        task = r["task"]
        if not task:
            raise ArtifactError(f"{display}:{line}: empty task name")
        if task in out:
            raise ArtifactError(f"{display}:{line}: task '{task}' repeated (first on line {lines[task]})")
        raw = r[use].lower()
        if use == "passed":
            if raw in TRUE:
                ok = True
            elif raw in FALSE:
                ok = False
            else:
                raise ArtifactError(f"{display}:{line}: passed is '{r[use]}', expected true/false or 1/0")
        else:
            v = parse_float(raw)
            if v is None or not math.isfinite(v):  # a nan reward is not a fail: counting it as one moves p
                raise ArtifactError(f"{display}:{line}: reward '{r[use]}' is not a finite number (fix or drop "
                                    "the row: it would otherwise count as a fail)")
            ok = v >= threshold
        out[task] = ok
        lines[task] = line
    if not out:
        raise ArtifactError(f"{display}: no rows")
    return out


def load_evaluation(spec: EvaluationSpec, run_dir: Path, where: str) -> Evaluation:
    """Resolve arms: read per-task tables, check counts agree and arms share one task set."""
    arms: list[Arm] = []
    task_sets: dict[str, tuple[str, frozenset[str]]] = {}
    for i, a in enumerate(spec.arms):
        place = f"{where}: evaluations.{spec.name}.arms[{i}] ({a.id})"
        tasks = None
        n = a.n or spec.n
        passes = a.passes
        if a.per_task:
            tasks = read_per_task(run_dir / a.per_task, a.per_task, spec.pass_threshold)
            counted = sum(tasks.values())
            if passes is not None and passes != counted:
                raise ArtifactError(f"{place}: passes {passes} but {a.per_task} has {counted} passed tasks")
            if n is not None and a.n is not None and n != len(tasks):
                raise ArtifactError(f"{place}: n {n} but {a.per_task} has {len(tasks)} tasks")
            if n is not None and a.n is None and n != len(tasks):
                raise ArtifactError(f"{place}: evaluation n {n} but {a.per_task} has {len(tasks)} tasks")
            passes, n = counted, len(tasks)
            task_sets[a.id] = (a.per_task, frozenset(tasks))
        assert passes is not None and n is not None  # the manifest parser guarantees these without per_task
        arms.append(Arm(id=a.id, label=a.label or a.id, passes=passes, n=n, this=a.this,
                        per_task_file=a.per_task, tasks=tasks))
    if len({ts for _, ts in task_sets.values()}) > 1:
        (f1, s1), *rest = task_sets.values()
        f2, s2 = next((f, s) for f, s in rest if s != s1)
        only1, only2 = sorted(s1 - s2), sorted(s2 - s1)
        diff = (f"{len(only1)} only in {f1} (e.g. {only1[0]})" if only1 else "") + \
               ("; " if only1 and only2 else "") + \
               (f"{len(only2)} only in {f2} (e.g. {only2[0]})" if only2 else "")
        raise ArtifactError(f"{where}: evaluations.{spec.name}: arms cover different task sets: {diff}")
    return Evaluation(name=spec.name, arms=arms, baseline=spec.baseline, alternative=spec.alternative,
                      pass_threshold=spec.pass_threshold, description=spec.description)


def overlap(a: Arm, b: Arm) -> Overlap:
    """The per-task overlap of two arms that both have per-task results."""
    if a.tasks is None or b.tasks is None:
        raise ValueError("overlap needs per-task results on both arms")
    pa, pb = set(a.passed_tasks), set(b.passed_tasks)
    neither = sum(1 for t in a.tasks if not a.tasks[t] and not b.tasks.get(t, False))
    return Overlap(a=a.id, b=b.id, a_only=sorted(pa - pb), both=sorted(pa & pb), b_only=sorted(pb - pa),
                   neither=neither)
