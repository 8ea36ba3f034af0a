"""The real architectures at their real sizes, random weights, through the product's own path.

    python -m benchmarks.gpu_models [--arch real|tiny] [--out DIR] [--no-update]

Speed does not depend on weight values, so each model is built from its published config
(benchmarks/configs/, see SOURCES.md) with random weights, saved in the runtime precision, and
then used exactly as `--models full` uses a local folder: `load_pipeline` (with the fast path of
tasks/acceleration.py) and the generation tasks' own functions. Figures per modality, at the full
profile's default sizes and steps: seconds, denoising steps per second, peak GPU memory, load time
cold (first load in the process) and warm (again, files cached); then the three generations one
after another and concurrently on one GPU; and the baseline, the seed notebook's way: each
pipeline loaded fresh with `from_pretrained(..., torch_dtype=float16).to("cuda")`, its published
default scheduler and the pipeline's default step count, one after another.

`--arch tiny` runs the same measurements on the tiny pipelines at tiny sizes: a quick check
that the script works, on any machine; its figures say nothing about real models.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "benchmarks" / "configs"
# role -> the published architecture of its seed engine (benchmarks/configs/).
ARCH_FOLDER = {"cover": "sd15", "sound": "audioldm_s_full_v2", "video": "zeroscope_v2_576w"}
# The seed notebook's way: the schedulers the models were published with, and each pipeline's
# default number of steps (StableDiffusion 50, AudioLDM 10, TextToVideoSD 50).
BASELINE_SCHEDULER = {
    "cover": ("PNDMScheduler", {"skip_prk_steps": True}),
    "sound": ("DDIMScheduler", {}),
    "video": ("DDIMScheduler", {}),
}


def _engine(role: str):
    from tasks.engines import default_engine

    return default_engine(role)


def _config(modality: str, name: str) -> dict:
    return json.loads((CONFIGS / ARCH_FOLDER[modality] / f"{name}.json").read_text())


def build_real_size(modality: str, device: str, dtype):
    """The pipeline class with its published architecture and random weights (tokenizers: the tiny ones)."""
    import diffusers
    import torch
    import transformers

    torch.manual_seed(0)
    tiny = _engine(modality).build_tiny()
    with torch.device(device):
        unet_class = diffusers.UNet3DConditionModel if modality == "video" else diffusers.UNet2DConditionModel
        parts = {"unet": unet_class.from_config(_config(modality, "unet")),
                 "vae": diffusers.AutoencoderKL.from_config(_config(modality, "vae"))}  # fmt: skip
        if modality == "sound":
            text = transformers.ClapTextConfig.from_dict(_config(modality, "text_encoder"))
            parts["text_encoder"] = transformers.ClapTextModelWithProjection(text)
            vocoder = transformers.SpeechT5HifiGanConfig.from_dict(_config(modality, "vocoder"))
            parts["vocoder"] = transformers.SpeechT5HifiGan(vocoder)
        else:
            text = transformers.CLIPTextConfig.from_dict(_config(modality, "text_encoder"))
            parts["text_encoder"] = transformers.CLIPTextModel(text)
    pipe = type(tiny)(**(tiny.components | parts))
    return pipe.to(dtype=dtype) if dtype else pipe


def prepare_models(arch: str, folder: Path, device: str) -> dict[str, str]:
    """Save each pipeline once to `folder`; returns modality -> folder, also set as the full-profile models."""
    import torch

    from tasks.models import model_source, runtime
    from tasks.settings import get_settings

    found = {}
    for modality in ARCH_FOLDER:
        if arch == "tiny":
            found[modality] = model_source(_engine(modality).name, "tiny")
        else:
            target = folder / modality
            if not (target / "model_index.json").is_file():
                build_real_size(modality, device, runtime().dtype).save_pretrained(target)
                torch.cuda.empty_cache() if device == "cuda" else None
            found[modality] = str(target)
    os.environ["GENBUNDLE_WEIGHTS"] = json.dumps({_engine(m).name: folder for m, folder in found.items()})
    get_settings.cache_clear()  # read the model folders just set
    return found


def _job(modality: str, seed: int, **override):
    from tasks.brief import parse_brief
    from tasks.jobs import resolve_job
    from tasks.prompts import expand_prompts

    brief = parse_brief({"title": "Benchmark", "author": "G. Bundle", "models": "full", "seed": seed})
    job = resolve_job(brief, modality, expand_prompts.fn(brief)[modality])
    params = job.params | {k: v for k, v in override.items() if k in job.params}
    return job.model_copy(update={k: v for k, v in override.items() if k not in params} | {"params": params})


def _generate(modality: str, job, workspace):
    from tasks.generation import generate

    return generate.fn(job, workspace)


class GPUMemory:
    """Peak allocated GPU memory over a block (0 on the CPU)."""

    def __init__(self, device: str):
        self.device, self.peak_gib = device, 0.0

    def __enter__(self):
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        return self

    def __exit__(self, *exc):
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()
            self.peak_gib = torch.cuda.max_memory_allocated() / 2**30


def measure_modality(modality: str, sizes: dict, workspace, device: str, repeat: int) -> dict:
    from tasks import models

    started = time.perf_counter()
    loaded = models.load_pipeline(_engine(modality).name, "full")
    cold = time.perf_counter() - started
    models._loaded.clear()  # load again: libraries imported, files in the page cache
    _free(device)
    started = time.perf_counter()
    loaded = models.load_pipeline(_engine(modality).name, "full")
    warm = time.perf_counter() - started

    runs = []
    for i in range(repeat + 1):  # the first run pays for kernel selection and warm-up: not counted
        job = _job(modality, seed=1000 + i, **sizes.get(modality, {}))
        with GPUMemory(device) as memory:
            made = _generate(modality, job, workspace)
        runs.append((made.generate_seconds, memory.peak_gib))
    seconds = statistics.median(s for s, _ in runs[1:])
    return {
        "steps": job.steps,
        "scheduler": job.scheduler,
        "size": _size(job),
        "memory_policy": loaded.memory,
        "seconds": seconds,
        "steps_per_s": job.steps / seconds,
        "peak_gpu_gib": max(m for _, m in runs),
        "load_cold_s": cold,
        "load_warm_s": warm,
    }


def _size(job) -> str:
    p = job.params
    if "duration" in p:
        return f"{p['duration']:g} s"
    frames = f", {p['frames']} frames" if "frames" in p else ""
    return f"{p['width']}x{p['height']}{frames}"


def measure_bundle(sizes: dict, workspace, device: str) -> dict:
    """The three generations one after another, then in three threads at once, on one device."""
    jobs = {m: _job(m, seed=2000, **sizes.get(m, {})) for m in ARCH_FOLDER}
    started = time.perf_counter()
    for m, job in jobs.items():
        _generate(m, job, workspace)
    sequential = time.perf_counter() - started

    jobs = {m: _job(m, seed=3000, **sizes.get(m, {})) for m in ARCH_FOLDER}
    threads = [threading.Thread(target=_generate, args=(m, job, workspace)) for m, job in jobs.items()]
    started = time.perf_counter()
    [t.start() for t in threads]
    [t.join() for t in threads]
    concurrent = time.perf_counter() - started
    return {"sequential_s": sequential, "concurrent_s": concurrent}


def measure_baseline(folders: dict[str, str], sizes: dict, device: str, dtype) -> dict:
    """The seed notebook's way: fresh loads, published schedulers, default steps, one after another."""
    import diffusers
    import torch

    per = {}
    started_all = time.perf_counter()
    for modality, folder in folders.items():
        started = time.perf_counter()
        cls = getattr(diffusers, _engine(modality).pipeline_class)
        pipe = cls.from_pretrained(folder, dtype=dtype).to(device)
        scheduler, extra = BASELINE_SCHEDULER[modality]
        pipe.scheduler = getattr(diffusers, scheduler).from_config(pipe.scheduler.config, **extra)
        pipe.set_progress_bar_config(disable=True)
        job = _job(modality, seed=4000, **sizes.get(modality, {}))
        args = {"prompt": job.prompt, "negative_prompt": job.negative_prompt, "guidance_scale": job.guidance}
        p = job.params
        if "duration" in p:
            args["audio_length_in_s"] = p["duration"]
        else:
            args |= {"width": p["width"], "height": p["height"]}
        if "frames" in p:
            args["num_frames"] = p["frames"]
        loaded = time.perf_counter()
        with torch.inference_mode():
            pipe(**args)  # num_inference_steps left at the pipeline's default
        if device == "cuda":
            torch.cuda.synchronize()
        per[modality] = {"load_s": loaded - started, "generate_s": time.perf_counter() - loaded}
        del pipe
        _free(device)
    return {"per_modality": per, "total_s": time.perf_counter() - started_all}


def _free(device: str) -> None:
    import gc

    gc.collect()
    if device == "cuda":
        import torch

        torch.cuda.empty_cache()


def machine(device: str) -> str:
    import torch

    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        return f"{props.name}, {props.total_memory / 2**30:.0f} GiB; torch {torch.__version__}, CUDA {torch.version.cuda}"
    return f"CPU ({os.cpu_count()} cores); torch {torch.__version__}"


def markdown(result: dict) -> str:
    lines = ["| role | size | steps | seconds | steps/s | peak GPU GiB | load cold s | load warm s | memory |"]
    lines.append("|---|---|---:|---:|---:|---:|---:|---:|---|")
    for m, r in result["roles"].items():
        lines.append(
            f"| {m} | {r['size']} | {r['steps']} ({r['scheduler']}) | {r['seconds']:.2f} | {r['steps_per_s']:.1f} "
            f"| {r['peak_gpu_gib']:.1f} | {r['load_cold_s']:.1f} | {r['load_warm_s']:.1f} | {r['memory_policy']} |"
        )
    b, base = result["bundle"], result["baseline"]
    slowest = max(r["seconds"] for r in result["roles"].values())
    lines += [
        "",
        f"Three generations on one device: one after another {b['sequential_s']:.2f} s, concurrently "
        f"{b['concurrent_s']:.2f} s ({b['concurrent_s'] / slowest:.2f}x the slowest generation alone).",
        "",
        "Baseline, the seed notebook's way (fresh load, published scheduler, default steps, one after another): "
        + "; ".join(f"{m} load {r['load_s']:.1f} s + generate {r['generate_s']:.2f} s" for m, r in base["per_modality"].items())
        + f"; in all {base['total_s']:.1f} s. This path, pipelines warm: {b['concurrent_s']:.2f} s "
        f"({base['total_s'] / b['concurrent_s']:.1f}x faster).",
    ]  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", choices=["real", "tiny"], default="real")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--models-dir", type=Path, help="where the random-weight pipelines are saved (kept)")
    parser.add_argument("--no-update", action="store_true", help="leave BENCHMARKS.md as it is")
    args = parser.parse_args()

    os.environ.setdefault("GENBUNDLE_SAFETY", "off")
    sys.path.insert(0, str(ROOT))
    from tasks.models import runtime
    from tasks.workspace import Workspace

    rt = runtime()
    models_dir = args.models_dir or Path(tempfile.mkdtemp(prefix="genbundle-gpu-models-"))
    folders = prepare_models(args.arch, models_dir, rt.device)
    # Tiny: the tiny profile's sizes and steps, so the check runs in seconds on a CPU.
    sizes = {} if args.arch == "real" else {
        "cover": {"width": 128, "height": 192, "steps": 4}, "sound": {"steps": 4, "duration": 2.0},
        "video": {"width": 64, "height": 32, "frames": 8, "steps": 4},
    }  # fmt: skip
    workspace = Workspace(root=tempfile.mkdtemp(prefix="genbundle-gpu-work-"))
    result = {
        "command": "python -m benchmarks.gpu_models " + " ".join(sys.argv[1:]),
        "machine": machine(rt.device),
        "date": time.strftime("%Y-%m-%d"),
        "arch": args.arch,
        "dtype": rt.dtype_name,
        "roles": {m: measure_modality(m, sizes, workspace, rt.device, args.repeat) for m in folders},
    }
    result["bundle"] = measure_bundle(sizes, workspace, rt.device)
    from tasks import models

    models._loaded.clear()
    _free(rt.device)
    result["baseline"] = measure_baseline(folders, sizes, rt.device, rt.dtype)
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"gpu-{args.arch}-{rt.device}.json"
    (args.out / name).write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(result)
    print(table)
    if args.arch == "real" and rt.device == "cuda" and not args.no_update:
        from benchmarks.cpu_bundle import update_benchmarks_md

        update_benchmarks_md("gpu", f"Machine: {result['machine']}. Date: {result['date']}.\n\n{table}")


if __name__ == "__main__":
    main()
