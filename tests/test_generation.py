"""The one generation task, with each seed engine's tiny pipeline: sizes, lengths, determinism."""

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from tasks.brief import parse_brief
from tasks.generation import generate
from tasks.jobs import resolve_job
from tasks.media import probe
from tasks.prompts import expand_prompts
from tasks.workspace import Workspace

generate_cover = generate_sound = generate_video = generate  # one task for every role


def _job(role, **brief):
    b = parse_brief({"title": "T", "author": "A", **brief})
    return resolve_job(b, role, expand_prompts.fn(b)[role])


def _pixels(path):
    return np.asarray(Image.open(path), dtype=np.float64)


def test_cover(workspace):
    job = _job("cover", cover={"width": 64, "height": 96})
    result = generate_cover.fn(job, workspace)
    with Image.open(result.path) as im:
        assert im.size == (64, 96) and im.format == "PNG"
    assert (result.engine.name, result.engine.pipeline_class) == ("sd15", "StableDiffusionPipeline")
    assert result.files["reverse_trace"].endswith(".pt")  # the latents the diffusion trace decodes
    assert (result.engine.steps, result.engine.seed, result.engine.device) == (4, 0, "cpu")


def test_cover_is_deterministic_per_seed(tmp_path):
    a = _pixels(generate_cover.fn(_job("cover", seed=7), Workspace(root=str(tmp_path / "a"))).path)
    b = _pixels(generate_cover.fn(_job("cover", seed=7), Workspace(root=str(tmp_path / "b"))).path)
    c = _pixels(generate_cover.fn(_job("cover", seed=8), Workspace(root=str(tmp_path / "c"))).path)
    assert np.abs(a - b).max() <= 1.0  # same seed: same image, up to a rounding step
    assert np.abs(a - c).mean() > 5.0  # another seed: another image


@pytest.mark.parametrize("scheduler", ["ddim", "lms", "euler", "pndm"])
def test_cover_under_each_scheduler(workspace, scheduler):
    result = generate_cover.fn(_job("cover", cover={"scheduler": scheduler}), workspace)
    assert result.engine.scheduler == scheduler
    assert _pixels(result.path).std() > 1.0


def test_sound_length_and_determinism(tmp_path):
    a = generate_sound.fn(_job("sound", sound={"duration": 2.0}), Workspace(root=str(tmp_path / "a")))
    b = generate_sound.fn(_job("sound", sound={"duration": 2.0}), Workspace(root=str(tmp_path / "b")))
    x, rate = sf.read(a.path)
    y, _ = sf.read(b.path)
    assert rate == 16000 and len(x) == 32000
    assert np.sqrt(np.mean(x**2)) > 1e-3  # audible, not silence
    np.testing.assert_allclose(x, y, atol=1e-4)


def _frames(path) -> np.ndarray:
    import av

    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)]).astype(np.float64)


def test_video_is_deterministic_per_seed(tmp_path):
    job = _job("video", video={"frames": 4, "fps": 4})
    a = _frames(generate_video.fn(job, Workspace(root=str(tmp_path / "a"))).path)
    b = _frames(generate_video.fn(job, Workspace(root=str(tmp_path / "b"))).path)
    c = _frames(
        generate_video.fn(
            _job("video", seed=9, video={"frames": 4, "fps": 4}), Workspace(root=str(tmp_path / "c"))
        ).path
    )
    assert a.shape == b.shape == (4, 32, 64, 3)
    assert np.abs(a - b).max() <= 2.0  # same seed: same frames, up to the encoder's rounding
    assert np.abs(a - c).mean() > 5.0  # another seed: another clip


def test_video(workspace):
    result = generate_video.fn(_job("video", video={"frames": 6, "fps": 6}), workspace)
    (stream,) = probe(result.path)
    assert (stream.kind, stream.codec, stream.pix_fmt) == ("video", "h264", "yuv420p")
    assert (stream.width, stream.height, stream.frames) == (64, 32, 6)
    assert stream.duration == pytest.approx(1.0, abs=0.01)


@pytest.fixture
def progress_writes(monkeypatch):
    """The progress artifact API calls, as ("create" | "update", percent)."""
    import prefect.artifacts

    writes = []

    def create(progress, description):
        writes.append(("create", progress))
        return "the-artifact-id"

    def update(artifact_id, progress):
        assert artifact_id == "the-artifact-id"
        writes.append(("update", progress))

    monkeypatch.setattr(prefect.artifacts, "create_progress_artifact", create)
    monkeypatch.setattr(prefect.artifacts, "update_progress_artifact", update)
    return writes


def _progress_in_a_task_run(job, clock):
    """A generation's step callback as made inside a task run (it looks for one once, when made)."""
    import prefect.context

    from tasks.generation import step_progress

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(prefect.context.TaskRunContext, "get", lambda: object())
        return step_progress(job, clock)


def test_progress_is_written_at_most_every_half_second_and_at_the_last_step(progress_writes):
    """Each write is an API call in the denoising thread: steps of 0.2 s write every third step, then 100 %."""
    now = [0.0]
    on_step = _progress_in_a_task_run(_job("cover").model_copy(update={"steps": 10}), lambda: now[0])
    for step in range(10):
        now[0] += 0.2
        on_step(step)
    assert progress_writes == [("create", 30.0), ("update", 60.0), ("update", 90.0), ("update", 100.0)]


def test_a_generation_done_within_half_a_second_writes_its_progress_once(progress_writes):
    on_step = _progress_in_a_task_run(_job("sound").model_copy(update={"steps": 4}), lambda: 0.0)
    for step in range(4):
        on_step(step)
    assert progress_writes == [("create", 100.0)]
