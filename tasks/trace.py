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

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from prefect import task

from tasks.disclosure import png_info
from tasks.progress import tracked
from tasks.storage import atomic_path
from tasks.workspace import StepResult, Workspace

FORWARD_NAME = "trace_forward.png"
REVERSE_NAME = "trace_reverse.png"
SCHEDULE_NAME = "noise_schedule.png"
FORWARD_TIMESTEPS = (0, 200, 400, 600, 800, 999)
FRAMES = 6


class ReverseTrace:
    """Collects latents at about FRAMES evenly spaced denoising steps (used as a step callback)."""

    def __init__(self):
        self.steps: list[int] = []
        self.timesteps: list[int] = []
        self.latents: list = []

    def keep(self, step: int, timestep, latents, total_steps: int) -> None:
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


def filmstrip(frames: list[tuple[str, Image.Image]], title: str) -> Image.Image:
    """Frames side by side, each labelled, under a title line."""
    width, height = frames[0][1].size
    label_h = max(14, height // 9)
    strip = Image.new("RGB", (width * len(frames), height + 2 * label_h), "white")
    draw = ImageDraw.Draw(strip)
    font = ImageFont.load_default(size=int(label_h * 0.7))
    draw.text((6, label_h * 0.12), title, font=font, fill="black")
    for i, (label, frame) in enumerate(frames):
        strip.paste(frame.convert("RGB").resize((width, height)), (i * width, 2 * label_h))
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


class Trace(StepResult):
    """The three trace images (`path` is the forward filmstrip)."""

    reverse_path: str
    schedule_path: str
    seconds: float = 0.0

    def assets(self) -> dict[str, StepResult]:
        """The three images as bundle assets, role -> file."""
        same = {"key": self.key, "reused": self.reused, "disclosure": self.disclosure}
        return {
            "trace_forward": StepResult(path=self.path, **same),
            "trace_reverse": StepResult(path=self.reverse_path, **same),
            "noise_schedule": StepResult(path=self.schedule_path, **same),
        }


@task(name="trace-diffusion")
def trace_diffusion(cover: StepResult, profile: str, workspace: Workspace, seed: int = 0) -> Trace:
    """Filmstrips of the forward (noising) and reverse (denoising) process, and the noise schedule."""
    import torch

    from tasks.image import REVERSE_TRACE_NAME
    from tasks.models import lazy_import, load_pipeline

    step = workspace.step("trace", {"cover": cover.key, "profile": profile, "seed": seed}, sys.modules[__name__])
    with tracked("trace") as stage:
        if done := step.load(Trace):
            stage.detail = "reused"
            return done
        loaded = load_pipeline("image", profile)
        pipe = loaded.pipe
        # The forward process uses the model's training noise schedule (its betas), whatever sampler made it.
        noising = lazy_import("diffusers", "DDPMScheduler").from_config(pipe.scheduler.config)
        with Image.open(cover.path) as im:
            image = np.asarray(im.convert("RGB"), dtype=np.float32) / 127.5 - 1
        with loaded.lock, torch.inference_mode():
            pixels = torch.from_numpy(image).permute(2, 0, 1)[None].to(pipe.vae.device, pipe.vae.dtype)
            clean = pipe.vae.encode(pixels).latent_dist.mean * pipe.vae.config.scaling_factor
            noise = torch.randn(clean.shape, generator=torch.Generator("cpu").manual_seed(seed)).to(clean)
            forward = []
            for t in FORWARD_TIMESTEPS:
                noisy = noising.add_noise(clean, noise, torch.tensor([t]))
                level = float(noising.alphas_cumprod[t].sqrt())
                forward.append((f"t={t}  signal {level:.2f}", _decode(pipe, noisy)))
            saved = torch.load(Path(cover.path).parent / REVERSE_TRACE_NAME)
            reverse = [
                (f"step {s}  t={t}", _decode(pipe, latents))
                for s, t, latents in zip(saved["steps"], saved["timesteps"], saved["latents"], strict=True)
            ]
        paths = {}
        for name, picture in (
            (FORWARD_NAME, filmstrip(forward, "Forward process: noise added to the cover (t = timestep)")),
            (REVERSE_NAME, filmstrip(reverse, "Reverse process: the cover's latents as denoising went on")),
            (SCHEDULE_NAME, schedule_plot(noising.alphas_cumprod.numpy())),
        ):
            paths[name] = step.file(name)
            disclosure = cover.disclosure and cover.disclosure.model_copy(update={"title": "Diffusion trace"})
            with atomic_path(paths[name]) as tmp:
                picture.save(tmp, format="PNG", pnginfo=png_info(disclosure) if disclosure else None)
    trace = Trace(
        path=str(paths[FORWARD_NAME]), reverse_path=str(paths[REVERSE_NAME]),
        schedule_path=str(paths[SCHEDULE_NAME]), seconds=stage.seconds, disclosure=cover.disclosure,
    )  # fmt: skip
    return step.save(trace)
