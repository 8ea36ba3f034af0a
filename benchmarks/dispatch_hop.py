"""One dispatch hop with no work in it: what handing a job to another process costs through Prefect.

    .venv/bin/python -m benchmarks.dispatch_hop [--rounds 10] [--database postgres|sqlite]

On a Prefect server of its own (benchmarks/dispatch.Stack), alternating, each timed until its result
is back: a generation run with no jobs through a warm worker (`genbundle worker`, the real
`generate/gpu-image` deployment: what a bundle pays per role on top of its generations), and an
empty task through a Prefect task worker (`.delay()`, `prefect.task_worker.serve`: the alternative
the README weighs for warm workers). The figures go into BENCHMARKS.md by hand.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from prefect import task

from benchmarks.dispatch import DATABASES, Stack, trigger_and_wait


@task
def add_one(x: int) -> int:
    return x + 1


def run_hop() -> float:
    """Seconds from creating a generation run with no jobs to seeing it Completed."""
    return trigger_and_wait("generate/gpu-image", {"jobs": []})


def task_hop() -> float:
    """Seconds from `.delay()` to the task worker's result read back (from result storage)."""
    started = time.perf_counter()
    if add_one.delay(1).result(timeout=60) != 2:
        raise RuntimeError("the task worker returned a wrong result")
    return time.perf_counter() - started


def measure(rounds: int) -> None:
    """In a process started with the stack's environment (Prefect reads its settings on import)."""
    run_hop(), task_hop()  # the first of each: imports, connections, the flow loaded, the worker subscribed
    hops = {"generation run, warm worker": [], "task, task worker": []}
    for _ in range(rounds):
        hops["generation run, warm worker"].append(run_hop())
        hops["task, task worker"].append(task_hop())
    for name, seconds in hops.items():
        print(f"- {name}: median {statistics.median(seconds):.3f} s ({', '.join(f'{s:.2f}' for s in seconds)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--database", choices=DATABASES, default="postgres")
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--task-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.task_worker:
        from prefect.task_worker import serve

        return serve(add_one)
    if args.measure:
        return measure(args.rounds)
    stack = Stack(Path(tempfile.mkdtemp(prefix="genbundle-hop-")), args.database)
    # One PREFECT_HOME, so one local result storage: a task worker reads its parameters from result
    # storage and writes its result there (across machines that would have to be a shared block).
    env = stack.env | {"PREFECT_LOGGING_LEVEL": "WARNING"}
    try:
        stack.spawn("warm-gpu-image", "flows.cli", "worker", "--pool", "gpu-image")
        stack.spawn("task-worker", "benchmarks.dispatch_hop", "--task-worker")
        command = [sys.executable, "-m", "benchmarks.dispatch_hop", "--measure", "--rounds", str(args.rounds)]
        measured = subprocess.run(command, env=env, capture_output=True, text=True)
    finally:
        stack.close()
    if measured.returncode:
        raise SystemExit(f"the measurement failed: {measured.stderr[-2000:]}")
    print(f"One hop, no work, Prefect server on {DATABASES[args.database]}, {args.rounds} rounds alternating:")
    print(measured.stdout.strip())


if __name__ == "__main__":
    main()
