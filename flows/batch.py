"""The batch flow: a file of briefs in, one bundle each, with a report of what failed and why."""

from __future__ import annotations

import contextvars
import ctypes
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.states import Completed, Failed

from flows.bundle import asset_bundle, preflight
from flows.generate import DispatchError, dispatch_generations
from tasks.brief import Brief, BriefError, load_briefs_file
from tasks.cover_finishing import CoverFinish
from tasks.engines import ROLES
from tasks.jobs import resolve_jobs
from tasks.policy import check_jobs
from tasks.progress import BRIEF_STAGE, tracked
from tasks.prompts import expand_prompts
from tasks.storage import storage_target
from tasks.workspace import Workspace

SHOWN = 5  # failed briefs named in the run's message; the batch-report artifact lists them all
MALLOC_ARENAS = 2  # glibc malloc arenas in a batch's process: see limit_malloc_arenas
M_ARENA_MAX = -8  # mallopt's parameter number (malloc.h)


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Cap glibc's malloc arenas for this process, unless MALLOC_ARENA_MAX or GLIBC_TUNABLES set them.

    Every bundle is a subflow with a task runner of its own: fresh threads, and glibc gives threads
    arenas of their own, up to 8 per core. The tiny models' torch temporaries were freed into
    whichever arena a thread had and stayed there, so over a batch the arenas filled one by one:
    malloc's in-use bytes flat (~190 MiB), Python objects flat (tracemalloc +2 MiB from the 8th
    bundle to the 24th), but malloc's free bytes 155 -> 237 MiB and RSS +2-3 MiB a bundle (peak
    x1.13 from the 10th to the 50th). Two arenas: RSS flat at 770-830 MiB, no slower (2 cores).
    Arenas made before the call stay; glibc fixes its limit once it has 9, so call this early.
    Returns whether the limit was set."""
    if "MALLOC_ARENA_MAX" in os.environ or "glibc.malloc.arena_max" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc"):
            return False
        return ctypes.CDLL(None).mallopt(M_ARENA_MAX, arenas) == 1
    except (ValueError, OSError, AttributeError):  # not glibc (musl, macOS): nothing to do
        return False


class BatchFailed(Exception):
    """A batch with briefs not made: the message names them, `report` holds every row."""

    def __init__(self, message: str, report: list[dict]):
        super().__init__(message, report)  # both in args, so that it pickles with its report
        self.report = report

    def __str__(self) -> str:
        return self.args[0]


@flow(name="asset-bundle-batch")
def asset_bundle_batch(
    briefs_file: str,
    out: str | None = None,
    storage: str | None = None,
    max_concurrency: int = 2,
    dispatch: bool = False,
):
    """Make one bundle per brief in a JSON Lines or CSV file, at most `max_concurrency` at a time.

    Bad briefs and failed bundles are reported (table artifact, `batch_report` of the final state)
    without stopping the others; the run ends Failed when any did, its message naming them. With
    `dispatch`, each role's generations for all briefs go to its GPU work pool as one run, so one
    model load serves the whole batch.
    """
    limit_malloc_arenas()  # before the bundles' threads: memory flat over a long batch
    logger = get_run_logger()
    storage = storage_target(storage)
    entries = load_briefs_file(Path(briefs_file))
    rows: dict[str, dict] = {
        label: {"brief": label, "status": "invalid", "detail": str(b)}
        for label, b in entries
        if isinstance(b, BriefError)
    }
    briefs = {label: b for label, b in entries if isinstance(b, Brief)}

    if dispatch and briefs:
        _pregenerate(briefs, out, storage, rows)

    def make(label: str, brief: Brief) -> dict:
        started = time.perf_counter()
        try:
            with tracked(BRIEF_STAGE + label):  # the command line's progress: one line per brief
                location = asset_bundle(brief, out=out, storage=storage, dispatch=dispatch)
            status, detail = "done", location
        except Exception as err:  # noqa: BLE001 - one brief's failure is reported, the others go on
            status, detail = "failed", f"{type(err).__name__}: {err}"
        return {
            "brief": label,
            "title": brief.title,
            "status": status,
            "detail": detail,
            "seconds": round(time.perf_counter() - started, 2),
        }

    todo = {label: b for label, b in briefs.items() if label not in rows}
    with ThreadPoolExecutor(max_workers=max(1, max_concurrency)) as pool:
        # Each thread carries the flow's context, so every bundle shows up as this run's subflow.
        futures = {label: pool.submit(contextvars.copy_context().run, make, label, b) for label, b in todo.items()}
        for label, future in futures.items():
            rows[label] = future.result()

    report = [rows[label] for label, _ in entries]
    create_table_artifact(
        key="batch-report", table=report, description=f"Batch of {len(report)} briefs from {Path(briefs_file).name}"
    )
    failed = [r for r in report if r["status"] != "done"]
    summary = f"{len(report) - len(failed)} of {len(report)} bundles made"
    if failed:
        logger.warning("%s; not made: %s", summary, "; ".join(f"{r['brief']}: {r['detail']}" for r in failed))
        names = ", ".join(r["brief"] for r in failed[:SHOWN]) + (
            f" and {len(failed) - SHOWN} more" if len(failed) > SHOWN else ""
        )
        message = f"{summary}; not made: {names} (see the batch-report artifact)"
        # A failed state's data must resolve into an exception (workers raise it); the rows ride on it.
        return Failed(message=message, data=BatchFailed(message, report))
    logger.info(summary)
    return Completed(message=summary, data=report)


def batch_report(state) -> list[dict] | None:
    """Every row's outcome from the batch flow's final state; None if the batch stopped before
    making any (e.g. no such file: the state's message says why)."""
    result = state.result(raise_on_failure=False)
    if isinstance(result, BatchFailed):
        return result.report
    return result if isinstance(result, list) else None


def _pregenerate(briefs: dict[str, Brief], out: str | None, storage: str | None, rows: dict[str, dict]) -> None:
    """Dispatch every brief's generations at once, one run per role; then each bundle's own
    dispatch finds them finished. A brief whose checks or generations failed is marked, with why."""
    workspace = Workspace.for_storage(out, storage)
    jobs: dict[str, list] = {role: [] for role in ROLES}
    labels, finish = [], []  # per job index: its brief, its cover's finishing steps

    def failed(label: str, why: str) -> None:
        rows[label] = {"brief": label, "title": briefs[label].title, "status": "failed", "detail": why}

    for label, brief in briefs.items():
        try:
            preflight(brief, storage, dispatch=True)
            prompts = expand_prompts(brief)
            resolved = resolve_jobs(brief, prompts)
            check_jobs(resolved.values())  # as the bundle flow does, before anything is generated
        except Exception as err:  # noqa: BLE001 - this brief is reported; the others go on
            failed(label, f"{type(err).__name__}: {err}")
            continue
        labels.append(label)
        finish.append(CoverFinish.for_brief(brief, with_title=False))
        for role, job in resolved.items():
            jobs[role].append(job)
    if not labels:
        return
    try:
        made = dispatch_generations(jobs, workspace, finish)
    except Exception as err:  # noqa: BLE001 - no run could start (e.g. no deployment): every brief, with why
        for label in labels:
            failed(label, f"{type(err).__name__}: {err}")
        return
    for i, label in enumerate(labels):
        errors = [str(results[i]) for results in made.values() if isinstance(results[i], DispatchError)]
        if errors:
            failed(label, "; ".join(errors))
