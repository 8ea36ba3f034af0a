"""Loudness normalisation, measured independently with ffmpeg's EBU R128 meter."""

import hashlib

import numpy as np
import pytest
import soundfile as sf
from ffmpeg_meters import ebur128, ffmpeg_audio_line

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


# --- stereo, at another sample rate --------------------------------------------------------

STEREO_RATE = 44100


def _stereo_engine() -> np.ndarray:
    """44.1 kHz stereo, 5 s: an engine rumble louder on the left, with a DC offset on the right and
    sparse clicks on the left only, so reaching -14 LUFS needs the limiter."""
    s = np.arange(5 * STEREO_RATE) / STEREO_RATE
    rumble = np.sin(2 * np.pi * (40 + 20 * s) * s) * (1.2 + np.sin(2 * np.pi * 2 * s))
    n = np.arange(len(s))
    clicks = (n % 11025 == 5512) * 0.9 * np.where(n // 11025 % 2, -1.0, 1.0)  # alternating: no DC of their own
    left = 0.04 * rumble + 0.004 * np.random.default_rng(2).standard_normal(len(s)) + clicks
    right = 0.02 * np.roll(rumble, 441) + 0.05
    return np.stack([left, right], axis=1)


def _stereo_raw(tmp_path) -> StepResult:
    path = tmp_path / "stereo.wav"
    sf.write(path, _stereo_engine(), STEREO_RATE, subtype="FLOAT")
    return StepResult(path=str(path), key=hashlib.sha256(path.read_bytes()).hexdigest()[:24])


def _rms_db(x: np.ndarray) -> np.ndarray:
    x = x - x.mean(axis=0)
    return 20 * np.log10(np.sqrt((x**2).mean(axis=0)))


def test_stereo_at_44k1_keeps_both_channels_on_target_under_the_ceiling(tmp_path, workspace):
    raw = _stereo_raw(tmp_path)
    result = normalise_sound.fn(raw, workspace, -14.0, -1.0)
    loudness, peak = ebur128(result.path)  # ffmpeg sums the channels' loudness as BS.1770 does
    assert loudness == pytest.approx(-14.0, abs=0.5) and peak <= -1.0
    assert result.loudness_lufs == pytest.approx(loudness, abs=0.3) and result.limited
    samples, rate = sf.read(result.path)
    assert rate == 48000 and samples.shape == (5 * 48000, 2) and result.channels == 2
    assert np.abs(samples.mean(axis=0)).max() < 1e-3  # each channel's DC offset removed
    assert np.abs(samples[:10]).max() < 1e-3 and np.abs(samples[-10:]).max() < 1e-3  # both faded
    # Not downmixed, and the image kept: the left channel stays about 6 dB over the right.
    before = _rms_db(_stereo_engine())
    after = _rms_db(samples)
    assert not np.allclose(samples[:, 0], samples[:, 1], atol=1e-3)
    assert after[0] - after[1] == pytest.approx(before[0] - before[1], abs=0.5)


def test_stereo_sound_is_muxed_as_stereo_aac(tmp_path, workspace):
    from tasks.h264 import encode_h264
    from tasks.video import mux_sound_onto_video

    clip = np.repeat(np.linspace(0, 1, 16)[:, None, None, None], 3, axis=3) * np.ones((16, 32, 48, 3))
    encode_h264(clip, 8, tmp_path / "car.mp4")
    video = StepResult(path=str(tmp_path / "car.mp4"), key="stereo-mux-video")
    sound = normalise_sound.fn(_stereo_raw(tmp_path), workspace)
    muxed = mux_sound_onto_video.fn(video, sound, workspace)
    line = ffmpeg_audio_line(muxed.path)
    assert "aac" in line and "48000 Hz" in line and "stereo" in line
    decoded = tmp_path / "decoded.wav"  # decoded back by ffmpeg: two distinct channels
    run_ffmpeg(["-i", muxed.path, "-map", "0:a:0", "-c:a", "pcm_f32le", str(decoded)])
    back, rate = sf.read(decoded)
    assert rate == 48000 and back.shape[1] == 2
    assert _rms_db(back)[0] - _rms_db(back)[1] > 3.0  # still louder on the left


def test_mono_stays_mono(tmp_path, workspace):
    result = normalise_sound.fn(_raw(tmp_path, SIGNALS["noise"]), workspace)
    assert sf.info(result.path).channels == 1 and result.channels == 1
