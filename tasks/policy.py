"""The brief's policies, checked before anything is loaded or generated.

- Prompts: GENBUNDLE_BLOCKED_TERMS holds comma-separated words or phrases; a prompt (or title,
  author, tagline) that contains one as a whole word is refused with one line naming the field and
  term. The brief is checked first (`check_prompt_policy`), then the prompts the models actually get
  (`check_jobs`): expansion adds terms, a GENBUNDLE_PROMPT_MODEL rewrite may add anything, and the
  generation flow takes jobs straight from its callers.
- Licences: with GENBUNDLE_LICENCE_POLICY=commercial (or the brief's `licence_policy`), every
  engine must allow commercial use of its outputs (`check_licences`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from tasks.brief import Brief, BriefError
from tasks.engines import ROLES, engines_for
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


def check_licences(brief: Brief) -> None:
    """Raise BriefError when commercial use is asked for (GENBUNDLE_LICENCE_POLICY or the brief's
    licence_policy) and a role's engine does not allow it; the message names the field, the engine
    and the engines that would do."""
    asked_by_brief = brief.licence_policy == "commercial"
    if not asked_by_brief and get_settings().licence_policy != "commercial":
        return
    source = "licence_policy: commercial" if asked_by_brief else "GENBUNDLE_LICENCE_POLICY=commercial"
    for role in ROLES:
        engine = brief.engine_for(role)
        if engine.licence.commercial:
            continue
        named = "" if brief.section(role).engine else " (the default)"
        allowed = ", ".join(e.name for e in engines_for(role) if e.licence.commercial) or "none is registered"
        raise BriefError(
            f"{role}.engine: {engine.name}{named} is licensed {engine.licence.name}, which does not allow commercial "
            f"use, and {source} asks for it; set {role}.engine to one that does: {allowed}"
        )


def check_jobs(jobs: Iterable[Job]) -> None:
    """Raise BriefError for the first job whose prompt, as the model gets it, contains a blocked term.

    Negative prompts are not checked: naming a term there steers the model away from it.
    """
    for job in jobs:
        _refuse_blocked({f"{job.role}.prompt (as expanded)": job.prompt})
