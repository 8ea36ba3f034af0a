"""Dispatched bundles as they run across machines: a real Prefect server, process workers that
each have their own working folder and share only the server and a loopback S3 endpoint, and a
GPU worker killed in the middle of a job."""

import json
import os
import signal
import subprocess
import time

import pytest
from conftest import ASSET_COUNT, TEST_ACCESS_KEY, TEST_SECRET_KEY
from test_prefect_server import FINAL, POOLS, _api, _ended, _genbundle, _prefect, _server, _wait_for

from tasks.engines import ROLES

pytestmark = pytest.mark.slow  # a live server, deployments and a process worker per pool

STALL_SECONDS = 45  # GENBUNDLE_DISPATCH_STALL_SECONDS of the bundle runs here (the least allowed)


@pytest.fixture(scope="module")
def machines(tmp_path_factory, moto_server):
    """Server, deployments, a bucket, and one worker per pool, each with a GENBUNDLE_OUT of its own.
    Yields (env, bucket URL, folders by pool, spawn, workers by pool)."""
    import boto3

    home = tmp_path_factory.mktemp("machines")
    url, _ = moto_server
    bucket = "machines"
    aws = {
        "AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": TEST_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": TEST_SECRET_KEY,
        "AWS_REGION": "us-east-1",
    }  # fmt: skip
    boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id=TEST_ACCESS_KEY,
                 aws_secret_access_key=TEST_SECRET_KEY).create_bucket(Bucket=bucket)  # fmt: skip
    storage = f"s3://{bucket}/genbundle"
    with _server(
        home,
        PREFECT_WORKER_QUERY_SECONDS="1",
        PREFECT_WORKER_HEARTBEAT_SECONDS="5",
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY="30",  # the generation runs' heartbeats (30 s is Prefect's least)
        GENBUNDLE_STORAGE=storage,
        GENBUNDLE_DISPATCH_STALL_SECONDS=str(STALL_SECONDS),
        **aws,
    ) as (env, spawn, logs):
        deployed = _genbundle(env, "deploy")
        assert deployed.returncode == 0, deployed.stderr + deployed.stdout
        folders = {pool: home / f"{pool}-machine" for pool in POOLS}
        workers = {}

        def start_worker(pool: str):
            folders[pool].mkdir(exist_ok=True)
            workers[pool] = spawn(
                f"worker-{pool}", "prefect", "worker", "start", "--pool", pool, "--type", "process",
                GENBUNDLE_OUT=str(folders[pool]), GENBUNDLE_MODEL_CACHE=str(home / f"{pool}-models"),
            )  # fmt: skip

        for pool in POOLS:
            start_worker(pool)
        yield env, storage, folders, start_worker, workers, logs


def _run_dispatched(env: dict, brief: dict, watch: bool = True) -> subprocess.CompletedProcess:
    args = ["deployment", "run", "asset-bundle/dispatched", "--param", f"brief={json.dumps(brief)}"]
    if watch:
        args += ["--watch", "--watch-timeout", "600"]
    return _prefect(env, *args, timeout=700)


def _flow_runs(env: dict, flow: str) -> list[dict]:
    return _api(env, "/flow_runs/filter", {"flows": {"name": {"any_": [flow]}}, "sort": "START_TIME_DESC"})


def test_workers_in_their_own_folders_hand_over_through_s3(machines):
    env, storage, folders, *_, logs = machines
    started = time.perf_counter()
    run = _run_dispatched(env, {"title": "Own Folders", "author": "M. Achine", "seed": 21})
    assert run.returncode == 0, run.stdout[-3000:] + (logs / "worker-cpu.log").read_text()[-3000:]
    print(f"\ndispatched bundle, separate folders: {time.perf_counter() - started:.1f} s")

    (bundle,) = [p for p in (folders["cpu"]).iterdir() if (p / "bundle.json").is_file()]
    verified = _genbundle(env, "verify", f"{storage}/{bundle.name}")  # the stored bundle, read from the bucket
    assert verified.returncode == 0 and "verified:" in verified.stdout, verified.stdout + verified.stderr
    manifest = json.loads((bundle / "bundle.json").read_text())
    assert len(manifest["assets"]) == ASSET_COUNT
    assert {manifest["steps"][role] for role in ("cover", "sound_raw", "video")} == {"made"}

    # Each GPU worker made its role in its own folder; no generation run was told a folder of another.
    for role, spec in ROLES.items():
        assert list((folders[spec.pool] / ".work" / role).glob("*/result.json")), f"{role} not made on {spec.pool}"
    generations = [r for r in _flow_runs(env, "generate") if "seed21" in r["name"]]
    assert len(generations) == len(ROLES)
    for generation in generations:
        parameters = json.dumps(generation["parameters"])
        assert not any(str(folder) in parameters for folder in folders.values()), parameters
        assert generation["parameters"]["remote"] == f"{storage}/.work"


def _kill_machine(env: dict, worker: subprocess.Popen, flow_run_id: str) -> None:
    """The worker and the flow-run process it started (in a session of its own): a machine gone."""
    infrastructure = _api(env, f"/flow_runs/{flow_run_id}")["infrastructure_pid"]  # "host:pid"
    os.killpg(int(str(infrastructure).rsplit(":", 1)[-1]), signal.SIGKILL)
    worker.kill()
    worker.wait(timeout=10)


def test_a_worker_killed_mid_job_ends_the_bundle_run_in_bounded_time_and_a_rerun_resumes(machines):
    env, storage, folders, start_worker, workers, logs = machines
    brief = {"title": "Worker Lost", "author": "K. Illed", "seed": 31}
    triggered = _run_dispatched(env, brief, watch=False)
    assert triggered.returncode == 0, triggered.stdout + triggered.stderr

    def video_running():
        return next((r for r in _flow_runs(env, "generate") if r["name"].startswith("video-")
                     and "seed31" in r["name"] and r["state_type"] == "RUNNING"), None)  # fmt: skip

    video = _wait_for(video_running, 400, "the video generation to start", poll=0.5)
    _kill_machine(env, workers[ROLES["video"].pool], video["id"])
    killed = time.monotonic()

    def bundle_ended():
        runs = [r for r in _flow_runs(env, "asset-bundle") if r["name"] == brief["title"]]
        return runs and runs[0]["state_type"] in ("FAILED", "CRASHED", "COMPLETED") and runs[0]

    bundle = _wait_for(bundle_ended, STALL_SECONDS + 120, "the bundle run to end", poll=1)
    ended_after = time.monotonic() - killed
    print(f"\nbundle run ended {ended_after:.1f} s after its video worker was killed (limit {STALL_SECONDS} s)")
    assert bundle["state_type"] == "FAILED"
    message = bundle["state"]["message"]
    pool = ROLES["video"].pool
    assert f"generate/{pool} run '{video['name']}'" in message and f"genbundle worker --pool {pool}" in message
    assert ended_after < STALL_SECONDS + 20  # the limit, a life check (5 s) and a poll, not forever
    assert _api(env, f"/flow_runs/{video['id']}")["state_type"] == "CRASHED"  # the zombie is not left Running

    start_worker(pool)  # the machine is back: the re-run makes only what was not finished
    again = _run_dispatched(env, brief)
    assert again.returncode == 0, again.stdout[-3000:] + (logs / "worker-cpu.log").read_text()[-3000:]
    (made,) = [p for p in folders["cpu"].iterdir() if (p / "bundle.json").is_file() and "worker-lost" in p.name]
    steps = json.loads((made / "bundle.json").read_text())["steps"]
    assert (steps["cover"], steps["sound_raw"], steps["video"]) == ("reused", "reused", "made"), steps


def test_cancelling_a_bundle_run_cancels_its_generations(machines):
    env, *_ = machines
    # A long video (100 tiny steps, about 10 s here): one generation is still running when the cancel
    # arrives, whatever the others' timing (with 4 steps, all three could finish before it did).
    brief = {"title": "Called Off", "author": "C. Ancel", "seed": 41, "video": {"steps": 100}}
    triggered = _run_dispatched(env, brief, watch=False)
    assert triggered.returncode == 0, triggered.stdout + triggered.stderr

    def generations():
        return [r for r in _flow_runs(env, "generate") if "seed41" in r["name"]]

    _wait_for(lambda: any(r["state_type"] == "RUNNING" for r in generations()), 400, "a generation to start")
    (bundle,) = [r for r in _flow_runs(env, "asset-bundle") if r["name"] == brief["title"]]
    cancelled = _prefect(env, "flow-run", "cancel", bundle["id"])
    assert cancelled.returncode == 0, cancelled.stdout + cancelled.stderr

    def all_ended():
        runs = generations()
        return len(runs) == len(ROLES) and all(r["state_type"] in FINAL for r in runs) and runs

    def states():
        return [(r["name"], r["state_name"]) for r in generations()]

    what = "every generation run to end after the bundle run was cancelled"
    ended = _wait_for(all_ended, 180, what, poll=1, seen=states)
    assert "CANCELLED" in {r["state_type"] for r in ended}, [(r["name"], r["state_type"]) for r in ended]

    # The bundle run is marked Cancelled by its worker at the end of the worker's cancellation sequence
    # (its process stopped, the flow's cancellation hooks run): 13 s after the run was stopped, in one
    # run here, when its generations had all ended already.
    ended = _wait_for(_ended(env, bundle["id"]), 120, "the bundle run to end after it was cancelled", poll=1)
    assert ended["state_type"] == "CANCELLED"
