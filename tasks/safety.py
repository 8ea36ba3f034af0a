"""The cover's safety check: Stable Diffusion's own safety checker, and a setting for a flag.

The full profile uses the checker shipped in the Stable Diffusion folder (`safety_checker/`,
`feature_extractor/`); the tiny profile a tiny one built offline and saved in the same layout.
A flagged cover is, per GENBUNDLE_SAFETY_ACTION, blurred (default), left out of the bundle
(with everything drawn from it), or the run fails. The verdict goes into the manifest.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

from PIL import Image, ImageFilter
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.disclosure import png_info
from tasks.energy import Energy, metered
from tasks.errors import UserError
from tasks.files import atomic_path
from tasks.lazy import MODEL_LOCK
from tasks.models import model_source, runtime
from tasks.progress import tracked
from tasks.workspace import StepResult, Workspace

_loaded: dict[str, tuple] = {}


def safety_checker_folder(profile: str) -> str:
    """The folder holding `safety_checker/` and `feature_extractor/`; a clear error when there is none."""
    root = model_source("safety", profile)
    if not (Path(root) / "safety_checker").is_dir():
        raise UserError(
            f"no safety checker in {root}/safety_checker: point GENBUNDLE_SAFETY_MODEL at a Stable Diffusion "
            "folder that has one, or set GENBUNDLE_SAFETY=off"
        )
    return root


def load_safety_checker(profile: str):
    """(checker, image processor, lock), loaded once per process."""
    root = safety_checker_folder(profile)
    with MODEL_LOCK:
        if root not in _loaded:  # imported under the lock too: see models.lazy_import
            from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
            from transformers import CLIPImageProcessor

            rt = runtime()
            checker = StableDiffusionSafetyChecker.from_pretrained(root, subfolder="safety_checker", dtype=rt.dtype)
            processor = CLIPImageProcessor.from_pretrained(root, subfolder="feature_extractor")
            _loaded[root] = (checker.to(rt.device).eval(), processor, threading.Lock())
        return _loaded[root]


class SafetyVerdict(StepResult):
    """`path` is the cover to publish (blurred when flagged and the action is blur)."""

    checker: str
    flagged: bool
    action: str  # what the settings asked for on a flag
    applied: str  # "none", "blurred" or "dropped"
    compute: Energy | None = None  # the checker's run, on the runtime device


@task(name="check-cover-safety", cache_policy=NO_CACHE)
def check_cover_safety(cover: StepResult, profile: str, workspace: Workspace, action: str = "blur") -> SafetyVerdict:
    """Run the safety checker on the cover and apply the action when it flags it."""
    import numpy as np
    import torch

    step = workspace.step("safety", {"cover": cover.key, "profile": profile, "action": action}, sys.modules[__name__])
    with tracked("safety") as stage:
        if done := step.load(SafetyVerdict):
            stage.detail = "reused"
            return done
        checker, processor, lock = load_safety_checker(profile)
        with Image.open(cover.path) as im:
            image = im.convert("RGB")
        # Metered inside the lock: waiting for another run's turn is not this check's compute.
        with lock, metered(runtime().device) as energy, torch.inference_mode():
            clip_input = processor(images=image, return_tensors="pt").pixel_values.to(checker.device, checker.dtype)
            _, flags = checker(clip_input=clip_input, images=np.asarray(image, dtype=np.float32)[None] / 255)
        flagged = bool(flags[0])
        stage.detail = "flagged" if flagged else "passed"
        if flagged and action == "fail":
            raise UserError("the cover was flagged by the safety checker; the run stops (GENBUNDLE_SAFETY_ACTION=fail)")
        applied = {"blur": "blurred", "drop": "dropped"}[action] if flagged else "none"
        path = step.file(Path(cover.path).name)
        with atomic_path(path) as tmp:
            published = image.filter(ImageFilter.GaussianBlur(max(image.size) / 12)) if applied == "blurred" else image
            info = png_info(cover.disclosure) if cover.disclosure else None
            published.save(tmp, format="PNG", pnginfo=info)
    verdict = SafetyVerdict(
        path=str(path), checker=type(checker).__name__, flagged=flagged, action=action, applied=applied,
        compute=energy[0], disclosure=cover.disclosure,
    )  # fmt: skip
    return step.save(verdict)
