"""Independent measurements with ffmpeg's own meters, for tests that check what the sound chain made."""

from __future__ import annotations

import re

from tasks.media import run_ffmpeg


def ebur128(path) -> tuple[float, float]:
    """Integrated loudness (LUFS) and true peak (dBTP) as ffmpeg's EBU R128 meter measures them."""
    log = run_ffmpeg(["-i", str(path), "-af", "ebur128=peak=true", "-f", "null", "-"])
    summary = log[log.rindex("Summary:") :]
    loudness = float(re.search(r"I:\s+(-?[\d.]+) LUFS", summary).group(1))
    peak = float(re.search(r"Peak:\s+(-?[\d.]+|-inf) dBFS", summary).group(1))
    return loudness, peak


def ffmpeg_audio_line(path) -> str:
    """The audio stream's line in ffmpeg's own report on a file, e.g. 'Audio: aac (LC) ..., 48000 Hz, stereo, ...'."""
    log = run_ffmpeg(["-i", str(path), "-map", "0:a:0", "-f", "null", "-"])
    return re.search(r"Stream #0:\d+.*?: Audio: .*", log).group(0)
