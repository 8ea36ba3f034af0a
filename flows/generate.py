"""One flow per modality: what the GPU work pools run.

Each takes a list of jobs, so one model load serves them all (the batch flow hands a modality
all its briefs at once). Outputs go to the work area, which the bundle flow reads back,
through shared storage when the workers are on other machines; the flows' own return values
are persisted for the UI, not relied on.
"""

from __future__ import annotations

import contextvars
from concurrent.futures import ThreadPoolExecutor

from prefect import flow

from tasks.audio import generate_sound
from tasks.errors import UserError
from tasks.generation import Generated, Job, generation_step
from tasks.image import generate_cover
from tasks.video import generate_video
from tasks.workspace import Workspace

# modality -> (deployment "flow/deployment" in deployments/prefect.yaml, step kind, task module)
DEPLOYMENTS = {
    "image": ("generate-cover/gpu-image", "cover", "tasks.image"),
    "sound": ("generate-sound/gpu-audio", "sound", "tasks.audio"),
    "video": ("generate-video/gpu-video", "video", "tasks.video"),
}


@flow(name="generate-cover", persist_result=True)
def generate_covers(jobs: list[Job], workspace: Workspace) -> list[Generated]:
    """Cover images for a list of jobs (Stable Diffusion)."""
    return [generate_cover(job, workspace) for job in jobs]


@flow(name="generate-sound", persist_result=True)
def generate_sounds(jobs: list[Job], workspace: Workspace) -> list[Generated]:
    """Engine sounds for a list of jobs (AudioLDM)."""
    return [generate_sound(job, workspace) for job in jobs]


@flow(name="generate-video", persist_result=True)
def generate_videos(jobs: list[Job], workspace: Workspace) -> list[Generated]:
    """Car clips for a list of jobs (Zeroscope)."""
    return [generate_video(job, workspace) for job in jobs]


class DispatchError(UserError):
    pass


def dispatch_generations(jobs: dict[str, list[Job]], workspace: Workspace) -> dict[str, list[Generated]]:
    """Run the generation deployments concurrently on their work pools, one run per modality for
    all its jobs, then read their outputs back from the work area (shared storage), not from the
    runs' results.
    """
    from prefect.deployments import run_deployment

    def start(modality: str):
        name = DEPLOYMENTS[modality][0]
        params = {"jobs": [j.model_dump(mode="json") for j in jobs[modality]], "workspace": workspace.model_dump()}
        return run_deployment(name, parameters=params, timeout=None)

    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        # Each thread carries the flow's context, so the runs show up as this run's subflows.
        futures = {m: pool.submit(contextvars.copy_context().run, start, m) for m in jobs}
        runs = {m: f.result() for m, f in futures.items()}

    results: dict[str, list[Generated]] = {}
    for modality, run in runs.items():
        name, kind, module = DEPLOYMENTS[modality]
        if not run.state.is_completed():
            raise DispatchError(f"{name} run '{run.name}' ended {run.state.name}: {run.state.message}")
        results[modality] = []
        for job in jobs[modality]:
            found = generation_step(job, workspace, kind, module).load(Generated)
            if found is None:
                raise DispatchError(
                    f"{name} run '{run.name}' completed but its output is not in the work area "
                    f"{workspace.remote or workspace.root}: do the workers share GENBUNDLE_STORAGE "
                    "(or GENBUNDLE_OUT) and run the same genbundle version?"
                )
            results[modality].append(found)
    return results
