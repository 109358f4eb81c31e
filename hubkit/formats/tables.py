"""Reading the CSV tables hubkit relies on, with line numbers (JSON files have their own owners:
``formats/hubjson`` for hubkit.json, ``formats/safefiles`` for small config files).

Validation must stay light (``hubkit validate`` on a run without tensors imports neither torch nor
pandas), and stdlib ``csv`` lets every error name ``file:line``.
"""

from __future__ import annotations

import csv
from pathlib import Path

from hubkit.errors import ArtifactError


def read_csv(path: Path, display: str) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """Header and ``(line, row)`` pairs; columns are lower-cased and stripped."""
    if not path.is_file():
        raise ArtifactError(f"{display}: file not found")
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:  # a spreadsheet's BOM is not part of a column
            reader = csv.reader(fh)
            header = next(reader, None)
            if not header:
                raise ArtifactError(f"{display}:1: empty CSV (no header)")
            cols = [h.strip().lower() for h in header]
            twice = sorted({c for c in cols if cols.count(c) > 1})
            if twice:  # which one would count? neither: say so
                raise ArtifactError(f"{display}:1: column '{twice[0]}' appears more than once")
            rows = []
            for rec in reader:
                if not rec or all(not c.strip() for c in rec):
                    continue
                line = reader.line_num
                if len(rec) != len(cols):
                    raise ArtifactError(f"{display}:{line}: {len(rec)} fields, header has {len(cols)}")
                rows.append((line, {c: v.strip() for c, v in zip(cols, rec, strict=True)}))
    except UnicodeDecodeError as e:
        raise ArtifactError(f"{display}: not UTF-8 text (byte {e.start})") from e
    except csv.Error as e:
        raise ArtifactError(f"{display}: malformed CSV ({e})") from e
    return cols, rows


def parse_float(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None
