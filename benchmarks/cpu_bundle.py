"""The tiny profile on the CPU: what a bundle costs, measured the same way every time.

    .venv/bin/python -m benchmarks.cpu_bundle [--repeat 3] [--batch 20] [--no-update]

Figures (JSON in benchmarks/results/cpu-tiny.json, a markdown table in BENCHMARKS.md):
- the first bundle on a fresh machine: a new process, tiny models built, Prefect database created;
- a cold bundle: a new `genbundle run` process (interpreter, imports, Prefect start, model loads);
- in one process: the first bundle (pipelines loaded), then warm bundles through the flow and the
  same work as plain functions (benchmarks/plain_bundle.py): their difference is Prefect's cost;
- each stage's time in the warm bundles; a batch through the batch flow (seconds per bundle);
- peak memory (maximum resident set) of each process.
Every bundle uses a new seed, so nothing is reused from an earlier one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
TITLE = {"title": "Benchmark", "author": "G. Bundle"}


def timed_process(args: list[str], env: dict) -> tuple[float, float, str]:
    """Run a command; (wall seconds, its peak resident MiB, stdout). Raises when it fails."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(args, env=env, stdout=out, stderr=err, text=True, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)  # the child's own resource use, not all children's
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        if proc.returncode:
            raise RuntimeError(f"{' '.join(args[:3])} exited {proc.returncode}: {err.read()[-2000:]}")
        return wall, usage.ru_maxrss / 1024, out.read()


def run_cold(home: Path, seeds: list[int]) -> dict:
    """New processes of `genbundle run`: the very first one on a fresh machine, then cold ones."""
    env = os.environ | {
        "PREFECT_HOME": str(home / "prefect"),
        "GENBUNDLE_MODEL_CACHE": str(home / "models"),
        "GENBUNDLE_OUT": str(home / "bundles"),
    }
    command = [str(Path(sys.executable).with_name("genbundle")), "run", "--title", TITLE["title"]]
    command += ["--author", TITLE["author"]]
    first = timed_process([*command, "--seed", str(seeds[0])], env)
    cold = [timed_process([*command, "--seed", str(s)], env) for s in seeds[1:]]
    return {
        "first_ever_s": first[0],
        "first_ever_peak_mib": first[1],
        "cold_s": [c[0] for c in cold],
        "cold_peak_mib": max(c[1] for c in cold),
    }


def in_process(home: Path, seeds: list[int], batch: int) -> dict:
    """Run `--worker` in a new process (models already built) and return what it measured."""
    env = os.environ | {
        "PREFECT_HOME": str(home / "prefect"),
        "GENBUNDLE_MODEL_CACHE": str(home / "models"),
        "PREFECT_LOGGING_LEVEL": "WARNING",
    }
    args = [sys.executable, "-m", "benchmarks.cpu_bundle", "--worker", str(home / "worker"), "--batch", str(batch)]
    wall, peak, out = timed_process([*args, "--seeds", ",".join(map(str, seeds))], env)
    return json.loads(out.strip().splitlines()[-1]) | {"process_s": wall, "process_peak_mib": peak}


def worker(folder: Path, seeds: list[int], batch: int) -> dict:
    """In this process: first bundle, warm flow and plain bundles alternating, then a batch."""
    from benchmarks.plain_bundle import plain_bundle
    from flows.batch import asset_bundle_batch
    from flows.bundle import asset_bundle
    from flows.local_prefect import local_prefect
    from tasks import progress
    from tasks.brief import parse_brief

    stages: dict[str, list[float]] = {}
    recording = [False]

    def record(stage: progress.Stage) -> None:
        if recording[0] and stage.status == "done" and stage.detail != "reused":
            stages.setdefault(stage.name, []).append(stage.seconds)

    progress.add_listener(record)

    def brief(seed: int):
        return parse_brief(TITLE | {"seed": seed})

    def timed(make, seed: int) -> float:
        started = time.perf_counter()
        make(brief(seed), out=str(folder / "bundles"))
        return time.perf_counter() - started

    with local_prefect() as server:  # as `genbundle run` does: its own server, heartbeats off
        if server:
            server.wait_ready()
        first = timed(asset_bundle, seeds[0])
        recording[0] = True
        flow_s, plain_s = [], []
        for i, seed in enumerate(seeds[1:]):
            # Alternate which goes first, so neither always runs on a warmer machine.
            order = [(asset_bundle, flow_s, 1), (plain_bundle, plain_s, 2)][:: 1 if i % 2 == 0 else -1]
            for make, into, kind in order:
                into.append(timed(make, seed * 10 + kind))  # a seed of its own: nothing reused
        recording[0] = False

        briefs_file = folder / "briefs.jsonl"
        first_batch_seed = 10_000 + max(seeds)
        briefs_file.write_text("".join(json.dumps(TITLE | {"seed": first_batch_seed + i}) + "\n" for i in range(batch)))
        started = time.perf_counter()
        state = asset_bundle_batch(str(briefs_file), out=str(folder / "bundles"), return_state=True)
        batch_s = time.perf_counter() - started
        report = state.result(raise_on_failure=False)
    import resource

    return {
        "first_in_process_s": first,
        "warm_flow_s": flow_s,
        "warm_plain_s": plain_s,
        "stages_s": {name: statistics.median(v) for name, v in stages.items()},
        "batch_bundles": batch,
        "batch_done": sum(r["status"] == "done" for r in report) if isinstance(report, list) else 0,
        "batch_s": batch_s,
        "worker_peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def machine() -> str:
    import torch

    with open("/proc/cpuinfo") as info:
        cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), "")
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{os.cpu_count()} CPU cores ({cpu or platform.machine()}), {memory:.0f} GiB memory, "
        f"Python {platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} threads)"
    )


def summarise(cold: dict, warm: dict) -> dict:
    flow, plain = statistics.median(warm["warm_flow_s"]), statistics.median(warm["warm_plain_s"])
    return {
        "first_ever_s": cold["first_ever_s"],
        "cold_bundle_s": statistics.median(cold["cold_s"]),
        "first_in_process_s": warm["first_in_process_s"],
        "warm_bundle_flow_s": flow,
        "warm_bundle_plain_s": plain,
        "prefect_overhead_s": flow - plain,
        "prefect_overhead_ratio": flow / plain,
        "batch_s_per_bundle": warm["batch_s"] / warm["batch_bundles"],
        "peak_mib": max(cold["first_ever_peak_mib"], cold["cold_peak_mib"], warm["process_peak_mib"]),
    }


def markdown(result: dict) -> str:
    s, runs = result["summary"], result["runs"]
    rows = [
        ("first bundle on a fresh machine (new process, models built, database created)", s["first_ever_s"], ""),
        ("cold bundle: a new `genbundle run` process", s["cold_bundle_s"], "under 20 s"),
        ("first bundle in a process (pipelines loaded)", s["first_in_process_s"], ""),
        ("warm bundle through the flow", s["warm_bundle_flow_s"], "under 3 s"),
        ("warm bundle as plain functions", s["warm_bundle_plain_s"], ""),
        ("Prefect's cost per bundle (flow minus plain)", s["prefect_overhead_s"], "under 0.3 s"),
        (f"batch of {runs['warm']['batch_bundles']}, per bundle", s["batch_s_per_bundle"], ""),
    ]
    lines = ["| measure | seconds | target |", "|---|---:|---|"]
    lines += [f"| {name} | {value:.2f} | {target} |" for name, value, target in rows]
    lines.append(f"| flow / plain ratio | {s['prefect_overhead_ratio']:.2f}x | |")
    lines.append(f"| peak memory (largest process) | {s['peak_mib']:.0f} MiB | |")
    lines += ["", "Stages of the warm bundles (median seconds; the three generations run concurrently):", ""]
    lines += ["| stage | seconds |", "|---|---:|"]
    lines += [f"| {name} | {sec:.3f} |" for name, sec in runs["warm"]["stages_s"].items()]
    cold = ", ".join(f"{c:.1f}" for c in runs["cold"]["cold_s"])
    flows = ", ".join(f"{c:.2f}" for c in runs["warm"]["warm_flow_s"])
    plains = ", ".join(f"{c:.2f}" for c in runs["warm"]["warm_plain_s"])
    lines += ["", f"Each run (s): cold {cold}; warm flow {flows}; warm plain {plains}; "]
    lines[-1] += f"batch {runs['warm']['batch_done']}/{runs['warm']['batch_bundles']} made in {runs['warm']['batch_s']:.1f}."
    return "\n".join(lines)


def update_benchmarks_md(section: str, body: str) -> None:
    """Replace the text between `<!-- section -->` and `<!-- /section -->` in BENCHMARKS.md."""
    path = ROOT / "BENCHMARKS.md"
    text = path.read_text(encoding="utf-8")
    start, end = f"<!-- {section} -->", f"<!-- /{section} -->"
    if start not in text or end not in text:
        raise SystemExit(f"BENCHMARKS.md has no {start} ... {end} markers")
    head, rest = text.split(start, 1)
    path.write_text(f"{head}{start}\n{body}\n{end}{rest.split(end, 1)[1]}", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="cold processes and warm bundles of each kind")
    parser.add_argument("--batch", type=int, default=20, help="briefs in the batch")
    parser.add_argument("--no-update", action="store_true", help="leave BENCHMARKS.md as it is")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--seeds", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        print(json.dumps(worker(args.worker, [int(s) for s in args.seeds.split(",")], args.batch)))
        return

    home = Path(tempfile.mkdtemp(prefix="genbundle-bench-"))
    cold = run_cold(home, seeds=list(range(1, args.repeat + 2)))
    warm = in_process(home, seeds=list(range(100, 100 + args.repeat + 1)), batch=args.batch)
    result = {
        "command": "python -m benchmarks.cpu_bundle " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d"),
        "summary": summarise(cold, warm),
        "runs": {"cold": cold, "warm": warm},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "cpu-tiny.json").write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(result)
    print(table)
    if not args.no_update:
        update_benchmarks_md("cpu-tiny", f"Machine: {result['machine']}. Date: {result['date']}.\n\n{table}")


if __name__ == "__main__":
    main()
