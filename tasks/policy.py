"""The prompt policy: a configurable block list, checked before anything is generated.

GENBUNDLE_BLOCKED_TERMS holds comma-separated words or phrases; a prompt (or title, author,
tagline) that contains one as a whole word is refused with one line naming the field and term.
The brief is checked first (`check_prompt_policy`), then the prompts the models actually get
(`check_jobs`): expansion adds terms, a GENBUNDLE_PROMPT_MODEL rewrite may add anything, and the
generation flow take jobs straight from their callers.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from tasks.brief import Brief, BriefError
from tasks.engines import ROLES
from tasks.jobs import Job
from tasks.settings import get_settings


def blocked_terms() -> list[str]:
    raw = get_settings().blocked_terms or ""
    return [t.strip().lower() for t in raw.split(",") if t.strip()]


def _refuse_blocked(fields: dict[str, str]) -> None:
    """Raise BriefError for the first field that contains a blocked term as a whole word or phrase."""
    terms = blocked_terms()
    for field, text in fields.items():
        for term in terms:
            if re.search(rf"(?<!\w){re.escape(term)}(?!\w)", text.lower()):
                raise BriefError(
                    f"{field}: refused by the prompt policy: it contains {term!r} "
                    "(the blocked terms are set by GENBUNDLE_BLOCKED_TERMS)"
                )


def check_prompt_policy(brief: Brief) -> None:
    """Raise BriefError for the first field of the brief that contains a blocked term."""
    fields = {"title": brief.title, "author": brief.author, "tagline": brief.tagline or ""}
    _refuse_blocked(fields | {f"{role}.prompt": brief.section(role).prompt for role in ROLES})


def check_jobs(jobs: Iterable[Job]) -> None:
    """Raise BriefError for the first job whose prompt, as the model gets it, contains a blocked term.

    Negative prompts are not checked: naming a term there steers the model away from it.
    """
    for job in jobs:
        _refuse_blocked({f"{job.role}.prompt (as expanded)": job.prompt})
