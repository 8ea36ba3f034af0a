"""Where weights come from and how pipelines are loaded, for every engine and the helper models.

Two profiles choose the weights. `full` loads the real models from a local folder or the
Hugging Face cache; `tiny` builds the same pipeline classes with small random weights once
(each engine's `build_tiny`), saves them with `save_pretrained`, and from then on loads them
exactly like `full` does. A loaded pipeline is kept for the life of the process and reused (or
reloaded under a lighter memory policy after a generation runs out of GPU memory).

Besides the engines, a bundle uses two helper models on the cover: the BLIP captioner
("caption") and Stable Diffusion's safety checker ("safety").
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from tasks import acceleration, tiny_models
from tasks.engines import Engine, engine
from tasks.errors import SettingError, UserError
from tasks.lazy import MODEL_LOCK, lazy_import
from tasks.logs import run_logger
from tasks.settings import get_settings

# What `models pull` fetches: the diffusers layout, not the single-file checkpoints beside it.
_PULL_IGNORE = ["*.ckpt", "*.pth", "*non_ema*", "*.msgpack", "*.onnx", "*.onnx_data", "*.h5", "*.ot", "*.md"]
HELPERS = {"caption": "caption_model", "safety": "safety_model"}  # helper model -> the setting naming its weights


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
                raise SettingError("GENBUNDLE_DEVICE=cuda: no CUDA device is visible here; set it to auto or cpu")
            _runtime = Runtime("cuda", get_settings().dtype) if use_cuda else Runtime("cpu", "float32")
        return _runtime


def check_device() -> None:
    """GENBUNDLE_DEVICE=cuda with no GPU: refused before any model loads (torch is imported only then)."""
    if get_settings().device == "cuda":
        runtime()


def check_model_cache() -> None:
    """The tiny profile builds its models under GENBUNDLE_MODEL_CACHE: it must be a folder that can be written."""
    from tasks.files import check_writable_folder

    check_writable_folder(get_settings().model_cache, "GENBUNDLE_MODEL_CACHE", "point it at a writable folder")


def check_prompt_model() -> None:
    """GENBUNDLE_PROMPT_MODEL: a folder that is not there, or a name that is no hub id, ends here, not after
    the hub's retries; a hub id missing from the cache is refused here too when the hub is off (HF_HUB_OFFLINE)."""
    ref = get_settings().prompt_model
    if not ref or not ref.strip():
        return
    path = Path(ref).expanduser()
    if path.is_dir():
        return
    if ref.startswith(("/", "./", "../", "~")) or path.exists():
        raise SettingError(f"GENBUNDLE_PROMPT_MODEL: {ref} is not a folder: point it at a model folder or a hub id")
    from huggingface_hub.constants import HF_HUB_OFFLINE
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(ref)
    except HFValidationError:
        raise SettingError(
            f"GENBUNDLE_PROMPT_MODEL: {ref!r} is neither a folder nor a hub id (org/name): fix it or unset it"
        ) from None
    if HF_HUB_OFFLINE:
        weights_source(ref, "prompt model", "GENBUNDLE_PROMPT_MODEL")


def _code_hash(*modules) -> str:
    digest = hashlib.sha256()
    for module in modules:
        digest.update(inspect.getsource(module).encode())
    return digest.hexdigest()[:10]


def tiny_version(name: str) -> str:
    """The tiny build's folder name, keyed by the code that builds it: editing an engine rebuilds only its own."""
    modules = (tiny_models,) if name in HELPERS else (tiny_models, *engine(name).source_modules())
    return f"tiny-{name}-{_code_hash(*modules)}"


def ensure_tiny_model(name: str) -> Path:
    """Build and save an engine's tiny pipeline (or a tiny helper model) once; later calls return its folder."""
    import torch

    target = get_settings().model_cache / tiny_version(name)
    with MODEL_LOCK:
        if target.is_dir():  # complete: it is renamed into place only once fully saved
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        # A folder of its own: containers sharing the cache volume can have the same pid.
        partial = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
        torch.manual_seed(0)  # the same weights on every machine
        if name in HELPERS:
            built = tiny_models.AUX_BUILDERS[name]()
            tiny_models.eval_modules(built)
            built.save_pretrained(partial)
        else:
            built = engine(name).build_tiny()
            tiny_models.eval_modules(built)
            engine(name).save_tiny(built, partial)
        try:
            partial.rename(target)  # atomic: another process may have finished first
        except OSError:
            shutil.rmtree(partial, ignore_errors=True)
        return target


def full_weights(engine_name: str, override: str | None = None) -> str:
    """The full weights an engine loads: the brief's, else GENBUNDLE_WEIGHTS' entry, else the engine's own."""
    return override or get_settings().weights.get(engine_name) or engine(engine_name).weights


def weights_source(ref: str, what: str, setting: str) -> str:
    """A local folder for a hub id or folder, from the Hugging Face cache; ModelNotAvailable when absent."""
    if Path(ref).expanduser().is_dir():
        return str(Path(ref).expanduser())
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return snapshot_download(ref, local_files_only=True, ignore_patterns=_PULL_IGNORE)
    except (LocalEntryNotFoundError, OSError, ValueError):
        raise ModelNotAvailable(
            f"{what} weights '{ref}' are not in the Hugging Face cache ({_hf_cache()}): "
            f"fetch them with `genbundle models pull --models full`, or point {setting} at a local folder"
        ) from None


def portable_source(source: str) -> str:
    """What a loaded folder is, without this machine's paths (for the manifest): the tiny build's folder name,
    a Hugging Face cache snapshot as its hub id and revision, any other local folder by its name."""
    path = Path(source)
    if path.parent.name == "snapshots" and path.parent.parent.name.startswith("models--"):
        # The hub cache lays a repo out as models--{owner}--{name}/snapshots/{revision}; hub ids never hold "--".
        return f"{path.parent.parent.name.removeprefix('models--').replace('--', '/')}@{path.name}"
    return path.name if path.is_absolute() or path.exists() else source


def extra_weights_source(engine_name: str, name: str) -> str:
    """The folder of an engine's extra full weights (e.g. a LoRA adapter), from the Hugging Face cache."""
    eng = engine(engine_name)
    hub_id = eng.extra_weights[name]
    try:
        return weights_source(hub_id, name, "HF_HOME")
    except ModelNotAvailable:
        raise ModelNotAvailable(
            f"{eng.role} engine {engine_name} needs its {name} '{hub_id}', which is not in the Hugging Face cache "
            f"({_hf_cache()}): fetch it with `genbundle models pull --models full --engine {engine_name}`"
        ) from None


def model_source(name: str, profile: str, weights: str | None = None) -> str:
    """The folder an engine's pipeline (or a helper model) loads from."""
    if profile == "tiny":
        return str(ensure_tiny_model(name))
    if name in HELPERS:
        return weights_source(getattr(get_settings(), HELPERS[name]), name, f"GENBUNDLE_{HELPERS[name].upper()}")
    ref = full_weights(name, weights)
    return weights_source(
        ref, f"{engine(name).role} engine {name}", f"the brief's weights or GENBUNDLE_WEIGHTS['{name}']"
    )


def _hf_cache() -> str:
    from huggingface_hub.constants import HF_HUB_CACHE

    return HF_HUB_CACHE


def pull_models(profile: str, engine_names: list[str], log=print) -> dict[str, str]:
    """Fill the cache for these engines and the helper models: build the tiny ones, or download the full ones."""
    found = {}
    for name in [*engine_names, *HELPERS]:
        if profile == "tiny":
            found[name] = str(ensure_tiny_model(name))
        else:
            ref = getattr(get_settings(), HELPERS[name]) if name in HELPERS else full_weights(name)
            if Path(ref).expanduser().is_dir():
                found[name] = ref
            else:
                from huggingface_hub import snapshot_download

                log(f"fetching {name} weights {ref} ...")
                found[name] = snapshot_download(ref, ignore_patterns=_PULL_IGNORE)
                for extra, hub_id in ({} if name in HELPERS else engine(name).extra_weights).items():
                    log(f"fetching {name}'s {extra} {hub_id} ...")
                    found[f"{name}:{extra}"] = snapshot_download(hub_id, ignore_patterns=_PULL_IGNORE)
        log(f"{name}: {found[name]}")
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


def _cache_key(name: str, source: str) -> tuple:
    rt = runtime()
    return (name, source, rt.device, rt.dtype_name)


def _load(name: str, source: str, profile: str, memory: str | None = None) -> LoadedPipeline:
    """Load a pipeline from its folder and place it, under `memory` when given; the caller holds MODEL_LOCK."""
    eng: Engine = engine(name)
    rt = runtime()
    _quiet_libraries()
    cls = lazy_import("diffusers", eng.pipeline_class)
    logging.getLogger(__name__).debug("loading %s from %s", cls.__name__, source)
    start = time.perf_counter()
    pipe = cls.from_pretrained(source, dtype=rt.dtype, **eng.load_kwargs)
    eng.prepare(pipe, source, profile)
    placed = acceleration.place(pipe, eng, rt.device, memory)
    pipe.set_progress_bar_config(disable=True)
    # One line per actual load: a warm worker's log shows each pipeline loaded once, then reused.
    run_logger(__name__).info("loaded %s pipeline (%s) in %.2f s", name, profile, time.perf_counter() - start)
    return LoadedPipeline(pipe, source, threading.Lock(), placed)


def load_pipeline(name: str, profile: str, weights: str | None = None) -> LoadedPipeline:
    """Load (or reuse) an engine's pipeline for a profile, placed on the chosen device."""
    source = model_source(name, profile, weights)
    key = _cache_key(name, source)
    with MODEL_LOCK:
        if key not in _loaded:
            _loaded[key] = _load(name, source, profile)
        return _loaded[key]


def reload_pipeline(name: str, profile: str, weights: str | None, memory: str) -> LoadedPipeline:
    """Load an engine's pipeline afresh under the memory policy given, in place of the cached one, for this
    and later jobs. The caller drops its own reference to the old one first, so its GPU memory is freed.

    Reloaded rather than re-placed: a placed pipeline keeps what placement did to it (weights on the GPU, a
    compiled denoiser, offload hooks), and diffusers does not undo all of that cleanly; a fresh load from the
    same folder (in the page cache by now) starts from the state every placement assumes."""
    source = model_source(name, profile, weights)
    key = _cache_key(name, source)
    with MODEL_LOCK:
        if (cached := _loaded.get(key)) is not None and cached.memory == memory:
            return cached  # another thread's retry got here first
        _loaded.pop(key, None)
        acceleration.release_gpu_memory()
        _loaded[key] = _load(name, source, profile, memory)
        return _loaded[key]


def load_tokenizer(name: str, profile: str, weights: str | None = None):
    """An engine's own tokenizer, without loading its models (for counting prompt tokens)."""
    folder = engine(name).tokenizer_folder
    return lazy_import("transformers", "AutoTokenizer").from_pretrained(
        model_source(name, profile, weights), subfolder=folder
    )
