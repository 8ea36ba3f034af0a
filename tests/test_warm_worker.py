"""Warm workers (flows/warm_worker.py): `genbundle worker` runs its pool's flow runs in its own
process, so each pipeline loads once per worker, not once per run. The slow tests run three
dispatched bundles through a real server, a warm worker per GPU pool and a process worker for cpu;
and, on a server of their own, a warm worker's health endpoint and its pool's `env`."""

import json
import os
import time
import urllib.error
import urllib.request
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from conftest import ASSET_COUNT
from test_prefect_server import REPO, _api, _bundles, _ended, _genbundle, _server, _unless_busy, _wait_for

from flows.cli import main
from flows.local_prefect import free_port
from tasks.engines import ROLES, default_engine

GPU_POOLS = {role: r.pool for role, r in ROLES.items()}


def test_worker_flags_reach_the_worker(monkeypatch):
    from flows import warm_worker

    started = []

    async def no_server(pool):
        pass

    async def start(self, *args, **kwargs):
        started.append((self._work_pool_name, self.slots, self.name, kwargs.get("with_healthcheck")))

    monkeypatch.setattr(warm_worker, "_check_pool", no_server)
    monkeypatch.setattr(warm_worker.WarmWorker, "start", start)
    assert main(["worker", "--pool", "gpu-image", "--slots", "3", "--name", "gpu0", "--with-healthcheck"]) == 0
    assert main(["worker", "--pool", "gpu-audio"]) == 0
    assert started[0] == ("gpu-image", 3, "gpu0", True)
    assert started[1][:2] == ("gpu-audio", 1)  # one generation at a time unless told
    assert started[1][3] is False  # no health server unless asked


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["--pool", "gpu-x"], "error: --pool gpu-x: not a genbundle work pool; give one of "),
        (["--pool", "gpu-image", "--slots", "0"], "error: argument --slots: must be 1 or more (got 0)"),
        (["--pool", "gpu-image", "--name", "a/b"], "error: --name 'a/b': give a name without '/' or '%'"),
    ],
)
def test_bad_worker_flags_exit_2_with_one_line(argv, error, capsys):
    assert main(["worker", *argv]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(error), lines


def test_heartbeats_every_30_s_unless_the_operator_chose():
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    from flows.warm_worker import HEARTBEAT_SECONDS, heartbeat_settings

    assert heartbeat_settings() == {PREFECT_FLOWS_HEARTBEAT_FREQUENCY: HEARTBEAT_SECONDS} and HEARTBEAT_SECONDS == 30
    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: 120}):
        assert heartbeat_settings() == {}


def test_runs_in_a_warm_worker_end_without_joining_their_heartbeat_thread(prefect_api, monkeypatch):
    """Prefect's sync engine joins a run's heartbeat thread, which sleeps in 1 s steps, before the run's
    call returns: the worker's slot stayed taken up to 1 s after the run was Completed."""
    import threading
    import types

    import prefect.flow_engine
    from prefect import flow
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    from flows.warm_worker import end_runs_without_heartbeat_join

    heartbeat_threads, joined = [], []

    class Recorded(threading.Thread):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            heartbeat_threads.append(self)

        def join(self, timeout=None):
            joined.append(self)
            super().join(timeout)

    # Only the heartbeat context makes threads in Prefect's flow engine. Both patches are undone after the test.
    monkeypatch.setattr(prefect.flow_engine, "threading", types.SimpleNamespace(Thread=Recorded, Event=threading.Event))
    prefects_own = getattr(prefect.flow_engine._send_heartbeats, "func", prefect.flow_engine._send_heartbeats)
    monkeypatch.setattr(prefect.flow_engine, "_send_heartbeats", prefects_own)

    @flow
    def beating() -> int:
        return 1

    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: 30}):
        assert beating() == 1
        assert len(heartbeat_threads) == 1 and joined == heartbeat_threads  # Prefect's own way
        end_runs_without_heartbeat_join()
        assert beating() == 1
    assert len(heartbeat_threads) == 2 and joined == heartbeat_threads[:1]  # the second run: not joined


def test_pool_env_wins_over_the_workers_own_and_prefect_settings_are_left_out(settings_env):
    from flows.warm_worker import apply_pool_env
    from tasks.settings import get_settings

    settings_env(GENBUNDLE_STORAGE="s3://worker-own/bundles")
    assert get_settings().storage == "s3://worker-own/bundles"
    environ = {"KEEP": "k", "GONE": "g", "GENBUNDLE_STORAGE": "s3://worker-own/bundles"}
    pool = {"GENBUNDLE_STORAGE": "s3://pool/bundles", "AWS_SECRET_ACCESS_KEY": "pool-secret", "GONE": None,
            "PREFECT_API_URL": "http://elsewhere/api"}  # fmt: skip
    applied, left_out = apply_pool_env(pool, environ)
    assert applied == ["AWS_SECRET_ACCESS_KEY", "GENBUNDLE_STORAGE", "GONE"]  # names, sorted; no values
    assert left_out == ["PREFECT_API_URL"]
    assert environ == {"KEEP": "k", "GENBUNDLE_STORAGE": "s3://pool/bundles", "AWS_SECRET_ACCESS_KEY": "pool-secret"}
    applied, _ = apply_pool_env({"GENBUNDLE_STORAGE": "s3://pool/bundles"})  # this process's own environment
    assert os.environ["GENBUNDLE_STORAGE"] == "s3://pool/bundles"
    assert get_settings().storage == "s3://pool/bundles"  # the cached settings were read again


def test_cancel_never_kills_a_process():
    import anyio
    from prefect.exceptions import InfrastructureNotAvailable

    from flows.warm_worker import PID_PREFIX, WarmWorker

    worker = WarmWorker(work_pool_name="gpu-image")
    waiting, running = uuid.uuid4(), uuid.uuid4()
    worker._not_started.add(waiting)
    anyio.run(worker.kill_infrastructure, f"{PID_PREFIX}{waiting}", None)  # not in the engine yet: skipped
    assert worker._cancelled == {waiting}
    for pid in (f"{PID_PREFIX}{running}", "host:1234"):  # in the engine, or no run of this worker
        with pytest.raises(InfrastructureNotAvailable):
            anyio.run(worker.kill_infrastructure, pid, None)


# --- a live server -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def warm_stack(tmp_path_factory):
    """Server + deployments + a warm worker per GPU pool + a process worker for cpu; yields (env, bundles, logs)."""
    from tasks.models import pull_models

    pull_models("tiny", [default_engine(role).name for role in ROLES], log=lambda line: None)  # built, not timed
    home = tmp_path_factory.mktemp("warm-server")
    with _server(
        home, PREFECT_WORKER_QUERY_SECONDS="1", PREFECT_LOGGING_LEVEL="INFO", GENBUNDLE_OUT=str(home / "bundles")
    ) as (env, spawn, logs):
        deployed = _genbundle(env, "deploy")
        assert deployed.returncode == 0, deployed.stderr + deployed.stdout
        for pool in GPU_POOLS.values():
            spawn(f"worker-{pool}", "flows.cli", "worker", "--pool", pool, "--name", f"warm-{pool}")
        spawn("worker-cpu", "prefect", "worker", "start", "--pool", "cpu", "--type", "process")

        def all_online():
            return all(
                any(w["status"] == "ONLINE" for w in _api(env, f"/work_pools/{pool}/workers/filter", {}))
                for pool in ("cpu", *GPU_POOLS.values())
            )

        _wait_for(_unless_busy(all_online), 180, "a worker polling every pool", poll=1)
        yield env, Path(env["GENBUNDLE_OUT"]), logs


def _run_bundle(env: dict, title: str, seed: int) -> tuple[dict, float]:
    """Start asset-bundle/dispatched for a brief and wait for it: (its final state, seconds from trigger)."""
    deployment = _api(env, "/deployments/name/asset-bundle/dispatched")
    brief = {"title": title, "author": "W. Arm", "seed": seed}
    started = time.perf_counter()
    create = _unless_busy(
        lambda: _api(env, f"/deployments/{deployment['id']}/create_flow_run", {"parameters": {"brief": brief}})
    )
    run = _wait_for(create, 60, f"the server to take bundle '{title}'")  # a 503 wrote nothing: asked again
    ended = _wait_for(_ended(env, run["id"]), 600, f"bundle '{title}'", poll=0.5)
    return ended["state"], time.perf_counter() - started


def _heartbeats(env: dict, flow_run_id: str) -> int:
    query = {
        "filter": {
            "event": {"name": ["prefect.flow-run.heartbeat"]},
            "resource": {"id": [f"prefect.flow-run.{flow_run_id}"]},
        }
    }
    return _api(env, "/events/filter", query)["total"]


@pytest.mark.slow
def test_three_bundles_load_each_pipeline_once_per_worker(warm_stack):
    env, out, logs = warm_stack
    seconds = []
    for seed in (1, 2, 3):
        state, took = _run_bundle(env, f"Warm Bundle {seed}", seed)
        assert state["type"] == "COMPLETED", f"{state['message']}\n" + (logs / "worker-cpu.log").read_text()[-3000:]
        seconds.append(took)
    timings = ", ".join(f"bundle {i} {s:.1f} s" for i, s in enumerate(seconds, 1))
    print(f"\nwarm workers, trigger to Completed: {timings}")

    made = _bundles(out)
    for seed in (1, 2, 3):
        assert len(made[f"Warm Bundle {seed}"]["assets"]) == ASSET_COUNT
    for role, pool in GPU_POOLS.items():  # three runs each, one load each: the pipeline stayed loaded
        log = (logs / f"worker-{pool}.log").read_text()
        assert log.count(f"loaded {default_engine(role).name} pipeline (tiny)") == 1, log[-3000:]

    runs = _api(env, "/flow_runs/filter", {"flows": {"name": {"any_": ["generate"]}}})
    assert len(runs) == 3 * len(ROLES)
    for run in runs:  # normal flow runs, executed inside the warm workers, each sending heartbeats
        assert run["state"]["type"] == "COMPLETED", run["state"]
        assert run["infrastructure_pid"].startswith("in-process:"), run["infrastructure_pid"]
        beats = _unless_busy(lambda: _heartbeats(env, run["id"]) >= 1)
        _wait_for(beats, 30, f"a heartbeat event from run {run['name']}")


# --- a warm worker's health endpoint and its pool's env, on a server of its own ----------------

PROBE_FLOW = """
import json, os
from pathlib import Path
from prefect import flow

@flow
def env_probe(out: str) -> None:
    names = ("GENBUNDLE_PROBE_SECRET", "GENBUNDLE_PROBE_OVERRIDE", "GENBUNDLE_PROBE_DEPLOYMENT")
    Path(out).write_text(json.dumps({name: os.environ.get(name) for name in names}))
"""
PROBE_SECRET = "pr0be-s3cret-" + uuid.uuid4().hex  # must never reach a log


@pytest.fixture(scope="module")
def probe_worker(tmp_path_factory):
    """A server; the cpu pool with an `env` default; a probe flow's deployment with an `env` of its
    own; `genbundle worker --pool cpu --with-healthcheck` on a port of its own. Yields (env, health
    URL, worker log, folder)."""
    home = tmp_path_factory.mktemp("warm-probe")
    code = home / "code"
    code.mkdir()
    (code / "probe.py").write_text(PROBE_FLOW)
    template = json.loads((REPO / "deployments" / "pools" / "process.json").read_text())
    template["variables"]["properties"]["env"]["default"] = {
        "GENBUNDLE_PROBE_SECRET": PROBE_SECRET,
        "GENBUNDLE_PROBE_OVERRIDE": "from-pool",
    }
    port = free_port()
    # Polls every 30 s: a run that starts sooner was taken on the server's word that it was scheduled.
    with _server(home, PREFECT_WORKER_QUERY_SECONDS="30", PREFECT_LOGGING_LEVEL="INFO") as (env, spawn, logs):

        def post(path, body):  # a 503 from a busy SQLite server wrote nothing: asked again
            return _wait_for(_unless_busy(lambda: _api(env, path, body)), 60, f"the server to take POST {path}")

        post("/work_pools/", {"name": "cpu", "type": "process", "base_job_template": template})
        flow = post("/flows/", {"name": "env-probe"})
        post("/deployments/", {
            "name": "probe", "flow_id": flow["id"], "entrypoint": "probe.py:env_probe", "work_pool_name": "cpu",
            "pull_steps": [{"prefect.deployments.steps.set_working_directory": {"directory": str(code)}}],
            "job_variables": {"env": {"GENBUNDLE_PROBE_DEPLOYMENT": "from-deployment"}},
        })  # fmt: skip
        spawn(
            "worker-cpu", "flows.cli", "worker", "--pool", "cpu", "--name", "warm-probe", "--with-healthcheck",
            PREFECT_WORKER_WEBSERVER_HOST="127.0.0.1", PREFECT_WORKER_WEBSERVER_PORT=str(port),
            GENBUNDLE_PROBE_OVERRIDE="from-worker",
        )  # fmt: skip
        yield env, f"http://127.0.0.1:{port}/health", logs / "worker-cpu.log", home


def _health(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code
    except OSError:  # not listening yet
        return None


@pytest.mark.slow
def test_health_endpoint_answers_200_while_the_warm_worker_polls(probe_worker):
    env, health, log, _ = probe_worker
    started = time.perf_counter()
    _wait_for(lambda: _health(health) is not None, 60, f"the worker's health server at {health}")
    served = time.perf_counter() - started

    def online():
        return any(w["status"] == "ONLINE" for w in _api(env, "/work_pools/cpu/workers/filter", {}))

    _wait_for(_unless_busy(online), 60, "the warm worker polling the cpu pool", poll=1)
    for _ in range(3):  # and it stays healthy while it polls
        assert _health(health) == 200, log.read_text()[-3000:]
        time.sleep(1)
    print(f"\nhealth endpoint served {served:.1f} s after the worker was spawned; 200 while it polls")


def _start_probe(env: dict, out: Path) -> dict:
    """Start the probe deployment once the warm worker polls; returns the new run."""
    _wait_for(_unless_busy(lambda: _api(env, "/work_pools/cpu/workers/filter", {})), 60, "the warm worker")
    deployment = _api(env, "/deployments/name/env-probe/probe")
    return _wait_for(
        _unless_busy(lambda: _api(env, f"/deployments/{deployment['id']}/create_flow_run", {"parameters": {"out": str(out)}})),
        60, "the server to take the probe run",
    )  # fmt: skip


def _probe_run(env: dict, out: Path) -> dict:
    """Start the probe deployment; its run once it has ended."""
    return _wait_for(_ended(env, _start_probe(env, out)["id"]), 120, "the probe run", poll=0.5)


@pytest.mark.slow
def test_a_run_starts_when_scheduled_not_at_the_next_poll(probe_worker):
    env, _, log, home = probe_worker
    run = _probe_run(env, home / "prompt.json")
    assert run["state"]["type"] == "COMPLETED", log.read_text()[-3000:]
    waited = datetime.fromisoformat(run["start_time"]) - datetime.fromisoformat(run["created"])
    print(f"\nscheduled to started: {waited.total_seconds():.1f} s (the worker polls every 30 s)")
    assert waited < timedelta(seconds=10), log.read_text()[-3000:]


@pytest.mark.slow
def test_a_run_waiting_for_a_busy_slot_starts_when_the_slot_frees(probe_worker):
    """One slot, three runs at once: each starts when the one before has ended, not at the next poll (30 s)."""
    env, _, log, home = probe_worker
    started = [_start_probe(env, home / f"queued-{i}.json") for i in range(3)]
    runs = [_wait_for(_ended(env, run["id"]), 150, "a queued probe run", poll=0.5) for run in started]
    assert all(run["state_type"] == "COMPLETED" for run in runs), log.read_text()[-3000:]
    runs.sort(key=lambda run: run["start_time"])
    gaps = [
        (datetime.fromisoformat(later["start_time"]) - datetime.fromisoformat(earlier["end_time"])).total_seconds()
        for earlier, later in zip(runs, runs[1:])
    ]
    print(f"\nfrom one run's end to the next one's start: {', '.join(f'{g:.1f}' for g in gaps)} s")
    assert max(gaps) < 10, log.read_text()[-3000:]


@pytest.mark.slow
def test_pool_env_reaches_runs_and_only_its_names_reach_the_log(probe_worker):
    env, health, log, home = probe_worker
    out = home / "probe.json"
    run = _probe_run(env, out)
    state = run["state"]
    text = log.read_text()
    assert state["type"] == "COMPLETED", f"{state['message']}\n{text[-3000:]}"
    seen = json.loads(out.read_text())
    assert seen["GENBUNDLE_PROBE_SECRET"] == PROBE_SECRET  # the pool's env, applied to the worker's process
    assert seen["GENBUNDLE_PROBE_OVERRIDE"] == "from-pool"  # the pool wins over the worker's own, as in a subprocess
    assert seen["GENBUNDLE_PROBE_DEPLOYMENT"] is None  # a deployment's env cannot be applied per run...
    applied = next(line for line in text.splitlines() if "applied work pool 'cpu'" in line)
    assert "GENBUNDLE_PROBE_OVERRIDE, GENBUNDLE_PROBE_SECRET" in applied, applied
    warned = [line for line in text.splitlines() if "are not applied" in line]
    assert any("GENBUNDLE_PROBE_DEPLOYMENT" in line for line in warned), text[-3000:]  # ...so it is named
    assert not any("GENBUNDLE_PROBE_SECRET" in line for line in warned)  # the pool's own are applied: no warning
    assert PROBE_SECRET not in text and "from-deployment" not in text  # names, never values
    # The run's logs on the server too (sent in batches): the warning is there, the values are not.
    query = {"logs": {"flow_run_id": {"any_": [run["id"]]}}}
    logs = _wait_for(
        _unless_busy(lambda: [e for e in _api(env, "/logs/filter", query) if "are not applied" in e["message"]]
                     and _api(env, "/logs/filter", query)),
        60, "the probe run's logs on the server",
    )  # fmt: skip
    assert not any(PROBE_SECRET in entry["message"] or "from-deployment" in entry["message"] for entry in logs)
