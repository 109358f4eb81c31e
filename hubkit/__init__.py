"""hubkit: publish steering and abliteration runs to the Hugging Face Hub, and use what was published.

Imports stay light (no torch, transformers or pandas) until a function needs them. Functions named like
their module (``hubkit.publish.publish``, ``hubkit.regenerate.regenerate``) are imported from the module,
since ``hubkit.publish`` is the module once it has been imported.
"""

from __future__ import annotations

__version__ = "0.1.0"

from typing import TYPE_CHECKING, Any

_LAZY = {
    "load_direction": "use.loading",
    "load_directions": "use.loading",
    "pull": "use.loading",
    "load_vector_set": "use.loading",
    "steer": "use.steering",
    "ablate": "use.steering",
    "load_run": "run.run",
    "validate_run": "run.run",
    "build_package": "publish.repo_tree",
    "stage": "publish.repo_tree",
    "stage_run": "publish.commit",
    "export_gguf": "use.gguf_export",
}

if TYPE_CHECKING:  # pragma: no cover
    from hubkit.use.loading import load_direction, load_directions, load_vector_set, pull  # noqa: F401
    from hubkit.use.steering import ablate, steer  # noqa: F401


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module 'hubkit' has no attribute {name!r}")
