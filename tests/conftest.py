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
# The suite checks CPU behaviour (float32, whole pipelines, CPU energy estimates): on a GPU machine too.
os.environ["GENBUNDLE_DEVICE"] = "cpu"


@pytest.fixture(scope="session")
def prefect_api():
    """One Prefect test server for the whole session (it takes seconds to start)."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    # Heartbeats cost up to 1 s per flow run (see flows/local_prefect.py); Prefect's own tests turn them off too.
    with (
        prefect_test_harness(server_startup_timeout=120),
        temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}),
    ):
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
def settings_env(monkeypatch):
    """Change GENBUNDLE_* settings for one test: `settings_env(GENBUNDLE_X="...")`."""
    from tasks.settings import get_settings

    def set_env(**values):
        for k, v in values.items():
            monkeypatch.setenv(k, v)
        get_settings.cache_clear()

    yield set_env
    monkeypatch.undo()
    get_settings.cache_clear()


def minimal_manifest(bundle_id: str, brief: dict, assets: list):
    """A manifest with only what storage reads (id, brief, assets): for store and upload tests."""
    from tasks.manifest import Manifest

    empty = dict.fromkeys(
        ["prompts", "engines", "post_processing", "steps", "compute", "timings_seconds", "versions"], {}
    )
    return Manifest(
        bundle_id=bundle_id, created="2026-12-02T00:00:00+00:00", disclosure="AI", brief=brief, assets=assets, **empty
    )


@pytest.fixture
def workspace(tmp_path):
    """A fresh work area for one test."""
    from tasks.workspace import Workspace

    return Workspace(root=str(tmp_path / "work"))


@pytest.fixture(scope="session")
def moto_server():
    """A real S3 HTTP endpoint on loopback for the whole session."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}", port
    server.stop()


# Every file of a bundle made with the seed engines (the manifest lists all but itself and the page).
BUNDLE_FILES = {
    "cover.png", "cover_titled.png", "engine_raw.wav", "engine.wav", "car.mp4", "car_with_sound.mp4",
    "poster.png", "trace_forward.png", "trace_reverse.png", "noise_schedule.png", "index.html", "bundle.json",
}  # fmt: skip
ASSET_COUNT = len(BUNDLE_FILES) - 2

# Test credentials: moto accepts any; the secret is distinctive so a test can look for leaks.
TEST_ACCESS_KEY = "AKIATESTGENBUNDLE0001"
TEST_SECRET_KEY = "genbundle-test-secret-do-not-leak-7f3a9c"


@pytest.fixture
def s3(moto_server, monkeypatch):
    """Environment pointing boto3 at the loopback endpoint; yields (client, endpoint URL, a fresh bucket)."""
    import uuid

    import boto3

    from tasks.settings import get_settings

    url, _ = moto_server
    monkeypatch.setenv("AWS_ENDPOINT_URL", url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", TEST_ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", TEST_SECRET_KEY)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    get_settings.cache_clear()
    client = boto3.client("s3", endpoint_url=url, region_name="us-east-1")
    bucket = f"bundles-{uuid.uuid4().hex[:10]}"
    client.create_bucket(Bucket=bucket)
    yield client, url, bucket
    get_settings.cache_clear()
