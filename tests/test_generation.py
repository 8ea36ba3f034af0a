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
    """The progress artifact API calls, as ("create" | "update", percent); a write waits while `held` is clear."""
    import threading

    import prefect.artifacts

    writes, held = [], threading.Event()
    held.set()

    def create(progress, description):
        held.wait(10)
        writes.append(("create", progress))
        return "the-artifact-id"

    def update(artifact_id, progress):
        assert artifact_id == "the-artifact-id"
        held.wait(10)
        writes.append(("update", progress))

    monkeypatch.setattr(prefect.artifacts, "create_progress_artifact", create)
    monkeypatch.setattr(prefect.artifacts, "update_progress_artifact", update)
    return writes, held


def _progress_in_a_task_run(job):
    """A generation's progress entered as inside a task run (it looks for one once, when entered)."""
    import prefect.context

    from tasks.progress_artifact import ProgressArtifact

    progress = ProgressArtifact(job)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(prefect.context.TaskRunContext, "get", lambda: object())
        on_step = progress.__enter__()
    return progress, on_step


def test_the_denoising_loop_never_waits_for_a_progress_write(progress_writes, monkeypatch):
    """A write is an API call: the writer thread makes it while the steps go on, and the last one
    (100 %) after the generation has ended, which does not wait for it."""
    import threading
    import time

    from tasks.progress_artifact import wait_for_writers

    writes, held = progress_writes
    monkeypatch.setattr("tasks.progress_artifact.PROGRESS_EVERY_S", 0.01)
    held.clear()  # the API answers nothing until the steps are all done
    progress, on_step = _progress_in_a_task_run(_job("cover").model_copy(update={"steps": 10}))
    on_step(0)
    time.sleep(0.2)  # the writer's first write has started, and waits
    started = time.perf_counter()
    for step in range(1, 10):
        on_step(step)
    progress.__exit__(None, None, None)
    assert time.perf_counter() - started < 1.0 and writes == []  # not held up by the waiting write
    threading.Timer(0.2, held.set).start()
    wait_for_writers(10)  # what a command does before its temporary server stops
    assert writes == [("create", 10.0), ("update", 100.0)]


def test_a_generation_done_before_the_first_write_writes_none(progress_writes):
    writes, _ = progress_writes
    progress, on_step = _progress_in_a_task_run(_job("sound").model_copy(update={"steps": 4}))
    for step in range(4):
        on_step(step)
    progress.__exit__(None, None, None)
    progress.writer.join(10)
    assert writes == []


def test_a_failed_progress_write_does_not_fail_the_generation(monkeypatch, caplog):
    import prefect.artifacts

    def unreachable(progress, description):
        raise ConnectionError("the API is down")

    monkeypatch.setattr(prefect.artifacts, "create_progress_artifact", unreachable)
    monkeypatch.setattr("tasks.progress_artifact.PROGRESS_EVERY_S", 0.01)
    progress, on_step = _progress_in_a_task_run(_job("video").model_copy(update={"steps": 3}))
    on_step(0)
    progress.writer.join(10)  # it stops at its first failure, before the generation has ended
    assert not progress.writer.is_alive()
    progress.__exit__(None, None, None)
    assert "video: 3 denoising steps: progress not shown: the API is down" in caplog.text


def test_a_generation_shows_its_progress_on_its_task_run(prefect_api, monkeypatch, tmp_path):
    """Through the Prefect API: the artifact is filed under the generation's task run and reaches 100 %."""
    import time

    import anyio
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterTaskRunId

    monkeypatch.setattr("tasks.progress_artifact.PROGRESS_EVERY_S", 0.01)
    job = _job("video", video={"frames": 4, "fps": 4})

    @flow
    def one_generation():
        return generate(job, Workspace(root=str(tmp_path)), return_state=True)

    task_run_id = one_generation().state_details.task_run_id

    async def progress():
        async with get_client() as client:
            runs = ArtifactFilter(task_run_id=ArtifactFilterTaskRunId(any_=[task_run_id]))
            return [(a.type, a.data, a.description) for a in await client.read_artifacts(artifact_filter=runs)]

    deadline = time.monotonic() + 30  # the last write is made after the task run ended
    while (found := anyio.run(progress)) != [("progress", 100.0, f"video: {job.steps} denoising steps")]:
        assert time.monotonic() < deadline, found
        time.sleep(0.2)
