"""Generation: one task for every engine. A job in, its file in the work area out.

The engine (tasks/engines/) says how its pipeline is called and its output written; this module
loads the pipeline, swaps the scheduler, seeds, meters, and records how the asset was made.
A generation that runs out of GPU memory is retried once with the pipeline reloaded under the
next lighter memory policy (gpu -> model_offload -> sequential_offload), then fails with one line.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks import disclosure as disclosure_module
from tasks.acceleration import lighter_policy
from tasks.disclosure import Disclosure
from tasks.energy import metered
from tasks.engines import ROLES, Engine, engine
from tasks.engines.schedulers import use_scheduler
from tasks.errors import UserError
from tasks.jobs import Job
from tasks.logs import run_logger
from tasks.manifest import EngineRun
from tasks.models import LoadedPipeline, load_pipeline, portable_source, reload_pipeline, runtime
from tasks.progress import tracked
from tasks.workspace import Step, StepResult, Workspace

# Pipeline invocations in this process, per role: what resuming saves, counted.
pipeline_calls: Counter[str] = Counter()


class OutOfGpuMemory(UserError):
    """A generation ran out of GPU memory under every memory policy it was given."""

    def __init__(self, job: Job, tried: list[str]):
        fixes = ["lower its size, frames or steps", "set GENBUNDLE_MEMORY=sequential_offload", "free the GPU"]
        if "sequential_offload" in tried:  # already the lightest: only a smaller job or a freer GPU helps
            fixes.remove("set GENBUNDLE_MEMORY=sequential_offload")
        super().__init__(
            f"{job.role} engine {job.engine} ran out of GPU memory under {' then '.join(tried)}: "
            f"{', '.join(fixes[:-1])} or {fixes[-1]} (other processes on it: nvidia-smi)"
        )


class Generated(StepResult):
    """A generated file in the work area, with how it was made and how long it took."""

    role: str
    engine: EngineRun
    load_seconds: float
    generate_seconds: float


# The least time between two writes of a generation's progress artifact. Each write is an API call made
# in the denoising thread, 40-70 ms on a busy 2-core machine; a tiny generation used to make five.
PROGRESS_EVERY_S = 0.5


def step_progress(job: Job, clock: Callable[[], float] = time.monotonic) -> Callable[[int], None]:
    """A per-denoising-step callback that feeds a Prefect progress artifact (inside a task run).

    The artifact is written at the last step and otherwise at most every PROGRESS_EVERY_S seconds; it is
    created at its first write, so a generation done within that time makes one call (at 100 %).
    """
    from prefect.context import TaskRunContext

    if TaskRunContext.get() is None:
        return lambda step: None
    from prefect.artifacts import create_progress_artifact, update_progress_artifact

    artifact_id, last_write = None, clock()

    def on_step(step: int) -> None:
        nonlocal artifact_id, last_write
        last_step = step + 1 >= job.steps
        if not last_step and clock() - last_write < PROGRESS_EVERY_S:
            return
        percent = min(100.0 * (step + 1) / job.steps, 100.0)
        if artifact_id is None:
            description = f"{job.role}: {job.steps} denoising steps"
            artifact_id = create_progress_artifact(progress=percent, description=description)
        else:
            update_progress_artifact(artifact_id, progress=percent)
        last_write = clock()

    return on_step


def call_pipeline(eng: Engine, loaded: LoadedPipeline, job: Job, on_step: Callable[[int], None]):
    """Run the engine's call under the pipeline's lock: (output, scheduler class, energy), or None when
    the GPU ran out of memory. Returned, not raised: the error's traceback holds the failed call's frames
    and their activations on the GPU, which must be gone before a retry can use that memory."""
    import torch

    rt = runtime()
    with loaded.lock:
        use_scheduler(loaded.pipe, job.scheduler)
        # A CPU generator gives the same noise on any device, so a seed means the same thing everywhere.
        generator = torch.Generator("cpu").manual_seed(job.seed)
        try:
            with metered(rt.device) as energy, torch.inference_mode():
                output = eng.call(loaded.pipe, job, generator, on_step)
                if rt.device == "cuda":
                    torch.cuda.synchronize()
        except torch.OutOfMemoryError:  # torch.cuda.OutOfMemoryError is the same class
            return None
        pipeline_calls[job.role] += 1
        return output, type(loaded.pipe.scheduler).__name__, energy[0]


def run_generation(job: Job):
    """Load (or reuse) the job's pipeline and run its engine's call; out of GPU memory, once more under
    the next lighter memory policy.

    Returns (output, engine record, load seconds, generation seconds).
    """
    eng = engine(job.engine)
    start = time.perf_counter()
    loaded = load_pipeline(job.engine, job.profile, job.weights_override)
    load_seconds = time.perf_counter() - start
    rt = runtime()
    on_step = step_progress(job)
    diffused = call_pipeline(eng, loaded, job, on_step)
    if diffused is None:
        tried = [loaded.memory]
        lighter = lighter_policy(loaded.memory)
        if lighter is None:
            raise OutOfGpuMemory(job, tried)
        run_logger(__name__).warning(
            f"{job.role}: engine {job.engine} ran out of GPU memory under {loaded.memory}; "
            f"retrying once under {lighter}"
        )
        del loaded  # the cache's reference goes in the reload; with this one gone its GPU memory is freed
        start = time.perf_counter()
        loaded = reload_pipeline(job.engine, job.profile, job.weights_override, lighter)
        load_seconds += time.perf_counter() - start
        diffused = call_pipeline(eng, loaded, job, on_step)
        if diffused is None:
            raise OutOfGpuMemory(job, [*tried, loaded.memory])
    output, scheduler_class, energy = diffused
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
        energy=energy,
    )
    return output, record, load_seconds, energy.seconds


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
    code = (*eng.source_modules(), *eng.code, call_pipeline, run_generation, generate.fn, disclosure_module)
    return workspace.step(job.role, inputs, *code)


# Every genbundle task has cache_policy=NO_CACHE (tests/test_flow.py checks): a step finds its own earlier
# output in the work area (generation_step), while Prefect's default policy hashed each call's inputs and
# looked for a stored result that, with results not persisted, is never there (3-12 ms a task run).
@task(name="diffuse", task_run_name="diffuse-{job.role}", tags=["gpu"], cache_policy=NO_CACHE)
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
