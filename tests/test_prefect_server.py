"""Integration: a real `prefect server`, the work pools and deployments made by `genbundle deploy`,
process workers for each pool, a dispatched bundle run and an event-triggered one."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
POOLS = ("cpu", "gpu-image", "gpu-audio", "gpu-video")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(predicate, timeout: float, what: str, poll: float = 0.5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # a worker's first SIGTERM can hang: don't wait on it
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """Server + deployments + one process worker per pool; yields (env, bundles folder, log folder)."""
    home = tmp_path_factory.mktemp("prefect-server")
    port = _free_port()
    env = os.environ | {
        "PREFECT_HOME": str(home / "home"),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_WORKER_HEARTBEAT_SECONDS": "5",
        "PREFECT_LOGGING_LEVEL": "INFO",
        "GENBUNDLE_OUT": str(home / "bundles"),
        "PYTHONPATH": str(REPO),
    }
    logs = home / "logs"
    logs.mkdir()
    procs = []

    def spawn(name, *args):
        log = open(logs / f"{name}.log", "w")
        proc = subprocess.Popen([sys.executable, "-m", *args], env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
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
        deployed = subprocess.run(
            [sys.executable, "-m", "flows.cli", "deploy", "--gpu-slots", "3"],
            env=env, cwd=REPO, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert deployed.returncode == 0, deployed.stderr + deployed.stdout
        for pool in POOLS:
            spawn(f"worker-{pool}", "prefect", "worker", "start", "--pool", pool, "--type", "process")
        yield env, Path(env["GENBUNDLE_OUT"]), logs
    finally:
        for proc in reversed(procs):
            _stop(proc)


def _bundles(out: Path) -> dict[str, dict]:
    found = {}
    for manifest in out.glob("*/bundle.json"):
        data = json.loads(manifest.read_text())
        found[data["brief"]["title"]] = data
    return found


def test_dispatched_bundle_through_the_gpu_pools(stack):
    env, out, logs = stack
    started = time.perf_counter()
    run = subprocess.run(
        [sys.executable, "-m", "prefect", "deployment", "run", "asset-bundle/dispatched", "--watch", "--watch-timeout", "600"],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=700,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    assert run.returncode == 0, run.stdout[-3000:] + "\n" + (logs / "worker-cpu.log").read_text()[-3000:]
    bundle = _bundles(out)["The Glowing Forest"]
    assert len(bundle["assets"]) == 10
    for pool in ("gpu-image", "gpu-audio", "gpu-video"):  # each generation ran on its own pool's worker
        assert "Completed" in (logs / f"worker-{pool}.log").read_text()
    print(f"\ndispatched bundle: trigger to bundle {seconds:.1f} s")


def test_submitted_brief_triggers_a_bundle(stack, tmp_path):
    env, out, _ = stack
    brief = tmp_path / "brief.yaml"
    brief.write_text("title: Sent By Event\nauthor: E. Vent\nseed: 5\n")
    started = time.perf_counter()
    sent = subprocess.run(
        [sys.executable, "-m", "flows.cli", "submit", str(brief)], env=env, cwd=REPO, capture_output=True, text=True
    )
    assert sent.returncode == 0, sent.stderr
    assert sent.stdout.startswith("genbundle.brief.submitted ")
    bundle = _wait_for(lambda: _bundles(out).get("Sent By Event"), 600, "the event-triggered bundle", poll=1)
    print(f"\nevent-triggered bundle: submit to bundle {time.perf_counter() - started:.1f} s")
    assert bundle["brief"]["seed"] == 5 and bundle["brief"]["author"] == "E. Vent"
