"""A run that fails or is interrupted after it started ends within seconds, with one line.

The failure is injected where a real one happens: ffmpeg (imageio-ffmpeg's binary, which
IMAGEIO_FFMPEG_EXE replaces) fails, or hangs while the run is interrupted. Each fake records
the moment it was called, and the exit is timed from there.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # each test runs the command line as a subprocess

REPO = Path(__file__).parents[1]
EXIT_LIMIT_S = 5.0


def fake_ffmpeg(folder: Path, then: str) -> tuple[Path, Path]:
    """An ffmpeg stand-in that writes the time it was called to a file, then runs `then`."""
    called = folder / "ffmpeg-called-at"
    script = folder / "ffmpeg"
    script.write_text(f'#!/bin/sh\ndate +%s.%N >> "{called}"\n{then}\n')
    script.chmod(0o755)
    return script, called


def start_run(out: Path, ffmpeg: Path | None) -> subprocess.Popen:
    env = os.environ | {"PYTHONPATH": str(REPO)}
    if ffmpeg:
        env["IMAGEIO_FFMPEG_EXE"] = str(ffmpeg)
    command = [sys.executable, "-m", "flows.cli", "run", "--title", "Exit Roads", "--author", "K. Lee"]
    command += ["--out", str(out)]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def first_call(called: Path, run: subprocess.Popen, timeout: float = 300) -> float:
    deadline = time.monotonic() + timeout
    while not called.exists():
        assert run.poll() is None, run.communicate()
        assert time.monotonic() < deadline, "ffmpeg was never called"
        time.sleep(0.02)
    time.sleep(0.05)  # the time is written
    return float(called.read_text().split()[0])


def server_children(pid: int) -> list[int]:
    """The run's temporary Prefect server (uvicorn), among its child processes."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            if "uvicorn" in Path(f"/proc/{child}/cmdline").read_text(errors="replace"):
                found.append(int(child))
    return found


def assert_one_line_end(stderr: str, starts: str) -> None:
    assert stderr.strip().splitlines()[-1].startswith(starts), stderr[-2000:]
    assert "Traceback" not in stderr and "Error logging to API" not in stderr, stderr[-2000:]


def test_a_failure_mid_run_ends_it_within_seconds_with_one_line(tmp_path):
    ffmpeg, called = fake_ffmpeg(tmp_path, 'echo "injected failure" >&2; exit 1')
    run = start_run(tmp_path / "out", ffmpeg)
    _, stderr = run.communicate(timeout=600)
    ended = time.time()
    failed_at = float(called.read_text().split()[0])
    assert run.returncode == 1
    assert_one_line_end(stderr, "run failed: MediaError: ffmpeg failed (exit 1): injected failure (details: ")
    log = Path(stderr.strip().splitlines()[-1].split("(details: ")[1].rstrip(")"))
    assert "Traceback" in log.read_text()  # the details are kept, only not on the terminal
    assert ended - failed_at < EXIT_LIMIT_S, f"exited {ended - failed_at:.1f} s after the failure"
    # nothing half-written: no bundle folder (the work area and its log aside)
    assert [p.name for p in (tmp_path / "out").iterdir()] == [".work"]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_run_ends_within_seconds_and_a_rerun_resumes(tmp_path, signum):
    ffmpeg, called = fake_ffmpeg(tmp_path, "exec sleep 120")  # a step that would hold the run up
    run = start_run(tmp_path / "out", ffmpeg)
    first_call(called, run)
    servers = server_children(run.pid)
    assert servers, "the run's temporary Prefect server was not found"
    sent = time.monotonic()
    run.send_signal(signum)  # to the process alone, as `kill` or `docker stop` do: the hung ffmpeg lives on
    try:
        _, stderr = run.communicate(timeout=60)
        took = time.monotonic() - sent
    finally:
        subprocess.run(["pkill", "-f", "sleep 120"], check=False)
    assert run.returncode == 128 + signum
    assert_one_line_end(stderr, f"error: interrupted ({signal.Signals(signum).name}); run the same command again")
    assert took < EXIT_LIMIT_S, f"exited {took:.1f} s after the signal"
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() for pid in servers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(Path(f"/proc/{pid}").exists() for pid in servers), "the temporary server outlived the run"

    rerun = start_run(tmp_path / "out", None)
    _, stderr = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, stderr[-2000:]
    assert "reused" in stderr  # the generations finished before the interrupt are not made again
