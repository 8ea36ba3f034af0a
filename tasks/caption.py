"""Alt text by image captioning: BLIP describes the generated cover.

The caption becomes the cover's alt text in the manifest and the UI summary. A faithfulness
note compares it with the prompt by the content words they share, and flags a caption that
shares none (with the tiny profile's random-weight captioner that is the usual case).
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.energy import Energy, metered
from tasks.files import atomic_path
from tasks.lazy import MODEL_LOCK
from tasks.models import model_source, runtime
from tasks.progress import tracked
from tasks.prompts import content_words
from tasks.workspace import StepResult, Workspace

CAPTION_NAME = "caption.txt"
_loaded: dict[str, tuple] = {}


def load_captioner(profile: str):
    """BLIP model and processor, loaded once per process (the same from_pretrained path for both profiles)."""
    source = model_source("caption", profile)
    with MODEL_LOCK:
        if source not in _loaded:
            from transformers import BlipForConditionalGeneration, BlipProcessor

            rt = runtime()
            model = BlipForConditionalGeneration.from_pretrained(source, dtype=rt.dtype).to(rt.device).eval()
            _loaded[source] = (model, BlipProcessor.from_pretrained(source), threading.Lock())
        return _loaded[source]


class Caption(StepResult):
    """`path` is the caption as a text file; the text itself is here too."""

    text: str
    shared_words: list[str]
    flagged: bool  # the caption shares no content word with the prompt
    compute: Energy | None = None  # the captioning run, on the runtime device


def faithfulness(caption: str, prompt: str) -> tuple[list[str], bool]:
    shared = sorted(content_words(caption) & content_words(prompt))
    return shared, not shared


@task(name="caption-cover", cache_policy=NO_CACHE)
def caption_cover(cover: StepResult, prompt: str, profile: str, workspace: Workspace) -> Caption:
    """Caption the untitled cover (greedy decoding: the same cover gives the same caption)."""
    import torch
    from PIL import Image

    step = workspace.step("caption", {"cover": cover.key, "profile": profile}, sys.modules[__name__])
    with tracked("caption") as stage:
        if done := step.load(Caption):
            stage.detail = "reused"
            return done
        model, processor, lock = load_captioner(profile)
        with Image.open(cover.path) as im:
            image = im.convert("RGB")
        # Metered inside the lock: waiting for another run's turn is not this caption's compute.
        with lock, metered(runtime().device) as energy, torch.inference_mode():
            inputs = processor(images=image, return_tensors="pt").to(model.device, model.dtype)
            ids = model.generate(**inputs, max_new_tokens=30, do_sample=False)
            text = processor.decode(ids[0], skip_special_tokens=True).strip()
        path = step.file(CAPTION_NAME)
        with atomic_path(path) as tmp:
            Path(tmp).write_text(text + "\n", encoding="utf-8")
    shared, flagged = faithfulness(text, prompt)
    caption = Caption(path=str(path), text=text, shared_words=shared, flagged=flagged, compute=energy[0])
    return step.save(caption)
