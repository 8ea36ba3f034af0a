"""The prompt policy: a configurable block list, checked before anything is generated.

GENBUNDLE_BLOCKED_TERMS holds comma-separated words or phrases; a prompt (or title, author,
tagline) that contains one as a whole word is refused with one line naming the field and term.
"""

from __future__ import annotations

import re

from tasks.brief import Brief, BriefError
from tasks.settings import get_settings


def blocked_terms() -> list[str]:
    raw = get_settings().blocked_terms or ""
    return [t.strip().lower() for t in raw.split(",") if t.strip()]


def check_prompt_policy(brief: Brief) -> None:
    """Raise BriefError for the first field that contains a blocked term."""
    terms = blocked_terms()
    if not terms:
        return
    fields = {
        "title": brief.title,
        "author": brief.author,
        "tagline": brief.tagline or "",
        "cover.prompt": brief.cover.prompt,
        "sound.prompt": brief.sound.prompt,
        "video.prompt": brief.video.prompt,
    }
    for field, text in fields.items():
        for term in terms:
            if re.search(rf"(?<!\w){re.escape(term)}(?!\w)", text.lower()):
                raise BriefError(
                    f"{field}: refused by the prompt policy: it contains {term!r} "
                    "(the blocked terms are set by GENBUNDLE_BLOCKED_TERMS)"
                )
