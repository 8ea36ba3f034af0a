"""Cost limits: a job over its engine's comfortable sizes, frames, steps or seconds of audio is
refused before any model loads, unless large jobs are allowed (GENBUNDLE_ALLOW_LARGE=1 or
--allow-large). The limits are the engines' own (`Engine.cost_limits`).

The refusal says how much work the job is against the engine's default job for the profile, by a
simple model: the work grows with pixels x frames x steps (images, video) or seconds x steps
(audio). It is a proportion, not a time; attention grows faster than the pixels, so a large size
costs at least that.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from tasks.engines import Engine, engine
from tasks.errors import InputError
from tasks.jobs import Job
from tasks.settings import get_settings

# The settings the work is proportional to, and what each counts, for the message.
WORK_FACTORS = {"width": "pixels", "height": "pixels", "frames": "frames", "duration": "seconds", "steps": "steps"}
ALLOW = "--allow-large or GENBUNDLE_ALLOW_LARGE=1"


class LargeJobError(InputError):
    """A job over its engine's comfortable limits, with large jobs not allowed."""


def work(settings: dict[str, Any]) -> float:
    """The work model: the product of the cost-driving settings a job has."""
    return math.prod(settings[name] for name in WORK_FACTORS if name in settings)


def over_limits(eng: Engine, settings: dict[str, Any], role: str) -> list[str]:
    """What in a job's settings is over its engine's limits, one "field: why" each; empty when none is."""
    limits, problems = eng.cost_limits, []
    if limits.area and "width" in settings:
        width, height = settings["width"], settings["height"]
        if width * height > math.prod(limits.area):
            area = "x".join(map(str, limits.area))
            problems.append(
                f"{role}.width x {role}.height: {width}x{height} is over {eng.name}'s comfortable limit of {area} "
                "pixels in area"
            )
    for name, unit in (("frames", ""), ("steps", ""), ("duration", " s")):
        limit = getattr(limits, name)
        if limit is not None and name in settings and settings[name] > limit:
            given = f"{settings[name]:g}{unit}"
            problems.append(f"{role}.{name}: {given} is over {eng.name}'s comfortable limit of {limit:g}{unit}")
    return problems


def describe_job(settings: dict[str, Any]) -> str:
    """A job's size in a few words: "512x768, 25 steps", "576x320, 24 frames, 25 steps", "5 s, 20 steps"."""
    parts = [f"{settings['width']}x{settings['height']}"] if "width" in settings else []
    parts += [f"{settings['frames']} frames"] if "frames" in settings else []
    parts += [f"{settings['duration']:g} s"] if "duration" in settings else []
    return ", ".join([*parts, f"{settings['steps']} steps"])


def times(ratio: float) -> str:
    """11x, 2.7x: whole numbers from 10 up, one decimal below."""
    return f"{ratio:.0f}x" if ratio >= 10 else f"{ratio:.1f}".removesuffix(".0") + "x"


def check_cost_limits(jobs: Iterable[Job]) -> None:
    """Raise LargeJobError for the first job over its engine's limits, unless large jobs are allowed:
    one line naming the fields, the limits, the work against the default job and the fix."""
    if get_settings().allow_large:
        return
    for job in jobs:
        eng, settings = engine(job.engine), {"steps": job.steps, **job.params}
        problems = over_limits(eng, settings, job.role)
        if not problems:
            continue
        default = eng.defaults[job.profile]
        model = " x ".join(dict.fromkeys(WORK_FACTORS[name] for name in WORK_FACTORS if name in settings))
        raise LargeJobError(
            f"{'; '.join(problems)}: about {times(work(settings) / work(default))} the work of its default "
            f"{job.profile} job ({describe_job(default)}; work taken as {model}); lower it, or allow large jobs "
            f"with {ALLOW}"
        )
