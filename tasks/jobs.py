"""Jobs: the brief resolved, per role, into exactly what its engine will be asked to make.

A job names the engine, the weights, every generation setting (the engine's defaults filled in),
the seed and the prompts as expanded. The bundle id and every generation's work key come from
the jobs and the runtime that runs them, so the same folder always means the same outputs.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from pydantic import BaseModel

from tasks.brief import Brief
from tasks.engines import ROLES, check_params
from tasks.prompts import ExpandedPrompt


class Job(BaseModel):
    role: str
    engine: str
    profile: str
    weights: str  # full: the hub id or folder; tiny: the tiny build's version (it changes with the code that builds it)
    weights_override: str | None = None  # the brief's own weights, when it named any (full profile)
    seed: int
    steps: int
    guidance: float
    scheduler: str
    params: dict[str, Any] = {}  # the engine's other settings: width, height, frames, fps, duration, ...
    prompt: str = ""
    negative_prompt: str = ""


def resolve_job(brief: Brief, role: str, prompt: ExpandedPrompt | None = None) -> Job:
    """The brief's request for one role, with the engine's defaults for the profile where it left a blank."""
    from tasks.models import full_weights, tiny_version

    eng, section = brief.engine_for(role), brief.section(role)
    settings = check_params(eng, section.generation_settings(), brief.models, role).model_dump()
    common = {name: settings.pop(name) for name in ("steps", "guidance", "scheduler")}
    weights = tiny_version(eng.name) if brief.models == "tiny" else full_weights(eng.name, section.weights)
    return Job(
        role=role,
        engine=eng.name,
        profile=brief.models,
        weights=weights,
        weights_override=section.weights if brief.models == "full" else None,
        seed=brief.seed,
        params=settings,
        prompt=prompt.prompt if prompt else "",
        negative_prompt=prompt.negative_prompt if prompt else "",
        **common,
    )


def resolve_jobs(brief: Brief, prompts: dict[str, ExpandedPrompt] | None = None) -> dict[str, Job]:
    """Every role's job (without prompts when none are given: enough for identity)."""
    return {role: resolve_job(brief, role, prompts[role] if prompts else None) for role in ROLES}


def bundle_id(brief: Brief, runtime: str) -> str:
    """Readable and stable: the title's slug and a hash of the brief, its resolved jobs and the runtime
    (`cpu/float32`, `cuda/float16`, or `dispatched` when the GPU pools choose)."""
    from tasks.settings import get_settings

    settings = get_settings()  # the settings that change what is made from the same jobs
    identity = {
        # The rest of the brief (title, post-processing); what the engines get is in the jobs, resolved.
        "brief": brief.model_dump(
            mode="json", exclude={r: {*brief.section(r).generation_fields, "engine", "weights"} for r in ROLES}
        ),
        "jobs": {role: job.model_dump(mode="json") for role, job in resolve_jobs(brief).items()},
        "runtime": runtime,
        "settings": {"prompt_model": settings.prompt_model, "safety": [settings.safety, settings.safety_action]},
    }
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    slug = re.sub(r"[^a-z0-9]+", "-", brief.title.lower()).strip("-")[:40].strip("-") or "bundle"
    return f"{slug}-{hashlib.sha256(canonical.encode()).hexdigest()[:12]}"
