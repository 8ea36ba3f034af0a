"""Operating genbundle on a Prefect server: create the pools and deployments, submit briefs."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

from tasks.engines import ROLES
from tasks.errors import UserError

REPO = Path(__file__).resolve().parents[1]
PREFECT_FILE = REPO / "deployments" / "prefect.yaml"
POOLS_DIR = REPO / "deployments" / "pools"
CPU_POOL = "cpu"
GPU_POOLS = tuple(dict.fromkeys(role.pool for role in ROLES.values()))
# The tag generation tasks once had, for a server-wide limit that made every GPU wait for every other:
# GPU slots are a worker's now (`genbundle worker --slots N`, one worker per GPU), and the tasks have no tag.
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


def _template(pool_type: str, pool: str) -> dict:
    """The pool's base job template: process.json, or for docker and kubernetes the GPU template,
    which the CPU pool takes with the CPU image and no GPU request."""
    if pool_type == "process":
        return json.loads((POOLS_DIR / "process.json").read_text())
    template = json.loads((POOLS_DIR / f"{pool_type}-gpu.json").read_text())
    if pool != CPU_POOL:
        return template
    variables = template["variables"]["properties"]
    variables["image"]["default"] = CPU_IMAGE
    if pool_type == "docker":
        variables["container_create_kwargs"] |= {"default": {}, "description": "Extra docker-py create arguments."}
    else:
        pod = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
        pod["containers"][0]["resources"]["limits"].pop("nvidia.com/gpu")
        pod.pop("tolerations")
        variables.pop("gpu_count")
    return template


def _add_missing(current: dict, ours: dict) -> tuple[dict, list[str], list[str]]:
    """`current` (the pool's template on the server) with the job settings and variables only `ours`
    has added; those it has stay as they are, an operator's edits included (`env`, `image`...).
    Returns the merged template, the names added, and the names kept that differ from ours."""
    merged = copy.deepcopy(current)
    added, differ = [], []
    sections = (
        (merged.setdefault("job_configuration", {}), ours["job_configuration"]),
        (merged.setdefault("variables", {}).setdefault("properties", {}), ours["variables"]["properties"]),
    )
    for have, want in sections:
        for name, value in want.items():
            if name not in have:
                have[name] = value
                added.append(name)
            elif have[name] != value and name not in differ:
                differ.append(name)
    return merged, added, differ


def deploy(pool_type: str = "process", gpu_slots: int | None = None, log=print) -> None:
    """Create the work pools where missing, then create or update every deployment.

    An existing pool keeps what is set on it (job variables such as `env` and `image`, its limit):
    deploy only adds the job settings and variables its template lacks. GPU slots belong to the
    workers (one per GPU, `genbundle worker --slots N`), so GPUs and machines run at once; a
    `gpu_slots` given caps each GPU pool's flow runs at once across all its workers as well.
    """
    import anyio

    for line in anyio.run(_pools_and_limit, pool_type, gpu_slots):
        log(line)
    _prefect("--no-prompt", "deploy", "--prefect-file", str(PREFECT_FILE), "--all")
    log(f"deployments from {PREFECT_FILE.relative_to(REPO)}")


async def _pools_and_limit(pool_type: str, gpu_slots: int | None) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
    from prefect.exceptions import ObjectNotFound

    done = []
    async with get_client() as client:
        for pool in (CPU_POOL, *GPU_POOLS):
            template = _template(pool_type, pool)
            limit = None if pool == CPU_POOL else gpu_slots
            try:
                existing = await client.read_work_pool(pool)
            except ObjectNotFound:
                created = WorkPoolCreate(name=pool, type=pool_type, base_job_template=template, concurrency_limit=limit)
                await client.create_work_pool(created)
                done.append(f"work pool {pool} ({pool_type}, created{_runs(limit)})")
                continue
            if existing.type != pool_type:  # a pool's type cannot change; replacing it would drop its settings
                raise UserError(
                    f"work pool {pool} is a {existing.type} pool, not {pool_type}: deploy with --pool-type"
                    f" {existing.type}, or delete it first (`prefect work-pool delete {pool}`) to recreate it"
                )
            merged, added, differ = _add_missing(existing.base_job_template, template)
            update = {"base_job_template": merged} if added else {}
            if limit is not None and limit != existing.concurrency_limit:
                update["concurrency_limit"] = limit
            if update:
                await client.update_work_pool(pool, WorkPoolUpdate(**update))
            notes = [f"added {', '.join(added)}"] if added else []
            notes += [f"kept the server's {', '.join(differ)}"] if differ else []
            limit = existing.concurrency_limit if limit is None else limit
            done.append(f"work pool {pool} ({pool_type}, exists{''.join(f'; {n}' for n in notes)}{_runs(limit)})")

        try:  # an earlier deploy's (or an operator's): kept, though genbundle's tasks no longer carry the tag
            slots = (await client.read_concurrency_limit_by_tag(GPU_TAG)).concurrency_limit
            done.append(
                f"concurrency limit '{GPU_TAG}' kept ({slots}), but it limits nothing of genbundle's: its "
                f"generation tasks have no tag, GPU slots are per worker (genbundle worker --slots N); "
                f"remove it with `prefect concurrency-limit delete {GPU_TAG}`"
            )
        except ObjectNotFound:
            pass
    return done


def _runs(limit: int | None) -> str:
    return "" if limit is None else f"; {limit} run(s) at a time"


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
