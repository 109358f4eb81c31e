"""``hubkit.json``: the one owner of the file that describes a published repo.

Written by a publish (and by ``regenerate --push-to``), read back by the next publish (its history), by
``pull``, ``load_direction(s)``, ``regenerate`` and ``export``. What is read may come from anyone's repo, so
:func:`parse` checks every field it hands on: types, paths confined to the repo, sizes bounded.
"""

from __future__ import annotations

import json
from typing import Any

HUBKIT_JSON = "hubkit.json"
CARD = "README.md"


def meta_bytes(meta: dict[str, Any]) -> bytes:
    """hubkit.json as written: indented, key order kept, UTF-8."""
    return (json.dumps(meta, indent=2, sort_keys=False, ensure_ascii=False) + "\n").encode("utf-8")
