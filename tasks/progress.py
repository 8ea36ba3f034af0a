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

Listener = Callable[[str, str, float | None], None]  # (stage, "running"|"done"|"failed", seconds)

_listeners: list[Listener] = []
_lock = threading.Lock()


def add_listener(listener: Listener) -> None:
    with _lock:
        _listeners.append(listener)


def remove_listener(listener: Listener) -> None:
    with _lock:
        if listener in _listeners:
            _listeners.remove(listener)


def _report(stage: str, status: str, seconds: float | None = None) -> None:
    with _lock:
        listeners = list(_listeners)
    for listener in listeners:
        listener(stage, status, seconds)


@dataclass
class Timer:
    seconds: float = 0.0


@contextmanager
def tracked(stage: str) -> Iterator[Timer]:
    """Time a stage and report its start and end to the listeners."""
    timer = Timer()
    start = time.perf_counter()
    _report(stage, "running")
    try:
        yield timer
    except BaseException:
        _report(stage, "failed", time.perf_counter() - start)
        raise
    timer.seconds = time.perf_counter() - start
    _report(stage, "done", timer.seconds)
