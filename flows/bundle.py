"""The asset-bundle flow: a brief in, a stored bundle out.

    prompts -> jobs -> generations -> finishing -> signing -> manifest -> page -> store -> upload -> summary

Each node is a helper below (or a task in tasks/); the flow body reads like that line.
"""

from __future__ import annotations

import time
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.utilities.annotations import opaque

from flows.generate import dispatch_generations, raise_failures
from tasks.artifacts import publish_summary
from tasks.audio import normalise_sound
from tasks.brief import Brief
from tasks.caption import load_captioner
from tasks.catalogue import BundleFile, make_manifest
from tasks.cost_limits import check_cost_limits
from tasks.cover import check_title_fits
from tasks.cover_finishing import CoverFinish, finish_cover, result_of, result_or_first_failure, submit_task
from tasks.engines import ROLES, engine
from tasks.generation import Generated, generate
from tasks.jobs import Job, bundle_id, resolve_jobs
from tasks.manifest import TINY_NOTE
from tasks.models import check_prompt_model, extra_weights_source, load_pipeline, model_source, runtime
from tasks.page import render_page
from tasks.policy import check_jobs, check_licences, check_prompt_policy
from tasks.progress import tracked
from tasks.prompts import expand_prompts
from tasks.provenance import check_signing, sign_assets
from tasks.s3 import check_bucket, is_s3_url, parse_s3_url
from tasks.safety import load_safety_checker, safety_checker_folder
from tasks.settings import get_settings
from tasks.space import check_free_space, estimate_bundle_bytes
from tasks.storage import out_root, storage_target, store_bundle, upload_bundle
from tasks.trace import TRACE_ROLES
from tasks.video import make_poster, mux_sound_onto_video
from tasks.workspace import Workspace


def runtime_label(dispatch: bool) -> str:
    """Where the generations run, for the bundle id: this process's device and dtype, or the GPU pools'."""
    if dispatch:
        return "dispatched"
    rt = runtime()
    return f"{rt.device}/{rt.dtype_name}"


def preflight(brief: Brief, storage: str | None = None, dispatch: bool = False, out: Path | None = None) -> None:
    """What can be checked before any model loads: the prompt policy, the jobs within their engines'
    cost limits, the title fits the cover,
    the weights are there, the bucket is reachable, the output folder `out` has room for the bundle.

    Dispatched, the weights are not looked for here: the GPU pools load every model (the cover's
    pool the safety checker and captioner too) and a worker without them fails its job, saying so.
    """
    check_prompt_policy(brief)
    check_licences(brief)
    check_cost_limits(resolve_jobs(brief).values())  # a 2048x2048 cover is refused, unless large jobs are allowed
    check_prompt_model()  # a bad GENBUNDLE_PROMPT_MODEL: now, not after the hub's retries
    check_signing()  # GENBUNDLE_C2PA_CERT/KEY: both or neither, readable, matching, accepted by c2pa
    cover = resolve_jobs(brief)["cover"]
    size = (cover.params["width"], cover.params["height"])
    check_title_fits(
        size, brief.title, brief.author, brief.tagline, str(brief.cover.font) if brief.cover.font else None
    )
    if not dispatch and brief.models == "full":
        for job in resolve_jobs(brief).values():
            model_source(job.engine, "full", job.weights_override)
            for name in engine(job.engine).extra_weights:  # e.g. a LoRA adapter
                extra_weights_source(job.engine, name)
        model_source("caption", "full")
        if get_settings().safety == "on":
            safety_checker_folder("full")
    if is_s3_url(storage):
        check_bucket(parse_s3_url(storage))
    if out is not None:
        check_free_space(out, estimate_bundle_bytes(resolve_jobs(brief)), "the output folder (--out, GENBUNDLE_OUT)")


def load_models(brief: Brief) -> None:
    """Load every model the bundle uses into this process ahead of its run; the tasks reuse them."""
    for job in resolve_jobs(brief).values():
        load_pipeline(job.engine, job.profile, job.weights_override)
    load_captioner(brief.models)
    if get_settings().safety == "on":
        load_safety_checker(brief.models)


def generate_all(
    jobs: dict[str, Job], workspace: Workspace, finish: CoverFinish, dispatch: bool = False, submit=submit_task
) -> dict:
    """Every role's generation: started concurrently here (futures), or made on the GPU pools (results).
    Dispatched, the cover's pool also makes its finishing model steps: found finished afterwards.
    `submit(task, *args)` starts a task: Prefect's task runs, or threads (the plain-function benchmark)."""
    if dispatch:
        untitled = finish.model_copy(update={"title": None})
        made = raise_failures(dispatch_generations({r: [job] for r, job in jobs.items()}, workspace, [untitled]))
        return {role: results[0] for role, results in made.items()}
    return {role: submit(generate, job, workspace) for role, job in jobs.items()}


def finish_all(brief: Brief, generated: dict, finish: CoverFinish, workspace: Workspace, submit=submit_task):
    """The finishing steps: loudness, mux and poster beside the cover's (safety, title, caption, trace).
    Returns (cover assets, notes, normalised sound, muxed clip, poster)."""
    sound, video = generated["sound"], generated["video"]
    normalised = submit(normalise_sound, sound, workspace, brief.sound.loudness, brief.sound.true_peak)
    muxed = submit(mux_sound_onto_video, video, normalised, workspace)
    poster = submit(make_poster, video, workspace)
    cover = result_or_first_failure(generated["cover"], [sound, video])
    cover_assets, notes = finish_cover(cover, finish, workspace, submit)
    # A failed generation leaves the steps after it never run: its own error is the one to report.
    result_of(sound), result_of(video)
    return cover_assets, notes, normalised.result(), muxed.result(), poster.result()


def gather(generated: dict[str, Generated], cover_assets: dict, notes: dict, normalised, muxed, poster, prompt_seconds):
    """Every finished file as a BundleFile (role, step, the generations it holds), the notes and the timings.

    The timings stop before the manifest: it is written last and holds them, so writing and storing
    it cannot be in it (the flow's `total_before_store` says where the clock stopped).
    """
    files = [BundleFile(role, step, ("cover",)) for role, step in cover_assets.items()]
    files += [
        BundleFile("sound_raw", generated["sound"], ("sound",)),
        BundleFile("sound", normalised, ("sound",)),
        BundleFile("video", generated["video"], ("video",)),
        BundleFile("video_with_sound", muxed, ("video", "sound")),
        BundleFile("poster", poster, ("video",)),
    ]
    timings = {"prompts": prompt_seconds}
    for role, made in generated.items():
        timings[f"{role}_load"], timings[role] = made.load_seconds, made.generate_seconds
    timings |= {"normalise": normalised.seconds, "mux": muxed.seconds, "poster": poster.seconds}
    if "cover_titled" in cover_assets:
        timings["title"] = cover_assets["cover_titled"].seconds
    for stage, note in (("caption", "cover_caption"), ("safety", "safety")):
        if notes.get(note, {}).get("compute"):
            timings[stage] = notes[note]["compute"]["seconds"]
    traced = [cover_assets[r].compute.seconds for r in TRACE_ROLES if r in cover_assets and cover_assets[r].compute]
    if traced:
        timings["trace"] = sum(traced)
    notes = notes | {
        "sound": normalised.model_dump(
            include={"sample_rate", "duration", "loudness_lufs", "true_peak_dbtp", "gain_db", "limited", "on_target"}
        ),
        "mux": {"audio_fit": muxed.audio_fit},
    }
    return files, notes, timings


def paths_by_name(manifest, files: list[BundleFile]) -> dict[str, str]:
    """Each asset's file name in the bundle -> where it lies in the work area."""
    return {asset.name: file.step.path for asset, file in zip(manifest.assets, files, strict=True)}


@flow(name="asset-bundle", flow_run_name="{brief.title}")
def asset_bundle(brief: Brief, out: str | None = None, storage: str | None = None, dispatch: bool = False) -> str:
    """Expand the prompts, generate every role concurrently, finish them, store the bundle.

    The bundle is stored under `out` (default GENBUNDLE_OUT) and, when `storage` (default
    GENBUNDLE_STORAGE) is an s3:// URL, uploaded there. With `dispatch`, the generations run as
    deployments on the roles' GPU work pools instead of in this process. Steps finished by an
    earlier run of the same brief are reused from the work area, not made again.
    Returns where the bundle was stored.
    """
    logger = get_run_logger()
    started = time.perf_counter()
    storage = storage_target(storage)
    out = str(out_root(out, storage))  # a local storage setting is the same as --out
    preflight(brief, storage, dispatch, Path(out))
    workspace = Workspace.for_storage(out, storage)
    bundle = bundle_id(brief, runtime_label(dispatch))
    logger.info("bundle %s, models %s", bundle, brief.models)
    if brief.models == "tiny":
        logger.warning(TINY_NOTE)

    with tracked("prompts") as prompt_stage:
        prompts = expand_prompts(brief)
    jobs = resolve_jobs(brief, prompts)
    check_jobs(jobs.values())  # the prompts as expanded (or rewritten) are what the models get
    finish = CoverFinish.for_brief(brief)
    futures = generate_all(jobs, workspace, finish, dispatch)
    cover_assets, notes, normalised, muxed, poster = finish_all(brief, futures, finish, workspace)
    generated = {role: result_of(futures[role]) for role in ROLES}
    files, notes, timings = gather(generated, cover_assets, notes, normalised, muxed, poster, prompt_stage.seconds)
    files = sign_assets(files, generated, workspace)  # C2PA credentials, before the manifest hashes the files
    timings["total_before_store"] = time.perf_counter() - started

    # opaque(x): Prefect records the task that made x as this call's input without walking all of x's
    # fields for other tasks' results (about 10 ms of this thread for a manifest; the graph keeps its edges).
    with tracked("manifest"):
        manifest = make_manifest(bundle, brief, prompts, generated, opaque(files), notes, timings)
    page = render_page(manifest)  # index.html, the bundle's page: shows the manifest's hashes, stored before it
    upload = None
    # Two runs of one brief at once (a schedule and a trigger) store and upload it in turn: the second
    # finds the first's bundle complete and changes nothing, instead of replacing files the first uploads.
    with workspace.lock(bundle):
        with tracked("store"):
            location = store_bundle(opaque(manifest), paths_by_name(manifest, files), out, page)
        if is_s3_url(storage):
            with tracked("upload") as stage:
                upload = upload_bundle(location, storage)
                stage.detail = upload.summary()
            logger.info("%s: %s", upload.url, stage.detail)
    publish_summary(opaque(manifest), location, upload)
    logger.info("bundle stored at %s", upload.url if upload else location)
    return upload.url if upload else location
