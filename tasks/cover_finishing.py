"""The cover's finishing steps, in one place: the safety check, then title, caption and trace.

The bundle flow runs them; so does the cover's GPU pool when generations are dispatched (there
without the title: the font is the dispatcher's file), so that the CPU pool loads no model and
the bundle flow finds the model steps finished in the work area.
"""

from __future__ import annotations

import queue

from pydantic import BaseModel

from tasks.brief import Brief
from tasks.caption import caption_cover
from tasks.cover import title_cover
from tasks.engines import engine
from tasks.generation import Generated
from tasks.safety import check_cover_safety
from tasks.settings import get_settings
from tasks.trace import trace_diffusion
from tasks.workspace import Workspace


class CoverTitle(BaseModel):
    title: str
    author: str
    tagline: str | None = None
    font: str | None = None


class CoverFinish(BaseModel):
    """What the cover's finishing steps need besides the cover itself."""

    caption_prompt: str
    trace: bool
    safety: bool
    safety_action: str
    title: CoverTitle | None = None  # None: leave the title to the bundle flow

    @classmethod
    def for_brief(cls, brief: Brief, with_title: bool = True) -> CoverFinish:
        settings = get_settings()  # the bundle flow's settings decide, not the worker's
        title = CoverTitle(
            title=brief.title, author=brief.author, tagline=brief.tagline,
            font=str(brief.cover.font) if brief.cover.font else None,
        )  # fmt: skip
        return cls(
            caption_prompt=brief.cover.prompt,
            trace=brief.trace,
            safety=settings.safety == "on",
            safety_action=settings.safety_action,
            title=title if with_title else None,
        )


def submit_task(task, *args):
    """Start a Prefect task; returns its future.

    A future among the arguments goes in as opaque(future): still the task's input in the UI and
    awaited for its result, but Prefect neither reads its state from the API first (a request per
    future, to find nested runs this flow does not have) nor walks through the result it gives."""
    from prefect.futures import PrefectFuture
    from prefect.utilities.annotations import opaque

    return task.submit(*(opaque(arg) if isinstance(arg, PrefectFuture) else arg for arg in args))


def result_of(value):
    """A future's result, or the value itself when it was made elsewhere (dispatched)."""
    return value.result() if hasattr(value, "result") else value


def result_or_first_failure(wanted, others: list):
    """`wanted`'s result; but if one of `others` (futures, or plain values) fails first, its error
    at once: a run whose video failed ends then, not after the cover's work is done."""
    finished: queue.SimpleQueue = queue.SimpleQueue()
    for future in {id(f): f for f in [wanted, *others] if hasattr(f, "add_done_callback")}.values():
        future.add_done_callback(finished.put)
    while hasattr(wanted, "add_done_callback"):
        done = finished.get()
        result_of(done)  # a failed one raises its error here
        if done is wanted:
            break
    return result_of(wanted)


def finish_cover(cover: Generated, finish: CoverFinish, workspace: Workspace, submit=submit_task) -> tuple[dict, dict]:
    """The safety check, then title, caption and trace from the cover that passed it.

    Returns (assets by role, notes for the manifest); a cover dropped by the safety action leaves
    no cover assets at all. `submit(task, *args)` starts a task and returns something with
    `.result()`: Prefect's task runs, or threads in the plain-function benchmark.
    """
    assets, notes = _finish_cover(cover, finish, workspace, submit)
    if not cover.reused:  # steps from a cover this run made are this run's too (dispatched: made on the cover's pool)
        assets = {role: asset.model_copy(update={"reused": False}) for role, asset in assets.items()}
        notes = {name: note | {"reused": False} if "reused" in note else note for name, note in notes.items()}
    return assets, notes


def _finish_cover(cover: Generated, finish: CoverFinish, workspace: Workspace, submit) -> tuple[dict, dict]:
    profile, notes, published, flagged = cover.engine.profile, {}, cover, False
    if finish.safety:
        verdict = submit(check_cover_safety, cover, profile, workspace, finish.safety_action).result()
        notes["safety"] = verdict.model_dump(include={"checker", "flagged", "action", "applied", "compute", "reused"})
        if verdict.applied == "dropped":
            return {}, notes
        published, flagged = verdict, verdict.flagged
    t = finish.title
    titled = t and submit(title_cover, published, workspace, t.title, t.author, t.tagline, t.font)
    caption = submit(caption_cover, published, finish.caption_prompt, profile, workspace)
    # The trace pictures the generation itself, so it would show a flagged cover unblurred: left out then.
    wants_trace = finish.trace and not flagged and engine(cover.engine.name).traceable
    trace = submit(trace_diffusion, cover, workspace) if wants_trace else None
    assets = {"cover": result_of(published)}
    if titled:
        titled = titled.result()
        assets["cover_titled"] = titled
        notes["cover_title"] = titled.model_dump(
            include={"band", "box", "text_color", "scrim_alpha", "contrast", "title_size", "lines"}
        )
    notes["cover_caption"] = caption.result().model_dump(
        include={"text", "shared_words", "flagged", "compute", "reused"}
    )
    if trace:
        assets |= trace.result().assets()
    return assets, notes
