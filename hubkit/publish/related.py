"""Geometry across runs: cos(this run's directions, a related run's) at the layers both have.

Seeds 000 and 003 compare each new direction with earlier runs' by hand ("cos(d_L22, v2-dir) = 0.079"). For
each ``related:`` repo with a hubkit.json whose directions share this run's base model and d, the card shows
those cosines, the selected layer first. Everything is read through the one Hub client by commit (the HF cache
keeps it), verified by sha256; a repo that can't be read costs one line on the card, never the publish.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from hubkit.errors import HubkitError

if TYPE_CHECKING:
    from hubkit.run.model import Run


SHOWN = 6  # cosines per related repo on the card; hubkit.json is not cut


@dataclass
class CrossRun:
    repo_id: str
    commit: str | None = None
    rows: list[tuple[str, str, int, float, bool]] = field(default_factory=list)  # (ours, theirs, layer, cos, sel)
    convention: str = "block"
    note: str | None = None  # why nothing is shown

    @property
    def shown(self) -> list[tuple[str, str, int, float, bool]]:
        return self.rows[:SHOWN]

    @property
    def more(self) -> int:
        return max(0, len(self.rows) - SHOWN)


def cross_run_geometry(run: Run, *, hub: object | None = None) -> list[CrossRun]:
    from hubkit.formats.directions import read_canonical
    from hubkit.hub import Hub
    from hubkit.run.geometry import cross_run_cosines
    from hubkit.source import RepoSource

    if not run.manifest.related or not run.directions:
        return []
    hub = hub or Hub(retries=1)  # a card must not wait on back-off for a repo that isn't there
    out = []
    for rel in run.manifest.related:
        cr = CrossRun(rel.repo_id)
        out.append(cr)
        try:
            src = RepoSource.hub(rel.repo_id, hub=hub)  # type: ignore[arg-type]
            cr.commit = src.commit
            meta = src.meta
            if meta is None:
                cr.note = "no hubkit.json: nothing to compare"
                continue
            theirs_base = (meta.run or {}).get("base_model")
            if theirs_base != run.manifest.base_model:
                cr.note = f"another base model ({theirs_base or 'not recorded'}): not comparable"
                continue
            for entry in meta.directions:
                if not entry.canonical or entry.d != run.directions[0].d:
                    continue
                theirs = read_canonical(src.verified(entry.canonical), f"{rel.repo_id}: {entry.canonical}")
                for ours in run.directions:
                    cos = cross_run_cosines({i: v.double().numpy() for i, v in ours.layers.items()},
                                            {i: v.double().numpy() for i, v in theirs.layers.items()},
                                            this_convention=ours.layer_convention,
                                            theirs_convention=theirs.layer_convention)
                    cr.convention = ours.layer_convention
                    for layer, c in sorted(cos.items(), key=lambda kv: (kv[0] != ours.selected_layer, kv[0])):
                        cr.rows.append((ours.name, entry.name, layer, c, layer == ours.selected_layer))
            if not cr.rows:
                cr.note = "no direction with the same d at a shared layer"
        except HubkitError as e:
            why = str(e).split(": ", 1)[-1] if str(e).startswith("reading ") else str(e)
            cr.note = f"could not be read ({why[:160]}); cosines not shown"
        except (ValueError, OSError) as e:
            cr.note = f"could not be compared ({str(e)[:160]})"
    return out
