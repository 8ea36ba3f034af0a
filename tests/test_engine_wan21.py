"""The Wan 2.1 T2V 1.3B engine: a brief naming it is checked against its own constraints, and a whole
tiny bundle made with it has a measured H.264 clip, a muxed clip and its licence on record."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tasks.brief import BriefError, parse_brief
from tasks.engines import engine

BRIEF = {"title": "Mountain Road", "author": "W. Driver", "video": {"engine": "wan2.1-1.3b"}}


@pytest.fixture(autouse=True)
def one_thread():
    """Nothing here is timed: one torch thread leaves the other core to ffmpeg and the test server."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_a_brief_naming_wan_gets_its_own_defaults():
    brief = parse_brief(BRIEF)
    wan = brief.engine_for("video")
    assert (wan.name, wan.pipeline_class, wan.denoiser, wan.traceable) == (
        "wan2.1-1.3b",
        "WanPipeline",
        "transformer",
        False,
    )
    full = wan.resolve({}, "full")
    assert (full.width, full.height, full.frames, full.fps, full.steps, full.guidance, full.scheduler) == (
        832, 480, 81, 16, 50, 5.0, "unipc",
    )  # fmt: skip
    assert (wan.licence.name, wan.licence.commercial) == ("Apache-2.0", True)


@pytest.mark.parametrize(
    "given, message",
    [
        ({"width": 100}, r"video\.width: must be a multiple of 16 \(got 100; try 96\)"),
        ({"height": 44}, r"video\.height: must be a multiple of 16 \(got 44; try 48\)"),
        ({"frames": 10}, r"video\.frames: must be of the form 4k\+1 \(got 10; try 9\)"),
        ({"frames": 24}, r"video\.frames: must be of the form 4k\+1 \(got 24; try 25\)"),
        ({"scheduler": "ddim"}, r"video\.scheduler: Input should be 'unipc' or 'dpm\+\+'"),
    ],
)
def test_wan_refuses_what_its_pipeline_would_reject_or_round(given, message):
    with pytest.raises(BriefError, match=message) as refused:
        parse_brief(BRIEF | {"video": BRIEF["video"] | given})
    assert "\n" not in str(refused.value)  # one line: the field and the fix


def test_wan_accepts_frame_counts_of_the_form_4k_plus_1():
    brief = parse_brief(BRIEF | {"video": BRIEF["video"] | {"frames": 33, "width": 480, "height": 272}})
    assert brief.engine_for("video").resolve(brief.video.generation_settings(), "tiny").frames == 33


def test_prompt_expansion_counts_with_the_umt5_tokenizer():
    """A 512-token context, not CLIP's 77: a long prompt keeps every template term."""
    from tasks.models import load_tokenizer
    from tasks.prompts import expand_one

    wan = engine("wan2.1-1.3b")
    tokenizer = load_tokenizer(wan.name, "tiny")
    assert tokenizer.model_max_length == 512
    long_prompt = ", ".join(["a red car driving on a winding mountain road at dusk"] * 8)  # ~90 CLIP-length words
    assert len(tokenizer(long_prompt).input_ids) > 77
    expanded = expand_one("video", wan.prompt, long_prompt, None, tokenizer)
    assert all(term in expanded.prompt for term in wan.prompt.terms)
    assert len(tokenizer(expanded.prompt).input_ids) <= 512


def test_a_tiny_bundle_made_with_wan(prefect_api, tmp_path):
    from flows.bundle import asset_bundle
    from tasks.manifest import Manifest
    from tasks.media import probe

    wan = engine("wan2.1-1.3b")
    tiny = wan.defaults["tiny"]
    location = Path(asset_bundle(parse_brief(BRIEF), out=str(tmp_path)))

    (clip,) = probe(location / "car.mp4")
    assert (clip.kind, clip.codec, clip.pix_fmt) == ("video", "h264", "yuv420p")
    assert (clip.width, clip.height, clip.frames) == (tiny["width"], tiny["height"], tiny["frames"])
    assert clip.duration == pytest.approx(tiny["frames"] / tiny["fps"], abs=0.5 / tiny["fps"])

    streams = probe(location / "car_with_sound.mp4")
    assert sorted((s.kind, s.codec) for s in streams) == [("audio", "aac"), ("video", "h264")]
    video, audio = (next(s for s in streams if s.kind == kind) for kind in ("video", "audio"))
    assert video.frames == tiny["frames"]
    assert abs(audio.duration - video.duration) <= 0.05

    run = Manifest.read(location / "bundle.json").engines["video"]
    assert (run.name, run.pipeline_class, run.licence, run.commercial_use) == (
        "wan2.1-1.3b", "WanPipeline", "Apache-2.0", True,
    )  # fmt: skip
    assert (run.scheduler, run.scheduler_class, run.steps) == ("unipc", "UniPCMultistepScheduler", tiny["steps"])
    assert run.params["frames"] == tiny["frames"] and run.params["fps"] == tiny["fps"]
