"""Integration: a real `prefect server`, the work pools and deployments made by `genbundle deploy`,
process workers for each pool, a dispatched bundle run, a dispatched batch with a failing brief,
the nightly schedule's commands, and an event-triggered run."""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import ASSET_COUNT

from flows.local_prefect import free_port
from tasks.engines import ROLES, default_engine
from tasks.models import ensure_tiny_model

pytestmark = pytest.mark.slow  # a live server, deployments and a process worker per pool

REPO = Path(__file__).resolve().parents[1]
POOLS = ("cpu", *(role.pool for role in ROLES.values()))


def _wait_for(predicate, timeout: float, what: str, poll: float = 0.5, seen=None):
    """The predicate's first true value within `timeout` seconds; `seen()` says what was there instead."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}" + (f"; seen: {seen()}" if seen else ""))


FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


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


def _ended(env: dict, run_id: str):
    """A polling predicate for _wait_for: the flow run, once its state is final."""

    def ended():
        run = _api(env, f"/flow_runs/{run_id}")
        return run if run["state_type"] in FINAL else None

    return _unless_busy(ended)


def _api(env: dict, path: str, body: dict | None = None):
    """GET (or POST `body` to) the server's REST API; returns the decoded JSON."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        env["PREFECT_API_URL"] + path, data=data, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def _prefect(env: dict, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "prefect", *args], check=False, env=env, cwd=REPO, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


def _generation_runs(env: dict) -> int:
    return _api(env, "/flow_runs/count", {"flows": {"name": {"any_": ["generate"]}}})


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # a worker's first SIGTERM can hang: don't wait on it
            proc.kill()
            proc.wait(timeout=10)


@contextlib.contextmanager
def _server(home: Path, **extra_env: str):
    """A `prefect server start` of its own, logging into `home`/logs; yields (env, spawn, log folder).
    `spawn(name, *args, **env)` starts `python -m *args` against it; all end with the server."""
    port = free_port()
    env = os.environ | {
        "PREFECT_HOME": str(home / "home"),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PYTHONPATH": str(REPO),
        **extra_env,
    }
    logs = home / "logs"
    logs.mkdir()
    procs = []

    def spawn(name, *args, **more_env):
        with open(logs / f"{name}.log", "w") as log:  # the child keeps its own handle
            proc = subprocess.Popen(
                [sys.executable, "-m", *args], env=env | more_env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT
            )
        procs.append(proc)
        return proc

    spawn("server", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port))
    try:

        def healthy():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2) as r:
                    return r.status == 200
            except OSError:
                return False

        _wait_for(healthy, 120, "the Prefect server")
        yield env, spawn, logs
    finally:
        for proc in reversed(procs):
            _stop(proc)


def _genbundle(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args],
        check=False, env=env, cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """Server + deployments + one process worker per pool; yields (env, bundles folder, log folder,
    the cpu worker's model cache).

    The `full` profile points at folders that hold only the pipelines' tokenizers: enough for the
    cpu pool (prompt expansion), not for a GPU pool, so a full brief fails on the GPU workers.
    The cpu worker has a model cache of its own, to show which models it built.
    """
    home = tmp_path_factory.mktemp("prefect-server")
    weights = {}
    for role in ROLES:
        engine = default_engine(role)
        weights[engine.name] = str(home / "full" / engine.name)
        shutil.copytree(ensure_tiny_model(engine.name) / "tokenizer", home / "full" / engine.name / "tokenizer")
    cpu_models = home / "cpu-models"
    with _server(
        home,
        PREFECT_WORKER_QUERY_SECONDS="1",
        PREFECT_WORKER_HEARTBEAT_SECONDS="5",
        PREFECT_LOGGING_LEVEL="INFO",
        GENBUNDLE_OUT=str(home / "bundles"),
        GENBUNDLE_WEIGHTS=json.dumps(weights),
    ) as (env, spawn, logs):
        deployed = _genbundle(env, "deploy", "--gpu-slots", "3")
        assert deployed.returncode == 0, deployed.stderr + deployed.stdout
        for pool in POOLS:
            models = {"GENBUNDLE_MODEL_CACHE": str(cpu_models)} if pool == "cpu" else {}
            spawn(f"worker-{pool}", "prefect", "worker", "start", "--pool", pool, "--type", "process", **models)
        yield env, Path(env["GENBUNDLE_OUT"]), logs, cpu_models


def _bundles(out: Path) -> dict[str, dict]:
    found = {}
    for manifest in out.glob("*/bundle.json"):
        data = json.loads(manifest.read_text())
        found[data["brief"]["title"]] = data
    return found


def _no_tag_limit(env: dict) -> bool:
    try:
        _api(env, "/concurrency_limits/tag/gpu")
    except urllib.error.HTTPError as err:
        return err.code == 404
    return False


def test_deploy_caps_the_gpu_pools_as_asked_and_no_server_wide_gpu_limit(stack):
    env, *_ = stack
    assert _no_tag_limit(env)  # it made every generation wait for every other, on all GPUs (issue 12)
    for pool in POOLS:
        assert _api(env, f"/work_pools/{pool}")["concurrency_limit"] == (None if pool == "cpu" else 3)


@pytest.fixture(scope="module")
def bare_server(tmp_path_factory):
    """A server of its own, without workers: what deploy does to pools an operator has changed."""
    with _server(tmp_path_factory.mktemp("bare-server")) as (env, *_):
        yield env


def _deployments(env: dict) -> dict[str, str]:
    return {d["name"]: d["updated"] for d in _api(env, "/deployments/filter", {})}


def test_redeploy_keeps_what_an_operator_set(bare_server, tmp_path):
    env = bare_server
    first = _genbundle(env, "deploy")
    assert first.returncode == 0, first.stderr + first.stdout
    assert _no_tag_limit(env)  # GPU slots are the workers'
    assert {_api(env, f"/work_pools/{pool}")["concurrency_limit"] for pool in POOLS} == {None}
    before = _deployments(env)
    # An operator's changes: `env` on the cpu pool (as the README tells Docker users; the UI's Edit
    # does the same), a template without `labels` (as an older one), other limits, a deployment gone.
    template = _api(env, "/work_pools/cpu")["base_job_template"]
    operator_env = {"GENBUNDLE_STORAGE": "s3://bundles/genbundle", "AWS_REGION": "eu-west-1"}
    template["variables"]["properties"]["env"]["default"] = operator_env
    del template["variables"]["properties"]["labels"], template["job_configuration"]["labels"]
    (tmp_path / "cpu.json").write_text(json.dumps(template))
    for args in (
        ("work-pool", "update", "cpu", "--base-job-template", str(tmp_path / "cpu.json")),
        ("work-pool", "set-concurrency-limit", "gpu-image", "2"),
        ("concurrency-limit", "create", "gpu", "4"),
        ("--no-prompt", "deployment", "delete", "asset-bundle/nightly"),
    ):
        changed = _prefect(env, *args)
        assert changed.returncode == 0, changed.stdout + changed.stderr

    again = _genbundle(env, "deploy")
    assert again.returncode == 0, again.stderr + again.stdout
    cpu = _api(env, "/work_pools/cpu")["base_job_template"]
    cpu_env = cpu["variables"]["properties"]["env"]
    assert cpu_env["default"] == operator_env
    assert cpu["job_configuration"]["labels"] == "{{ labels }}" and "labels" in cpu["variables"]["properties"]
    assert "kept the server's env" in again.stdout and "added labels" in again.stdout
    assert _api(env, "/work_pools/gpu-image")["concurrency_limit"] == 2
    assert _api(env, "/work_pools/gpu-audio")["concurrency_limit"] is None
    assert _api(env, "/concurrency_limits/tag/gpu")["concurrency_limit"] == 4  # the operator's, kept and named
    assert "concurrency limit 'gpu' kept (4), but it limits nothing of genbundle's" in again.stdout
    after = _deployments(env)  # every deployment made again: the deleted one back, the others updated
    assert after.keys() == before.keys() and all(after[name] > before[name] for name in before)

    # --gpu-slots given: the operator asks for new limits, so they replace the kept ones.
    sized = _genbundle(env, "deploy", "--gpu-slots", "3")
    assert sized.returncode == 0, sized.stderr + sized.stdout
    assert _api(env, "/concurrency_limits/tag/gpu")["concurrency_limit"] == 4
    assert {_api(env, f"/work_pools/{pool}")["concurrency_limit"] for pool in POOLS if pool != "cpu"} == {3}
    assert _api(env, "/work_pools/cpu")["base_job_template"]["variables"]["properties"]["env"] == cpu_env

    other = _genbundle(env, "deploy", "--pool-type", "docker")  # a pool's type cannot change in place
    assert other.returncode != 0 and "work pool cpu is a process pool, not docker" in other.stderr


def _no_image_models_built(cpu_models: Path) -> None:
    """The cpu worker built the pipelines whose tokenizers expand the prompts, but no captioner or
    safety checker: the image pool did all the image-model work."""
    built = {p.name for p in cpu_models.glob("tiny-*")}
    assert not any(name.startswith(("tiny-caption-", "tiny-safety-")) for name in built), built


def test_dispatched_bundle_through_the_gpu_pools(stack):
    env, out, logs, cpu_models = stack
    started = time.perf_counter()
    run = _prefect(
        env, "deployment", "run", "asset-bundle/dispatched", "--watch", "--watch-timeout", "600", timeout=700
    )
    seconds = time.perf_counter() - started
    assert run.returncode == 0, run.stdout[-3000:] + "\n" + (logs / "worker-cpu.log").read_text()[-3000:]
    bundle = _bundles(out)["The Glowing Forest"]
    assert len(bundle["assets"]) == ASSET_COUNT
    for pool in {ROLES[role].pool for role in ROLES}:  # each generation ran on its own pool's worker
        assert "Completed" in (logs / f"worker-{pool}.log").read_text()
    # Made on the pools for this run, then read back by the bundle flow: made by this run, not reused
    # (the cover, safety-checked, and its trace too), and all their energy is this run's.
    assert {bundle["steps"][role] for role in ("cover", "sound_raw", "video", "trace_forward")} == {"made"}
    assert bundle["compute"]["this_run_wh"] == bundle["compute"]["total_wh"]
    _no_image_models_built(cpu_models)
    names = [r["name"] for r in _api(env, "/flow_runs/filter", {"flows": {"name": {"any_": ["generate"]}}})]
    covers = [n for n in names if n.startswith("cover-")]
    assert covers and all(n.startswith("cover-a-mystical-forest-with-ancient-seed0") for n in covers), names
    assert {n.split("-", 1)[0] for n in names} == set(ROLES)  # one flow, named per role
    print(f"\ndispatched bundle: trigger to bundle {seconds:.1f} s")


def test_dispatched_batch_reports_the_brief_whose_generations_failed(stack, tmp_path):
    env, out, logs, cpu_models = stack
    briefs = tmp_path / "briefs.jsonl"
    lines = [
        {"title": "Batch Dispatch One", "author": "A", "seed": 11},
        {"title": "Batch Dispatch Full", "author": "B", "models": "full"},  # the GPU pools lack its weights
        {"title": "Batch Dispatch Two", "author": "C", "seed": 12},
    ]
    briefs.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    covers_before = _generation_runs(env)
    run = _prefect(
        env, "deployment", "run", "asset-bundle-batch/batch", "--param", f"briefs_file={briefs}",
        "--param", "dispatch=true", "--watch", "--watch-timeout", "600", timeout=700,
    )  # fmt: skip
    assert run.returncode != 0, "the batch should end Failed: one brief could not be made"
    assert "cannot be resolved into an exception" not in (logs / "worker-cpu.log").read_text()  # issue 12
    made = _bundles(out)
    assert "Batch Dispatch One" in made and "Batch Dispatch Two" in made, (logs / "worker-cpu.log").read_text()[-3000:]
    assert "Batch Dispatch Full" not in made
    latest = {"artifacts": {"key": {"any_": ["batch-report"]}}, "sort": "CREATED_DESC"}
    data = _api(env, "/artifacts/filter", latest)[0]["data"]
    report = json.loads(data) if isinstance(data, str) else data
    assert [r["status"] for r in report] == ["done", "failed", "done"], report
    assert f"generate/{ROLES['cover'].pool} run 'cover-" in report[1]["detail"]
    assert "model_index.json" in report[1]["detail"]  # the worker's own words: no pipeline in that folder
    # One run per role served the whole batch; the bundles found its outputs and started none.
    assert _generation_runs(env) == covers_before + len(ROLES)
    _no_image_models_built(cpu_models)


def test_the_schedule_commands_in_the_readme(stack):
    env, *_ = stack
    listed = _prefect(env, "deployment", "schedule", "ls", "asset-bundle/nightly", "-o", "json")
    assert listed.returncode == 0, listed.stderr
    (schedule,) = json.loads(listed.stdout)
    for command, active in (("pause", False), ("resume", True)):
        done = _prefect(env, "deployment", "schedule", command, "asset-bundle/nightly", schedule["id"])
        assert done.returncode == 0, done.stdout + done.stderr
        (now,) = json.loads(_prefect(env, "deployment", "schedule", "ls", "asset-bundle/nightly", "-o", "json").stdout)
        assert now["active"] is active
    changed = _prefect(
        env, "deployment", "schedule", "create", "asset-bundle/nightly", "--cron", "0 6 * * *", "--timezone", "UTC",
        "--replace", "-y",
    )  # fmt: skip
    assert changed.returncode == 0, changed.stdout + changed.stderr
    (now,) = json.loads(_prefect(env, "deployment", "schedule", "ls", "asset-bundle/nightly", "-o", "json").stdout)
    assert now["schedule"].startswith("cron: 0 6 * * *") and now["active"]


def test_submitted_brief_triggers_a_bundle(stack, tmp_path):
    env, out, *_ = stack
    brief = tmp_path / "brief.yaml"
    brief.write_text("title: Sent By Event\nauthor: E. Vent\nseed: 5\n")
    started = time.perf_counter()
    sent = subprocess.run(
        [sys.executable, "-m", "flows.cli", "submit", str(brief)],
        check=False, env=env, cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    assert sent.stdout.startswith("genbundle.brief.submitted ")
    bundle = _wait_for(lambda: _bundles(out).get("Sent By Event"), 600, "the event-triggered bundle", poll=1)
    print(f"\nevent-triggered bundle: submit to bundle {time.perf_counter() - started:.1f} s")
    assert bundle["brief"]["seed"] == 5 and bundle["brief"]["author"] == "E. Vent"
