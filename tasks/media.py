"""ffmpeg and media probing: the one place that runs ffmpeg or opens media containers.

ffmpeg is the static build inside imageio-ffmpeg, always called with an argument list.
Probing uses PyAV (there is no ffprobe in that build).
"""

from __future__ import annotations

import errno
import subprocess
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path


class MediaError(RuntimeError):
    pass


def ffmpeg_exe() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def run_ffmpeg(args: list[str], *, input: bytes | None = None) -> str:
    """Run ffmpeg with an argument list; returns its log (stderr). Raises MediaError on failure."""
    no_stdin = ["-nostdin"] if input is None else []  # otherwise ffmpeg may wait on a terminal
    cmd = [ffmpeg_exe(), "-hide_banner", "-y", *no_stdin, *args]
    proc = subprocess.run(cmd, input=input, capture_output=True, check=False)
    log = proc.stderr.decode("utf-8", "replace")
    if proc.returncode != 0:
        tail = "\n".join(log.strip().splitlines()[-5:])
        if "No space left on device" in log:  # the disk is full, not the media wrong: say it as Python would
            raise OSError(errno.ENOSPC, f"No space left on device (ffmpeg): {tail}")
        raise MediaError(f"ffmpeg failed (exit {proc.returncode}): {tail}")
    return log


@dataclass(frozen=True)
class StreamInfo:
    kind: str  # "video" | "audio"
    codec: str
    duration: float  # seconds, from the stream's own timestamps
    width: int | None = None
    height: int | None = None
    fps: float | None = None
    pix_fmt: str | None = None
    sample_rate: int | None = None
    channels: int | None = None
    frames: int | None = None


def probe(path: Path) -> list[StreamInfo]:
    """The streams of a media file, with durations measured from their timestamps."""
    import av

    streams = []
    with av.open(str(path)) as container:
        for s in container.streams:
            if s.type not in ("video", "audio"):
                continue
            tb = s.time_base or Fraction(1, 1)
            duration = float(s.duration * tb) if s.duration is not None else float(container.duration or 0) / 1e6
            if s.type == "video":
                cc = s.codec_context
                streams.append(
                    StreamInfo(
                        "video",
                        cc.name,
                        duration,
                        cc.width,
                        cc.height,
                        float(s.average_rate) if s.average_rate else None,
                        cc.pix_fmt,
                        frames=s.frames or None,
                    )
                )
            else:
                cc = s.codec_context
                streams.append(StreamInfo("audio", cc.name, duration, sample_rate=cc.sample_rate, channels=cc.channels))
    return streams
