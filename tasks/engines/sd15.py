"""Stable Diffusion v1.5: the book cover (the seed engine for the cover role)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from tasks.engines.base import CostLimits, Engine, Licence, Params, PromptTemplate, multiple_of

SCHEDULERS = ("dpm++", "ddim", "lms", "euler", "pndm")


class SD15Params(Params):
    scheduler: Literal[SCHEDULERS]  # type: ignore[valid-type]
    width: int = Field(ge=64, le=2048, description="Multiples of 8 (the VAE's 8x compression).")
    height: int = Field(ge=64, le=2048, description="Multiples of 8.")

    _sides = field_validator("width", "height")(multiple_of(8))


class StableDiffusion15(Engine):
    name = "sd15"
    role = "cover"
    default = True  # the seed engine
    title = "Stable Diffusion v1.5"
    pipeline_class = "StableDiffusionPipeline"
    weights = "stable-diffusion-v1-5/stable-diffusion-v1-5"  # runwayml/... was taken down; this is the maintained copy
    licence = Licence(
        "CreativeML-OpenRAIL-M",
        "https://huggingface.co/stable-diffusion-v1-5/stable-diffusion-v1-5/blob/main/LICENSE.md",
        commercial=True,
        conditions="within the licence's use restrictions (attachment A)",
    )
    architecture = "sd15"  # benchmarks/configs/
    params = SD15Params
    # 512x768: SD 1.5's native width at a book cover's 2:3.
    defaults = {
        "full": {"steps": 25, "guidance": 7.5, "scheduler": "dpm++", "width": 512, "height": 768},
        "tiny": {"steps": 4, "guidance": 7.5, "scheduler": "dpm++", "width": 128, "height": 192},
    }
    # Trained at 512 px: past about 1 megapixel it repeats its subject, and the work grows with the pixels.
    cost_limits = CostLimits(area=(1024, 1024), steps=100)
    schedulers = SCHEDULERS
    prompt = PromptTemplate(
        terms=(
            "fantasy book cover illustration",  # style
            "dramatic rim lighting",  # lighting
            "vertical composition with clear space for the title",  # camera / framing
            "highly detailed",  # quality
            "sharp focus",
            "masterpiece",
        ),
        # Lettering is typeset afterwards: generated text on the cover only gets in the way.
        negative="text, letters, watermark, signature, logo, blurry, low quality, jpeg artifacts, deformed",
    )
    # The safety checker runs as its own step on the finished cover (tasks/safety.py).
    load_kwargs = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
    vram_headroom_gib = 2.0
    traceable = True
    batchable = True  # prompts, negative prompts and generators as lists (sd15-lcm and sdxl inherit it)

    def build_tiny(self):
        from diffusers import StableDiffusionPipeline, UNet2DConditionModel

        from tasks import tiny_models as tiny

        tokenizer = tiny.clip_tokenizer()
        unet = UNet2DConditionModel(
            block_out_channels=(16, 32),
            layers_per_block=1,
            sample_size=16,
            in_channels=4,
            out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=4,
            norm_num_groups=8,
        )
        return StableDiffusionPipeline(
            vae=tiny.image_vae(),
            text_encoder=tiny.clip_text_encoder(len(tokenizer)),
            tokenizer=tokenizer,
            unet=unet,
            scheduler=tiny.scheduler(),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )

    def call_batch(self, pipe, jobs, generators, on_step):
        from tasks.trace import ReverseTrace

        snapshots = [ReverseTrace() for _ in jobs]  # one diffusion trace per job: its own item of the batch

        def on_step_end(pipe, i, t, tensors):
            on_step(i)
            for k, trace in enumerate(snapshots):  # PNDM runs more than job.steps
                trace.keep(i, t, tensors["latents"][k : k + 1], pipe.num_timesteps)
            return tensors

        first = jobs[0]  # the jobs share every setting but their prompts and seeds
        images = self.images(
            pipe,
            prompt=[job.prompt for job in jobs],
            negative_prompt=[job.negative_prompt for job in jobs],
            width=first.params["width"],
            height=first.params["height"],
            num_inference_steps=first.steps,
            guidance_scale=first.guidance,
            generator=list(generators),
            callback_on_step_end=on_step_end,
        )
        return list(zip(images, snapshots, strict=True))

    def images(self, pipe, **call) -> list:
        """The pipeline's call, to one PIL image per prompt."""
        return pipe(**call, output_type="pil").images

    def write(self, output, path: Path, job, disclosure) -> dict[str, str]:
        from tasks.disclosure import png_info
        from tasks.files import atomic_path

        image, snapshots = output
        with atomic_path(path) as tmp:
            image.save(tmp, format="PNG", pnginfo=png_info(disclosure))
        reverse = path.with_name("reverse_trace.pt")  # latents at a few denoising steps, for the diffusion trace
        snapshots.save(reverse)
        return {"reverse_trace": str(reverse)}


ENGINE = StableDiffusion15()
