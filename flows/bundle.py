"""The asset-bundle flow: a brief in, a stored bundle out."""

from __future__ import annotations

import time

from prefect import flow, get_run_logger

from flows.generate import CoverFinish, dispatch_generations, raise_failures
from tasks.artifacts import publish_summary
from tasks.audio import generate_sound, normalise_sound
from tasks.brief import Brief
from tasks.caption import caption_cover, load_captioner
from tasks.cover import check_title_fits, title_cover
from tasks.generation import resolve_job
from tasks.image import generate_cover
from tasks.manifest import TINY_NOTE, write_manifest
from tasks.models import ENGINES, check_models_available, load_pipeline
from tasks.policy import check_jobs, check_prompt_policy
from tasks.progress import tracked
from tasks.prompts import expand_prompts
from tasks.s3 import check_bucket, is_s3_url, parse_s3_url
from tasks.safety import check_cover_safety, load_safety_checker, safety_checker_folder
from tasks.settings import get_settings
from tasks.storage import bundle_id, out_root, storage_target, store_bundle, upload_bundle
from tasks.trace import TRACE_ROLES, trace_diffusion
from tasks.video import generate_video, make_poster, mux_sound_onto_video
from tasks.workspace import Workspace


def _result(value):
    """A future's result, or the value itself when it was made elsewhere (dispatched)."""
    return value.result() if hasattr(value, "result") else value


def _font(brief: Brief) -> str | None:
    return str(brief.cover.font) if brief.cover.font else None


def preflight(brief: Brief, storage: str | None = None, dispatch: bool = False) -> None:
    """What can be checked before any model loads: the prompt policy, the title fits the cover,
    the weights are there, the bucket is reachable.

    Dispatched, the weights are not looked for here: the GPU pools load every model (the image
    pool the safety checker and captioner too) and a worker without them fails its job, saying so.
    """
    check_prompt_policy(brief)
    defaults = ENGINES["image"].defaults(brief.models)
    size = (brief.cover.width or defaults.width, brief.cover.height or defaults.height)
    check_title_fits(size, brief.title, brief.author, brief.tagline, _font(brief))
    if not dispatch:
        check_models_available(brief.models)
        if get_settings().safety == "on":
            safety_checker_folder(brief.models)
    if is_s3_url(storage):
        check_bucket(parse_s3_url(storage))


def load_models(brief: Brief) -> None:
    """Load every model the bundle uses into this process ahead of its run; the tasks reuse them."""
    for modality in ENGINES:
        load_pipeline(modality, brief.models)
    load_captioner(brief.models)
    if get_settings().safety == "on":
        load_safety_checker(brief.models)


def _submit_task(task, *args):
    return task.submit(*args)


def finish_cover(cover, brief: Brief, workspace: Workspace, submit=_submit_task) -> tuple[dict, dict]:
    """The safety check, then title, caption and trace from the cover that passed it.

    Returns (assets by role, notes for the manifest); a cover dropped by the safety action
    leaves no cover assets at all. `submit(task, *args)` starts a task and returns its future:
    Prefect's task runs here, threads in the plain-function benchmark.
    """
    settings, notes, published, flagged = get_settings(), {}, cover, False
    if settings.safety == "on":
        verdict = submit(check_cover_safety, cover, brief.models, workspace, settings.safety_action).result()
        notes["safety"] = verdict.model_dump(include={"checker", "flagged", "action", "applied", "compute", "reused"})
        if verdict.applied == "dropped":
            return {}, notes
        published, flagged = verdict, verdict.flagged
    titled = submit(title_cover, published, workspace, brief.title, brief.author, brief.tagline, _font(brief))
    caption = submit(caption_cover, published, brief.cover.prompt, brief.models, workspace)
    # The trace pictures the generation itself, so it would show a flagged cover unblurred: left out then.
    wants_trace = brief.trace and not flagged
    trace = submit(trace_diffusion, cover, brief.models, workspace, brief.seed) if wants_trace else None
    titled = titled.result()
    notes["cover_title"] = titled.model_dump(
        include={"band", "box", "text_color", "scrim_alpha", "contrast", "title_size", "lines"}
    )
    notes["cover_caption"] = caption.result().model_dump(
        include={"text", "shared_words", "flagged", "compute", "reused"}
    )
    assets = {"cover": _result(published), "cover_titled": titled, **(trace.result().assets() if trace else {})}
    return assets, notes


def gather(generated: dict, cover_assets: dict, notes: dict, normalised, muxed, poster, prompt_seconds: float):
    """Every finished step as (assets by role, notes, timings) for the manifest.

    The timings stop before the manifest: it is written last and holds them, so writing and storing
    it cannot be in it (the flow's `total_before_store` says where the clock stopped).
    """
    assets = {
        **cover_assets,
        "sound_raw": generated["sound"],
        "sound": normalised,
        "video": generated["video"],
        "video_with_sound": muxed,
        "poster": poster,
    }
    timings = {"prompts": prompt_seconds}
    for name, modality in (("cover", "image"), ("sound", "sound"), ("video", "video")):
        timings[f"{name}_load"], timings[name] = generated[modality].load_seconds, generated[modality].generate_seconds
    timings |= {"normalise": normalised.seconds, "mux": muxed.seconds, "poster": poster.seconds}
    if "cover_titled" in assets:
        timings["title"] = assets["cover_titled"].seconds
    for stage, note in (("caption", "cover_caption"), ("safety", "safety")):
        if notes.get(note, {}).get("compute"):
            timings[stage] = notes[note]["compute"]["seconds"]
    traced = [assets[r].compute.seconds for r in TRACE_ROLES if r in assets and assets[r].compute]
    if traced:
        timings["trace"] = sum(traced)
    notes = notes | {
        "sound": normalised.model_dump(
            include={"sample_rate", "duration", "loudness_lufs", "true_peak_dbtp", "gain_db", "limited", "on_target"}
        ),
        "mux": {"audio_fit": muxed.audio_fit},
    }
    return assets, notes, timings


@flow(name="asset-bundle", flow_run_name="{brief.title}")
def asset_bundle(brief: Brief, out: str | None = None, storage: str | None = None, dispatch: bool = False) -> str:
    """Expand the prompts, generate cover, sound and video concurrently, finish them, store the bundle.

    The bundle is stored under `out` (default GENBUNDLE_OUT) and, when `storage` (default
    GENBUNDLE_STORAGE) is an s3:// URL, uploaded there. With `dispatch`, the three generations
    run as their own deployments on the GPU work pools instead of in this process. Steps finished
    by an earlier run of the same brief are reused from the work area, not made again.
    Returns where the bundle was stored.
    """
    logger = get_run_logger()
    started = time.perf_counter()
    storage = storage_target(storage)
    out = str(out_root(out, storage))  # a local storage setting is the same as --out
    preflight(brief, storage, dispatch)
    workspace = Workspace.for_storage(out, storage)
    logger.info("bundle %s, models %s", bundle_id(brief), brief.models)
    if brief.models == "tiny":
        logger.warning(TINY_NOTE)

    with tracked("prompts") as prompt_stage:
        prompts = expand_prompts(brief)
    jobs = {m: resolve_job(brief, prompts, m) for m in ("image", "sound", "video")}
    check_jobs(jobs.values())  # the prompts as expanded (or rewritten) are what the models get

    if dispatch:  # the image pool also makes the cover's safety check, caption and trace: found finished below
        made = dispatch_generations({m: [job] for m, job in jobs.items()}, workspace, [CoverFinish.for_brief(brief)])
        made = raise_failures(made)
        cover, sound, video = made["image"][0], made["sound"][0], made["video"][0]
    else:
        cover = generate_cover.submit(jobs["image"], workspace)
        sound = generate_sound.submit(jobs["sound"], workspace)
        video = generate_video.submit(jobs["video"], workspace)
    normalised = normalise_sound.submit(sound, workspace, brief.sound.loudness, brief.sound.true_peak)
    muxed = mux_sound_onto_video.submit(video, normalised, workspace)
    poster = make_poster.submit(video, workspace)
    cover_assets, notes = finish_cover(cover, brief, workspace)

    generated = {"image": _result(cover), "sound": _result(sound), "video": _result(video)}
    assets, notes, timings = gather(
        generated, cover_assets, notes, normalised.result(), muxed.result(), poster.result(), prompt_stage.seconds
    )
    timings["total_before_store"] = time.perf_counter() - started

    with tracked("manifest"):
        manifest = write_manifest(bundle_id(brief), brief, prompts, generated, assets, notes, timings)
    with tracked("store"):
        files = {a["name"]: assets[a["role"]].path for a in manifest["assets"]}
        location = store_bundle(manifest, files, out)
    upload = None
    if is_s3_url(storage):
        with tracked("upload") as stage:
            upload = upload_bundle(location, storage)
            stage.detail = upload.summary()
        logger.info("%s: %s", upload.url, stage.detail)
    publish_summary(location, upload)
    logger.info("bundle stored at %s", upload.url if upload else location)
    return upload.url if upload else location
