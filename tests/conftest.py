"""Shared test set-up: isolated homes for Prefect and the tiny models, one Prefect API per session."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Before anything imports prefect or reads settings: everything a run writes stays in one temp folder.
_SESSION_HOME = Path(tempfile.mkdtemp(prefix="genbundle-tests-"))
os.environ["PREFECT_HOME"] = str(_SESSION_HOME / "prefect")
os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "120"
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_LOGGING_TO_API_ENABLED"] = "true"
os.environ["GENBUNDLE_MODEL_CACHE"] = os.environ.get("GENBUNDLE_TEST_MODEL_CACHE", str(_SESSION_HOME / "models"))
os.environ["GENBUNDLE_OUT"] = str(_SESSION_HOME / "bundles")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HOME"] = str(_SESSION_HOME / "hf")  # an empty Hugging Face cache: no full weights here


@pytest.fixture(scope="session")
def prefect_api():
    """One Prefect test server for the whole session (it takes seconds to start)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def tiny_bundle(prefect_api, tmp_path_factory) -> Path:
    """One complete tiny-profile bundle made by the flow, shared by the tests that inspect it."""
    from flows.bundle import asset_bundle
    from tasks.brief import parse_brief

    out = tmp_path_factory.mktemp("bundles")
    brief = parse_brief({"title": "The Forest of Glowing Things", "author": "A. N. Author", "tagline": "Light waits"})
    return Path(asset_bundle(brief, out=str(out)))


@pytest.fixture
def staging(tmp_path) -> str:
    return str(tmp_path)
