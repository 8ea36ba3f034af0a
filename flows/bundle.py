"""The asset-bundle flow: a brief in, a stored bundle out."""

from __future__ import annotations

import time

from prefect import flow, get_run_logger

from flows.generate import dispatch_generations
from tasks.artifacts import publish_summary
from tasks.audio import generate_sound, normalise_sound
from tasks.brief import Brief
from tasks.caption import caption_cover, load_captioner
from tasks.cover import check_title_fits, title_cover
from tasks.generation import resolve_job
from tasks.image import generate_cover
from tasks.manifest import TINY_NOTE, write_manifest
from tasks.models import ENGINES, check_models_available, load_pipeline
from tasks.policy import check_prompt_policy
from tasks.progress import tracked
from tasks.prompts import expand_prompts
from tasks.s3 import check_bucket, is_s3_url, parse_s3_url
from tasks.safety import check_cover_safety, load_safety_checker, safety_checker_folder
from tasks.settings import get_settings
from tasks.storage import bundle_id, storage_target, store_bundle, upload_bundle
from tasks.trace import trace_diffusion
from tasks.video import generate_video, make_poster, mux_sound_onto_video
from tasks.workspace import Workspace


def _result(value):
    """A future's result, or the value itself when it was made elsewhere (dispatched)."""
    return value.result() if hasattr(value, "result") else value


def _font(brief: Brief) -> str | None:
    return str(brief.cover.font) if brief.cover.font else None


def preflight(brief: Brief, storage: str | None = None) -> None:
    """What can be checked before any model loads: the prompt policy, the title fits the cover,
    the weights are there, the bucket is reachable."""
    check_prompt_policy(brief)
    defaults = ENGINES["image"].defaults(brief.models)
    size = (brief.cover.width or defaults.width, brief.cover.height or defaults.height)
    check_title_fits(size, brief.title, brief.author, brief.tagline, _font(brief))
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


def _finish_cover(cover, brief: Brief, workspace: Workspace) -> tuple[dict, dict]:
    """The safety check, then title, caption and trace from the cover that passed it.

    Returns (assets by role, notes for the manifest); a cover dropped by the safety action
    leaves no cover assets at all.
    """
    settings, notes, published, flagged = get_settings(), {}, cover, False
    if settings.safety == "on":
        verdict = check_cover_safety(cover, brief.models, workspace, settings.safety_action)
        notes["safety"] = verdict.model_dump(include={"checker", "flagged", "action", "applied"})
        if verdict.applied == "dropped":
            return {}, notes
        published, flagged = verdict, verdict.flagged
    titled = title_cover.submit(published, workspace, brief.title, brief.author, brief.tagline, _font(brief))
    caption = caption_cover.submit(published, brief.cover.prompt, brief.models, workspace)
    # The trace pictures the generation itself, so it would show a flagged cover unblurred: left out then.
    trace = trace_diffusion.submit(cover, brief.models, workspace, brief.seed) if brief.trace and not flagged else None
    titled = titled.result()
    notes["cover_title"] = titled.model_dump(
        include={"band", "box", "text_color", "scrim_alpha", "contrast", "title_size", "lines"}
    )
    notes["cover_caption"] = caption.result().model_dump(include={"text", "shared_words", "flagged"})
    assets = {"cover": _result(published), "cover_titled": titled, **(trace.result().assets() if trace else {})}
    return assets, notes


def gather(generated: dict, cover_assets: dict, notes: dict, normalised, muxed, poster, prompt_seconds: float):
    """Every finished step as (assets by role, notes, timings) for the manifest."""
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
    timings |= {"normalise": normalised.seconds, "mux": muxed.seconds}
    if "cover_titled" in assets:
        timings["title"] = assets["cover_titled"].seconds
    notes = notes | {
        "sound": normalised.model_dump(
            include={"sample_rate", "duration", "loudness_lufs", "true_peak_dbtp", "gain_db", "limited"}
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
    preflight(brief, storage)
    workspace = Workspace.for_storage(out, storage)
    logger.info("bundle %s, models %s", bundle_id(brief), brief.models)
    if brief.models == "tiny":
        logger.warning(TINY_NOTE)

    with tracked("prompts") as prompt_stage:
        prompts = expand_prompts(brief)
    jobs = {m: resolve_job(brief, prompts, m) for m in ("image", "sound", "video")}

    if dispatch:
        made = dispatch_generations({m: [job] for m, job in jobs.items()}, workspace)
        cover, sound, video = made["image"][0], made["sound"][0], made["video"][0]
    else:
        cover = generate_cover.submit(jobs["image"], workspace)
        sound = generate_sound.submit(jobs["sound"], workspace)
        video = generate_video.submit(jobs["video"], workspace)
    normalised = normalise_sound.submit(sound, workspace, brief.sound.loudness, brief.sound.true_peak)
    muxed = mux_sound_onto_video.submit(video, normalised, workspace)
    poster = make_poster.submit(video, workspace)
    cover_assets, notes = _finish_cover(cover, brief, workspace)

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
