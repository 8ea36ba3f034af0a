"""Loudness normalisation, measured independently with ffmpeg's EBU R128 meter."""

import hashlib
import re

import numpy as np
import pytest
import soundfile as sf

from tasks.audio import OUTPUT_RATE, normalise_sound
from tasks.media import MediaError, run_ffmpeg
from tasks.workspace import StepResult, Workspace

RATE = 16000
t = np.arange(5 * RATE) / RATE
rng = np.random.default_rng(1)

SIGNALS = {
    # engine-like: a low harmonic rumble with a rising rev, quiet, with a DC offset
    "quiet_engine_with_dc": 0.02 * np.sin(2 * np.pi * (40 + 20 * t) * t) * (1.2 + np.sin(2 * np.pi * 2 * t)) + 0.1,
    "noise": 0.05 * rng.standard_normal(len(t)),
    "loud_sine": 0.99 * np.sin(2 * np.pi * 220 * t),
    # sparse clicks on a quiet bed: reaching -14 LUFS needs a limiter to keep the peaks under -1 dBTP
    "spiky": 0.01 * rng.standard_normal(len(t)) + (np.arange(len(t)) % 4000 == 0) * 0.9 * np.sign(np.sin(np.pi * t)),
}


def ebur128(path) -> tuple[float, float]:
    """Integrated loudness (LUFS) and true peak (dBTP) as ffmpeg measures them."""
    log = run_ffmpeg(["-i", str(path), "-af", "ebur128=peak=true", "-f", "null", "-"])
    summary = log[log.rindex("Summary:") :]
    loudness = float(re.search(r"I:\s+(-?[\d.]+) LUFS", summary).group(1))
    peak = float(re.search(r"Peak:\s+(-?[\d.]+|-inf) dBFS", summary).group(1))
    return loudness, peak


def _raw(tmp_path, samples, name="raw") -> StepResult:
    """A raw sound as the generation step would hand it on (its key names its content)."""
    path = tmp_path / f"{name}.wav"
    sf.write(path, samples, RATE, subtype="FLOAT")
    return StepResult(path=str(path), key=hashlib.sha256(path.read_bytes()).hexdigest()[:24])


@pytest.mark.parametrize("name", sorted(SIGNALS))
def test_loudness_target_under_the_true_peak_ceiling(tmp_path, workspace, name):
    result = normalise_sound.fn(_raw(tmp_path, SIGNALS[name]), workspace, -14.0, -1.0)
    loudness, peak = ebur128(result.path)
    assert loudness == pytest.approx(-14.0, abs=0.5)
    assert peak <= -1.0
    assert result.loudness_lufs == pytest.approx(loudness, abs=0.3)
    samples, rate = sf.read(result.path)
    assert rate == OUTPUT_RATE == 48000 and len(samples) == 5 * OUTPUT_RATE
    assert abs(samples.mean()) < 1e-3  # no DC offset
    assert np.abs(samples[:10]).max() < 1e-3 and np.abs(samples[-10:]).max() < 1e-3  # faded in and out
    assert np.abs(samples).max() < 1.0  # nothing clipped


def test_the_limiter_is_used_only_when_needed(tmp_path):
    spiky, sine = _raw(tmp_path, SIGNALS["spiky"], "spiky"), _raw(tmp_path, SIGNALS["loud_sine"], "sine")
    assert normalise_sound.fn(spiky, Workspace(root=str(tmp_path / "w"))).limited
    assert not normalise_sound.fn(sine, Workspace(root=str(tmp_path / "w"))).limited


def test_other_targets(tmp_path, workspace):
    result = normalise_sound.fn(_raw(tmp_path, SIGNALS["noise"]), workspace, -23.0, -2.0)
    loudness, peak = ebur128(result.path)
    assert loudness == pytest.approx(-23.0, abs=0.5) and peak <= -2.0


def test_an_unreachable_target_keeps_the_ceiling_and_says_so(tmp_path, workspace):
    # A pure tone cannot be 4 LU louder than its own peak: the ceiling wins, and the result says so.
    result = normalise_sound.fn(_raw(tmp_path, SIGNALS["loud_sine"]), workspace, -5.0, -9.0)
    loudness, peak = ebur128(result.path)
    assert peak <= -9.0 and loudness < -8.0
    assert not result.on_target and result.loudness_lufs == pytest.approx(loudness, abs=0.3)


def test_silence_is_refused(tmp_path, workspace):
    with pytest.raises(MediaError, match="silent"):
        normalise_sound.fn(_raw(tmp_path, np.zeros(len(t))), workspace)
