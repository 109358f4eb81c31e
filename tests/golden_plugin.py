"""``--update-goldens``: rewrite the golden files under ``tests/golden/`` instead of comparing with them.

Goldens change only when someone asks for it (this flag or ``HUBKIT_UPDATE_GOLDENS=1``), so a card that
changes by accident fails its test. Register in ``tests/conftest.py`` with
``pytest_plugins = ["tests.golden_plugin"]`` (or run ``pytest -p tests.golden_plugin``).
"""

from __future__ import annotations

import os

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--update-goldens", action="store_true", default=False,
                     help="Rewrite tests/golden/* from the current output instead of comparing.")


def update_requested(config: pytest.Config) -> bool:
    """True when goldens should be rewritten: the flag (if registered) or HUBKIT_UPDATE_GOLDENS=1."""
    return bool(config.getoption("--update-goldens", default=False)) or os.environ.get("HUBKIT_UPDATE_GOLDENS") == "1"
