"""Zeroscope v2 576w: the car clip (the seed engine for the video role).

TextToVideoSDPipeline sits in diffusers' deprecated pipelines (last maintained in 0.33.1) but still
runs in 0.42; it is the class the seed model was published for, and logs a deprecation line on load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, field_validator

from tasks.engines.base import CostLimits, Engine, Licence, Params, PromptTemplate, multiple_of
from tasks.h264 import encode_h264

SCHEDULERS = ("dpm++", "ddim", "lms", "euler", "pndm")


class ZeroscopeParams(Params):
    scheduler: Literal[SCHEDULERS]  # type: ignore[valid-type]
    width: int = Field(ge=64, le=1280, description="Multiples of 8.")
    height: int = Field(ge=32, le=1280, description="Multiples of 8.")
    frames: int = Field(ge=2, le=120)
    fps: int = Field(ge=1, le=60)

    _sides = field_validator("width", "height")(multiple_of(8))


class ZeroscopeV2(Engine):
    name = "zeroscope-v2-576w"
    role = "video"
    default = True  # the seed engine
    title = "Zeroscope v2 576w"
    pipeline_class = "TextToVideoSDPipeline"
    weights = "cerspense/zeroscope_v2_576w"
    licence = Licence("CC-BY-NC-4.0", "https://huggingface.co/cerspense/zeroscope_v2_576w", commercial=False)
    architecture = "zeroscope_v2_576w"  # benchmarks/configs/
    params = ZeroscopeParams
    # Zeroscope v2 576w's native size; 24 frames at 8 fps make 3 s.
    defaults = {
        "full": {
            "steps": 25,
            "guidance": 9.0,
            "scheduler": "dpm++",
            "width": 576,
            "height": 320,
            "frames": 24,
            "fps": 8,
        },
        "tiny": {"steps": 4, "guidance": 9.0, "scheduler": "dpm++", "width": 64, "height": 32, "frames": 8, "fps": 8},
    }
    # 1024x576 is its XL sibling's size (the 576w model is made for 576x320); 48 frames is twice the default.
    cost_limits = CostLimits(area=(1024, 576), frames=48, steps=100)
    schedulers = SCHEDULERS
    prompt = PromptTemplate(
        terms=("cinematic", "golden hour lighting", "smooth tracking shot", "high detail", "sharp focus"),
        negative="blurry, flicker, jitter, distorted, low quality, watermark, text, still frame",
    )
    vram_headroom_gib = 4.0
    code = (encode_h264,)

    def build_tiny(self):
        from diffusers import TextToVideoSDPipeline, UNet3DConditionModel

        from tasks import tiny_models as tiny

        tokenizer = tiny.clip_tokenizer()
        unet = UNet3DConditionModel(
            block_out_channels=(16, 32),
            layers_per_block=1,
            sample_size=16,
            in_channels=4,
            out_channels=4,
            down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
            up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
            cross_attention_dim=32,
            attention_head_dim=4,
            norm_num_groups=8,
        )
        return TextToVideoSDPipeline(
            vae=tiny.image_vae(),
            text_encoder=tiny.clip_text_encoder(len(tokenizer)),
            tokenizer=tokenizer,
            unet=unet,
            scheduler=tiny.scheduler(),
        )

    def call(self, pipe, job, generator, on_step):
        # TextToVideoSDPipeline predates callback_on_step_end: its per-step `callback` is the only hook it has.
        return pipe(
            prompt=job.prompt,
            negative_prompt=job.negative_prompt,
            width=job.params["width"],
            height=job.params["height"],
            num_frames=job.params["frames"],
            num_inference_steps=job.steps,
            guidance_scale=job.guidance,
            generator=generator,
            output_type="np",
            callback=lambda i, t, latents: on_step(i),
            callback_steps=1,
        ).frames[0]

    def write(self, output, path: Path, job, disclosure) -> dict[str, str]:
        encode_h264(np.asarray(output), job.params["fps"], path, disclosure)
        return {}

    def tune(self, pipe, policy: str, compile: bool) -> None:
        # 5-D activations: channels_last does not apply. Many frames decoded at once would need
        # several GiB: one at a time.
        pipe.vae.enable_slicing()
        if policy == "sequential_offload":
            pipe.vae.enable_tiling()
        if compile and policy == "gpu":
            pipe.unet.compile()


ENGINE = ZeroscopeV2()
