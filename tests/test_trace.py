"""The diffusion trace: forward and reverse filmstrips and the noise schedule, from the real pipeline."""

import numpy as np
from PIL import Image

from tasks.trace import FORWARD_TIMESTEPS, FRAMES


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
    """The first frame (t=0) decodes the clean latents; later ones drift away from it."""
    with Image.open(tiny_bundle / "trace_forward.png") as im, Image.open(tiny_bundle / "cover.png") as cover:
        strip = np.asarray(im.convert("RGB"), dtype=float)
        w, h = cover.size
    frames = [strip[-h:, i * w : (i + 1) * w] for i in range(len(FORWARD_TIMESTEPS))]
    drift = [np.abs(f - frames[0]).mean() for f in frames]
    assert drift[0] == 0 and drift[-1] > drift[1] > 0
