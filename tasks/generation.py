"""Generation: one task for every engine. A job in, its file in the work area out.

The engine (tasks/engines/) says how its pipeline is called and its output written; this module
loads the pipeline, swaps the scheduler, seeds, meters, and records how the asset was made.
A generation that runs out of GPU memory is retried once with the pipeline reloaded under the
next lighter memory policy (gpu -> model_offload -> sequential_offload), then fails with one line.

Jobs of one batchable engine with the same settings (their prompts and seeds aside) can go through
one pipeline call, in the batch dimension (`generate_batch`; `plan_batches` groups them, at most
GENBUNDLE_GENERATION_BATCH a call). Each job keeps its own seed's noise, but a batched output may
differ from the job's single run in the last bits (batched matmuls add up in another order); its
work-area step is the same, so either is reused for the other.
"""

from __future__ import annotations

import json
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
from tasks.progress_artifact import ProgressArtifact
from tasks.settings import get_settings
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


def call_pipeline(eng: Engine, loaded: LoadedPipeline, jobs: list[Job], on_step: Callable[[int], None]):
    """Run the engine's call for the jobs (one, or a batch) under the pipeline's lock: (one output per job,
    scheduler class, energy), or None when the GPU ran out of memory. Returned, not raised: the error's
    traceback holds the failed call's frames and their activations on the GPU, which must be gone before
    a retry can use that memory."""
    import torch

    rt = runtime()
    with loaded.lock:
        use_scheduler(loaded.pipe, jobs[0].scheduler)
        # A CPU generator gives the same noise on any device, so a seed means the same thing everywhere.
        # One per job: in a batch each item's noise comes from its own job's seed.
        generators = [torch.Generator("cpu").manual_seed(job.seed) for job in jobs]
        try:
            with metered(rt.device) as energy, torch.inference_mode():
                if len(jobs) == 1:  # `call` is what every engine has (a batchable one's batch of one)
                    outputs = [eng.call(loaded.pipe, jobs[0], generators[0], on_step)]
                else:
                    outputs = eng.call_batch(loaded.pipe, jobs, generators, on_step)
                if rt.device == "cuda":
                    torch.cuda.synchronize()
        except torch.OutOfMemoryError:  # torch.cuda.OutOfMemoryError is the same class
            return None
        if len(outputs) != len(jobs):
            raise RuntimeError(f"engine {eng.name} made {len(outputs)} outputs for {len(jobs)} jobs")
        pipeline_calls[jobs[0].role] += 1
        return outputs, type(loaded.pipe.scheduler).__name__, energy[0]


def run_generation(jobs: list[Job]):
    """Load (or reuse) the jobs' pipeline and run its engine's call once for all of them (one job, or a batch
    that differs only in prompts and seeds); out of GPU memory, a single job is tried once more under the
    next lighter memory policy, a batch raises OutOfGpuMemory (its caller makes the jobs one by one).

    Returns, per job, (output, engine record, load seconds, generation seconds).
    """
    job = jobs[0]
    eng = engine(job.engine)
    start = time.perf_counter()
    loaded = load_pipeline(job.engine, job.profile, job.weights_override)
    load_seconds = time.perf_counter() - start
    rt = runtime()
    with ProgressArtifact(job) as on_step:
        diffused = call_pipeline(eng, loaded, jobs, on_step)
        if diffused is None:
            tried = [loaded.memory]
            lighter = lighter_policy(loaded.memory)
            if lighter is None or len(jobs) > 1:
                raise OutOfGpuMemory(job, tried)
            run_logger(__name__).warning(
                f"{job.role}: engine {job.engine} ran out of GPU memory under {loaded.memory}; "
                f"retrying once under {lighter}"
            )
            del loaded  # the cache's reference goes in the reload; with this one gone its GPU memory is freed
            start = time.perf_counter()
            loaded = reload_pipeline(job.engine, job.profile, job.weights_override, lighter)
            load_seconds += time.perf_counter() - start
            diffused = call_pipeline(eng, loaded, jobs, on_step)
            if diffused is None:
                raise OutOfGpuMemory(job, [*tried, loaded.memory])
    outputs, scheduler_class, energy = diffused
    # A batch's jobs each get an equal share of the call's seconds and energy (and of the load): the
    # call cannot tell which item used what; `batch` in the record says how many shared it.
    n = len(jobs)
    share = energy.model_copy(update={"seconds": energy.seconds / n, "energy_wh": energy.energy_wh / n})
    common = dict(
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
        params=job.params,
        dtype=rt.dtype_name,
        device=rt.device,
        memory=loaded.memory,
        energy=share,
        batch=n,
    )
    return [
        (output, EngineRun(seed=each.seed, **common), load_seconds / n, share.seconds)
        for each, output in zip(jobs, outputs, strict=True)
    ]


def generation_step(job: Job, workspace: Workspace) -> Step:
    """The work-area folder of one generation: keyed by the job, the device and dtype it runs in
    (fp16 on CUDA and fp32 on CPU give different outputs), and the code that makes its file: the
    engine's module, the functions it names, the functions here that call and write, and the disclosure.
    Not the batch it ran in: a batched job and its single run are the same step (see the module docstring).

    The runtime is chosen once per process, so a key is stable within a run and across CPU runs;
    only the process that generates can compute it (see flows/generate.py for dispatched jobs).
    """
    rt = runtime()
    inputs = job.model_dump(mode="json") | {"device": rt.device, "dtype": rt.dtype_name}
    eng = engine(job.engine)
    code = (*eng.source_modules(), *eng.code, call_pipeline, run_generation, make_generations, disclosure_module)
    return workspace.step(job.role, inputs, *code)


def make_generations(jobs: list[Job], steps: list[Step]) -> list[Generated]:
    """Generate jobs not made yet in one pipeline call, each into its own work-area step."""
    eng = engine(jobs[0].engine)
    made = []
    for job, step, (output, record, load_s, gen_s) in zip(jobs, steps, run_generation(jobs), strict=True):
        disclosure = Disclosure(
            title=ROLES[job.role].title, prompt=job.prompt, seed=job.seed, model=record.model,
            pipeline=record.pipeline_class,
        )  # fmt: skip
        path = step.file(ROLES[job.role].output)
        side_files = eng.write(output, path, job, disclosure)
        made.append(
            step.save(Generated(
                path=str(path), files=side_files, role=job.role, engine=record, load_seconds=load_s,
                generate_seconds=gen_s, disclosure=disclosure,
            ))
        )  # fmt: skip
    return made


# No tags: Prefect takes a tag's concurrency slot for every tagged task run, two API writes even with no
# limit set (on a SQLite server, a lock contender its clients retry after 2 s). GPU slots are a worker's.
# Every genbundle task has cache_policy=NO_CACHE (tests/test_flow.py checks): a step finds its own earlier
# output in the work area (generation_step), while Prefect's default policy hashed each call's inputs and
# looked for a stored result that, with results not persisted, is never there (3-12 ms a task run).
@task(name="diffuse", task_run_name="diffuse-{job.role}", cache_policy=NO_CACHE)
def generate(job: Job, workspace: Workspace) -> Generated:
    """Generate one role's asset into the work area (or find it there, made before)."""
    return _generate_into(job, generation_step(job, workspace))


def _generate_into(job: Job, step: Step) -> Generated:
    """One job into its work-area step: found there, or made in a pipeline call of its own."""
    with tracked(job.role) as stage:
        if done := step.load(Generated):
            stage.detail = "reused"
            return done
        return make_generations([job], [step])[0]


# --- batches ---------------------------------------------------------------------------------


def batch_key(job: Job) -> str:
    """What jobs share to go through one pipeline call: everything but their prompts and seeds."""
    return json.dumps(job.model_dump(mode="json", exclude={"prompt", "negative_prompt", "seed"}), sort_keys=True)


def plan_batches(jobs: list[Job], is_made: Callable[[int], bool] = lambda i: False) -> list[list[int]]:
    """The jobs' indices in the groups that go through the pipeline together: the same batch_key, at most
    GENBUNDLE_GENERATION_BATCH a group, one a group for an engine that cannot batch; in job order.

    A group too big for one batch asks `is_made` which of its jobs are in the work area already: those
    ride along in its first batch without taking a place (generate_batch finds them, and calls no
    pipeline for them), so a partly made group still goes through in full batches."""
    size = get_settings().generation_batch
    groups: dict[str, list[int]] = {}
    for i, job in enumerate(jobs):
        groups.setdefault(batch_key(job), []).append(i)
    plan = []
    for members in groups.values():
        n = size if engine(jobs[members[0]].engine).batchable else 1
        if len(members) <= n:
            plan.append(members)
            continue
        made = {i for i in members if is_made(i)}
        todo = [i for i in members if i not in made]
        batches = [todo[k : k + n] for k in range(0, len(todo), n)] or [[]]
        batches[0] = sorted([*made, *batches[0]])
        plan += batches
    return sorted(plan)


def _batch_run_name() -> str:
    from prefect.runtime import task_run

    jobs = task_run.parameters["jobs"]
    return f"diffuse-{jobs[0].role}" + (f"-x{len(jobs)}" if len(jobs) > 1 else "")


@task(name="diffuse-batch", task_run_name=_batch_run_name, cache_policy=NO_CACHE)
def generate_batch(jobs: list[Job], workspace: Workspace) -> list[Generated | str]:
    """Generate jobs of one batch (plan_batches) in one pipeline call: those found in the work area are
    reused, the rest made together. If that call fails (out of GPU memory or otherwise), they are made one
    by one instead (each with its own out-of-memory retry). Returns each job's Generated, or its error as a line."""
    if len({batch_key(job) for job in jobs}) > 1:
        raise ValueError("a batch's jobs must share their engine and settings (tasks.generation.batch_key)")
    steps = [generation_step(job, workspace) for job in jobs]
    results: list[Generated | str | None] = [step.load(Generated) for step in steps]
    todo = [i for i, done in enumerate(results) if done is None]
    if len(todo) > 1:
        try:
            with tracked(jobs[0].role) as stage:
                stage.detail = f"{len(todo)} jobs in one call"
                for i, made in zip(todo, make_generations([jobs[i] for i in todo], [steps[i] for i in todo])):
                    results[i] = made
            todo = []
        except Exception as err:  # noqa: BLE001 - the single path says which job fails, and why
            run_logger(__name__).warning(
                f"{jobs[0].role}: {len(todo)} {jobs[0].engine} jobs in one call failed "
                f"({type(err).__name__}: {' '.join(str(err).split())[:200]}); making them one by one"
            )
    for i in todo:
        try:
            results[i] = _generate_into(jobs[i], steps[i])
        except Exception as err:  # noqa: BLE001 - one bad job must not cost the others theirs
            results[i] = f"{type(err).__name__}: {err}"
    return results
