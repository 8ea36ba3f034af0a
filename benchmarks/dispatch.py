"""Dispatched bundles on a real Prefect server: warm workers, process workers, the in-process bundle.

    .venv/bin/python -m benchmarks.dispatch [--bundles 10] [--process-bundles 2] [--batch 10] [--database sqlite|postgres]
                                              [--no-update]

One run on this machine, tiny models, a `prefect server` of its own, the workers sharing one
GENBUNDLE_OUT (no S3: the handover through a bucket is tests/test_dispatch_machines.py's). In order:
1. the in-process warm bundle: `asset_bundle` called in this process against the same server, as
   `genbundle run` calls it, after one bundle that loads the models (median of --bundles);
2. warm workers, `genbundle worker`, for every pool (the cpu pool too: a bundle run in a fresh
   process would cost a cold start each): --bundles dispatched bundles one after another, each
   timed from the trigger to Completed; the models each worker loaded, from its log;
   for the warm bundles of 1 and 2, the CPU seconds per bundle of every process (this one, the
   server, the database, the workers), above what they use idle;
3. a dispatched batch of --batch briefs (one generation run per role for all of them) against
   the same number of dispatched bundles one by one (from 2); and, in this process before the
   workers start, --batch cover jobs through one pipeline call against one call each
   (benchmarks/batch_generation.py);
4. process workers (`prefect worker start --type process`, a fresh process per flow run) for
   every pool: --process-bundles dispatched bundles.
Every bundle has its own seed: nothing is reused. Prints the figures and their ratios; JSON in
benchmarks/results/dispatch.json and a table in BENCHMARKS.md (between `<!-- dispatch -->` markers);
with `--database postgres` (the server on a throwaway PostgreSQL cluster, as in the compose stack),
dispatch-postgres.json and `<!-- dispatch-postgres -->`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from benchmarks.batch_generation import measure as measure_pipeline_batch
from benchmarks.cpu_bundle import machine, update_benchmarks_md
from flows.local_prefect import free_port, local_prefect

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
POOLS = ("cpu", "gpu-image", "gpu-audio", "gpu-video")
LOADED = re.compile(r"loaded (\S+) pipeline")
DATABASES = {"sqlite": "SQLite (Prefect's default)", "postgres": "PostgreSQL (as in the compose stack)"}


class Postgres:
    """A throwaway PostgreSQL cluster on loopback (the compose stack's database), stopped by close().
    Run as the `postgres` user when this is root: PostgreSQL refuses to run as root."""

    def __init__(self):
        self.folder = folder = Path(tempfile.mkdtemp(prefix="genbundle-postgres-"))  # its own: the user must reach it
        self.data, self.port = folder / "pgdata", free_port()
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_user:
            shutil.chown(folder, "postgres")
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "prefect")
        options = f"-p {self.port} -k {folder} -c listen_addresses=127.0.0.1 -c max_connections=200"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(folder / "postgres.log"), "-w", "start")
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "prefect", "prefect")
        self.url = f"postgresql+asyncpg://prefect@127.0.0.1:{self.port}/prefect"

    def _run(self, *args: str) -> None:
        subprocess.run([*self.as_user, *args], check=True, capture_output=True, text=True)

    def close(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        shutil.rmtree(self.folder, ignore_errors=True)


class Stack:
    """A Prefect server (on SQLite, or on PostgreSQL) and the workers started against it, all stopped by close()."""

    def __init__(self, home: Path, database: str):
        port = free_port()
        self.home, self.logs = home, home / "logs"
        self.logs.mkdir(parents=True)
        self.postgres = Postgres() if database == "postgres" else None
        database_env = {"PREFECT_API_DATABASE_CONNECTION_URL": self.postgres.url} if self.postgres else {}
        self.env = (
            os.environ
            | database_env
            | {
                "PREFECT_HOME": str(home / "prefect"),
                "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "PREFECT_WORKER_QUERY_SECONDS": "1",  # a worker looks for new runs every second (default 10)
                # SQLite's wait for a locked database before the API answers 503 (10 s by default): on 2 loaded
                # cores a run's creation failed so, as genbundle's temporary server also allows (flows/local_prefect.py).
                "PREFECT_SERVER_DATABASE_TIMEOUT": "60",
                "GENBUNDLE_OUT": str(home / "bundles"),
                "GENBUNDLE_MODEL_CACHE": str(home / "models"),
                "PYTHONPATH": str(ROOT),
            }
        )
        self.procs: dict[str, subprocess.Popen] = {}
        try:
            self.spawn("server", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port))
            _wait(lambda: _healthy(port), 180, "the Prefect server")
            deployed = subprocess.run([sys.executable, "-m", "flows.cli", "deploy"], env=self.env, cwd=ROOT,
                                      capture_output=True, text=True)  # fmt: skip
            if deployed.returncode:
                raise RuntimeError(f"genbundle deploy failed: {deployed.stderr[-2000:]}")
        except BaseException:
            self.close()  # the server and the database it started on: nothing left running
            raise

    def spawn(self, name: str, *args: str) -> None:
        with open(self.logs / f"{name}.log", "w") as log:
            self.procs[name] = subprocess.Popen([sys.executable, "-m", *args], env=self.env, cwd=ROOT,
                                                stdout=log, stderr=subprocess.STDOUT)  # fmt: skip

    def stop(self, name: str) -> None:
        proc = self.procs.pop(name)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def close(self) -> None:
        for name in sorted(self.procs, key=lambda n: n == "server"):  # the server last
            self.stop(name)
        if self.postgres:
            self.postgres.close()


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.5)


def brief(seed: int) -> dict:
    return {"title": "Dispatch Benchmark", "author": "G. Bundle", "seed": seed}


def trigger_and_wait(deployment: str, parameters: dict) -> float:
    """Seconds from creating a run of `deployment` to seeing it Completed: its end is seen on Prefect's event
    stream (wait_for_flow_run), as it happens, without reading the run from the API meanwhile, which would
    load the server the bundle runs on."""
    from prefect.deployments import run_deployment
    from prefect.flow_runs import wait_for_flow_run

    started = time.perf_counter()
    run = run_deployment(deployment, parameters=parameters, timeout=0)
    run = asyncio.run(wait_for_flow_run(run.id, timeout=None))
    seconds = time.perf_counter() - started
    if not run.state.is_completed():
        raise RuntimeError(f"{deployment} run {run.name} ended {run.state.name}: {run.state.message}")
    return seconds


def in_process_bundles(seeds: list[int]) -> list[float]:
    """The first bundle (models loaded) and then warm ones, called in this process with the settings
    `genbundle run` gives its runs (local_prefect: flow-run heartbeats off). With Prefect's default
    heartbeats on, a flow call returns only once its heartbeat thread, which sleeps in 1 s steps, has
    ended: up to 1 s after the run is Completed, which is where a dispatched bundle is timed."""
    from flows.bundle import asset_bundle
    from tasks.brief import parse_brief

    times = []
    with local_prefect():  # the stack's server is configured: no temporary one
        for seed in seeds:
            started = time.perf_counter()
            asset_bundle(parse_brief(brief(seed)))
            times.append(time.perf_counter() - started)
    return times


IDLE_S = 10.0  # how long the stack's idle CPU use is measured before a metered set of bundles
SETTLE_S = 3.0  # after one: what the server and workers still do for its bundles (events stored) counts


def cpu_seconds(stack: Stack) -> float:
    """CPU time used so far by this process, the stack's processes and their children, and the database."""
    import psutil

    roots = [os.getpid(), *(proc.pid for proc in stack.procs.values())]
    if stack.postgres:  # started by pg_ctl: not a child of anything here
        roots.append(int((stack.postgres.data / "postmaster.pid").read_text().split()[0]))
    processes = {}  # by pid: the stack's processes are this one's children too
    for pid in roots:
        try:
            root = psutil.Process(pid)
            processes |= {p.pid: p for p in [root, *root.children(recursive=True)]}
        except psutil.Error:
            continue
    total = 0.0
    for process in processes.values():
        try:
            times = process.cpu_times()
        except psutil.Error:  # ended meanwhile
            continue
        total += times.user + times.system
    return total


def metered(stack: Stack, make_bundles) -> tuple[list[float], float]:
    """`make_bundles()` returns its bundles' seconds; returns them and the CPU seconds per bundle that all
    the processes spent on them, above what the stack spends idle (its workers poll every second)."""
    before = cpu_seconds(stack)
    time.sleep(IDLE_S)
    idle_rate = (cpu_seconds(stack) - before) / IDLE_S
    started, before = time.perf_counter(), cpu_seconds(stack)
    times = make_bundles()
    time.sleep(SETTLE_S)
    used = cpu_seconds(stack) - before - idle_rate * (time.perf_counter() - started)
    return times, used / len(times)


def loads(stack: Stack, workers: list[str]) -> dict[str, dict[str, int]]:
    """Per worker log: how many times each pipeline was loaded."""
    counts = {}
    for name in workers:
        found = LOADED.findall((stack.logs / f"{name}.log").read_text())
        counts[name] = {engine: found.count(engine) for engine in sorted(set(found))}
    return counts


def run(bundles: int, process_bundles: int, batch: int, database: str, home: Path) -> dict:
    stack = Stack(home, database)
    os.environ.update({k: stack.env[k] for k in ("PREFECT_API_URL", "GENBUNDLE_OUT", "GENBUNDLE_MODEL_CACHE")})
    os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"
    seeds = iter(range(1000, 100000))
    try:
        in_process = in_process_bundles([next(seeds)])  # the first: models load
        more, in_process_cpu = metered(stack, lambda: in_process_bundles([next(seeds) for _ in range(bundles)]))
        in_process += more
        pipeline_batch = measure_pipeline_batch(batch)

        warm_workers = [f"warm-{pool}" for pool in POOLS]
        for pool, name in zip(POOLS, warm_workers, strict=True):
            stack.spawn(name, "flows.cli", "worker", "--pool", pool)

        def dispatched(count: int) -> list[float]:
            return [trigger_and_wait("asset-bundle/dispatched", {"brief": brief(next(seeds))}) for _ in range(count)]

        warm = dispatched(1)  # the first: the workers load their models
        more, warm_cpu = metered(stack, lambda: dispatched(bundles - 1))
        warm += more
        warm_loads = loads(stack, warm_workers)

        briefs_file = home / "briefs.jsonl"
        briefs_file.write_text("".join(json.dumps(brief(next(seeds))) + "\n" for _ in range(batch)))
        batch_s = trigger_and_wait(
            "asset-bundle-batch/batch", {"briefs_file": str(briefs_file), "dispatch": True, "max_concurrency": 2}
        )
        for name in warm_workers:
            stack.stop(name)

        for pool in POOLS:
            stack.spawn(f"process-{pool}", "prefect", "worker", "start", "--pool", pool, "--type", "process")
        process = [
            trigger_and_wait("asset-bundle/dispatched", {"brief": brief(next(seeds))}) for _ in range(process_bundles)
        ]
    finally:
        stack.close()
    warm_median = statistics.median(warm[1:]) if len(warm) > 1 else warm[0]
    in_process_median = statistics.median(in_process[1:])
    one_by_one = warm_median * batch  # the same briefs as dispatched bundles, one after another
    return {
        "database": database,
        "bundles": bundles,
        "in_process_first_s": in_process[0],
        "in_process_warm_s": in_process[1:],
        "in_process_warm_median_s": in_process_median,
        "in_process_cpu_s": in_process_cpu,
        "warm_dispatched_cpu_s": warm_cpu,
        "warm_dispatched_s": warm,
        "warm_dispatched_median_s": warm_median,
        "warm_over_in_process": warm_median / in_process_median,
        "warm_worker_loads": warm_loads,
        "batch_briefs": batch,
        "batch_dispatched_s": batch_s,
        "one_by_one_dispatched_s": one_by_one,
        "process_dispatched_s": process,
        "process_dispatched_median_s": statistics.median(process),
        "process_over_warm": statistics.median(process) / warm_median,
        "pipeline_batch": pipeline_batch,
    }


def markdown(r: dict) -> str:
    pb = r["pipeline_batch"]

    def seconds(values):
        return ", ".join(f"{v:.1f}" for v in values)

    loads_line = "; ".join(
        f"{name.removeprefix('warm-')}: " + (", ".join(f"{e} x{n}" for e, n in engines.items()) or "none")
        for name, engines in r["warm_worker_loads"].items()
    )
    return "\n".join([
        f"Machine: {machine()}. Prefect server on {DATABASES[r['database']]}. Date: {time.strftime('%Y-%m-%d')}.",
        "",
        "| measure | seconds | ratio |",
        "|---|---:|---|",
        f"| in-process warm bundle (median of {len(r['in_process_warm_s'])}) | {r['in_process_warm_median_s']:.2f} | 1 |",
        f"| dispatched bundle, warm workers (median of bundles 2-{r['bundles']}) | {r['warm_dispatched_median_s']:.2f} "
        f"| {r['warm_over_in_process']:.2f}x the in-process bundle (target: under 2x) |",
        f"| dispatched bundle, warm workers, the first (models load) | {r['warm_dispatched_s'][0]:.2f} | |",
        f"| dispatched bundle, process workers (median of {len(r['process_dispatched_s'])}) "
        f"| {r['process_dispatched_median_s']:.2f} | {r['process_over_warm']:.1f}x the warm workers |",
        f"| dispatched batch of {r['batch_briefs']} briefs, warm workers | {r['batch_dispatched_s']:.2f} "
        f"| {r['batch_dispatched_s'] / r['one_by_one_dispatched_s']:.2f}x {r['batch_briefs']} bundles one by one "
        f"({r['one_by_one_dispatched_s']:.1f} s: the warm median x {r['batch_briefs']}) |",
        f"| {pb['jobs']} cover jobs through the generation flow, one pipeline call (median of {pb['rounds']}) "
        f"| {pb['batched_s']:.2f} | {pb['ratio_one_by_one_to_batched']:.2f}x faster than one call each "
        f"({pb['one_by_one_s']:.2f} s; {pb['in_calls_batched_s']:.2f} s against {pb['in_calls_one_by_one_s']:.2f} s "
        "inside the pipeline calls) |",
        "",
        f"CPU seconds per warm bundle, every process counted (this one, the server, the database, the workers) "
        f"above their idle use: in-process {r['in_process_cpu_s']:.1f} s, dispatched on warm workers "
        f"{r['warm_dispatched_cpu_s']:.1f} s ({r['warm_dispatched_cpu_s'] / r['in_process_cpu_s']:.1f}x); "
        f"on {os.cpu_count()} cores the dispatched bundle's CPU alone takes at least "
        f"{r['warm_dispatched_cpu_s'] / os.cpu_count():.1f} s.",
        f"Pipelines loaded per warm worker over {r['bundles']} bundles and the batch: {loads_line}.",
        f"Every run: in-process {seconds(r['in_process_warm_s'])}; warm dispatched {seconds(r['warm_dispatched_s'])}; "
        f"process dispatched {seconds(r['process_dispatched_s'])}.",
    ])  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundles", type=int, default=10)
    parser.add_argument("--process-bundles", type=int, default=2)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--database", choices=DATABASES, default="sqlite",
                        help="the server's database: Prefect's default SQLite, or a throwaway PostgreSQL cluster")  # fmt: skip
    parser.add_argument("--no-update", action="store_true", help="leave BENCHMARKS.md as it is")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="genbundle-dispatch-"))
    try:
        result = run(args.bundles, args.process_bundles, args.batch, args.database, home)
    except BaseException:
        print(f"the server's and workers' logs are kept in {home / 'logs'}", file=sys.stderr)
        raise
    shutil.rmtree(home)
    name = "dispatch" if args.database == "sqlite" else f"dispatch-{args.database}"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2))
    table = markdown(result)
    print(table)
    if not args.no_update:
        update_benchmarks_md(name, table)


if __name__ == "__main__":
    main()
