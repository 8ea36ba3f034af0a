"""The asset-bundle flow's work without Prefect: the flow's own node functions, with every task's
plain function (`.fn`) started in threads where the flow submits tasks, the same manifest and storage.

It exists to measure what the orchestration costs: the benchmark times this against the flow.
`tests/test_benchmarks.py` checks both make the same assets.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from flows.bundle import finish_all, gather, generate_all, paths_by_name, preflight, runtime_label
from tasks.brief import Brief
from tasks.catalogue import make_manifest
from tasks.cover_finishing import CoverFinish, result_of
from tasks.engines import ROLES
from tasks.jobs import bundle_id, resolve_jobs
from tasks.page import render_page
from tasks.prompts import expand_prompts
from tasks.provenance import sign_assets
from tasks.storage import store_bundle
from tasks.workspace import Workspace


def plain_bundle(brief: Brief, out: str) -> str:
    """Make and store the bundle (local storage) as the flow would; returns its folder."""
    started = time.perf_counter()
    preflight(brief)
    workspace = Workspace.for_storage(out, None)
    prompt_start = time.perf_counter()
    prompts = expand_prompts.fn(brief)
    prompt_seconds = time.perf_counter() - prompt_start
    jobs = resolve_jobs(brief, prompts)
    finish = CoverFinish.for_brief(brief)

    with ThreadPoolExecutor(max_workers=8) as pool:

        def submit(task, *args):  # a thread in place of a task run; futures among the arguments are awaited
            return pool.submit(lambda: task.fn(*[result_of(a) for a in args]))

        futures = generate_all(jobs, workspace, finish, submit=submit)
        cover_assets, notes, normalised, muxed, poster = finish_all(brief, futures, finish, workspace, submit)
        generated = {role: futures[role].result() for role in ROLES}
    files, notes, timings = gather(generated, cover_assets, notes, normalised, muxed, poster, prompt_seconds)
    files = sign_assets.fn(files, generated, workspace)
    timings["total_before_store"] = time.perf_counter() - started
    manifest = make_manifest.fn(
        bundle_id(brief, runtime_label(False)), brief, prompts, generated, files, notes, timings
    )
    return store_bundle.fn(manifest, paths_by_name(manifest, files), out, render_page(manifest))
