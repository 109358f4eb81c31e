"""Formatting shared by the CLI, the publish plan and the card."""

from __future__ import annotations


def human_size(n: float | None) -> str:
    """Bytes in binary units, one decimal (``8.5 GB``); ``—`` for unknown."""
    if n is None:
        return "—"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def layer_span(ids: list[int], empty: str = "—") -> str:
    """``0–31`` for a contiguous run of more than two layers, else the list (``4, 8, 12``)."""
    if not ids:
        return empty
    if len(ids) > 2 and ids == list(range(ids[0], ids[-1] + 1)):
        return f"{ids[0]}–{ids[-1]}"
    return ", ".join(map(str, ids))
