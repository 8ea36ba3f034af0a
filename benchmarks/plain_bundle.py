"""The asset-bundle flow's work without Prefect: every task's plain function (`.fn`), the same
concurrency (threads where the flow submits), the same manifest and storage.

It exists to measure what the orchestration costs: the benchmark times this against the flow.
Keep it in step with `flows.bundle.asset_bundle`; `tests/test_benchmarks.py` checks both make
the same assets.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from flows.bundle import finish_cover, gather, preflight
from tasks.audio import generate_sound, normalise_sound
from tasks.brief import Brief
from tasks.generation import resolve_job
from tasks.image import generate_cover
from tasks.manifest import write_manifest
from tasks.prompts import expand_prompts
from tasks.storage import bundle_id, store_bundle
from tasks.video import generate_video, make_poster, mux_sound_onto_video
from tasks.workspace import Workspace


def plain_bundle(brief: Brief, out: str) -> str:
    """Make and store the bundle (local storage) as the flow would; returns its folder."""
    started = time.perf_counter()
    preflight(brief)
    workspace = Workspace.for_storage(out, None)
    prompt_start = time.perf_counter()
    prompts = expand_prompts.fn(brief)
    prompt_seconds = time.perf_counter() - prompt_start
    jobs = {m: resolve_job(brief, prompts, m) for m in ("image", "sound", "video")}

    with ThreadPoolExecutor(max_workers=8) as pool:
        cover = pool.submit(generate_cover.fn, jobs["image"], workspace)
        sound = pool.submit(generate_sound.fn, jobs["sound"], workspace)
        video = pool.submit(generate_video.fn, jobs["video"], workspace)
        normalised = pool.submit(
            lambda: normalise_sound.fn(sound.result(), workspace, brief.sound.loudness, brief.sound.true_peak)
        )
        muxed = pool.submit(lambda: mux_sound_onto_video.fn(video.result(), normalised.result(), workspace))
        poster = pool.submit(lambda: make_poster.fn(video.result(), workspace))
        cover_assets, notes = finish_cover(cover.result(), brief, workspace, lambda task, *a: pool.submit(task.fn, *a))
        generated = {"image": cover.result(), "sound": sound.result(), "video": video.result()}
        assets, notes, timings = gather(
            generated, cover_assets, notes, normalised.result(), muxed.result(), poster.result(), prompt_seconds
        )
    timings["total_before_store"] = time.perf_counter() - started
    manifest = write_manifest.fn(bundle_id(brief), brief, prompts, generated, assets, notes, timings)
    files = {a["name"]: assets[a["role"]].path for a in manifest["assets"]}
    return store_bundle.fn(manifest, files, out)
