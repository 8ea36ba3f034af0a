"""Generation: one task for every engine. A job in, its file in the work area out.

The engine (tasks/engines/) says how its pipeline is called and its output written; this module
loads the pipeline, swaps the scheduler, seeds, meters, and records how the asset was made.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

from prefect import task

from tasks import disclosure as disclosure_module
from tasks.disclosure import Disclosure
from tasks.energy import metered
from tasks.engines import ROLES, engine
from tasks.engines.schedulers import use_scheduler
from tasks.jobs import Job
from tasks.manifest import EngineRun
from tasks.models import load_pipeline, portable_source, runtime
from tasks.progress import tracked
from tasks.workspace import Step, StepResult, Workspace

# Pipeline invocations in this process, per role: what resuming saves, counted.
pipeline_calls: Counter[str] = Counter()


class Generated(StepResult):
    """A generated file in the work area, with how it was made and how long it took."""

    role: str
    engine: EngineRun
    load_seconds: float
    generate_seconds: float


def step_progress(job: Job) -> Callable[[int], None]:
    """A per-denoising-step callback that feeds a Prefect progress artifact (inside a task run)."""
    from prefect.context import TaskRunContext

    if TaskRunContext.get() is None:
        return lambda step: None
    from prefect.artifacts import create_progress_artifact, update_progress_artifact

    artifact_id = create_progress_artifact(progress=0.0, description=f"{job.role}: {job.steps} denoising steps")
    shown = [0.0]

    def on_step(step: int) -> None:
        percent = 100.0 * (step + 1) / job.steps
        if percent - shown[0] >= 10 or step + 1 >= job.steps:  # about ten API calls per generation
            update_progress_artifact(artifact_id, progress=min(percent, 100.0))
            shown[0] = percent

    return on_step


def run_generation(job: Job):
    """Load (or reuse) the job's pipeline and run its engine's call under the pipeline's lock.

    Returns (output, engine record, load seconds, generation seconds).
    """
    import torch

    eng = engine(job.engine)
    start = time.perf_counter()
    loaded = load_pipeline(job.engine, job.profile, job.weights_override)
    load_seconds = time.perf_counter() - start
    rt = runtime()
    on_step = step_progress(job)
    with loaded.lock:
        use_scheduler(loaded.pipe, job.scheduler)
        # A CPU generator gives the same noise on any device, so a seed means the same thing everywhere.
        generator = torch.Generator("cpu").manual_seed(job.seed)
        with metered(rt.device) as energy, torch.inference_mode():
            output = eng.call(loaded.pipe, job, generator, on_step)
            if rt.device == "cuda":
                torch.cuda.synchronize()
        pipeline_calls[job.role] += 1
        scheduler_class = type(loaded.pipe.scheduler).__name__
    record = EngineRun(
        name=eng.name,
        title=eng.title,
        pipeline_class=type(loaded.pipe).__name__,
        licence=eng.licence.name,
        licence_url=eng.licence.url,
        commercial_use=eng.licence.commercial,
        licence_conditions=eng.licence.conditions,
        model=portable_source(job.weights) if job.profile == "full" else "tiny random weights (built offline)",
        model_path=portable_source(loaded.source),  # the manifest travels: no path of this machine
        profile=job.profile,
        scheduler=job.scheduler,
        scheduler_class=scheduler_class,
        steps=job.steps,
        guidance=job.guidance,
        seed=job.seed,
        params=job.params,
        dtype=rt.dtype_name,
        device=rt.device,
        memory=loaded.memory,
        energy=energy[0],
    )
    return output, record, load_seconds, energy[0].seconds


def generation_step(job: Job, workspace: Workspace) -> Step:
    """The work-area folder of one generation: keyed by the job, the device and dtype it runs in
    (fp16 on CUDA and fp32 on CPU give different outputs), and the code that makes its file: the
    engine's module, the functions it names, this task and the disclosure it embeds.

    The runtime is chosen once per process, so a key is stable within a run and across CPU runs;
    only the process that generates can compute it (see flows/generate.py for dispatched jobs).
    """
    rt = runtime()
    inputs = job.model_dump(mode="json") | {"device": rt.device, "dtype": rt.dtype_name}
    eng = engine(job.engine)
    code = (*eng.source_modules(), *eng.code, run_generation, generate.fn, disclosure_module)
    return workspace.step(job.role, inputs, *code)


@task(name="diffuse", task_run_name="diffuse-{job.role}", tags=["gpu"])
def generate(job: Job, workspace: Workspace) -> Generated:
    """Generate one role's asset into the work area (or find it there, made before)."""
    step = generation_step(job, workspace)
    with tracked(job.role) as stage:
        if done := step.load(Generated):
            stage.detail = "reused"
            return done
        output, record, load_s, gen_s = run_generation(job)
        disclosure = Disclosure(
            title=ROLES[job.role].title, prompt=job.prompt, seed=job.seed, model=record.model,
            pipeline=record.pipeline_class,
        )  # fmt: skip
        path = step.file(ROLES[job.role].output)
        side_files = engine(job.engine).write(output, path, job, disclosure)
    made = Generated(
        path=str(path), files=side_files, role=job.role, engine=record, load_seconds=load_s,
        generate_seconds=gen_s, disclosure=disclosure,
    )  # fmt: skip
    return step.save(made)
