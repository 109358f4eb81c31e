"""Shared pytest fixtures: one in-process Hub server (``tests/hubserver.py``) for the whole test session.

Why at import time: ``huggingface_hub`` freezes ``HF_ENDPOINT``, ``HF_HUB_DISABLE_XET``, cache paths and
timeouts into module constants when it is first imported. This conftest is imported before any test module, so
it starts the server and exports the environment *first*; everything below the environment block may import
``huggingface_hub``.

Fixtures:

* ``hub``: the session :class:`~tests.hubserver.HubServer`, reset for each test (faults, request log, LFS
  threshold, extra users cleared; repositories persist, so use a fresh ``repo_id``). Has ``.endpoint`` and
  ``.token``. Fault injection: ``hub.fail_next(...)``, ``hub.drop_next(...)``, ``hub.delay_next(...)``,
  ``hub.before_next(...)``; request log: ``hub.requests`` / ``hub.requests_matching(...)``.
* ``repo_id``: a fresh, unique ``"tester/<test-name>-<n>"`` (not created: call ``create_repo`` yourself).
* ``api``: an ``HfApi`` bound to the server and the session token.
* ``hf_cache``: a fresh, empty hub cache directory for this test. ``HF_HUB_CACHE`` is monkeypatched both in the
  environment and in ``huggingface_hub.constants`` (which ``hf_hub_download``/``snapshot_download`` read at call
  time), so downloads land there without passing ``cache_dir``; passing ``cache_dir=hf_cache`` is equivalent.
  ``datasets`` keeps its own cache (session temp dir); pass ``cache_dir=`` to ``load_dataset`` to isolate it.
* ``fast_retries``: makes ``huggingface_hub``'s retry/back-off sleeps instant; returns the list of requested
  sleep durations (so a test can assert a retry happened without waiting seconds for it).

To add fixtures from another module, import them at the bottom of this file (below the marker), e.g.
``from tests.fixtures_cards import card_dir  # noqa: F401``. Keep the environment block first.
"""

from __future__ import annotations

import atexit
import itertools
import os
import re
import shutil
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

import pytest

from tests.hubserver import DEFAULT_TOKEN, HubServer

if TYPE_CHECKING:  # type-only: the runtime import must wait for the environment block below
    from huggingface_hub import HfApi

# --- environment: must run before anything imports huggingface_hub ------------------------------------------
if "huggingface_hub" in sys.modules:  # pragma: no cover - a plugin imported it first: the endpoint is frozen
    raise RuntimeError(
        "tests/conftest.py must run before huggingface_hub is imported (its endpoint is frozen "
        "at import time). Something imported huggingface_hub earlier (a pytest plugin?)."
    )

_SESSION_DIR = tempfile.mkdtemp(prefix="hubkit-tests-")
_HUB = HubServer(os.path.join(_SESSION_DIR, "hubserver"))
_HUB.start()
atexit.register(shutil.rmtree, _SESSION_DIR, ignore_errors=True)
atexit.register(_HUB.stop)

for _var in (
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "HF_DATASETS_OFFLINE",
    "HUGGINGFACE_CO_STAGING",
    "HF_HUB_DISABLE_IMPLICIT_TOKEN",
    "HF_TOKEN_PATH",
    "HUGGING_FACE_HUB_TOKEN",
    "HUGGINGFACE_HUB_CACHE",
    "HF_HUB_ENABLE_HF_TRANSFER",
    "HF_DATASETS_CACHE",
    "HF_XET_CACHE",
    "HF_ASSETS_CACHE",
):
    os.environ.pop(_var, None)
os.environ.update(
    {
        "HF_ENDPOINT": _HUB.endpoint,
        "HF_TOKEN": DEFAULT_TOKEN,
        "HF_HUB_DISABLE_XET": "1",  # plain LFS protocol (this server doesn't speak Xet)
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_HUB_DISABLE_UPDATE_CHECK": "1",
        "HF_HUB_DISABLE_EXPERIMENTAL_WARNING": "1",
        "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
        "HF_HOME": os.path.join(_SESSION_DIR, "hf_home"),
        "HF_HUB_CACHE": os.path.join(_SESSION_DIR, "hf_home", "hub"),
        # Integers (the client parses them with int()): small, so timeout/fault tests stay fast.
        "HF_HUB_ETAG_TIMEOUT": "2",
        "HF_HUB_DOWNLOAD_TIMEOUT": "5",
    }
)
# --- end of environment block --------------------------------------------------------------------------------

_REPO_COUNTER = itertools.count(1)


def session_hub() -> HubServer:
    """The session server, for module-level code that can't take a fixture (e.g. benchmarks)."""
    return _HUB


@pytest.fixture
def hub() -> Iterator[HubServer]:
    """The session Hub server, with faults/logs reset so each test starts clean (and can't leak faults).

    Teardown fails the test if the server itself crashed (a hubserver bug answered as 500), and warns about
    requests no route matched (a client feature the server lacks), so such gaps never pass silently.
    """
    _HUB.reset()
    yield _HUB
    _HUB.clear_faults()
    if _HUB.unhandled:
        warnings.warn(f"hubserver had no route for: {_HUB.unhandled}", stacklevel=1)
    if _HUB.server_errors:
        pytest.fail("hubserver crashed while handling a request:\n" + "\n".join(_HUB.server_errors))


@pytest.fixture
def repo_id(request: pytest.FixtureRequest) -> str:
    """A unique, not-yet-created repo id in the default user's namespace."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", request.node.name)[:60].strip("-.") or "repo"
    return f"tester/{name}-{next(_REPO_COUNTER)}"


@pytest.fixture
def api(hub: HubServer) -> HfApi:
    """An ``HfApi`` pointed at the test server with the session token."""
    from huggingface_hub import HfApi

    return HfApi(endpoint=hub.endpoint, token=hub.token)


@pytest.fixture
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh hub cache dir for this test (see module docstring for how it is wired)."""
    from huggingface_hub import constants

    cache = tmp_path / "hf_cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Skip huggingface_hub's back-off sleeps (1 s, 2 s, ...) while recording them."""
    import time

    from huggingface_hub import file_download
    from huggingface_hub.utils import _http

    slept: list[float] = []
    shim = SimpleNamespace(**{name: getattr(time, name) for name in dir(time) if not name.startswith("_")})
    shim.sleep = slept.append
    monkeypatch.setattr(_http, "time", shim)
    monkeypatch.setattr(file_download, "time", shim)
    return slept


# --- fixtures from other modules: import them below this line ------------------------------------------------
pytest_plugins = ["tests.golden_plugin"]
