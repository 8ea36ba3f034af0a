"""The real architectures at their real sizes, random weights, through the product's own path.

    python -m benchmarks.gpu_models [--arch real|tiny] [--engine NAME ...] [--out DIR] [--no-update]

Speed does not depend on weight values, so each engine's pipeline is built from its published
configs (benchmarks/configs/<engine.architecture>/, see SOURCES.md) with random weights, saved in
the runtime precision, and then used exactly as `--models full` uses a local folder: `load_pipeline`
(with the fast path of tasks/acceleration.py) and the generation task itself. Figures per engine,
at the full profile's default sizes and steps: seconds, denoising steps per second, peak GPU
memory, load time cold (first load in the process) and warm (again, files cached); then the seed
engines' three generations one after another and concurrently on one GPU; and the baseline, the
seed notebook's way: each pipeline loaded fresh with `from_pretrained(..., torch_dtype=float16)
.to("cuda")`, its published default scheduler and the pipeline's default step count, in turn.

`--arch tiny` runs the same measurements on the tiny pipelines at the tiny profile's sizes: a quick check
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
# The seed notebook's way: the schedulers the seed models were published with, and each pipeline's
# default number of steps (StableDiffusion 50, AudioLDM 10, TextToVideoSD 50).
BASELINE_SCHEDULER = {
    "cover": ("PNDMScheduler", {"skip_prk_steps": True}),
    "sound": ("DDIMScheduler", {}),
    "video": ("DDIMScheduler", {}),
}


def measured_engines() -> list:
    """Every registered engine with a published architecture in benchmarks/configs/."""
    from tasks.engines import all_engines

    return [e for e in all_engines().values() if e.architecture]


def published_parameters(engine) -> dict[str, int]:
    return json.loads((CONFIGS / engine.architecture / "parameters.json").read_text())


def build_real_size(engine, device: str, dtype):
    """The engine's pipeline class with its published architecture and random weights: each component
    with a config in its folder built from that config, the rest (tokenizers, scheduler) from the tiny build."""
    import diffusers
    import torch

    torch.manual_seed(0)
    tiny = engine.build_tiny()
    parts = {}
    with torch.device(device):
        for path in sorted((CONFIGS / engine.architecture).glob("*.json")):
            if path.stem == "parameters":
                continue
            cls, config = type(tiny.components[path.stem]), json.loads(path.read_text())
            if issubclass(cls, diffusers.ModelMixin):
                parts[path.stem] = cls.from_config(config)
            else:  # a transformers model
                parts[path.stem] = cls(cls.config_class.from_dict(config))
    pipe = type(tiny)(**(tiny.components | parts))
    return pipe.to(dtype=dtype) if dtype else pipe


def prepare_models(arch: str, folder: Path, device: str, engines: list) -> dict[str, str]:
    """Save each engine's pipeline once to `folder`; returns engine -> folder, also set as its full weights."""
    import torch

    from tasks.models import model_source, runtime
    from tasks.settings import get_settings

    found = {}
    for engine in engines:
        if arch == "tiny":
            found[engine.name] = model_source(engine.name, "tiny")
        else:
            target = folder / engine.name
            if not (target / "model_index.json").is_file():
                build_real_size(engine, device, runtime().dtype).save_pretrained(target)
                torch.cuda.empty_cache() if device == "cuda" else None
            found[engine.name] = str(target)
    os.environ["GENBUNDLE_WEIGHTS"] = json.dumps(found)
    get_settings.cache_clear()  # read the model folders just set
    return found


def _job(engine, seed: int, arch: str):
    """The engine's job at the full profile's defaults (`--arch real`) or the tiny profile's (`--arch tiny`)."""
    from tasks.brief import parse_brief
    from tasks.jobs import resolve_job
    from tasks.prompts import expand_prompts

    data = {"title": "Benchmark", "author": "G. Bundle", "models": "full", "seed": seed}
    data[engine.role] = {"engine": engine.name}
    if arch == "tiny":
        data[engine.role] |= engine.defaults["tiny"]
    brief = parse_brief(data)
    return resolve_job(brief, engine.role, expand_prompts.fn(brief)[engine.role])


def _generate(job, workspace):
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


def measure_engine(engine, arch: str, workspace, device: str, repeat: int) -> dict:
    from tasks import models

    started = time.perf_counter()
    loaded = models.load_pipeline(engine.name, "full")
    cold = time.perf_counter() - started
    models._loaded.clear()  # load again: libraries imported, files in the page cache
    _free(device)
    started = time.perf_counter()
    loaded = models.load_pipeline(engine.name, "full")
    warm = time.perf_counter() - started

    runs = []
    for i in range(repeat + 1):  # the first run pays for kernel selection and warm-up: not counted
        job = _job(engine, 1000 + i, arch)
        with GPUMemory(device) as memory:
            made = _generate(job, workspace)
        runs.append((made.generate_seconds, memory.peak_gib))
    seconds = statistics.median(s for s, _ in runs[1:])
    result = {
        "role": engine.role,
        "steps": job.steps,
        "scheduler": job.scheduler,
        "size": _size(job),
        "parameters": sum(published_parameters(engine).values()),
        "memory_policy": loaded.memory,
        "seconds": seconds,
        "steps_per_s": job.steps / seconds,
        "peak_gpu_gib": max(m for _, m in runs),
        "load_cold_s": cold,
        "load_warm_s": warm,
    }
    models._loaded.clear()  # one engine on the GPU at a time
    _free(device)
    return result


def _size(job) -> str:
    p = job.params
    if "duration" in p:
        return f"{p['duration']:g} s"
    frames = f", {p['frames']} frames" if "frames" in p else ""
    return f"{p['width']}x{p['height']}{frames}"


def measure_bundle(arch: str, workspace) -> dict:
    """The seed engines' three generations one after another, then in three threads at once, on one device."""
    from tasks.engines import ROLES, default_engine

    jobs = [_job(default_engine(role), 2000, arch) for role in ROLES]
    started = time.perf_counter()
    for job in jobs:
        _generate(job, workspace)
    sequential = time.perf_counter() - started

    jobs = [_job(default_engine(role), 3000, arch) for role in ROLES]
    threads = [threading.Thread(target=_generate, args=(job, workspace)) for job in jobs]
    started = time.perf_counter()
    [t.start() for t in threads]
    [t.join() for t in threads]
    concurrent = time.perf_counter() - started
    return {"sequential_s": sequential, "concurrent_s": concurrent}


def measure_baseline(folders: dict[str, str], arch: str, device: str, dtype) -> dict:
    """The seed notebook's way for the seed engines: fresh loads, published schedulers, default steps, in turn."""
    import diffusers
    import torch

    from tasks.engines import ROLES, default_engine

    per = {}
    started_all = time.perf_counter()
    for role in ROLES:
        engine = default_engine(role)
        started = time.perf_counter()
        cls = getattr(diffusers, engine.pipeline_class)
        pipe = cls.from_pretrained(folders[engine.name], dtype=dtype).to(device)
        scheduler, extra = BASELINE_SCHEDULER[role]
        pipe.scheduler = getattr(diffusers, scheduler).from_config(pipe.scheduler.config, **extra)
        pipe.set_progress_bar_config(disable=True)
        job = _job(engine, 4000, arch)
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
        per[role] = {"load_s": loaded - started, "generate_s": time.perf_counter() - loaded}
        del pipe
        _free(device)
    return {"per_role": per, "total_s": time.perf_counter() - started_all}


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
        return (
            f"{props.name}, {props.total_memory / 2**30:.0f} GiB; torch {torch.__version__}, CUDA {torch.version.cuda}"
        )
    return f"CPU ({os.cpu_count()} cores); torch {torch.__version__}"


def markdown(result: dict) -> str:
    lines = [
        "| engine | role | parameters | size | steps | seconds | steps/s | peak GPU GiB | load cold s | load warm s | memory |"
    ]
    lines.append("|---|---|---:|---|---:|---:|---:|---:|---:|---:|---|")
    for name, r in result["engines"].items():
        lines.append(
            f"| {name} | {r['role']} | {r['parameters'] / 1e9:.2f} B | {r['size']} | {r['steps']} ({r['scheduler']}) "
            f"| {r['seconds']:.2f} | {r['steps_per_s']:.1f} | {r['peak_gpu_gib']:.1f} | {r['load_cold_s']:.1f} "
            f"| {r['load_warm_s']:.1f} | {r['memory_policy']} |"
        )
    b, base = result["bundle"], result["baseline"]
    slowest = max(result["engines"][default]["seconds"] for default in result["seed_engines"])
    lines += [
        "",
        f"Three generations on one device: one after another {b['sequential_s']:.2f} s, concurrently "
        f"{b['concurrent_s']:.2f} s ({b['concurrent_s'] / slowest:.2f}x the slowest generation alone).",
        "",
        "Baseline, the seed notebook's way (fresh load, published scheduler, default steps, one after another): "
        + "; ".join(f"{m} load {r['load_s']:.1f} s + generate {r['generate_s']:.2f} s" for m, r in base["per_role"].items())
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
    parser.add_argument(
        "--engine", action="append", help="measure only these engines (repeatable; seed engines always)"
    )
    args = parser.parse_args()

    os.environ.setdefault("GENBUNDLE_SAFETY", "off")
    sys.path.insert(0, str(ROOT))
    from tasks.engines import ROLES, default_engine
    from tasks.models import runtime
    from tasks.workspace import Workspace

    rt = runtime()
    seeds = [default_engine(role) for role in ROLES]
    engines = [e for e in measured_engines() if e in seeds or not args.engine or e.name in args.engine]
    models_dir = args.models_dir or Path(tempfile.mkdtemp(prefix="genbundle-gpu-models-"))
    folders = prepare_models(args.arch, models_dir, rt.device, engines)
    workspace = Workspace(root=tempfile.mkdtemp(prefix="genbundle-gpu-work-"))
    result = {
        "command": "python -m benchmarks.gpu_models " + " ".join(sys.argv[1:]),
        "machine": machine(rt.device),
        "date": time.strftime("%Y-%m-%d"),
        "arch": args.arch,
        "dtype": rt.dtype_name,
        "seed_engines": [e.name for e in seeds],
        "engines": {e.name: measure_engine(e, args.arch, workspace, rt.device, args.repeat) for e in engines},
    }
    result["bundle"] = measure_bundle(args.arch, workspace)
    from tasks import models

    models._loaded.clear()
    _free(rt.device)
    result["baseline"] = measure_baseline(folders, args.arch, rt.device, rt.dtype)
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
