"""Per-layer ranking CSVs (``layer`` plus numeric columns such as auc, margin, cos_*)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from hubkit.errors import ArtifactError
from hubkit.formats.tables import parse_float, read_csv

# Columns where a larger value means a better layer; the first present picks the "best" layer.
BEST_BY = ("auc", "margin", "separation", "score", "accuracy", "acc")


@dataclass
class Ranking:
    file: str
    columns: list[str]  # numeric metric columns, in file order (layer excluded)
    rows: list[dict[str, float]]  # each with "layer" (as float) and the metric columns
    text_columns: list[str]

    @property
    def layers(self) -> list[int]:
        return [int(r["layer"]) for r in self.rows]

    @property
    def best_metric(self) -> str | None:
        return next((c for c in BEST_BY if c in self.columns), self.columns[0] if self.columns else None)

    @property
    def best_layer(self) -> int | None:
        """Layer with the highest value of the first of BEST_BY present; ties go to the next metric."""
        if not self.rows or self.best_metric is None:
            return None
        order = [c for c in BEST_BY if c in self.columns] or [self.best_metric]

        def key(r: dict[str, float]) -> tuple:
            return tuple(-(r.get(c) if r.get(c) is not None and not math.isnan(r[c]) else -math.inf)
                         for c in order)

        return int(min(self.rows, key=key)["layer"])


def _bounds(column: str) -> tuple[float, float] | None:
    """Metrics with a fixed range: a value outside it is a bug in the run, not a great layer."""
    if column in ("auc", "accuracy", "acc") or column.startswith("auc_"):
        return (0.0, 1.0)
    if column.startswith("cos"):
        return (-1.0, 1.0)
    return None


def read_ranking(path: Path, display: str) -> Ranking:
    cols, rows = read_csv(path, display)
    if "layer" not in cols:
        raise ArtifactError(f"{display}:1: no 'layer' column (columns: {', '.join(cols)})")
    metric_cols = [c for c in cols if c != "layer"]
    numeric = [c for c in metric_cols if all(parse_float(r[c]) is not None or r[c] == "" for _, r in rows)]
    out, seen = [], {}
    for line, r in rows:
        v = parse_float(r["layer"])
        if v is None or not math.isfinite(v) or v != int(v) or v < 0:
            raise ArtifactError(f"{display}:{line}: layer '{r['layer']}' is not a non-negative integer")
        if int(v) in seen:
            raise ArtifactError(f"{display}:{line}: layer {int(v)} repeated (first on line {seen[int(v)]})")
        seen[int(v)] = line
        row = {"layer": float(int(v))}
        for c in numeric:
            f = parse_float(r[c]) if r[c] != "" else math.nan
            bounds = _bounds(c)
            if bounds and not math.isnan(f) and not bounds[0] <= f <= bounds[1]:  # type: ignore[operator]
                raise ArtifactError(f"{display}:{line}: {c} = {r[c]} is outside [{bounds[0]:g}, {bounds[1]:g}]")
            row[c] = f  # type: ignore[assignment]
        out.append(row)
    if not out:
        raise ArtifactError(f"{display}: no rows")
    out.sort(key=lambda r: r["layer"])
    return Ranking(file=display, columns=numeric, rows=out,
                   text_columns=[c for c in metric_cols if c not in numeric])
