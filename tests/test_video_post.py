"""Encoding, muxing and the poster frame, checked on the files ffmpeg wrote."""

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from tasks.h264 import encode_h264
from tasks.media import probe
from tasks.video import make_poster, mux_sound_onto_video
from tasks.workspace import StepResult


def _video(tmp_path, frames=24, fps=8) -> StepResult:
    rng = np.random.default_rng(0)
    clip = np.repeat(np.linspace(0, 1, frames)[:, None, None, None], 3, axis=3) * np.ones((frames, 40, 64, 3))
    clip = np.clip(clip + 0.05 * rng.standard_normal(clip.shape), 0, 1)
    path = tmp_path / "car.mp4"
    encode_h264(clip, fps, path)
    return StepResult(path=str(path), key=f"video-{frames}-{fps}")


def _sound(tmp_path, seconds) -> StepResult:
    rate = 48000
    x = 0.3 * np.sin(2 * np.pi * 80 * np.arange(int(seconds * rate)) / rate)
    path = tmp_path / "engine.wav"
    sf.write(path, x, rate, subtype="PCM_24")
    return StepResult(path=str(path), key=f"sound-{seconds}")


def _top_level_boxes(path) -> list[str]:
    data, boxes, i = Path(path).read_bytes(), [], 0
    while i + 8 <= len(data):
        size = int.from_bytes(data[i : i + 4], "big")
        boxes.append(data[i + 4 : i + 8].decode("latin-1"))
        if size < 8:
            break
        i += size
    return boxes


def test_encoded_video_is_h264_yuv420p_with_faststart(tmp_path):
    video = _video(tmp_path)
    (stream,) = probe(video.path)
    assert (stream.codec, stream.pix_fmt, stream.frames, stream.fps) == ("h264", "yuv420p", 24, 8.0)
    boxes = _top_level_boxes(video.path)
    assert boxes.index("moov") < boxes.index("mdat")  # faststart: playable while downloading


@pytest.mark.parametrize("sound_seconds, fit", [(5.0, "trimmed"), (1.3, "looped")])
def test_mux_has_one_h264_and_one_aac_stream_ending_together(tmp_path, workspace, sound_seconds, fit):
    video = _video(tmp_path)  # 3.0 s
    muxed = mux_sound_onto_video.fn(video, _sound(tmp_path, sound_seconds), workspace)
    streams = probe(muxed.path)
    assert sorted((s.kind, s.codec) for s in streams) == [("audio", "aac"), ("video", "h264")]
    v = next(s for s in streams if s.kind == "video")
    a = next(s for s in streams if s.kind == "audio")
    assert v.duration == pytest.approx(3.0, abs=0.01)
    assert abs(a.duration - v.duration) <= 0.05
    assert fit in muxed.audio_fit
    boxes = _top_level_boxes(muxed.path)
    assert boxes.index("moov") < boxes.index("mdat")
    assert Path(video.path).read_bytes()[:4]  # the silent clip is still there beside it


def test_no_click_at_the_end(tmp_path, workspace):
    import av

    muxed = mux_sound_onto_video.fn(_video(tmp_path), _sound(tmp_path, 5.0), workspace)
    with av.open(muxed.path) as container:
        samples = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(audio=0)])
    tail, body = np.abs(samples[-480:]).max(), np.abs(samples[: len(samples) // 2]).max()
    assert body > 0.2 and tail < 0.1 * body  # the last 10 ms are faded out, not cut mid-wave


def test_poster_frame(tmp_path, workspace):
    poster = make_poster.fn(_video(tmp_path), workspace)
    with Image.open(poster.path) as im:
        assert im.size == (64, 40) and im.format == "PNG"
