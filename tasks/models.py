"""The model registry: per modality, which pipeline, which weights, which defaults.

Two profiles choose the weights. `full` loads the real models from a local folder or the
Hugging Face cache; `tiny` builds the same pipeline classes with small random weights once,
saves them with `save_pretrained`, and from then on loads them exactly like `full` does.
A loaded pipeline is kept for the life of the process and reused.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import logging
import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tasks import acceleration, tiny_models
from tasks.errors import UserError
from tasks.settings import get_settings

Modality = Literal["image", "sound", "video"]
MODALITIES: tuple[Modality, ...] = ("image", "sound", "video")

# Set before diffusers/transformers import: their loggers read these once. The deprecation line that
# AudioLDMPipeline and TextToVideoSDPipeline log on every load is known (see the registry below).
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


@dataclass(frozen=True)
class Defaults:
    steps: int
    guidance: float
    scheduler: str = "dpm++"
    width: int | None = None
    height: int | None = None
    frames: int | None = None
    fps: int | None = None


@dataclass(frozen=True)
class EngineSpec:
    modality: Modality
    pipeline_class: str
    settings_field: str  # the Settings attribute naming the full model (hub id or folder)
    full: Defaults
    tiny: Defaults

    def defaults(self, profile: str) -> Defaults:
        return self.full if profile == "full" else self.tiny


# AudioLDMPipeline and TextToVideoSDPipeline sit in diffusers' deprecated pipelines (last maintained in
# 0.33.1) but still run in 0.42; they are the classes the seed models were published for.
ENGINES: dict[Modality, EngineSpec] = {
    # Cover: 512x768 is SD1.5's native width at a book cover's 2:3.
    "image": EngineSpec(
        "image",
        "StableDiffusionPipeline",
        "image_model",
        full=Defaults(steps=25, guidance=7.5, width=512, height=768),
        tiny=Defaults(steps=4, guidance=7.5, width=128, height=192),
    ),
    # Sound length comes from the brief (5 s by default); AudioLDM is tuned for low guidance.
    "sound": EngineSpec(
        "sound",
        "AudioLDMPipeline",
        "sound_model",
        full=Defaults(steps=20, guidance=2.5),
        tiny=Defaults(steps=4, guidance=2.5),
    ),
    # Zeroscope v2 576w's native size; 24 frames at 8 fps make 3 s.
    "video": EngineSpec(
        "video",
        "TextToVideoSDPipeline",
        "video_model",
        full=Defaults(steps=25, guidance=9.0, width=576, height=320, frames=24, fps=8),
        tiny=Defaults(steps=4, guidance=9.0, width=64, height=32, frames=8, fps=8),
    ),
}

# Every model a bundle uses -> the Settings field naming its full weights (the captioner is BLIP).
SETTINGS_FIELD = {m: spec.settings_field for m, spec in ENGINES.items()} | {"caption": "caption_model"}

# Scheduler choices: name -> (diffusers class, extra config).
SCHEDULERS: dict[str, tuple[str, dict]] = {
    "dpm++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    "ddim": ("DDIMScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True}),
}

# What `models pull` fetches: the diffusers layout, not the single-file checkpoints beside it.
_PULL_IGNORE = ["*.ckpt", "*.pth", "*non_ema*", "*.msgpack", "*.onnx", "*.onnx_data", "*.h5", "*.ot", "*.md"]


class ModelNotAvailable(UserError):
    """The full profile's weights are not on this machine; the message says how to fetch them."""


@dataclass(frozen=True)
class Runtime:
    device: str
    dtype_name: str

    @property
    def dtype(self):
        import torch

        return getattr(torch, self.dtype_name)


_runtime_lock = threading.Lock()
_runtime: Runtime | None = None


def runtime() -> Runtime:
    """Device and dtype, chosen once per process: CUDA in GENBUNDLE_DTYPE when present, else CPU float32."""
    global _runtime
    with _runtime_lock:
        if _runtime is None:
            import torch

            wanted = get_settings().device
            use_cuda = torch.cuda.is_available() and wanted != "cpu"
            if wanted == "cuda" and not use_cuda:
                raise ModelNotAvailable("GENBUNDLE_DEVICE=cuda but no CUDA device is visible; set it to auto or cpu")
            _runtime = Runtime("cuda", get_settings().dtype) if use_cuda else Runtime("cpu", "float32")
        return _runtime


def tiny_cache_dir() -> Path:
    """Folder of the tiny pipelines, keyed by the builder's source so a change rebuilds them."""
    source = inspect.getsource(tiny_models).encode()
    return get_settings().model_cache / f"tiny-{hashlib.sha256(source).hexdigest()[:10]}"


# One lock for every model build and load in the process: transformers and diffusers create
# modules on the "meta" device inside a context that patches torch globally, so two loads in
# two threads can leave one model with weights that were never materialised.
MODEL_LOCK = threading.RLock()


def lazy_import(module: str, name: str):
    """`from module import name` under MODEL_LOCK. diffusers and transformers import their names
    lazily and not thread-safely: resolving one while another thread imports can raise ImportError."""
    with MODEL_LOCK:
        return getattr(importlib.import_module(module), name)


def ensure_tiny_model(modality: str) -> Path:
    """Build and save the tiny pipeline (or captioner) once; later calls return its folder."""
    target = tiny_cache_dir() / modality
    with MODEL_LOCK:
        if target.is_dir():  # complete: it is renamed into place only once fully saved
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.parent / f".{modality}.{os.getpid()}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        tiny_models.build_tiny_pipeline(modality).save_pretrained(partial)
        try:
            partial.rename(target)  # atomic: another process may have finished first
        except OSError:
            shutil.rmtree(partial, ignore_errors=True)
        return target


def model_source(modality: str, profile: str) -> str:
    """The folder the pipeline (or captioner) loads from; raises ModelNotAvailable for missing full weights."""
    if profile == "tiny":
        return str(ensure_tiny_model(modality))
    ref = getattr(get_settings(), SETTINGS_FIELD[modality])
    if Path(ref).expanduser().is_dir():
        return str(Path(ref).expanduser())
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return snapshot_download(ref, local_files_only=True, ignore_patterns=_PULL_IGNORE)
    except (LocalEntryNotFoundError, OSError, ValueError):
        setting = "GENBUNDLE_" + SETTINGS_FIELD[modality].upper()
        raise ModelNotAvailable(
            f"{modality} model '{ref}' is not in the Hugging Face cache ({_hf_cache()}): "
            f"fetch it with `genbundle models pull --models full`, or point {setting} at a local folder"
        ) from None


def _hf_cache() -> str:
    from huggingface_hub.constants import HF_HUB_CACHE

    return HF_HUB_CACHE


def check_models_available(profile: str) -> None:
    """Fail fast, before any generation, when a full model is missing."""
    if profile == "full":
        for modality in SETTINGS_FIELD:
            model_source(modality, "full")


def pull_models(profile: str, log=print) -> dict[str, str]:
    """Fill the cache: build the tiny pipelines, or download the full weights from the hub."""
    found = {}
    for modality, field in SETTINGS_FIELD.items():
        ref = getattr(get_settings(), field)
        if profile == "tiny":
            found[modality] = str(ensure_tiny_model(modality))
        elif Path(ref).expanduser().is_dir():
            found[modality] = ref
        else:
            from huggingface_hub import snapshot_download

            log(f"fetching {modality} model {ref} ...")
            found[modality] = snapshot_download(ref, ignore_patterns=_PULL_IGNORE)
        log(f"{modality}: {found[modality]}")
    return found


# --- loading -------------------------------------------------------------------------------


@dataclass
class LoadedPipeline:
    pipe: object
    source: str
    lock: threading.Lock  # one generation at a time per pipeline: schedulers are swapped per call
    memory: str  # the memory policy it was placed with (tasks/acceleration.py)


_loaded: dict[tuple, LoadedPipeline] = {}


def _quiet_libraries() -> None:
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def load_pipeline(modality: Modality, profile: str) -> LoadedPipeline:
    """Load (or reuse) the pipeline for a modality and profile, placed on the chosen device."""
    source = model_source(modality, profile)
    rt = runtime()
    key = (modality, source, rt.device, rt.dtype_name)
    with MODEL_LOCK:
        if key in _loaded:
            return _loaded[key]
        _quiet_libraries()
        cls = lazy_import("diffusers", ENGINES[modality].pipeline_class)
        kwargs = {"dtype": rt.dtype}
        if modality == "image":  # the safety checker is not part of generation here
            kwargs |= {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
        logging.getLogger(__name__).debug("loading %s from %s", cls.__name__, source)
        pipe = cls.from_pretrained(source, **kwargs)
        memory = acceleration.place(pipe, modality, rt.device)
        pipe.set_progress_bar_config(disable=True)
        loaded = LoadedPipeline(pipe, source, threading.Lock(), memory)
        _loaded[key] = loaded
        return loaded


def use_scheduler(pipe, name: str) -> None:
    """Swap the pipeline's scheduler for the named one, keeping the model's noise schedule."""
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")
    cls_name, extra = SCHEDULERS[name]
    cls = lazy_import("diffusers", cls_name)
    if type(pipe.scheduler) is cls and all(pipe.scheduler.config.get(k) == v for k, v in extra.items()):
        return
    pipe.scheduler = cls.from_config(pipe.scheduler.config, **extra)


def load_tokenizer(modality: Modality, profile: str):
    """The pipeline's own tokenizer, without loading its models (for counting prompt tokens)."""
    return lazy_import("transformers", "AutoTokenizer").from_pretrained(model_source(modality, profile), subfolder="tokenizer")
