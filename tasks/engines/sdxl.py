"""Stable Diffusion XL base 1.0: a larger cover engine (two text encoders, 1-megapixel native sizes).

It behaves like the sd15 engine (prompt, step callback, reverse-trace latents, PNG with the
disclosure) and differs in its sizes, defaults, tiny build and in who decodes the latents: the
published SDXL VAE overflows in float16 (its config says `force_upcast`), so on CUDA in float16
it is kept in float32 for good and this engine decodes the latents itself. The diffusion trace
(tasks/trace.py) decodes in the VAE's own precision, so it gets a float32 VAE too and works.
"""

from __future__ import annotations

import sys

from pydantic import Field

from tasks.engines.base import CostLimits, Licence
from tasks.engines.sd15 import SD15Params, StableDiffusion15


class SDXLParams(SD15Params):
    # SDXL was trained on about 1 megapixel in many aspect ratios (its buckets run from 512 to 2048 a
    # side); far below 1 megapixel it degrades. 128 is the floor so the tiny profile's sizes fit.
    width: int = Field(ge=128, le=2048, description="Multiples of 8; about 1 megapixel in all suits SDXL best.")
    height: int = Field(ge=128, le=2048, description="Multiples of 8; about 1 megapixel in all suits SDXL best.")


class StableDiffusionXL(StableDiffusion15):
    name = "sdxl"
    default = False  # sd15 stays the cover role's default
    title = "Stable Diffusion XL base 1.0"
    pipeline_class = "StableDiffusionXLPipeline"
    weights = "stabilityai/stable-diffusion-xl-base-1.0"
    licence = Licence(
        "CreativeML-OpenRAIL++-M",
        "https://huggingface.co/stabilityai/stable-diffusion-xl-base-1.0/blob/main/LICENSE.md",
        commercial=True,
        conditions="within the licence's use restrictions (attachment A)",
    )
    architecture = "sdxl_base_1.0"  # benchmarks/configs/
    params = SDXLParams
    # 832x1216: SDXL's 2:3 training bucket. 50 steps and guidance 5.0 are StableDiffusionXLPipeline's
    # defaults, which the model card's example uses, with the published EulerDiscreteScheduler.
    defaults = {
        "full": {"steps": 50, "guidance": 5.0, "scheduler": "euler", "width": 832, "height": 1216},
        "tiny": {"steps": 3, "guidance": 5.0, "scheduler": "euler", "width": 128, "height": 192},
    }
    # Its training buckets all hold about 1 megapixel; 1536x1536 (2.3x the default's area) and twice
    # the default steps are as far as a bundle goes without asking.
    cost_limits = CostLimits(area=(1536, 1536), steps=100)
    # The prompt template is sd15's (inherited): the same book-cover wording and CLIP's 77 tokens.
    # SDXL has no safety checker component (the cover's safety check is its own step, tasks/safety.py).
    # The invisible watermark of Stability's reference code is not applied: the bundle embeds its own
    # disclosure, and an output that changed with an optional package would change the work keys.
    load_kwargs = {"add_watermarker": False}
    vram_headroom_gib = 6.0  # float16 UNet activations at 832x1216 with guidance, and the float32 VAE decode
    traceable = True  # the trace decodes with the float32 VAE kept by `prepare`

    def source_modules(self):
        # Its tiny build and its output also follow sd15.py's code (the class it extends).
        return (*super().source_modules(), sys.modules[StableDiffusion15.__module__])

    def build_tiny(self):
        """The tiny SDXL of diffusers' own pipeline tests: two CLIP text encoders (the second with a
        projection, whose pooled output joins the time ids in the UNet's `text_time` embedding)."""
        from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
        from transformers import CLIPTextModelWithProjection

        from tasks import tiny_models as tiny

        tokenizer = tiny.clip_tokenizer()
        text_encoder = tiny.clip_text_encoder(len(tokenizer))
        text_encoder_2 = CLIPTextModelWithProjection(text_encoder.config)
        unet = UNet2DConditionModel(
            block_out_channels=(16, 32),
            layers_per_block=1,
            sample_size=16,
            in_channels=4,
            out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(2, 4),
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            transformer_layers_per_block=(1, 2),
            # 6 size/crop ids x 8 + the second encoder's 32-wide pooled projection
            projection_class_embeddings_input_dim=6 * 8 + 32,
            cross_attention_dim=32 + 32,  # both encoders' hidden states, concatenated
            norm_num_groups=8,
        )
        vae = tiny.image_vae()
        vae.register_to_config(scaling_factor=0.13025)  # SDXL's latent scale, as in its published VAE config
        # SDXL's published scheduler: Euler on the SD noise schedule, "leading" timesteps.
        scheduler = EulerDiscreteScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            num_train_timesteps=1000,
            steps_offset=1,
            timestep_spacing="leading",
        )
        return StableDiffusionXLPipeline(
            vae=vae,
            text_encoder=text_encoder,
            text_encoder_2=text_encoder_2,
            tokenizer=tokenizer,
            tokenizer_2=tiny.clip_tokenizer(),
            unet=unet,
            scheduler=scheduler,
            add_watermarker=False,
        )

    def prepare(self, pipe, source: str, profile: str) -> None:
        """Keep a VAE that overflows in float16 in float32, as the pipeline would for each decode."""
        import torch

        if pipe.vae.dtype == torch.float16 and pipe.vae.config.force_upcast:
            pipe.vae.to(torch.float32)

    def images(self, pipe, **call) -> list:
        """As sd15's, but the pipeline stops at the latents and they are decoded here, in the VAE's precision."""
        return decode_latents(pipe, pipe(**call, output_type="latent").images)


def decode_latents(pipe, latents) -> list:
    """The pipeline's own decode (unscale, VAE, post-process to PIL images, one per item) with the latents
    cast to the VAE's dtype."""
    from diffusers.utils.torch_utils import get_module_execution_device

    vae = pipe.vae
    latents = latents.to(get_module_execution_device(vae), vae.dtype)
    mean, std = getattr(vae.config, "latents_mean", None), getattr(vae.config, "latents_std", None)
    if mean is not None and std is not None:  # SDXL base has none; fine-tunes given as weights may
        shape = (1, len(mean), 1, 1)
        mean, std = latents.new_tensor(mean).view(shape), latents.new_tensor(std).view(shape)
        latents = latents * std / vae.config.scaling_factor + mean
    else:
        latents = latents / vae.config.scaling_factor
    pixels = vae.decode(latents, return_dict=False)[0]
    return pipe.image_processor.postprocess(pixels, output_type="pil")


ENGINE = StableDiffusionXL()
