"""Disk space for a bundle: checked before a run, and one clear line when the disk fills during one.

The estimate is an upper bound from the jobs' sizes, not a measurement: pictures at raw RGB
size (placeholder noise does not compress), sound at 24-bit PCM, video at a quarter of its raw
frames, each file counted once in the work area and once in the stored bundle, plus a margin.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

from tasks.errors import InputError, UserError
from tasks.files import nearest_existing

RAW_SOUND_BYTES_PER_S = 48_000 * 2 * 3  # the generated sound: up to 48 kHz stereo, 24-bit
FINISHED_SOUND_BYTES_PER_S = 48_000 * 3  # the normalised sound: 48 kHz mono, 24-bit
TRACE_PICTURES = 10  # the forward and reverse trace pictures hold about ten covers' worth of pixels
MARGIN = 1.25


def estimate_bundle_bytes(jobs: dict) -> int:
    """About how many bytes a bundle of these jobs (Job by role) writes under the output folder."""
    cover, sound, video = (jobs[role].params for role in ("cover", "sound", "video"))
    picture = cover["width"] * cover["height"] * 3
    covers = 3 * picture + 2 * picture  # generated, safety-checked and titled; the bundle keeps two
    trace = 2 * TRACE_PICTURES * picture
    seconds = sound["duration"]
    sounds = 2 * seconds * (RAW_SOUND_BYTES_PER_S + FINISHED_SOUND_BYTES_PER_S)
    frame = video["width"] * video["height"] * 3
    clips = 2 * 2 * video["frames"] * frame // 4 + 2 * frame  # the clip, the clip with sound, the poster
    return int(MARGIN * (covers + trace + sounds + clips))


def mib(size: float) -> str:
    return f"{size / 2**20:.1f} MiB"


def check_free_space(folder: Path, needed: int, name: str) -> None:
    """Refuse, before any model loads, an output folder on a disk without room for the bundle."""
    free = shutil.disk_usage(nearest_existing(folder)).free
    if free < needed:
        raise InputError(
            f"{name}: {folder} has {mib(free)} free; this brief's bundle needs about {mib(needed)} "
            f"(work area and bundle): free some space or give another {name}"
        )


def disk_full(err: BaseException, folder: Path, needed: int) -> UserError | None:
    """The one line for a disk that filled during the run (None for any other error)."""
    if not isinstance(err, OSError) or err.errno != errno.ENOSPC:
        return None
    free = shutil.disk_usage(nearest_existing(folder)).free
    return UserError(
        f"no space left in {folder} ({mib(free)} free; this brief's bundle needs about {mib(needed)}): "
        "free some space and run the same command again; the finished steps are kept"
    )
