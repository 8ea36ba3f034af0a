"""Stage progress: tasks say when a stage starts and ends; whoever listens shows it.

The command line registers a listener that draws a progress display; under a Prefect worker
nobody listens and the run logger carries the same news.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass
class Stage:
    name: str
    status: str = "running"  # "running" | "done" | "failed"
    seconds: float = 0.0
    detail: str = ""  # a short result a person may want to see, e.g. bytes uploaded
    error: str = ""  # why a failed stage failed, on one line


Listener = Callable[[Stage], None]
BRIEF_STAGE = "brief "  # a batch reports each brief as the stage "brief <label>"

_listeners: list[Listener] = []
_lock = threading.Lock()


def add_listener(listener: Listener) -> None:
    with _lock:
        _listeners.append(listener)


def remove_listener(listener: Listener) -> None:
    with _lock:
        if listener in _listeners:
            _listeners.remove(listener)


def _report(stage: Stage) -> None:
    with _lock:
        listeners = list(_listeners)
    for listener in listeners:
        listener(stage)


@contextmanager
def tracked(name: str) -> Iterator[Stage]:
    """Time a stage and report its start and end to the listeners; set `.detail` to say more."""
    stage = Stage(name)
    start = time.perf_counter()
    _report(stage)
    try:
        yield stage
    except BaseException as err:
        stage.status, stage.seconds = "failed", time.perf_counter() - start
        stage.error = " ".join(f"{type(err).__name__}: {err}".split())
        _report(stage)
        raise
    stage.status, stage.seconds = "done", time.perf_counter() - start
    _report(stage)
