"""Prefect for a flow run started from the command line, in this process.

What Prefect does by default that costs a command-line run more than its work does (measured on a
2-core machine, see BENCHMARKS.md):

- With no API configured, Prefect's ephemeral mode first imports its whole server into this
  process (about 5 s), then starts a server subprocess and waits for it (about 5 s more), and only
  then runs the flow. Here the same server subprocess (uvicorn with Prefect's app factory, as
  Prefect starts it) is started first, and the models load while it comes up.
- Flow-run heartbeats (on by default since Prefect 3.7, for finding crashed deployment runs) are
  stopped at the end of each run by joining a thread that sleeps in 1 s steps: up to a second per
  flow run, and per bundle in a batch. A command-line run is watched by the person who started it,
  so they are off unless PREFECT_FLOWS_HEARTBEAT_FREQUENCY is set. Workers keep them.
- The server records task runs and events one at a time, evaluates every event for automations,
  and each flow run makes its own API client: the temporary server records them in batches and
  evaluates no automations (no worker polls it), and the runs share one client.

With PREFECT_API_URL configured (a server or Prefect Cloud), runs go there as always.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from pathlib import Path

import httpx

from tasks.errors import UserError
from tasks.files import exclusive_lock

STARTUP_TIMEOUT_S = 90.0
# A stop normally takes well under a second; the server writes its last batches of task runs and
# events while it stops, and they are lost if it is killed (a UI started later would miss them).
STOP_TIMEOUT_S = 30.0
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _detach() -> None:
    """In the server process before it starts: out of the terminal's process group, so Ctrl-C reaches
    only the run, which flushes its logs and then stops the server; ended with the run if it is killed."""
    os.setsid()
    if sys.platform == "linux":  # the signal comes when the thread that started it ends: start it from the main thread
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port() -> int:
    """A loopback port free now (the system's pick; Prefect picks its own the same way)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class TemporaryServer:
    """A Prefect API server in a subprocess, for this process's runs only."""

    _starting: ExitStack | None = None  # holds the start lock until the server answers

    def __init__(self) -> None:
        from prefect.settings import get_current_settings

        # Two servers starting at once on a database not yet made (or not yet upgraded) both
        # migrate it and one dies ("duplicate column"): each starts once the one before answers.
        self._starting = ExitStack()
        self._starting.enter_context(exclusive_lock(Path(get_current_settings().home) / "genbundle-server-start.lock"))
        self.port = free_port()
        env = os.environ | get_current_settings().to_environment_variables(exclude_unset=True)
        env |= {"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
        # SQLite's wait for a locked database, 10 s by default, after which the API answers 503: on a
        # loaded 2-core machine one bundle of a 50-brief batch failed so (benchmarks/batch_memory.py).
        env.setdefault("PREFECT_SERVER_DATABASE_TIMEOUT", "60")
        # Task runs are recorded from their state events, by default one event per database transaction:
        # about 35 ms of the server's CPU per task run, taken from the models on 2 cores (a bundle has 15).
        # Written in batches, at most a second late (and all of them when the server stops), a third of that.
        env.setdefault("PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE", "100")
        env.setdefault("PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_FLUSH_INTERVAL", "1")
        # Events (55 a bundle) are stored in batches too, and not evaluated for automations: no worker
        # polls a temporary server, so no automation could start anything from it. About 0.15 s of the
        # server's CPU a bundle (measured with its CPU time per bundle, 0.77 -> 0.62 s).
        env.setdefault("PREFECT_SERVER_SERVICES_EVENT_PERSISTER_BATCH_SIZE", "500")
        env.setdefault("PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL", "2")
        env.setdefault("PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED", "false")
        command = [sys.executable, "-m", "uvicorn", "--factory", "prefect.server.api.server:create_app"]
        command += ["--host", "127.0.0.1", "--port", str(self.port), "--log-level", "error", "--lifespan", "on"]
        # Its messages go to a file, not a pipe: nobody reads a pipe once the server is up, and a server
        # that had written 64 KB into it (its debug log of two flow runs) stopped answering.
        self.messages = tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace")
        self.process = subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=self.messages, preexec_fn=_detach
        )
        self.api_url = f"http://127.0.0.1:{self.port}/api"

    def wait_ready(self, timeout: float = STARTUP_TIMEOUT_S) -> None:
        with self._starting or nullcontext():
            self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        # One client for every try: each new one loads the CA certificates (about 40 ms of CPU, even for
        # http://), which at 20 tries a second took a core from the server starting beside it.
        with httpx.Client(timeout=2) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    self.messages.seek(0)
                    raise UserError(f"the temporary Prefect server exited: {self.messages.read()[-500:].strip()}")
                try:
                    if client.get(f"{self.api_url}/health").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.05)
        raise UserError(f"the temporary Prefect server did not answer within {timeout:.0f} s; start one with "
                        "`prefect server start` and set PREFECT_API_URL")  # fmt: skip

    def stop(self) -> None:
        if self._starting:
            self._starting.close()  # stopped before it was ready (the run failed early)
        self.process.terminate()
        try:
            self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.messages.close()


@contextmanager
def local_prefect() -> Iterator[TemporaryServer | None]:
    """Settings for in-process runs; a temporary server (started, maybe not ready) when none is configured.

    Call `wait_ready()` on the server before the first flow run.
    """
    from prefect.context import SyncClientContext
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_CLIENT_SERVER_VERSION_CHECK_ENABLED,
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        get_current_settings,
        temporary_settings,
    )

    updates: dict = {}
    if "PREFECT_FLOWS_HEARTBEAT_FREQUENCY" not in os.environ:
        updates[PREFECT_FLOWS_HEARTBEAT_FREQUENCY] = None
    server = None if get_current_settings().api.url else TemporaryServer()
    if server:
        updates[PREFECT_API_URL] = server.api_url
        # It runs this interpreter's Prefect, so there is no version to check, and the client can be
        # made before it answers.
        updates[PREFECT_CLIENT_SERVER_VERSION_CHECK_ENABLED] = False
    try:
        # The runs share one API client: each flow run would otherwise make its own, with a TLS context
        # loaded from disk (about 40 ms of CPU, even for http://) and a new connection.
        with temporary_settings(updates=updates), SyncClientContext() if server else nullcontext():
            yield server
    finally:
        if server:
            flush_to_api()
            server.stop()


def flush_to_api(timeout: float = 5.0) -> None:
    """Send the logs and events still queued while the temporary server is up. Prefect flushes
    them at interpreter exit; by then the server is gone, and its workers retried it for over a
    minute and printed "Error logging to API" (after every failed run, and one successful run in six)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    from tasks.progress_artifact import wait_for_writers

    wait_for_writers(timeout)  # a generation's last progress write is made after it ended
    APILogWorker.drain_all(timeout=timeout, at_exit=False)
    EventsWorker.drain_all(timeout=timeout, at_exit=False)


@contextmanager
def errors_to_file(log_file: Path) -> Iterator[Path]:
    """Prefect prints every failed task's traceback to the terminal; a command-line run prints one
    line instead (its caller's), and the errors with their tracebacks go to `log_file`, which is
    only created when there is one. Warnings still reach the terminal."""
    from prefect.logging.handlers import PrefectConsoleHandler

    root = logging.getLogger()
    consoles = [h for h in root.handlers if isinstance(h, PrefectConsoleHandler)]
    below_error = _BelowError()
    details = _DetailsFile(log_file, delay=True, encoding="utf-8")
    details.setLevel(logging.ERROR)
    details.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for handler in consoles:
        handler.addFilter(below_error)
    root.addHandler(details)
    try:
        yield log_file
    finally:
        root.removeHandler(details)
        details.close()
        for handler in consoles:
            handler.removeFilter(below_error)


class _DetailsFile(logging.FileHandler):
    def handleError(self, record: logging.LogRecord) -> None:
        """On a full disk the details cannot be written: the run's one line still is, without logging's traceback."""


class _BelowError(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.ERROR
