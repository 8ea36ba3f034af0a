"""Sound: the generated sound's loudness normalisation, and loudness measurement.

Normalisation, in order: DC offset and sub-audio drift removed, resampled to 48 kHz, short
fades at both ends, gain to the integrated loudness target (ITU-R BS.1770 via pyloudnorm),
and, where that gain would push the true peak over the ceiling, a look-ahead peak limiter
so the target is still met without clipping.

Mono (1-D samples) and multichannel sound (`(samples, channels)`, e.g. stereo) alike: each step
works per channel, loudness sums the channels as BS.1770 does, the true peak is the highest of
any channel, and the limiter's gain is one for all channels so the stereo image does not shift.
"""

from __future__ import annotations

import sys
from math import gcd

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.logs import run_logger
from tasks.media import MediaError
from tasks.progress import tracked
from tasks.wav import write_wav
from tasks.workspace import StepResult, Workspace

SOUND_NAME = "engine.wav"
OUTPUT_RATE = 48_000
FADE_IN_S, FADE_OUT_S = 0.01, 0.05
LIMITER_LOOKAHEAD_S = 0.003
LIMITER_MARGIN_DB = 0.2  # aim this far under the ceiling: resampling and PCM rounding move peaks slightly


# --- measurement ----------------------------------------------------------------------------


def integrated_loudness(samples: np.ndarray, rate: int) -> float:
    """ITU-R BS.1770-4 integrated loudness in LUFS."""
    import pyloudnorm

    return float(pyloudnorm.Meter(rate).integrated_loudness(samples))


def _oversampled_abs(samples: np.ndarray) -> np.ndarray:
    from scipy.signal import resample_poly

    return np.abs(resample_poly(samples, 4, 1, axis=0))  # BS.1770-4 annex 2: 4x oversampling


def true_peak_db(samples: np.ndarray) -> float:
    """True peak in dBTP, estimated by 4x oversampling (the highest of any channel)."""
    peak = float(_oversampled_abs(samples).max())
    return 20 * np.log10(peak) if peak > 0 else float("-inf")


# --- processing -----------------------------------------------------------------------------


def remove_dc(samples: np.ndarray, rate: int) -> np.ndarray:
    """Subtract the mean, then a zero-phase 20 Hz high-pass for slow drift."""
    from scipy.signal import butter, sosfiltfilt

    centred = samples - samples.mean(axis=0)
    sos = butter(2, 20.0, btype="highpass", fs=rate, output="sos")
    return sosfiltfilt(sos, centred, axis=0)


def resample(samples: np.ndarray, rate: int, target: int) -> np.ndarray:
    from scipy.signal import resample_poly

    if rate == target:
        return samples
    g = gcd(rate, target)
    return resample_poly(samples, target // g, rate // g, axis=0)


def apply_fades(samples: np.ndarray, rate: int) -> np.ndarray:
    """Raised-cosine fades so the clip starts and ends at zero (no clicks)."""
    out = samples.copy()
    fade_in, fade_out = (min(int(s * rate), len(out) // 2) for s in (FADE_IN_S, FADE_OUT_S))
    if fade_in:
        out[:fade_in] *= _per_sample(_ramp(fade_in), out)
    if fade_out:
        out[-fade_out:] *= _per_sample(_ramp(fade_out)[::-1], out)
    return out


def _ramp(length: int) -> np.ndarray:
    return 0.5 - 0.5 * np.cos(np.linspace(0.0, np.pi, length))


def _per_sample(values: np.ndarray, like: np.ndarray) -> np.ndarray:
    """One value per sample, shaped to multiply every channel of `like` alike."""
    return values.reshape(-1, *[1] * (like.ndim - 1))


def limit_peaks(samples: np.ndarray, rate: int, ceiling_db: float) -> np.ndarray:
    """Look-ahead peak limiter: a smooth gain that keeps the (oversampled) peaks under the ceiling.

    The gain needed per sample is min-filtered over a window of 2K+1 and then averaged over the
    same window; the average of values each no larger than the need at the centre never exceeds
    it, so every peak is brought under the ceiling while the gain moves smoothly. With several
    channels the need is that of the loudest channel at each sample, and one gain applies to all.
    """
    from scipy.ndimage import minimum_filter1d, uniform_filter1d

    ceiling = 10 ** (ceiling_db / 20)
    oversampled = _oversampled_abs(samples)[: 4 * len(samples)]
    if oversampled.ndim > 1:
        oversampled = oversampled.max(axis=1)
    envelope = oversampled.reshape(-1, 4).max(axis=1)
    need = np.minimum(1.0, ceiling / np.maximum(envelope, 1e-12))
    window = 2 * int(LIMITER_LOOKAHEAD_S * rate) + 1
    gain = uniform_filter1d(minimum_filter1d(need, window, mode="nearest"), window, mode="nearest")
    return samples * _per_sample(np.minimum(gain, need), samples)


class NormalisedSound(StepResult):
    sample_rate: int
    channels: int = 1
    duration: float
    loudness_lufs: float
    true_peak_dbtp: float
    gain_db: float
    limited: bool
    on_target: bool = True  # within 0.5 LU of the target; False when the ceiling held it lower
    seconds: float = 0.0


def normalise(samples: np.ndarray, rate: int, target_lufs: float, ceiling_dbtp: float) -> tuple[np.ndarray, dict]:
    """Return the normalised samples at 48 kHz, with their channels, and what was measured and done."""
    if samples.ndim > 1 and samples.shape[1] == 1:
        samples = samples[:, 0]
    x = apply_fades(resample(remove_dc(samples.astype(np.float64), rate), rate, OUTPUT_RATE), OUTPUT_RATE)
    loudness = integrated_loudness(x, OUTPUT_RATE)
    if not np.isfinite(loudness) or loudness < -70:
        raise MediaError(f"the generated sound is silent ({loudness:.1f} LUFS); nothing to normalise")
    start_lufs, limited = loudness, False
    # Gain, limit, measure again: limiting lowers loudness a little, so a few rounds converge on target.
    for _ in range(8):
        gain_db = target_lufs - loudness
        x = x * 10 ** (gain_db / 20)
        if true_peak_db(x) > ceiling_dbtp - LIMITER_MARGIN_DB / 2:
            x = limit_peaks(x, OUTPUT_RATE, ceiling_dbtp - LIMITER_MARGIN_DB)
            limited = True
        loudness = integrated_loudness(x, OUTPUT_RATE)
        if abs(loudness - target_lufs) < 0.05:
            break
    peak = true_peak_db(x)
    if peak > ceiling_dbtp - LIMITER_MARGIN_DB / 2:  # should not happen; never clip, even at loudness' cost
        x = x * 10 ** ((ceiling_dbtp - LIMITER_MARGIN_DB - peak) / 20)
        loudness, peak = integrated_loudness(x, OUTPUT_RATE), true_peak_db(x)
    on_target = abs(loudness - target_lufs) <= 0.5
    if not on_target:  # a very peaky sound: the ceiling wins over the loudness target, and says so
        run_logger(__name__).warning(
            "sound reached %.1f LUFS, not the %.1f LUFS target, under the %.1f dBTP ceiling",
            loudness, target_lufs, ceiling_dbtp,
        )  # fmt: skip
    return x, {
        "loudness_lufs": float(loudness),
        "true_peak_dbtp": float(peak),
        "gain_db": float(loudness - start_lufs),  # the net change in loudness, limiting included
        "limited": limited,
        "on_target": on_target,
    }


@task(name="normalise-sound", cache_policy=NO_CACHE)
def normalise_sound(
    raw: StepResult, workspace: Workspace, target_lufs: float = -14.0, ceiling_dbtp: float = -1.0
) -> NormalisedSound:
    """Normalise the raw engine sound into a 48 kHz WAV, channels kept, at the loudness target under the ceiling."""
    import soundfile as sf

    inputs = {"raw": raw.key, "target_lufs": target_lufs, "ceiling_dbtp": ceiling_dbtp}
    step = workspace.step("normalise", inputs, sys.modules[__name__])
    with tracked("normalise") as stage:
        if done := step.load(NormalisedSound):
            stage.detail = "reused"
            return done
        samples, rate = sf.read(raw.path, dtype="float64")
        x, measured = normalise(samples, rate, target_lufs, ceiling_dbtp)
        path = step.file(SOUND_NAME)
        write_wav(path, x.astype(np.float32), OUTPUT_RATE, raw.disclosure)
    result = NormalisedSound(
        path=str(path), sample_rate=OUTPUT_RATE, channels=1 if x.ndim == 1 else x.shape[1],
        duration=len(x) / OUTPUT_RATE, disclosure=raw.disclosure, **measured,
    )  # fmt: skip
    return step.save(result.model_copy(update={"seconds": stage.seconds}))
