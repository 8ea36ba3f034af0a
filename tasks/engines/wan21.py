"""Wan 2.1 text-to-video 1.3B: the car clip from a diffusion transformer (a video engine).

WanPipeline (maintained in diffusers) with the Diffusers-format weights Wan-AI published: a UMT5
text encoder (512-token context, not CLIP's 77), a 3-D causal VAE (8x spatial, 4x temporal) and
a flow-matching transformer sampled with UniPC. Apache-2.0: its clips may be used commercially.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, field_validator

from tasks.engines.base import CostLimits, Engine, Licence, Params, PromptTemplate, multiple_of
from tasks.h264 import encode_h264

# Flow-matching solvers: both take the published config's flow sigmas and shift as they are.
SCHEDULERS = ("unipc", "dpm++")
TEXT_CONTEXT = 512  # WanPipeline's max_sequence_length: UMT5 tokens, the end-of-text token included
FLOW_SHIFT = 3.0  # the published 480P value (5.0 is for 720P)


def four_k_plus_one(v: int) -> int:
    """The VAE packs frames as 1 + 4k (4x temporal compression after the first): refuse the rest."""
    if v % 4 != 1:
        raise ValueError(f"must be of the form 4k+1 (got {v}; try {max(round((v - 1) / 4), 1) * 4 + 1})")
    return v


class WanParams(Params):
    scheduler: Literal[SCHEDULERS]  # type: ignore[valid-type]
    width: int = Field(ge=32, le=1280, description="Multiples of 16 (the VAE's 8x and the 2x2 patches).")
    height: int = Field(ge=32, le=1280, description="Multiples of 16.")
    frames: int = Field(ge=5, le=161, description="Of the form 4k+1: 81 is 5 s at 16 fps.")
    fps: int = Field(ge=1, le=60)

    _sides = field_validator("width", "height")(multiple_of(16))
    _frames = field_validator("frames")(four_k_plus_one)


class Wan21T2V(Engine):
    name = "wan2.1-1.3b"
    role = "video"
    title = "Wan 2.1 T2V 1.3B"
    pipeline_class = "WanPipeline"
    weights = "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"
    # The model card's licence (apache-2.0): the Diffusers repository carries no licence file of its own.
    licence = Licence("Apache-2.0", "https://huggingface.co/Wan-AI/Wan2.1-T2V-1.3B-Diffusers", commercial=True)
    architecture = "wan2.1_t2v_1.3b"  # benchmarks/configs/
    params = WanParams
    # The published defaults: 832x480 (the 1.3B model's 480P), 81 frames at 16 fps, 50 steps, guidance 5.
    defaults = {
        "full": {
            "steps": 50,
            "guidance": 5.0,
            "scheduler": "unipc",
            "width": 832,
            "height": 480,
            "frames": 81,
            "fps": 16,
        },
        # 9 frames (3 latent frames) of 64x32: the whole chain in well under a second on a CPU.
        "tiny": {"steps": 3, "guidance": 5.0, "scheduler": "unipc", "width": 64, "height": 32, "frames": 9, "fps": 16},
    }
    # 720P is the 14B model's size (the 1.3B one is made for 480P); 81 frames is what it was trained on, and
    # attention over every frame's tokens makes more frames cost more than in proportion.
    cost_limits = CostLimits(area=(1280, 720), frames=81, steps=100)
    schedulers = SCHEDULERS
    prompt = PromptTemplate(
        terms=(
            "cinematic car commercial",  # style
            "golden hour lighting",  # lighting
            "smooth tracking shot following the car",  # camera
            "realistic motion",
            "high detail",  # quality
            "sharp focus",
        ),
        # After the negative prompt Wan's authors publish, with what spoils a car clip.
        negative=(
            "overexposed, static, still picture, blurred details, subtitles, text, watermark, overall gray, "
            "worst quality, low quality, JPEG compression artifacts, ugly, deformed, distorted car, warped wheels, "
            "flicker, jitter, messy background, walking backwards"
        ),
        token_limit=TEXT_CONTEXT,  # the real UMT5 tokenizer may report no limit: WanPipeline cuts at this
    )
    denoiser = "transformer"
    traceable = False  # its latents are 16-channel video: the diffusion trace pictures image latents only
    vram_headroom_gib = 8.0  # 81 frames of 832x480: 32k tokens of attention, then the 3-D VAE decode
    code = (encode_h264,)

    def build_tiny(self):
        from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
        from transformers import UMT5Config, UMT5EncoderModel

        from tasks import tiny_models as tiny

        tokenizer = tiny.t5_tokenizer(TEXT_CONTEXT)
        text_encoder = UMT5EncoderModel(
            UMT5Config(
                vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
            )
        )  # fmt: skip
        transformer = WanTransformer3DModel(
            patch_size=(1, 2, 2),
            num_attention_heads=2,
            attention_head_dim=12,  # split three ways by the 3-D rotary embedding
            in_channels=16,
            out_channels=16,
            text_dim=32,  # the text encoder's d_model
            freq_dim=256,
            ffn_dim=32,
            num_layers=2,
            cross_attn_norm=True,
            qk_norm="rms_norm_across_heads",
            rope_max_seq_len=1024,  # positions per axis; 32 fails at 832x480
        )
        vae = AutoencoderKLWan(
            base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
        )
        return WanPipeline(
            tokenizer=tokenizer,
            text_encoder=text_encoder,
            transformer=transformer,
            vae=vae,
            scheduler=self.flow_scheduler(UniPCMultistepScheduler),
        )

    @staticmethod
    def flow_scheduler(cls):
        """UniPC for flow matching, as the published scheduler config has it."""
        return cls(
            prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000, flow_shift=FLOW_SHIFT
        )

    def prepare(self, pipe, source: str, profile: str) -> None:
        # Early snapshots of the weights shipped a FlowMatchEuler config: swapping a scheduler keeps
        # its config, so start from the flow-matching UniPC the published config now names.
        from diffusers import UniPCMultistepScheduler

        if not pipe.scheduler.config.get("use_flow_sigmas"):
            pipe.scheduler = self.flow_scheduler(UniPCMultistepScheduler)

    def call(self, pipe, job, generator, on_step):
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
            max_sequence_length=TEXT_CONTEXT,
            callback_on_step_end=lambda pipe, i, t, tensors: on_step(i) or tensors,
        ).frames[0]

    def write(self, output, path: Path, job, disclosure) -> dict[str, str]:
        encode_h264(np.asarray(output), job.params["fps"], path, disclosure)
        return {}

    def tune(self, pipe, policy: str, compile: bool) -> None:
        # 5-D activations: channels_last does not apply. The VAE decodes the whole clip at once:
        # in tiles when memory is short.
        pipe.vae.enable_slicing()
        if policy != "gpu":
            pipe.vae.enable_tiling()
        if compile and policy == "gpu":
            # The 30 identical blocks compiled once: the same speed as the whole model, far quicker to compile.
            pipe.transformer.compile_repeated_blocks(fullgraph=True)


ENGINE = Wan21T2V()
