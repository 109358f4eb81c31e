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
