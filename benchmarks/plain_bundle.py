"""The asset-bundle flow's work without Prefect: every task's plain function (`.fn`), the same
concurrency (threads where the flow submits), the same manifest and storage.

It exists to measure what the orchestration costs: the benchmark times this against the flow.
Keep it in step with `flows.bundle.asset_bundle`; `tests/test_benchmarks.py` checks both make
the same assets.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from flows.bundle import _font, gather, preflight
from tasks.audio import generate_sound, normalise_sound
from tasks.brief import Brief
from tasks.caption import caption_cover
from tasks.cover import title_cover
from tasks.generation import resolve_job
from tasks.image import generate_cover
from tasks.manifest import write_manifest
from tasks.prompts import expand_prompts
from tasks.safety import check_cover_safety
from tasks.settings import get_settings
from tasks.storage import bundle_id, store_bundle
from tasks.trace import trace_diffusion
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
        cover_assets, notes = _finish_cover(pool, cover.result(), brief, workspace)
        generated = {"image": cover.result(), "sound": sound.result(), "video": video.result()}
        assets, notes, timings = gather(
            generated, cover_assets, notes, normalised.result(), muxed.result(), poster.result(), prompt_seconds
        )
    timings["total_before_store"] = time.perf_counter() - started
    manifest = write_manifest.fn(bundle_id(brief), brief, prompts, generated, assets, notes, timings)
    files = {a["name"]: assets[a["role"]].path for a in manifest["assets"]}
    return store_bundle.fn(manifest, files, out)


def _finish_cover(pool: ThreadPoolExecutor, cover, brief: Brief, workspace: Workspace) -> tuple[dict, dict]:
    """flows.bundle._finish_cover with threads for Prefect's task submissions."""
    settings, notes, published, flagged = get_settings(), {}, cover, False
    if settings.safety == "on":
        verdict = check_cover_safety.fn(cover, brief.models, workspace, settings.safety_action)
        notes["safety"] = verdict.model_dump(include={"checker", "flagged", "action", "applied"})
        if verdict.applied == "dropped":
            return {}, notes
        published, flagged = verdict, verdict.flagged
    titled = pool.submit(title_cover.fn, published, workspace, brief.title, brief.author, brief.tagline, _font(brief))
    caption = pool.submit(caption_cover.fn, published, brief.cover.prompt, brief.models, workspace)
    wants_trace = brief.trace and not flagged
    trace = pool.submit(trace_diffusion.fn, cover, brief.models, workspace, brief.seed) if wants_trace else None
    notes["cover_title"] = titled.result().model_dump(
        include={"band", "box", "text_color", "scrim_alpha", "contrast", "title_size", "lines"}
    )
    notes["cover_caption"] = caption.result().model_dump(include={"text", "shared_words", "flagged"})
    assets = {"cover": published, "cover_titled": titled.result(), **(trace.result().assets() if trace else {})}
    return assets, notes
