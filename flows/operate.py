"""Operating genbundle on a Prefect server: create the pools and deployments, submit briefs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tasks.errors import UserError

REPO = Path(__file__).resolve().parents[1]
PREFECT_FILE = REPO / "deployments" / "prefect.yaml"
POOLS_DIR = REPO / "deployments" / "pools"
CPU_POOL = "cpu"
GPU_POOLS = ("gpu-image", "gpu-audio", "gpu-video")
GPU_TAG = "gpu"  # the generation tasks' tag; a concurrency limit on it keeps a GPU from oversubscription
BRIEF_EVENT = "genbundle.brief.submitted"


def _prefect(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "prefect", *args]
    # Deployments point workers at GENBUNDLE_CHECKOUT (in the images: /app), else at this checkout.
    env = {"GENBUNDLE_CHECKOUT": str(REPO)} | os.environ
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
    if check and result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise UserError(f"`prefect {' '.join(args)}` failed: {' '.join(tail)}")
    return result


def _template(pool_type: str, gpu: bool) -> list[str]:
    name = {"process": "process.json", "docker": "docker-gpu.json", "kubernetes": "kubernetes-gpu.json"}[pool_type]
    if pool_type != "process" and not gpu:
        return []  # the worker type's own default
    return ["--base-job-template", str(POOLS_DIR / name)]


def deploy(pool_type: str = "process", gpu_slots: int = 1, log=print) -> None:
    """Create (or update) the work pools, the gpu concurrency limit, and every deployment."""
    for pool in (CPU_POOL, *GPU_POOLS):
        _prefect(
            "work-pool", "create", pool, "--type", pool_type, *_template(pool_type, pool != CPU_POOL), "--overwrite"
        )
        log(f"work pool {pool} ({pool_type})")
    _set_gpu_limit(gpu_slots)
    log(f"concurrency limit: {gpu_slots} task(s) tagged '{GPU_TAG}' at a time")
    _prefect("--no-prompt", "deploy", "--prefect-file", str(PREFECT_FILE), "--all")
    log(f"deployments from {PREFECT_FILE.relative_to(REPO)}")


def _set_gpu_limit(slots: int) -> None:
    import anyio
    from prefect.client.orchestration import get_client

    async def upsert():
        async with get_client() as client:
            await client.create_concurrency_limit(tag=GPU_TAG, concurrency_limit=slots)

    anyio.run(upsert)


def submit(brief) -> str:
    """Send the event that the `on-brief` deployment's trigger waits for; returns the event id."""
    import anyio
    from prefect.events import Event
    from prefect.events.clients import PrefectEventsClient
    from prefect.settings import PREFECT_API_URL

    from tasks.storage import bundle_id

    api = PREFECT_API_URL.value()
    if not api:
        raise UserError("no Prefect server to send the event to: set PREFECT_API_URL")
    event = Event(
        event=BRIEF_EVENT,
        resource={"prefect.resource.id": f"genbundle.brief.{bundle_id(brief)}", "prefect.resource.name": brief.title},
        payload={"brief": brief.model_dump(mode="json")},
    )

    async def send() -> None:  # sent and done before returning, unlike the background emit_event
        async with PrefectEventsClient(api_url=api) as client:
            await client.emit(event)

    anyio.run(send)
    return str(event.id)
