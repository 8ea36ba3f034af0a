"""Writing WAV files: 24-bit PCM with the disclosure in the INFO chunk."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tasks.disclosure import Disclosure, write_wav_tags
from tasks.files import atomic_path


def write_wav(path: Path, samples: np.ndarray, rate: int, disclosure: Disclosure | None) -> None:
    """24-bit PCM WAV (mono for 1-D samples, one channel per column otherwise), disclosure in its INFO chunk."""
    import soundfile as sf

    channels = 1 if samples.ndim == 1 else samples.shape[1]
    with atomic_path(path) as tmp, sf.SoundFile(tmp, "w", rate, channels, "PCM_24", format="WAV") as out:
        if disclosure is not None:
            write_wav_tags(out, disclosure)
        out.write(samples)
