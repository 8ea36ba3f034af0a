"""Prompt expansion: the brief's short prompts become full prompts and negative prompts.

Deterministic templates add style, lighting, camera and quality terms per modality, skipping
terms the prompt already says, and keep every prompt within the text encoder's context
(77 tokens, counted by the pipeline's own tokenizer). What does not fit is dropped with a
warning and recorded, never cut silently. An optional text-generation model may rewrite
the prompt first; output that looks degenerate falls back to the template.
"""

from __future__ import annotations

import re
from functools import lru_cache

from prefect import task
from pydantic import BaseModel

from tasks.brief import Brief
from tasks.logs import run_logger
from tasks.models import MODEL_LOCK, Modality, lazy_import, load_tokenizer
from tasks.settings import get_settings

# Terms in priority order: when the context is short, the last ones are dropped first.
TEMPLATES: dict[Modality, dict] = {
    "image": {
        "terms": [
            "fantasy book cover illustration",  # style
            "dramatic rim lighting",  # lighting
            "vertical composition with clear space for the title",  # camera / framing
            "highly detailed",  # quality
            "sharp focus",
            "masterpiece",
        ],
        # Lettering is typeset afterwards: generated text on the cover only gets in the way.
        "negative": "text, letters, watermark, signature, logo, blurry, low quality, jpeg artifacts, deformed",
    },
    "sound": {
        "terms": ["realistic", "close microphone", "high quality studio recording", "clear"],
        "negative": "low quality, noise, hiss, distortion, clipping, music, speech",
    },
    "video": {
        "terms": [
            "cinematic",
            "golden hour lighting",
            "smooth tracking shot",
            "high detail",
            "sharp focus",
        ],
        "negative": "blurry, flicker, jitter, distorted, low quality, watermark, text, still frame",
    },
}

_WORD = re.compile(r"[a-z0-9]+")
_STOP = {"a", "an", "the", "of", "and", "with", "on", "in", "at", "to", "for", "by", "from", "into", "its"}


class ExpandedPrompt(BaseModel):
    original: str
    prompt: str
    negative_prompt: str
    tokens: int
    negative_tokens: int
    token_limit: int
    dropped_terms: list[str] = []
    trimmed: str | None = None  # words of the original prompt that did not fit
    negative_trimmed: str | None = None  # words of the negative prompt that did not fit
    rewritten_by: str | None = None  # the text-generation model that rewrote the prompt, if any


class PromptSet(BaseModel):
    image: ExpandedPrompt
    sound: ExpandedPrompt
    video: ExpandedPrompt

    def for_modality(self, modality: Modality) -> ExpandedPrompt:
        return getattr(self, modality)


def content_words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if w not in _STOP}


class _Counter:
    """Counts tokens the way the pipeline will, special tokens included."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.limit = int(tokenizer.model_max_length)

    def count(self, text: str) -> int:
        return len(self.tokenizer(text, truncation=False).input_ids)

    def fits(self, text: str) -> bool:
        return self.count(text) <= self.limit

    def trim(self, text: str) -> tuple[str, str | None]:
        """Drop whole words from the end until the text fits; returns (kept, dropped)."""
        words = text.split()
        for n in range(len(words), 0, -1):
            kept = " ".join(words[:n])
            if self.fits(kept):
                return kept, (" ".join(words[n:]) or None)
        return "", text


def expand_one(modality: Modality, original: str, negative: str | None, tokenizer, rewrite=None) -> ExpandedPrompt:
    """Template expansion of one prompt, kept within the tokenizer's context."""
    log = run_logger("genbundle.prompts")
    counter = _Counter(tokenizer)
    template = TEMPLATES[modality]

    base, rewritten_by = original, None
    if rewrite is not None:
        candidate = rewrite(modality, original)
        if candidate is not None:
            base, rewritten_by = candidate

    base = base.strip().rstrip(".")
    base, trimmed = counter.trim(base)
    if trimmed:
        log.warning("%s prompt is longer than %d tokens; dropped: %r", modality, counter.limit, trimmed)

    said = content_words(base)
    prompt, dropped = base, []
    for term in template["terms"]:
        words = content_words(term)
        if len(words & said) * 2 >= len(words):
            continue  # the prompt already says most of it
        candidate = f"{prompt}, {term}"
        if counter.fits(candidate):
            prompt = candidate
            said |= content_words(term)
        else:
            dropped.append(term)
    if dropped:
        log.warning("%s prompt: no room within %d tokens for %s", modality, counter.limit, ", ".join(dropped))

    negative_prompt, negative_trimmed = counter.trim(negative if negative is not None else template["negative"])
    if negative_trimmed:
        log.warning("%s negative prompt is too long; dropped: %r", modality, negative_trimmed)

    return ExpandedPrompt(
        original=original,
        prompt=prompt,
        negative_prompt=negative_prompt,
        tokens=counter.count(prompt),
        negative_tokens=counter.count(negative_prompt),
        token_limit=counter.limit,
        dropped_terms=dropped,
        trimmed=trimmed,
        negative_trimmed=negative_trimmed,
        rewritten_by=rewritten_by,
    )


# --- optional rewriting by a text-generation model ------------------------------------------

_KIND = {"image": "a book cover illustration", "sound": "a sound effect", "video": "a short film shot"}


@lru_cache(maxsize=2)
def _generator(model: str):
    with MODEL_LOCK:
        return lazy_import("transformers", "pipeline")("text-generation", model=model)


def looks_degenerate(original: str, text: str) -> bool:
    """Empty, too short, repetitive, not words, or unrelated to the original prompt."""
    words = _WORD.findall(text.lower())
    if len(words) < 3 or len(text) > 600:
        return True
    if len(set(words)) < 0.5 * len(words):
        return True
    letters = sum(c.isalpha() or c.isspace() or c in ",.-'" for c in text)
    if letters < 0.9 * len(text):
        return True
    return not (content_words(text) & content_words(original))


def rewrite_with_model(model: str):
    """A rewrite function for expand_one using a transformers text-generation model."""

    def rewrite(modality: Modality, original: str) -> tuple[str, str] | None:
        instruction = f"Rewrite this as a vivid, detailed prompt for {_KIND[modality]}: {original}\nPrompt:"
        out = _generator(model)(instruction, max_new_tokens=60, do_sample=False, return_full_text=False)
        text = out[0]["generated_text"].strip().split("\n")[0].strip()
        if looks_degenerate(original, text):
            run_logger("genbundle.prompts").warning(
                "%s prompt rewrite by %s looked degenerate; using the template", modality, model
            )
            return None
        return text, model

    return rewrite


@task(name="expand-prompts")
def expand_prompts(brief: Brief) -> PromptSet:
    """Expand the brief's three prompts with each pipeline's own tokenizer."""
    model = get_settings().prompt_model
    rewrite = rewrite_with_model(model) if model else None
    specs = {"image": brief.cover, "sound": brief.sound, "video": brief.video}
    return PromptSet(
        **{
            m: expand_one(m, spec.prompt, spec.negative_prompt, load_tokenizer(m, brief.models), rewrite)
            for m, spec in specs.items()
        }
    )
