"""What an engine is: one diffusers pipeline that makes one role's asset, described in one place.

An engine module defines a subclass of `Engine` and an instance of it named `ENGINE`. Everything
the rest of genbundle needs to know about the model lives on that object: its role, pipeline class
and default weights, licence, generation parameters with their constraints, per-profile
defaults and cost limits, the schedulers it accepts, its prompt template, how its tiny offline version is built,
how its pipeline is called, how its output is written and how it is tuned on a GPU.

Only light imports at module level: the registry imports every engine to validate a brief, before
torch or diffusers are loaded.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError


@dataclass(frozen=True)
class Licence:
    """The licence of an engine's weights, and whether their outputs may be used commercially."""

    name: str  # SPDX id where there is one (e.g. "CC-BY-NC-4.0"), else the licence's name
    url: str
    commercial: bool
    conditions: str = ""  # what commercial use is subject to, in a few words


@dataclass(frozen=True)
class PromptTemplate:
    """Terms in priority order (the last are dropped first when the context is short) and a negative prompt."""

    terms: tuple[str, ...]
    negative: str
    token_limit: int | None = None  # the text encoder's context, where the tokenizer does not say it


class Params(BaseModel):
    """Generation parameters every engine takes; an engine's own model adds its constraints and fields."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    steps: int = Field(ge=1, le=200, description="Denoising steps.")
    guidance: float = Field(ge=0.0, le=30.0, allow_inf_nan=False, description="Classifier-free guidance scale.")
    scheduler: str


@dataclass(frozen=True)
class CostLimits:
    """How big a job may be before it is refused as large (unless large jobs are allowed, see
    tasks/cost_limits.py): what the full model makes comfortably. The parameter model's own bounds
    stay the absolute caps; None leaves a setting to them alone."""

    area: tuple[int, int] | None = None  # an image or each frame: at most width x height pixels, in any aspect
    frames: int | None = None
    steps: int | None = None
    duration: float | None = None  # seconds of audio


def multiple_of(n: int):
    """A field validator: the value is a multiple of n (with the nearest one as the fix)."""

    def check(v: int) -> int:
        if v % n:
            raise ValueError(f"must be a multiple of {n} (got {v}; try {round(v / n) * n or n})")
        return v

    return check


@dataclass(frozen=True)
class Role:
    """A part of the bundle: its brief section, its file, and the GPU work pool that generates it."""

    name: str  # the brief's section and the role in the manifest: cover, sound, video
    output: str  # the generated file's name in the bundle
    title: str  # the asset's title in its embedded disclosure
    pool: str  # the GPU work pool (and deployment) that generates it when dispatched
    describes: str  # what it is, for a prompt-rewriting model: "a book cover illustration"


class Engine:
    """Base of every engine; subclasses set the class attributes and implement build_tiny, call (or
    call_batch, when batchable) and write."""

    name: ClassVar[str]  # what a brief names it by: `cover.engine: sd15`
    role: ClassVar[str]
    title: ClassVar[str]  # e.g. "Stable Diffusion v1.5"
    default: ClassVar[bool] = False  # the role's engine when a brief names none (one per role)
    pipeline_class: ClassVar[str]  # a diffusers pipeline class name
    weights: ClassVar[str]  # default full weights: hub id
    licence: ClassVar[Licence]
    params: ClassVar[type[Params]]
    defaults: ClassVar[dict[str, dict[str, Any]]]  # profile ("full", "tiny") -> a full set of params
    # Sizes, frames, steps and seconds past which a job is refused unless large jobs are allowed.
    # None set by default: an engine that declares none (a toy, a plug-in) has only its params' bounds.
    cost_limits: ClassVar[CostLimits] = CostLimits()
    schedulers: ClassVar[tuple[str, ...]]  # names from tasks/engines/schedulers.py; the default is in `defaults`
    prompt: ClassVar[PromptTemplate]
    load_kwargs: ClassVar[dict[str, Any]] = {}  # extra from_pretrained arguments
    tokenizer_folder: ClassVar[str] = "tokenizer"  # the subfolder whose tokenizer counts prompt tokens
    denoiser: ClassVar[str] = "unet"  # the pipeline component that denoises (for attention checks, compile)
    vram_headroom_gib: ClassVar[float] = 2.0  # activations beyond the weights at the full profile's defaults
    traceable: ClassVar[bool] = False  # whether the diffusion trace can picture its latents (an image VAE)
    # Whether `call_batch` takes several jobs (same settings, their own prompts and seeds) in one pipeline
    # call, through the batch dimension: fewer GPU passes for a batch of briefs.
    batchable: ClassVar[bool] = False
    code: ClassVar[tuple[Any, ...]] = ()  # functions and modules outside this file that shape its output
    # Weights it needs besides the pipeline's, by name (e.g. a LoRA adapter): hub ids, fetched by
    # `genbundle models pull`, found with `models.weights_source`; the tiny build carries its own.
    extra_weights: ClassVar[dict[str, str]] = {}
    # Its published architecture for the GPU benchmark: a folder under benchmarks/configs/ with one
    # config per pipeline component (`<component>.json`) and `parameters.json` (published counts).
    architecture: ClassVar[str | None] = None

    # --- what the rest of genbundle asks of an engine -----------------------------------------

    def resolve(self, given: dict[str, Any], profile: str) -> Params:
        """The profile's defaults with what the brief gave on top, checked against this engine's constraints."""
        return self.params.model_validate(self.defaults[profile] | {k: v for k, v in given.items() if v is not None})

    def build_tiny(self):
        """The same pipeline class with small random weights (the caller seeds torch)."""
        raise NotImplementedError

    def call(self, pipe, job, generator, on_step):
        """Run the pipeline for a job; call `on_step(i)` after denoising step i (callback_on_step_end).
        A batchable engine implements `call_batch` instead; this is then its batch of one."""
        if type(self).call_batch is Engine.call_batch:
            raise NotImplementedError
        return self.call_batch(pipe, [job], [generator], on_step)[0]

    def call_batch(self, pipe, jobs, generators, on_step) -> list:
        """Run the pipeline once for jobs that differ only in prompts and seed: one output per job, in order.
        `generators` are the jobs' own (one CPU generator each), so diffusers' randn_tensor draws each item's
        noise from its job's seed, as a single run would. The outputs may still differ from single runs in
        the last bits (batched matmuls add up in another order). Only a `batchable` engine implements it."""
        if self.batchable:
            raise NotImplementedError
        if len(jobs) != 1:
            raise ValueError(f"engine {self.name} cannot batch: give it one job at a time")
        return [self.call(pipe, jobs[0], generators[0], on_step)]

    def write(self, output, path: Path, job, disclosure) -> dict[str, str]:
        """Write the output to `path` with its disclosure; return side files made beside it, by name."""
        raise NotImplementedError

    def save_tiny(self, built, folder: Path) -> None:
        """Save what `build_tiny` made where `from_pretrained` (and `prepare`) will find it."""
        built.save_pretrained(folder)

    def prepare(self, pipe, source: str, profile: str) -> None:
        """After `from_pretrained(source)`, before placement: load adapters, set the engine's scheduler."""

    def tune(self, pipe, policy: str, compile: bool) -> None:
        """The engine's CUDA fast path once placed. This default suits a 2-D UNet with an image VAE:
        channels_last (NHWC suits the tensor cores' convolutions), and torch.compile on request."""
        import torch

        getattr(pipe, self.denoiser).to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
        if compile and policy == "gpu":  # offload hooks move weights mid-graph: not compiled then
            getattr(pipe, self.denoiser).compile()

    # --- derived ----------------------------------------------------------------------------

    def source_modules(self) -> tuple[ModuleType, ...]:
        import sys

        return (sys.modules[type(self).__module__],)

    def describe(self) -> dict[str, Any]:
        """What `genbundle engines` lists."""
        full = self.defaults["full"]
        size = "x".join(str(full[k]) for k in ("width", "height") if k in full)
        extra = {k: full[k] for k in ("frames", "fps", "duration") if k in full}
        return {
            "role": self.role,
            "name": self.name,
            "title": self.title,
            "pipeline_class": self.pipeline_class,
            "weights": self.weights,
            "licence": self.licence.name,
            "licence_url": self.licence.url,
            "commercial_use": self.licence.commercial,
            "licence_conditions": self.licence.conditions,
            "tiny_build": type(self).build_tiny is not Engine.build_tiny,
            "default_steps": full["steps"],
            "default_scheduler": full["scheduler"],
            "default_size": size or None,
            **extra,
            "cost_limits": {k: v for k, v in asdict(self.cost_limits).items() if v is not None},
        }


def check_params(engine: Engine, given: dict[str, Any], profile: str, section: str) -> Params:
    """`engine.resolve`, with a failure as one ValueError naming the brief field: `cover.width: ...`."""
    try:
        return engine.resolve(given, profile)
    except ValidationError as err:
        problems = []
        for e in err.errors():
            where = ".".join([section, *(str(p) for p in e["loc"])])
            msg = e["msg"].removeprefix("Value error, ")
            if e["type"] == "extra_forbidden":
                msg = f"is not a setting of the {engine.name} engine"
            problems.append(f"{where}: {msg}")
        raise ValueError("; ".join(problems)) from None
