"""The card of a regenerated model folder: where the weights come from, the recipe in words and numbers,
and how to check them. ``regenerate`` builds :class:`WeightsCardData`; ``weights_card.md.j2`` formats it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from hubkit.cards.render import render

TEMPLATE = "weights_card.md.j2"


@dataclass
class WeightsCardData:
    base_name: str  # what the front matter names (the Hub id when there is one)
    heading: str
    base_line: str  # the base in words: verified at a commit, or a local folder "said to be"
    direction_line: str
    source: str  # the recipe's repo (or folder) and commit
    title: str | None
    recipe_lines: list[str]  # the recipe in words and numbers (Recipe.describe)
    targets: list[str]  # what changed, with counts
    notes: list[str]
    n_ops: int
    n_tensors: int
    worst: str | None  # the orthogonality line, when a tensor is judged
    verdict: str
    shards: list[tuple[str, str]]
    reproduce: str
    hubkit_version: str
    weight_plot: str | None = None  # the weight-per-block figure, when the folder has one
    tags: list[str] = field(default_factory=lambda: ["abliterated", "hubkit"])


def render_weights_card(data: WeightsCardData, template_dir: str | Path | None = None) -> str:
    return render(TEMPLATE, data, template_dir)
