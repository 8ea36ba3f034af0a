"""Prompt expansion: the brief's short prompts become full prompts and negative prompts.

Deterministic templates (each engine's own) add style, lighting, camera and quality terms, skipping
terms the prompt already says, and keep every prompt within the text encoder's context
(77 tokens, counted by the pipeline's own tokenizer). What does not fit is dropped with a
warning and recorded, never cut silently. An optional text-generation model may rewrite
the prompt first; output that looks degenerate falls back to the template.
"""

from __future__ import annotations

import re
from functools import lru_cache

from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from tasks.brief import Brief
from tasks.engines import ROLES, PromptTemplate
from tasks.lazy import MODEL_LOCK, lazy_import
from tasks.logs import run_logger
from tasks.models import load_tokenizer
from tasks.settings import get_settings

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


PromptSet = dict[str, ExpandedPrompt]  # role -> its prompt as the engine gets it


def content_words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if w not in _STOP}


class _Counter:
    """Counts tokens the way the pipeline will, special tokens included."""

    def __init__(self, tokenizer, limit: int | None = None):
        self.tokenizer = tokenizer
        # A tokenizer may report no real limit (a huge model_max_length): the engine's own bound wins.
        self.limit = min(int(tokenizer.model_max_length), limit or int(tokenizer.model_max_length))

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


def expand_one(
    role: str, template: PromptTemplate, original: str, negative: str | None, tokenizer, rewrite=None
) -> ExpandedPrompt:
    """Template expansion of one role's prompt, kept within the tokenizer's context (and the engine's limit)."""
    log = run_logger("genbundle.prompts")
    counter = _Counter(tokenizer, template.token_limit)

    base, rewritten_by = original, None
    if rewrite is not None:
        candidate = rewrite(role, original)
        if candidate is not None:
            base, rewritten_by = candidate

    base = base.strip().rstrip(".")
    base, trimmed = counter.trim(base)
    if trimmed:
        log.warning("%s prompt is longer than %d tokens; dropped: %r", role, counter.limit, trimmed)

    said = content_words(base)
    prompt, dropped = base, []
    for term in template.terms:
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
        log.warning("%s prompt: no room within %d tokens for %s", role, counter.limit, ", ".join(dropped))

    negative_prompt, negative_trimmed = counter.trim(negative if negative is not None else template.negative)
    if negative_trimmed:
        log.warning("%s negative prompt is too long; dropped: %r", role, negative_trimmed)

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

    def rewrite(role: str, original: str) -> tuple[str, str] | None:
        instruction = f"Rewrite this as a vivid, detailed prompt for {ROLES[role].describes}: {original}\nPrompt:"
        out = _generator(model)(instruction, max_new_tokens=60, do_sample=False, return_full_text=False)
        text = out[0]["generated_text"].strip().split("\n")[0].strip()
        if looks_degenerate(original, text):
            run_logger("genbundle.prompts").warning(
                "%s prompt rewrite by %s looked degenerate; using the template", role, model
            )
            return None
        return text, model

    return rewrite


@task(name="expand-prompts", cache_policy=NO_CACHE)
def expand_prompts(brief: Brief) -> PromptSet:
    """Expand each role's prompt with its engine's template and tokenizer."""
    model = get_settings().prompt_model
    rewrite = rewrite_with_model(model) if model else None
    expanded = {}
    for role in ROLES:
        eng, section = brief.engine_for(role), brief.section(role)
        tokenizer = load_tokenizer(eng.name, brief.models, section.weights)
        expanded[role] = expand_one(role, eng.prompt, section.prompt, section.negative_prompt, tokenizer, rewrite)
    return expanded
