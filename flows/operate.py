"""Operating genbundle on a Prefect server: create the pools and deployments, submit briefs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from tasks.engines import ROLES
from tasks.errors import UserError

REPO = Path(__file__).resolve().parents[1]
PREFECT_FILE = REPO / "deployments" / "prefect.yaml"
POOLS_DIR = REPO / "deployments" / "pools"
CPU_POOL = "cpu"
GPU_POOLS = tuple(dict.fromkeys(role.pool for role in ROLES.values()))
# The generation tasks' tag. A tag concurrency limit counts across the whole server, not per
# machine or per GPU: for N GPUs, allow N. Per machine: one worker per GPU, started with `--limit`.
GPU_TAG = "gpu"
BRIEF_EVENT = "genbundle.brief.submitted"
CPU_IMAGE = "genbundle:cpu"  # docker/Dockerfile's CPU flavour; the GPU templates name genbundle:cuda


def _prefect(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "prefect", *args]
    # Deployments point workers at GENBUNDLE_CHECKOUT (in the images: /app), else at this checkout.
    env = {"GENBUNDLE_CHECKOUT": str(REPO)} | os.environ
    result = subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=REPO, env=env)
    if check and result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise UserError(f"`prefect {' '.join(args)}` failed: {' '.join(tail)}")
    return result


def _template(pool_type: str, pool: str, folder: Path) -> Path:
    """The pool's base job template: process.json, or for docker and kubernetes the GPU template,
    which the CPU pool takes with the CPU image and no GPU request (written into `folder`)."""
    if pool_type == "process":
        return POOLS_DIR / "process.json"
    gpu = POOLS_DIR / f"{pool_type}-gpu.json"
    if pool != CPU_POOL:
        return gpu
    template = json.loads(gpu.read_text())
    variables = template["variables"]["properties"]
    variables["image"]["default"] = CPU_IMAGE
    if pool_type == "docker":
        variables["container_create_kwargs"] |= {"default": {}, "description": "Extra docker-py create arguments."}
    else:
        pod = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
        pod["containers"][0]["resources"]["limits"].pop("nvidia.com/gpu")
        pod.pop("tolerations")
        variables.pop("gpu_count")
    path = folder / f"{pool_type}-cpu.json"
    path.write_text(json.dumps(template, indent=2))
    return path


def deploy(pool_type: str = "process", gpu_slots: int = 1, log=print) -> None:
    """Create (or update) the work pools, the gpu limits, and every deployment.

    `gpu_slots` bounds generation tasks at once across the server (the `gpu` tag limit) and
    flow runs at once per GPU pool (each run holds its own copy of the pool's models).
    """
    with tempfile.TemporaryDirectory() as folder:
        for pool in (CPU_POOL, *GPU_POOLS):
            template = _template(pool_type, pool, Path(folder))
            _prefect(
                "work-pool", "create", pool, "--type", pool_type, "--base-job-template", str(template), "--overwrite"
            )
            if pool != CPU_POOL:
                _prefect("work-pool", "set-concurrency-limit", pool, str(gpu_slots))
            log(f"work pool {pool} ({pool_type}{f', {gpu_slots} run(s) at a time' if pool != CPU_POOL else ''})")
    _set_gpu_limit(gpu_slots)
    log(f"concurrency limit: {gpu_slots} task(s) tagged '{GPU_TAG}' at a time, across the server")
    _prefect("--no-prompt", "deploy", "--prefect-file", str(PREFECT_FILE), "--all")
    log(f"deployments from {PREFECT_FILE.relative_to(REPO)}")


def _set_gpu_limit(slots: int) -> None:
    import anyio
    from prefect.client.orchestration import get_client

    async def upsert():
        async with get_client() as client:
            await client.create_concurrency_limit(tag=GPU_TAG, concurrency_limit=slots)

    anyio.run(upsert)


def _brief_hash(brief) -> str:
    import hashlib

    return hashlib.sha256(brief.model_dump_json().encode()).hexdigest()[:12]


def submit(brief) -> str:
    """Send the event that the `on-brief` deployment's trigger waits for; returns the event id."""
    import anyio
    from prefect.events import Event
    from prefect.events.clients import PrefectEventsClient
    from prefect.settings import PREFECT_API_URL

    api = PREFECT_API_URL.value()
    if not api:
        raise UserError("no Prefect server to send the event to: set PREFECT_API_URL")
    event = Event(
        event=BRIEF_EVENT,
        resource={"prefect.resource.id": f"genbundle.brief.{_brief_hash(brief)}", "prefect.resource.name": brief.title},
        payload={"brief": brief.model_dump(mode="json")},
    )

    async def send() -> None:  # sent and done before returning, unlike the background emit_event
        async with PrefectEventsClient(api_url=api) as client:
            await client.emit(event)

    anyio.run(send)
    return str(event.id)
