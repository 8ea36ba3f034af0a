"""Command-line runs: a temporary Prefect server started ahead of the models, heartbeats off."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

SCRIPT = """
import os
from prefect import flow
from prefect.settings import get_current_settings
from flows.local_prefect import local_prefect

@flow
def answer():
    return 42

with local_prefect() as server:
    assert server is not None, "no API configured: a temporary server is expected"
    server.wait_ready()
    print("value", answer())
    print("heartbeat", get_current_settings().flows.heartbeat_frequency)
    print("api", get_current_settings().api.url == server.api_url)
print("exited", server.process.poll() is not None)
"""


# The temporary server records task runs and events in batches (flows/local_prefect.py): all of them, with their final
# states, must be in the database once the command ends, as a Prefect UI started on it later shows them.
TASK_RUNS_SCRIPT = """
import os
import sqlite3
from prefect import flow, task
from prefect.settings import get_current_settings
from flows.local_prefect import local_prefect

@task
def double(x):
    return 2 * x

@flow
def doubles():
    return sum(f.result() for f in [double.submit(i) for i in range(4)]) + double(4)

with local_prefect() as server:
    server.wait_ready()
    print("value", *(doubles() for _ in range(int(os.environ.get("RUNS", "2")))))
database = sqlite3.connect(get_current_settings().home / "prefect.db")
print("task-runs", sorted(database.execute("select state_type from task_run").fetchall()))
print("task-run-events", database.execute("select count(*) from events where event like 'prefect.task-run.%'").fetchone()[0])
"""


def run_script(tmp_path: Path, script: str = SCRIPT, **env) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    environ |= {"PREFECT_HOME": str(tmp_path / "prefect"), "PYTHONPATH": str(Path(__file__).parents[1]), **env}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=environ, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    return dict(line.split(" ", 1) for line in result.stdout.splitlines() if " " in line)


def test_a_temporary_server_serves_the_run_and_is_stopped_after(tmp_path):
    seen = run_script(tmp_path)
    assert seen == {"value": "42", "heartbeat": "None", "api": "True", "exited": "True"}


def test_every_task_run_is_recorded_with_its_final_state(tmp_path):
    seen = run_script(tmp_path, TASK_RUNS_SCRIPT)
    # and their events (Pending, Running, Completed each), stored in batches too
    assert seen == {"value": "20 20", "task-runs": str([("COMPLETED",)] * 10), "task-run-events": "30"}


def test_a_talkative_server_keeps_answering_and_records_everything(tmp_path):
    # Its debug log of these runs is well over 64 KB: more than a pipe holds when nobody reads it.
    seen = run_script(tmp_path, TASK_RUNS_SCRIPT, RUNS="6", PREFECT_LOGGING_SERVER_LEVEL="DEBUG")
    assert seen == {"value": " ".join(["20"] * 6), "task-runs": str([("COMPLETED",)] * 30), "task-run-events": "90"}


def test_heartbeats_set_by_the_user_are_kept(tmp_path):
    assert run_script(tmp_path, PREFECT_FLOWS_HEARTBEAT_FREQUENCY="60")["heartbeat"] == "60"


def test_a_server_that_dies_at_start_gives_one_clear_error():
    from flows import local_prefect
    from tasks.errors import UserError

    server = local_prefect.TemporaryServer.__new__(local_prefect.TemporaryServer)
    server.api_url = "http://127.0.0.1:9/api"
    server.messages = tempfile.TemporaryFile("w+")
    server.process = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.exit('address already in use')"], stderr=server.messages
    )
    with pytest.raises(UserError, match="temporary Prefect server exited: address already in use"):
        server.wait_ready(timeout=30)
