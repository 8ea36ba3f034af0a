"""The diffusion trace: the seed material's "diffusion simulation", made from the real cover.

- forward process: the finished cover, encoded by the pipeline's VAE, noised at several
  timesteps with the model's own noise schedule (`add_noise`), decoded back: noise added;
- reverse process: the latents the pipeline held at several denoising steps (kept by a step
  callback during the cover's generation), decoded: noise removed;
- the noise schedule itself: signal level sqrt(alpha_bar_t) and noise level sqrt(1 - alpha_bar_t)
  against t.
Each is a labelled PNG in the bundle.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import Field

from tasks.disclosure import png_info
from tasks.energy import Energy, metered
from tasks.files import atomic_path
from tasks.progress import tracked
from tasks.workspace import StepResult, Workspace

if TYPE_CHECKING:  # the engines import ReverseTrace from here; generation imports the engines
    from tasks.generation import Generated

FORWARD_NAME = "trace_forward.png"
REVERSE_NAME = "trace_reverse.png"
SCHEDULE_NAME = "noise_schedule.png"
FORWARD_TIMESTEPS = (0, 200, 400, 600, 800, 999)
FRAMES = 6
TRACE_ROLES = ("trace_forward", "trace_reverse", "noise_schedule")  # the three pictures' roles in the bundle
# A filmstrip's width in all, at most: six frames of a 2048-px cover made a 12288-px, 56 MiB picture.
MAX_STRIP_WIDTH = 2048


class ReverseTrace:
    """Collects latents at about FRAMES evenly spaced denoising steps (used as a step callback)."""

    def __init__(self):
        self.steps: list[int] = []
        self.timesteps: list[int] = []
        self.latents: list = []

    def keep(self, step: int, timestep, latents, total_steps: int) -> None:
        """Called after denoising step `step` (at `timestep`) of `total_steps`: the scheduler's own
        count (`pipe.num_timesteps`), which is more than the steps asked for with PNDM."""
        wanted = {round(k * (total_steps - 1) / (FRAMES - 1)) for k in range(FRAMES)}
        if step in wanted:
            self.steps.append(step + 1)
            self.timesteps.append(int(timestep))
            self.latents.append(latents[:1].detach().to("cpu", copy=True))

    def save(self, path: Path) -> None:
        import torch

        with atomic_path(path) as tmp:
            torch.save({"steps": self.steps, "timesteps": self.timesteps, "latents": self.latents}, tmp)


def _decode(pipe, latents) -> Image.Image:
    import torch

    vae = pipe.vae
    with torch.inference_mode():
        pixels = vae.decode(latents.to(vae.device, vae.dtype) / vae.config.scaling_factor).sample
    array = ((pixels[0].float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array)


def frame_size(size: tuple[int, int], count: int) -> tuple[int, int]:
    """A frame's size in a filmstrip of `count`: as made, or scaled down (aspect kept) to fit MAX_STRIP_WIDTH."""
    width, height = size
    scale = min(1.0, MAX_STRIP_WIDTH / (width * count))
    return max(1, int(width * scale)), max(1, round(height * scale))


def filmstrip(frames: list[tuple[str, Image.Image]], title: str) -> Image.Image:
    """Frames side by side, each labelled, under a title line; no wider than MAX_STRIP_WIDTH."""
    width, height = frame_size(frames[0][1].size, len(frames))
    label_h = max(14, height // 9)
    strip = Image.new("RGB", (width * len(frames), height + 2 * label_h), "white")
    draw = ImageDraw.Draw(strip)
    size = int(label_h * 0.7)
    widest = max(draw.textlength(label, font=ImageFont.load_default(size=size)) for label, _ in frames)
    if widest > width - 4:  # small frames (the tiny profile): shrink the labels to fit under their frame
        size = max(6, int(size * (width - 4) / widest))
    font = ImageFont.load_default(size=size)
    draw.text((6, label_h * 0.12), title, font=font, fill="black")
    for i, (label, frame) in enumerate(frames):
        strip.paste(frame.convert("RGB").resize((width, height), Image.Resampling.LANCZOS), (i * width, 2 * label_h))
        x = i * width + (width - draw.textlength(label, font=font)) / 2
        draw.text((x, label_h * 1.1), label, font=font, fill="black")
    return strip


def schedule_plot(alphas_cumprod: np.ndarray, size: tuple[int, int] = (480, 300)) -> Image.Image:
    """Signal and noise level against t, drawn with Pillow."""
    width, height = size
    margin = 40
    plot = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(plot)
    font = ImageFont.load_default(size=12)
    t = np.arange(len(alphas_cumprod))
    x = margin + t / (len(t) - 1) * (width - 2 * margin)
    for values, colour, name in (
        (np.sqrt(alphas_cumprod), (30, 90, 200), "signal  sqrt(alpha_bar_t)"),
        (np.sqrt(1 - alphas_cumprod), (200, 60, 30), "noise  sqrt(1 - alpha_bar_t)"),
    ):
        y = height - margin - values * (height - 2 * margin)
        draw.line(list(zip(x.tolist(), y.tolist(), strict=True)), fill=colour, width=2)
        draw.text((margin + 8, margin - 28 + (14 if colour[0] == 200 else 0)), name, font=font, fill=colour)
    draw.line([(margin, height - margin), (width - margin, height - margin)], fill="black")
    draw.line([(margin, margin), (margin, height - margin)], fill="black")
    draw.text((width - margin - 60, height - margin + 6), f"t = {len(t) - 1}", font=font, fill="black")
    draw.text((margin - 4, height - margin + 6), "0", font=font, fill="black")
    draw.text((4, margin - 6), "1.0", font=font, fill="black")
    return plot


class TraceImage(StepResult):
    """One trace picture as a bundle asset, with what making it cost."""

    compute: Energy | None = None


class Trace(StepResult):
    """The three trace images (`path` is the forward filmstrip)."""

    reverse_path: str
    schedule_path: str
    reverse_labels: list[str] = Field(default_factory=list)  # per reverse frame: "step <n>  after t=<timestep>"
    compute: dict[str, Energy] = Field(default_factory=dict)  # role -> the seconds and Wh of making that picture

    def assets(self) -> dict[str, TraceImage]:
        """The three images as bundle assets, role -> file."""
        same = {"key": self.key, "reused": self.reused, "disclosure": self.disclosure}
        paths = (self.path, self.reverse_path, self.schedule_path)
        return {
            role: TraceImage(path=path, compute=self.compute.get(role), **same)
            for role, path in zip(TRACE_ROLES, paths, strict=True)
        }


def forward_frames(pipe, cover_path: str, seed: int) -> list[tuple[str, Image.Image]]:
    """The cover, VAE-encoded, noised at FORWARD_TIMESTEPS with the model's training noise schedule, decoded."""
    import torch

    from tasks.lazy import lazy_import

    # The model's training noise schedule (its betas), whatever sampler made the cover.
    noising = lazy_import("diffusers", "DDPMScheduler").from_config(pipe.scheduler.config)
    with Image.open(cover_path) as im:
        image = np.asarray(im.convert("RGB"), dtype=np.float32) / 127.5 - 1
    pixels = torch.from_numpy(image).permute(2, 0, 1)[None].to(pipe.vae.device, pipe.vae.dtype)
    clean = pipe.vae.encode(pixels).latent_dist.mean * pipe.vae.config.scaling_factor
    noise = torch.randn(clean.shape, generator=torch.Generator("cpu").manual_seed(seed)).to(clean)
    frames = []
    for t in FORWARD_TIMESTEPS:
        noisy = noising.add_noise(clean, noise, torch.tensor([t]))
        frames.append((f"t={t}  signal {float(noising.alphas_cumprod[t].sqrt()):.2f}", _decode(pipe, noisy)))
    return frames


def reverse_labels(saved: dict) -> list[str]:
    """The callback's latents are taken once the step at timestep t is done: "after t"."""
    return [f"step {s}  after t={t}" for s, t in zip(saved["steps"], saved["timesteps"], strict=True)]


def reverse_frames(pipe, saved: dict) -> list[tuple[str, Image.Image]]:
    """The latents kept during generation, decoded, with their labels."""
    return list(zip(reverse_labels(saved), [_decode(pipe, latents) for latents in saved["latents"]], strict=True))


@task(name="trace-diffusion", cache_policy=NO_CACHE)
def trace_diffusion(cover: Generated, workspace: Workspace) -> Trace:
    """Filmstrips of the forward (noising) and reverse (denoising) process, and the noise schedule,
    from a generated cover and the latents its engine kept (`cover.files["reverse_trace"]`)."""
    import torch

    from tasks.lazy import lazy_import
    from tasks.models import load_pipeline, runtime

    run, seed = cover.engine, cover.engine.seed
    step = workspace.step("trace", {"cover": cover.key}, sys.modules[__name__])
    with tracked("trace") as stage:
        if done := step.load(Trace):
            stage.detail = "reused"
            return done
        loaded = load_pipeline(run.name, run.profile, run.model if run.profile == "full" else None)
        pipe, device = loaded.pipe, runtime().device
        saved = torch.load(cover.files["reverse_trace"])
        schedule = lazy_import("diffusers", "DDPMScheduler").from_config(pipe.scheduler.config).alphas_cumprod
        # role -> (file, device it runs on, drawing): the filmstrips run the VAE, the plot is CPU only.
        pictures = {
            "trace_forward": (FORWARD_NAME, device, lambda: filmstrip(
                forward_frames(pipe, cover.path, seed), "Forward process: noise added to the cover (t = timestep)"
            )),
            "trace_reverse": (REVERSE_NAME, device, lambda: filmstrip(
                reverse_frames(pipe, saved), "Reverse process: the cover's latents after denoising steps (t = timestep)"
            )),
            "noise_schedule": (SCHEDULE_NAME, "cpu", lambda: schedule_plot(schedule.numpy())),
        }  # fmt: skip
        disclosure = cover.disclosure and cover.disclosure.model_copy(update={"title": "Diffusion trace"})
        paths, compute = {}, {}
        for role, (name, where, draw) in pictures.items():
            with loaded.lock, metered(where) as energy, torch.inference_mode():
                picture = draw()
                paths[role] = step.file(name)
                with atomic_path(paths[role]) as tmp:
                    picture.save(tmp, format="PNG", pnginfo=png_info(disclosure) if disclosure else None)
            compute[role] = energy[0]
    trace = Trace(
        path=str(paths["trace_forward"]), reverse_path=str(paths["trace_reverse"]),
        schedule_path=str(paths["noise_schedule"]), reverse_labels=reverse_labels(saved), compute=compute,
        disclosure=cover.disclosure,
    )  # fmt: skip
    return step.save(trace)
