"""Card data and rendering (plain first version; the card issue makes it rich)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class CardData:
    title: str
    status: str
    status_note: str | None
    summary: str | None
    files: list[dict[str, Any]]
    front_matter: str


def template_root() -> Path:
    here = Path(__file__).parent
    for cand in (here / "templates", here.parent / "templates"):
        if cand.is_dir():
            return cand
    raise FileNotFoundError("hubkit templates not found")


def build_assets(run) -> dict[str, bytes]:
    return {}


def build_card_data(run, files, meta) -> CardData:
    import yaml

    m = run.manifest
    fm = {"library_name": "hubkit", "base_model": m.base_model, "license": m.license,
          "tags": sorted(set(m.tags) | {"hubkit", m.status})}
    fm = {k: v for k, v in fm.items() if v}
    return CardData(m.title, m.status, m.status_note, run.summary,
                    [{"path": f.path, "size": f.size, "sha256": f.sha256[:12], "kind": f.kind} for f in files],
                    yaml.safe_dump(fm, sort_keys=True, allow_unicode=True))


def render_card(data: CardData, template_dir: str | Path | None = None) -> str:
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(template_dir or template_root())),
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    return env.get_template("card.md.j2").render(card=data)
