"""Jobs batched through the pipeline's batch dimension versus one by one, through the generation flow.

    .venv/bin/python -m benchmarks.batch_generation [--count 10] [--rounds 3]

In this process, with its own temporary Prefect server as `genbundle run` has: `count` sd15 cover
jobs (tiny profile, each its own seed: nothing reused) through `generate_jobs` with
GENBUNDLE_GENERATION_BATCH=count (one pipeline call) and with 1 (one call per job), the order
alternating each round so neither always runs on a warmer machine. The pipeline is loaded before
the first timing. Prints the figures as JSON: seconds each way (median of the rounds), their ratio,
the seconds spent inside pipeline calls (the rest is the flow's own work: task runs, files, API) and
pipeline calls each way. Only the cover's generation is timed (no finishing steps); on a CPU the
gain comes from fewer, larger calls, on a GPU it is larger (a small batch leaves it mostly idle).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

SETTING = "GENBUNDLE_GENERATION_BATCH"


def _jobs(count: int, first_seed: int) -> list:
    from tasks.brief import parse_brief
    from tasks.jobs import resolve_job
    from tasks.prompts import expand_prompts

    brief = parse_brief({"title": "Benchmark", "author": "G. Bundle", "models": "tiny"})
    job = resolve_job(brief, "cover", expand_prompts.fn(brief)["cover"])
    return [job.model_copy(update={"seed": first_seed + i}) for i in range(count)]


def _timed(jobs: list, batch: int) -> tuple[float, float, int]:
    """Seconds for the jobs through the flow with this batch size, the seconds inside their pipeline
    calls (the records' shares add back up to each call's time), and the pipeline calls they made."""
    from flows.generate import generate_jobs
    from tasks import generation
    from tasks.settings import get_settings
    from tasks.workspace import Step, Workspace

    os.environ[SETTING] = str(batch)
    get_settings.cache_clear()
    before = generation.pipeline_calls["cover"]
    started = time.perf_counter()
    outcomes = generate_jobs(jobs)
    seconds = time.perf_counter() - started
    if any(o.error for o in outcomes):
        raise RuntimeError(f"a job failed: {next(o.error for o in outcomes if o.error)}")
    workspace = Workspace.for_worker(None)
    in_calls = sum(Step(workspace, "cover", o.key).load(generation.Generated).generate_seconds for o in outcomes)
    return seconds, in_calls, generation.pipeline_calls["cover"] - before


def measure(count: int = 10, rounds: int = 3) -> dict:
    """`count` cover jobs batched (one call) versus one by one, `rounds` times each, alternating."""
    from flows.local_prefect import local_prefect

    saved = {k: os.environ.get(k) for k in (SETTING, "GENBUNDLE_OUT")}
    os.environ["GENBUNDLE_OUT"] = tempfile.mkdtemp(prefix="genbundle-batch-bench-")
    seconds: dict[str, list[float]] = {"batched": [], "one_by_one": []}
    in_calls: dict[str, list[float]] = {"batched": [], "one_by_one": []}
    calls: dict[str, int] = {}
    seed = 1000
    try:
        with local_prefect() as server:
            if server:
                server.wait_ready()
            _timed(_jobs(1, seed), 1)  # loads (and on a fresh machine builds) the pipeline; not counted
            for r in range(rounds):
                order = [("batched", count), ("one_by_one", 1)][:: 1 if r % 2 == 0 else -1]
                for name, batch in order:
                    seed += count  # seeds of their own: nothing found made before
                    took, computing, calls[name] = _timed(_jobs(count, seed), batch)
                    seconds[name].append(took)
                    in_calls[name].append(computing)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        from tasks.settings import get_settings

        get_settings.cache_clear()
    import torch

    batched, single = statistics.median(seconds["batched"]), statistics.median(seconds["one_by_one"])
    return {
        "jobs": count,
        "rounds": rounds,
        "batched_s": batched,
        "one_by_one_s": single,
        "ratio_one_by_one_to_batched": single / batched,
        "in_calls_batched_s": statistics.median(in_calls["batched"]),
        "in_calls_one_by_one_s": statistics.median(in_calls["one_by_one"]),
        "pipeline_calls_batched": calls["batched"],
        "pipeline_calls_one_by_one": calls["one_by_one"],
        "runs_s": seconds,
        "runs_in_calls_s": in_calls,
        "torch_threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=10, help="cover jobs per run")
    parser.add_argument("--rounds", type=int, default=3, help="runs each way, alternating which goes first")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    result = measure(args.count, args.rounds)
    result["command"] = f"python -m benchmarks.batch_generation --count {args.count} --rounds {args.rounds}"
    result["date"] = time.strftime("%Y-%m-%d")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
