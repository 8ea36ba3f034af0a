"""The diffusion trace: forward and reverse filmstrips and the noise schedule, from the real pipeline."""

import re

import numpy as np
import pytest
from PIL import Image

from tasks.trace import FORWARD_TIMESTEPS, FRAMES


def _frames(strip_path, frame_size) -> list[np.ndarray]:
    """The frames of a filmstrip: side by side along its bottom edge, under the labels."""
    w, h = frame_size
    with Image.open(strip_path) as im:
        strip = np.asarray(im.convert("RGB"), dtype=float)
    return [strip[-h:, i * w : (i + 1) * w] for i in range(strip.shape[1] // w)]


def _pixels(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=float)


def test_trace_images_are_in_the_bundle(tiny_bundle):
    with Image.open(tiny_bundle / "trace_forward.png") as forward, Image.open(tiny_bundle / "cover.png") as cover:
        assert forward.width == cover.width * len(FORWARD_TIMESTEPS) and forward.height > cover.height
        assert forward.text["genbundle:ai_generated"] == "true"
    with Image.open(tiny_bundle / "trace_reverse.png") as reverse:
        # One frame per kept denoising step: up to FRAMES, here all 4 of the tiny profile's steps.
        assert reverse.width == cover.width * min(FRAMES, 4)
    with Image.open(tiny_bundle / "noise_schedule.png") as plot:
        pixels = np.asarray(plot.convert("RGB"), dtype=int)
    blue = (np.abs(pixels - [30, 90, 200]).sum(axis=2) < 30).sum()
    red = (np.abs(pixels - [200, 60, 30]).sum(axis=2) < 30).sum()
    assert blue > 300 and red > 300  # both curves drawn


def test_forward_frames_lose_the_cover_as_noise_grows(tiny_bundle):
    """Later frames (more noise) drift further from the t=0 frame, the clean latents decoded."""
    with Image.open(tiny_bundle / "cover.png") as cover:
        frames = _frames(tiny_bundle / "trace_forward.png", cover.size)
    drift = [np.abs(f - frames[0]).mean() for f in frames[1:]]
    assert len(frames) == len(FORWARD_TIMESTEPS) and drift[-1] > drift[0] > 0


def test_the_last_reverse_frame_is_the_cover(tiny_bundle):
    """The final latents, decoded, are what the pipeline turned into the cover."""
    cover = _pixels(tiny_bundle / "cover.png")
    last = _frames(tiny_bundle / "trace_reverse.png", cover.shape[1::-1])[-1]
    assert np.abs(last - cover).mean() < 0.5 and np.abs(last - cover).max() <= 2


def test_pndm_reverse_trace_keeps_the_final_step_labelled_by_the_schedulers_timesteps(workspace):
    """PNDM runs one more iteration than the steps asked for; the trace follows its timesteps to the end."""
    from tasks.brief import parse_brief
    from tasks.generation import generate
    from tasks.jobs import resolve_job
    from tasks.models import load_pipeline
    from tasks.trace import trace_diffusion

    brief = parse_brief({"title": "T", "author": "A", "seed": 5, "cover": {"scheduler": "pndm", "steps": 4}})
    job = resolve_job(brief, "cover").model_copy(update={"prompt": "a lighthouse in a storm"})
    cover = generate.fn(job, workspace)
    trace = trace_diffusion.fn(cover, workspace)

    scheduler = load_pipeline(job.engine, "tiny").pipe.scheduler
    assert type(scheduler).__name__ == "PNDMScheduler"
    fresh = type(scheduler).from_config(scheduler.config)
    fresh.set_timesteps(job.steps)
    timesteps = [int(t) for t in fresh.timesteps]
    assert len(timesteps) == job.steps + 1

    kept = [
        tuple(map(int, re.fullmatch(r"step (\d+)  after t=(\d+)", label).groups())) for label in trace.reverse_labels
    ]
    steps = [s for s, _ in kept]
    assert len(kept) == min(FRAMES, len(timesteps)) and steps == sorted(set(steps))
    assert steps[0] == 1 and steps[-1] == len(timesteps)  # the first and the final step are both kept
    assert all(timesteps[s - 1] == t for s, t in kept)  # each label names the step's own timestep

    pixels = _pixels(cover.path)
    frames = _frames(trace.reverse_path, pixels.shape[1::-1])
    assert len(frames) == len(kept)
    assert np.abs(frames[-1] - pixels).max() <= 2
    assert np.abs(frames[0] - pixels).mean() > 1  # the first step's latents are still far from it


@pytest.mark.parametrize("role", ["trace_forward", "trace_reverse", "noise_schedule"])
def test_each_trace_picture_has_its_compute(tiny_bundle, role):
    import json

    entry = json.loads((tiny_bundle / "bundle.json").read_text())["compute"]["per_asset"][role]
    assert entry["seconds"] > 0 and entry["device"] == "cpu"  # the VAE runs on the runtime device: here the CPU


def test_a_wide_covers_filmstrips_are_scaled_to_the_limit_width_keeping_the_aspect(workspace):
    """Six frames of a large cover side by side made a 12288-px picture: each strip is scaled to fit."""
    from tasks.brief import parse_brief
    from tasks.generation import generate
    from tasks.jobs import resolve_job
    from tasks.trace import MAX_STRIP_WIDTH, trace_diffusion

    brief = parse_brief({"title": "T", "author": "A", "seed": 3, "cover": {"width": 544, "height": 224}})
    job = resolve_job(brief, "cover").model_copy(update={"prompt": "a lighthouse in a storm"})
    cover = generate.fn(job, workspace)
    trace = trace_diffusion.fn(cover, workspace)

    with Image.open(cover.path) as im:
        assert im.width * len(trace.reverse_labels) > MAX_STRIP_WIDTH  # unscaled, both strips would be wider
        for path, count in ((trace.path, len(FORWARD_TIMESTEPS)), (trace.reverse_path, len(trace.reverse_labels))):
            with Image.open(path) as strip:
                assert MAX_STRIP_WIDTH - count < strip.width <= MAX_STRIP_WIDTH, (path, strip.width)
            width = MAX_STRIP_WIDTH // count
            scaled = im.convert("RGB").resize((width, round(width * im.height / im.width)), Image.Resampling.LANCZOS)
            frames = _frames(path, scaled.size)
            assert len(frames) == count
    # The last reverse frame is the cover itself, scaled the same way: the aspect is kept, nothing cropped.
    assert np.abs(frames[-1] - np.asarray(scaled, dtype=float)).mean() < 2
