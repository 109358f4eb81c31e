"""hubkit: publish steering and abliteration runs to the Hugging Face Hub, and use what was published.

Imports stay light (no torch, transformers or pandas) until a function needs them. Functions named like
their module (``hubkit.publish.publish``, ``hubkit.regenerate.regenerate``) are imported from the module,
since ``hubkit.publish`` is the module once it has been imported.
"""

from __future__ import annotations

__version__ = "0.1.0"

from typing import TYPE_CHECKING, Any

_LAZY = {
    "load_direction": "loading",
    "load_directions": "loading",
    "pull": "loading",
    "steer": "steering",
    "ablate": "steering",
    "load_run": "run",
    "validate_run": "run",
    "build_package": "package",
    "stage": "package",
    "stage_run": "publish",
    "export_gguf": "gguf_export",
}

if TYPE_CHECKING:  # pragma: no cover
    from .loading import load_direction, load_directions, pull  # noqa: F401
    from .steering import ablate, steer  # noqa: F401


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module 'hubkit' has no attribute {name!r}")
