"""Encoding frames as H.264: yuv420p, faststart, the disclosure in the container's metadata."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tasks.disclosure import Disclosure, ffmpeg_metadata
from tasks.files import atomic_path
from tasks.media import run_ffmpeg


def encode_h264(frames: np.ndarray, fps: int, path: Path, disclosure: Disclosure | None = None) -> None:
    """Encode RGB frames (F, H, W, 3; floats in 0..1 or uint8) as H.264 yuv420p MP4 with faststart."""
    if frames.dtype != np.uint8:
        frames = (np.clip(frames, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    _, height, width, _ = frames.shape
    source = ["-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", str(fps), "-i", "pipe:0"]
    h264 = ["-c:v", "libx264", "-preset", "medium", "-crf", "17", "-pix_fmt", "yuv420p"]
    metadata = ffmpeg_metadata(disclosure) if disclosure is not None else []
    with atomic_path(path) as tmp:
        run_ffmpeg(
            [*source, *h264, *metadata, "-movflags", "+faststart", "-an", "-f", "mp4", str(tmp)],
            input=np.ascontiguousarray(frames).tobytes(),
        )
