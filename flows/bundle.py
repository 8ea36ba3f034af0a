"""The asset-bundle flow: a brief in, a stored bundle out."""

from __future__ import annotations

import time

from prefect import flow, get_run_logger

from tasks.artifacts import publish_summary
from tasks.audio import generate_sound, normalise_sound
from tasks.brief import Brief
from tasks.cover import check_title_fits, title_cover
from tasks.generation import resolve_job
from tasks.image import generate_cover
from tasks.manifest import TINY_NOTE, write_manifest
from tasks.models import ENGINES, check_models_available
from tasks.progress import tracked
from tasks.prompts import expand_prompts
from tasks.s3 import check_bucket, is_s3_url, parse_s3_url
from tasks.storage import bundle_id, staging_dir, storage_target, store_bundle, upload_bundle
from tasks.video import generate_video, make_poster, mux_sound_onto_video


def _font(brief: Brief) -> str | None:
    return str(brief.cover.font) if brief.cover.font else None


def preflight(brief: Brief, storage: str | None = None) -> None:
    """What can be checked before any model loads: weights there, title fits, bucket reachable."""
    if is_s3_url(storage):
        check_bucket(parse_s3_url(storage))
    check_models_available(brief.models)
    defaults = ENGINES["image"].defaults(brief.models)
    size = (brief.cover.width or defaults.width, brief.cover.height or defaults.height)
    check_title_fits(size, brief.title, brief.author, brief.tagline, _font(brief))


@flow(name="asset-bundle", flow_run_name="{brief.title}")
def asset_bundle(brief: Brief, out: str | None = None, storage: str | None = None) -> str:
    """Expand the prompts, generate cover, sound and video concurrently, finish them, store the bundle.

    The bundle is stored under `out` (default GENBUNDLE_OUT) and, when `storage` (default
    GENBUNDLE_STORAGE) is an s3:// URL, uploaded there. Returns where it was stored.
    """
    logger = get_run_logger()
    started = time.perf_counter()
    storage = storage_target(storage)
    preflight(brief, storage)
    bundle, staging = bundle_id(brief), str(staging_dir(brief, out))
    logger.info("bundle %s, models %s", bundle, brief.models)
    if brief.models == "tiny":
        logger.warning(TINY_NOTE)

    with tracked("prompts") as prompt_stage:
        prompts = expand_prompts(brief)
    jobs = {m: resolve_job(brief, prompts, m) for m in ("image", "sound", "video")}

    cover = generate_cover.submit(jobs["image"], staging)
    sound = generate_sound.submit(jobs["sound"], staging)
    video = generate_video.submit(jobs["video"], staging)

    titled = title_cover.submit(cover, staging, brief.title, brief.author, brief.tagline, _font(brief))
    normalised = normalise_sound.submit(sound, staging, brief.sound.loudness, brief.sound.true_peak)
    muxed = mux_sound_onto_video.submit(video, normalised, staging)
    poster = make_poster.submit(video, staging)

    generated = {"image": cover.result(), "sound": sound.result(), "video": video.result()}
    titled, normalised, muxed, poster = titled.result(), normalised.result(), muxed.result(), poster.result()

    timings = {"prompts": prompt_stage.seconds}
    for name, g in zip(("cover", "sound", "video"), generated.values(), strict=True):
        timings[f"{name}_load"], timings[name] = g.load_seconds, g.generate_seconds
    timings |= {"title": titled.seconds, "normalise": normalised.seconds, "mux": muxed.seconds}

    assets = {
        "cover": generated["image"].path,
        "cover_titled": titled.path,
        "sound_raw": generated["sound"].path,
        "sound": normalised.path,
        "video": generated["video"].path,
        "video_with_sound": muxed.path,
        "poster": poster,
    }
    notes = {
        "cover_title": titled.model_dump(exclude={"path", "seconds"}),
        "sound": normalised.model_dump(exclude={"path", "seconds"}),
        "mux": {"audio_fit": muxed.audio_fit},
    }
    timings["total_before_store"] = time.perf_counter() - started
    with tracked("manifest"):
        names = write_manifest(bundle, brief, prompts, generated, assets, notes, timings, staging)
    with tracked("store"):
        location = store_bundle(staging, names, bundle, out)
    upload = None
    if is_s3_url(storage):
        with tracked("upload") as stage:
            upload = upload_bundle(location, storage)
            stage.detail = upload.summary()
        logger.info("%s: %s", upload.url, stage.detail)
    publish_summary(location, upload)
    logger.info("bundle stored at %s", upload.url if upload else location)
    return upload.url if upload else location
