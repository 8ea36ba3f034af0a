"""The Stable Audio Open 1.0 engine: its constraints, and a whole tiny bundle made with it, whose
44.1 kHz stereo sound stays stereo through normalisation and the mux (measured with ffmpeg)."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
from ffmpeg_meters import ebur128, ffmpeg_audio_line

from tasks.brief import BriefError, parse_brief
from tasks.engines import engine

NAME = "stable-audio-open-1.0"


def _brief(**sound):
    return parse_brief({"title": "Engines", "author": "A. Driver", "sound": {"engine": NAME, **sound}})


# --- the engine's constraints ------------------------------------------------------------------


def test_the_engine_declares_stable_audio_open():
    sa = engine(NAME)
    assert (sa.role, sa.pipeline_class, sa.weights) == (
        "sound",
        "StableAudioPipeline",
        "stabilityai/stable-audio-open-1.0",
    )
    assert (sa.licence.name, sa.licence.commercial) == ("Stability AI Community License", True)
    assert sa.licence.url.startswith("https://huggingface.co/stabilityai/stable-audio-open-1.0")
    assert (sa.denoiser, sa.traceable, sa.architecture) == ("transformer", False, "stable_audio_open_1.0")
    assert sa.resolve({}, "full").model_dump() == {
        "steps": 100, "guidance": 7.0, "scheduler": "cosine-dpm++", "duration": 5.0
    }  # fmt: skip


def test_a_duration_over_the_models_47_s_is_refused_in_one_line_naming_the_field():
    assert _brief(duration=47).sound.duration == 47
    with pytest.raises(BriefError) as refused:
        _brief(duration=48)
    message = str(refused.value)
    assert "sound.duration" in message and "47" in message and "\n" not in message
    with pytest.raises(BriefError, match=r"sound\.scheduler"):  # its own sampler only
        _brief(scheduler="pndm")


def test_the_tiny_weights_refuse_a_duration_longer_than_they_make(prefect_api):
    import torch

    from tasks.errors import UserError
    from tasks.models import load_pipeline

    pipe = load_pipeline(NAME, "tiny").pipe
    job = SimpleNamespace(params={"duration": 30.0}, prompt="car engine", negative_prompt="", steps=2, guidance=7.0)
    with pytest.raises(
        UserError, match=r"^sound\.duration: 30 s is longer than these weights make \(at most 11\.89 s\)$"
    ):
        engine(NAME).call(pipe, job, torch.Generator("cpu").manual_seed(0), lambda i: None)


# --- a whole tiny bundle ----------------------------------------------------------------------


def test_a_tiny_bundle_with_stable_audio_has_stereo_sound_all_the_way(prefect_api, tmp_path):
    from flows.bundle import asset_bundle
    from tasks.manifest import Manifest

    brief = _brief(duration=4.5)
    started = time.perf_counter()
    location = Path(asset_bundle(brief, out=str(tmp_path)))
    print(f"tiny bundle with {NAME}: {time.perf_counter() - started:.1f} s")

    raw = sf.info(location / "engine_raw.wav")  # the engine's own output
    assert (raw.samplerate, raw.channels) == (44100, 2)
    assert raw.duration == pytest.approx(4.5, abs=0.01)
    left, right = sf.read(location / "engine_raw.wav")[0].T
    assert not np.allclose(left, right)  # two channels of their own, not a mono copy

    normalised = location / "engine.wav"
    info = sf.info(normalised)
    assert (info.samplerate, info.channels) == (48000, 2)
    assert info.duration == pytest.approx(4.5, abs=0.01)
    loudness, peak = ebur128(normalised)
    assert loudness == pytest.approx(brief.sound.loudness, abs=0.5)
    assert peak <= brief.sound.true_peak

    line = ffmpeg_audio_line(location / "car_with_sound.mp4")
    assert "aac" in line and "stereo" in line

    manifest = Manifest.read(location / "bundle.json")
    run = manifest.engines["sound"]
    assert (run.name, run.licence, run.commercial_use) == (NAME, "Stability AI Community License", True)
    assert (run.pipeline_class, run.scheduler, run.scheduler_class) == (
        "StableAudioPipeline", "cosine-dpm++", "CosineDPMSolverMultistepScheduler"
    )  # fmt: skip
    assert run.params["duration"] == 4.5 and run.steps == 4
    assert manifest.post_processing["sound"]["sample_rate"] == 48000
