"""Warm workers (flows/warm_worker.py): `genbundle worker` runs its pool's flow runs in its own
process, so each pipeline loads once per worker, not once per run. The slow test runs three
dispatched bundles through a real server, a warm worker per GPU pool and a process worker for cpu."""

import time
import urllib.error
import uuid
from pathlib import Path

import pytest
from conftest import ASSET_COUNT
from test_prefect_server import _api, _bundles, _genbundle, _server, _wait_for

from flows.cli import main
from tasks.engines import ROLES, default_engine

GPU_POOLS = {role: r.pool for role, r in ROLES.items()}


def test_worker_flags_reach_the_worker(monkeypatch):
    from flows import warm_worker

    started = []

    async def no_server(pool):
        pass

    async def start(self, *args, **kwargs):
        started.append((self._work_pool_name, self.slots, self.name))

    monkeypatch.setattr(warm_worker, "_check_pool", no_server)
    monkeypatch.setattr(warm_worker.WarmWorker, "start", start)
    assert main(["worker", "--pool", "gpu-image", "--slots", "3", "--name", "gpu0"]) == 0
    assert main(["worker", "--pool", "gpu-audio"]) == 0
    assert started[0] == ("gpu-image", 3, "gpu0")
    assert started[1][:2] == ("gpu-audio", 1)  # one generation at a time unless told


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


def _unless_busy(predicate):
    """A polling predicate that reads a SQLite server's 503 ("database is locked") as not yet."""

    def polled():
        try:
            return predicate()
        except urllib.error.HTTPError as err:
            if err.code != 503:
                raise
            return None

    return polled


def _run_bundle(env: dict, title: str, seed: int) -> tuple[dict, float]:
    """Start asset-bundle/dispatched for a brief and wait for it: (its final state, seconds from trigger)."""
    deployment = _api(env, "/deployments/name/asset-bundle/dispatched")
    brief = {"title": title, "author": "W. Arm", "seed": seed}
    started = time.perf_counter()
    create = _unless_busy(
        lambda: _api(env, f"/deployments/{deployment['id']}/create_flow_run", {"parameters": {"brief": brief}})
    )
    run = _wait_for(create, 60, f"the server to take bundle '{title}'")  # a 503 wrote nothing: asked again

    def final_state():
        state = _api(env, f"/flow_runs/{run['id']}")["state"]
        return state if state["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") else None

    state = _wait_for(_unless_busy(final_state), 600, f"bundle '{title}'", poll=0.5)
    return state, time.perf_counter() - started


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
