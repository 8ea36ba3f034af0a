"""Cataloguing a bundle: each file measured (hash, size, dimensions, duration, loudness), its
licences, the compute it took, all written into the manifest."""

from __future__ import annotations

import platform
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from PIL import Image
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.audio import integrated_loudness, true_peak_db
from tasks.brief import Brief
from tasks.energy import OVERLAP_NOTE, estimate
from tasks.files import sha256_file
from tasks.generation import Generated
from tasks.manifest import (
    DISCLOSURE,
    TINY_NOTE,
    Asset,
    AssetLicence,
    Credentials,
    Manifest,
    cover_alt_text,
    credentials_note,
)
from tasks.media import probe
from tasks.prompts import PromptSet
from tasks.workspace import StepResult

MEDIA_TYPES = {".png": "image/png", ".wav": "audio/wav", ".mp4": "video/mp4", ".json": "application/json"}
# Model runs that make no file of their own hand their compute (and whether they were reused) in their notes.
MODEL_STEP_NOTES = ("cover_caption", "safety")


@dataclass(frozen=True)
class BundleFile:
    """A file of the bundle: its role, the step that made it, and the generations it was made from."""

    role: str
    step: StepResult
    sources: tuple[str, ...]  # generated roles whose output it holds (their engines' licences apply)
    signer: str | None = None  # who signed its C2PA content credentials (tasks/provenance.py); None: unsigned


def describe_asset(path: Path, role: str) -> Asset:
    """Name, type, size, hash and the measured media properties of one file."""
    path = Path(path)
    entry = {
        "name": path.name,
        "role": role,
        "media_type": MEDIA_TYPES.get(path.suffix.lower(), "application/octet-stream"),
        "bytes": path.stat().st_size,
        "sha256": sha256_file(path),
    }
    if path.suffix.lower() == ".png":
        with Image.open(path) as im:
            entry |= {"width": im.width, "height": im.height}
    elif path.suffix.lower() == ".wav":
        import soundfile as sf

        samples, rate = sf.read(path, dtype="float64")
        entry |= {
            "duration": round(len(samples) / rate, 4),
            "sample_rate": rate,
            "channels": 1 if samples.ndim == 1 else samples.shape[1],
            "loudness_lufs": round(integrated_loudness(samples, rate), 2),
            "true_peak_dbtp": round(true_peak_db(samples), 2),
        }
    elif path.suffix.lower() == ".mp4":
        streams = probe(path)
        entry["streams"] = [
            {k: v for k, v in vars(s).items() if v is not None} | {"duration": round(s.duration, 4)} for s in streams
        ]
        video = next((s for s in streams if s.kind == "video"), None)
        if video:
            entry |= {
                "width": video.width,
                "height": video.height,
                "fps": video.fps,
                "duration": round(video.duration, 4),
            }
    return Asset(**entry)


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for dist in ("genbundle", "torch", "diffusers", "transformers", "prefect"):
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[dist] = "not installed"
    return found


def compute_record(files: list[BundleFile], generated: dict[str, Generated], notes: dict) -> dict:
    """Seconds and Wh per asset and per model step that makes no file (caption, safety check).

    Generations and the other model steps as measured or estimated on their device, post-processing
    on the CPU. Reused steps cost nothing this run; their first cost is kept.
    """
    per_asset = {}
    for file in files:
        step = file.step
        if isinstance(step, Generated) and step.engine.energy is not None:
            energy = step.engine.energy
        elif getattr(step, "compute", None) is not None:  # a model step, metered on its device
            energy = step.compute
        elif getattr(step, "seconds", None):  # post-processing, on the CPU
            energy = estimate(step.seconds, "cpu")
        else:
            continue
        per_asset[file.role] = energy.model_dump() | {"reused": step.reused}
    per_step = {
        name: notes[name]["compute"] | {"reused": notes[name].get("reused", False)}
        for name in MODEL_STEP_NOTES
        if notes.get(name, {}).get("compute")
    }
    entries = [*per_asset.values(), *per_step.values()]
    return {
        "per_asset": per_asset,
        "per_step": per_step,
        "total_wh": round(sum(e["energy_wh"] for e in entries), 6),
        "this_run_wh": round(sum(e["energy_wh"] for e in entries if not e["reused"]), 6),
        "note": OVERLAP_NOTE,
    }


def _licences(sources: tuple[str, ...], generated: dict[str, Generated]) -> list[AssetLicence]:
    return [
        AssetLicence(engine=run.name, licence=run.licence, url=run.licence_url, commercial_use=run.commercial_use)
        for run in (generated[role].engine for role in sources)
    ]


@task(name="write-manifest", cache_policy=NO_CACHE)
def make_manifest(
    bundle: str,
    brief: Brief,
    prompts: PromptSet,
    generated: dict[str, Generated],
    files: list[BundleFile],
    notes: dict,
    timings: dict[str, float],
) -> Manifest:
    """The manifest of a bundle, every file measured; `store_bundle` writes it, last."""
    assets = []
    for file in files:
        asset = describe_asset(Path(file.step.path), file.role)
        asset.licences = _licences(file.sources, generated)
        asset.credentials = Credentials(signed=file.signer is not None, signer=file.signer)
        if "cover_caption" in notes and file.sources == ("cover",) and asset.media_type == "image/png":
            asset.alt_text = cover_alt_text(notes["cover_caption"]["text"], brief.models)  # the caption is the alt text
        assets.append(asset)
    return Manifest(
        bundle_id=bundle,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        disclosure=DISCLOSURE,
        placeholder=TINY_NOTE if brief.models == "tiny" else None,
        credentials=credentials_note([f.signer for f in files]),
        brief=brief.model_dump(mode="json"),
        prompts=prompts,
        assets=assets,
        engines={role: g.engine for role, g in generated.items()},
        post_processing={  # the model steps' compute is in "compute"
            k: {f: v for f, v in note.items() if f not in ("compute", "reused")} if k in MODEL_STEP_NOTES else note
            for k, note in notes.items()
        },
        # "reused": found finished in the work area (an earlier, interrupted run made it).
        steps={file.role: "reused" if file.step.reused else "made" for file in files},
        compute=compute_record(files, generated, notes),
        timings_seconds={k: round(v, 3) for k, v in timings.items()},
        versions=versions(),
    )
