"""What every generation shares: the resolved job, the engine record, and the guarded call.

A job is the brief's request for one modality with the profile's defaults filled in. The
engine record is what the manifest keeps about how an asset was made.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Callable

from pydantic import BaseModel

from tasks.brief import Brief
from tasks.disclosure import Disclosure
from tasks.energy import Energy, metered
from tasks.models import ENGINES, Modality, load_pipeline, runtime, tiny_cache_dir, use_scheduler
from tasks.prompts import PromptSet
from tasks.settings import get_settings
from tasks.workspace import Step, StepResult, Workspace

# Pipeline invocations in this process, per modality: what resuming saves, counted.
pipeline_calls: Counter[str] = Counter()


class Job(BaseModel):
    modality: Modality
    profile: str
    model: str  # the weights: hub id or folder (full), or the tiny build's version; part of the work key
    prompt: str
    negative_prompt: str
    steps: int
    guidance: float
    scheduler: str
    seed: int
    width: int | None = None
    height: int | None = None
    frames: int | None = None
    fps: int | None = None
    duration: float | None = None


class Engine(BaseModel):
    pipeline_class: str
    model: str  # hub id or folder as configured
    model_path: str  # the folder actually loaded
    profile: str
    scheduler: str
    scheduler_class: str
    steps: int
    guidance: float
    seed: int
    dtype: str
    device: str
    memory: str = "cpu"  # where the weights lived: cpu, gpu, model_offload or sequential_offload
    energy: Energy | None = None  # the generation's seconds and Wh, measured or estimated


class Generated(StepResult):
    """A generated file in the work area, with how it was made and how long it took."""

    engine: Engine
    load_seconds: float
    generate_seconds: float


_SPEC_OF = {"image": "cover", "sound": "sound", "video": "video"}


def resolve_job(brief: Brief, prompts: PromptSet, modality: Modality) -> Job:
    """The brief's request for one modality, with the profile's defaults where it left a blank."""
    spec = getattr(brief, _SPEC_OF[modality])
    defaults = ENGINES[modality].defaults(brief.models)
    expanded = prompts.for_modality(modality)

    def pick(name: str):
        value = getattr(spec, name, None)
        return value if value is not None else getattr(defaults, name, None)

    model = (
        tiny_cache_dir().name if brief.models == "tiny" else getattr(get_settings(), ENGINES[modality].settings_field)
    )
    return Job(
        modality=modality,
        profile=brief.models,
        model=model,
        prompt=expanded.prompt,
        negative_prompt=expanded.negative_prompt,
        steps=pick("steps"),
        guidance=pick("guidance"),
        scheduler=pick("scheduler"),
        seed=brief.seed,
        width=pick("width"),
        height=pick("height"),
        frames=pick("frames"),
        fps=pick("fps"),
        duration=getattr(spec, "duration", None),
    )


def step_progress(job: Job) -> Callable[[int], None]:
    """A per-denoising-step callback that feeds a Prefect progress artifact (inside a task run)."""
    from prefect.context import TaskRunContext

    if TaskRunContext.get() is None:
        return lambda step: None
    from prefect.artifacts import create_progress_artifact, update_progress_artifact

    artifact_id = create_progress_artifact(progress=0.0, description=f"{job.modality}: {job.steps} denoising steps")
    shown = [0.0]

    def on_step(step: int) -> None:
        percent = 100.0 * (step + 1) / job.steps
        if percent - shown[0] >= 10 or step + 1 >= job.steps:  # about ten API calls per generation
            update_progress_artifact(artifact_id, progress=min(percent, 100.0))
            shown[0] = percent

    return on_step


def run_generation(job: Job, call: Callable[[object, object, Callable[[int], None]], object]):
    """Load (or reuse) the job's pipeline and run `call(pipe, generator, on_step)` under its lock.

    `on_step(i)` is to be called after denoising step i. Returns (output, engine record, load
    seconds, generation seconds).
    """
    import torch

    start = time.perf_counter()
    loaded = load_pipeline(job.modality, job.profile)
    load_seconds = time.perf_counter() - start
    rt = runtime()
    on_step = step_progress(job)
    with loaded.lock:
        use_scheduler(loaded.pipe, job.scheduler)
        # A CPU generator gives the same noise on any device, so a seed means the same thing everywhere.
        generator = torch.Generator("cpu").manual_seed(job.seed)
        with metered(rt.device) as energy, torch.inference_mode():
            output = call(loaded.pipe, generator, on_step)
            if rt.device == "cuda":
                torch.cuda.synchronize()
        pipeline_calls[job.modality] += 1
        generate_seconds = energy[0].seconds
        scheduler_class = type(loaded.pipe.scheduler).__name__
    settings_ref = getattr(get_settings(), ENGINES[job.modality].settings_field)
    engine = Engine(
        pipeline_class=type(loaded.pipe).__name__,
        model=settings_ref if job.profile == "full" else "tiny random weights (built offline)",
        model_path=loaded.source,
        profile=job.profile,
        scheduler=job.scheduler,
        scheduler_class=scheduler_class,
        steps=job.steps,
        guidance=job.guidance,
        seed=job.seed,
        dtype=rt.dtype_name,
        device=rt.device,
        memory=loaded.memory,
        energy=energy[0],
    )
    return output, engine, load_seconds, generate_seconds


def disclosure_for(job: Job, engine: Engine, title: str) -> Disclosure:
    return Disclosure(title=title, prompt=job.prompt, seed=job.seed, model=engine.model, pipeline=engine.pipeline_class)


def generation_step(job: Job, workspace: Workspace, kind: str, module_name: str) -> Step:
    """The work-area folder of one generation: keyed by the job, the device and dtype it runs in
    (fp16 on CUDA and fp32 on CPU give different outputs), and the code that loads and runs it.

    The runtime is chosen once per process, so a key is stable within a run and across CPU runs;
    only the process that generates can compute it (see flows/generate.py for dispatched jobs).
    """
    rt = runtime()
    inputs = job.model_dump(mode="json") | {"device": rt.device, "dtype": rt.dtype_name}
    code = (sys.modules[module_name], sys.modules[__name__], sys.modules[runtime.__module__])
    return workspace.step(kind, inputs, *code)
