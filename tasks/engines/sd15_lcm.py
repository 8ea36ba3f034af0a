"""Stable Diffusion v1.5 in 4 to 8 steps: the LCM-LoRA adapter and the LCM scheduler on sd15's weights.

The same pipeline, base weights, sizes, prompt and output as the sd15 engine, plus the latent
consistency LoRA `latent-consistency/lcm-lora-sdv1-5`, fused into the UNet when the pipeline is
loaded, and LCMScheduler. A brief chooses it with `cover.engine: sd15-lcm`.

No `architecture` of its own: the benchmark's architecture is sd15's (benchmarks/configs/sd15/),
and the LoRA (67.5 M parameters by its model card) is fused into that UNet's weights.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from tasks.engines.base import Licence
from tasks.engines.sd15 import SD15Params, StableDiffusion15

LORA = "lcm_lora"  # its name in `extra_weights`, and the tiny build's subfolder holding it
# The UNet modules the LCM-LoRA training script (diffusers' train_lcm_distill_lora_sd_wds.py) adapts.
LORA_TARGETS = (
    "to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1", "conv2",
    "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv", "time_emb_proj",
)  # fmt: skip
STEPS = (4, 8)


class SD15LCMParams(SD15Params):
    scheduler: Literal["lcm"]  # type: ignore[assignment]
    # The model card: "either disable guidance_scale or use values between 1.0 and 2.0" (at or below 1
    # the pipeline skips classifier-free guidance, and the negative prompt with it).
    guidance: float = Field(ge=0.0, le=2.0, allow_inf_nan=False, description="At most 2.0; 1.0 or less turns it off.")

    @field_validator("steps")
    @classmethod
    def _few_steps(cls, v: int) -> int:
        if not STEPS[0] <= v <= STEPS[1]:
            raise ValueError(f"the LCM-LoRA samples in {STEPS[0]} to {STEPS[1]} steps (got {v})")
        return v


class StableDiffusion15LCM(StableDiffusion15):
    name = "sd15-lcm"
    default = False  # sd15 stays the cover role's default
    title = "Stable Diffusion v1.5 + LCM-LoRA"
    architecture = None  # sd15's architecture with a LoRA fused in: see the module docstring
    # The base weights' licence governs the pipeline; the LoRA's own licence is named beside it.
    licence = Licence(
        "CreativeML-OpenRAIL-M (LCM-LoRA: CreativeML-OpenRAIL++-M)",
        StableDiffusion15.licence.url,
        commercial=True,
        conditions="within both licences' use restrictions",
    )
    extra_weights = {LORA: "latent-consistency/lcm-lora-sdv1-5"}
    params = SD15LCMParams
    # Guidance 1.0, the low end of the card's range: no classifier-free guidance, one UNet pass per step.
    defaults = {
        "full": {"steps": 4, "guidance": 1.0, "scheduler": "lcm", "width": 512, "height": 768},
        "tiny": {"steps": 4, "guidance": 1.0, "scheduler": "lcm", "width": 128, "height": 192},
    }
    cost_limits = replace(StableDiffusion15.cost_limits, steps=STEPS[1])  # sd15's sizes; its few steps
    schedulers = ("lcm",)

    def source_modules(self):
        # Its tiny build and its output also follow sd15.py's code (the class it extends).
        return (*super().source_modules(), sys.modules[StableDiffusion15.__module__])

    def build_tiny(self):
        """sd15's tiny pipeline with a LoRA on its UNet. peft starts a LoRA with one matrix at zero (no
        change at all); `init_lora_weights=False` draws both at random so the adapter visibly acts."""
        from peft import LoraConfig

        pipe = super().build_tiny()
        pipe.unet.add_adapter(
            LoraConfig(r=4, lora_alpha=4, target_modules=list(LORA_TARGETS), init_lora_weights=False), LORA
        )
        return pipe

    def save_tiny(self, built, folder: Path) -> None:
        """The LoRA as `pytorch_lora_weights.safetensors` in its own subfolder, then the pipeline without it:
        the tiny folder loads like the full weights do, from_pretrained and then load_lora_weights.

        Its keys stay in peft's naming (lora_A / lora_B): `convert_state_dict_to_diffusers` renames only the
        attention layers' keys, and the loader judges the format by the first key, so a mixed file loads
        only part of the adapter (a peft warning names the layers left out)."""
        from peft.utils import get_peft_model_state_dict

        lora = get_peft_model_state_dict(built.unet, adapter_name=LORA)
        built.save_lora_weights(Path(folder) / LORA, unet_lora_layers=lora)
        built.unet.unload_lora()  # the plain modules again, as the base weights are saved
        built.save_pretrained(folder)

    def prepare(self, pipe, source: str, profile: str) -> None:
        """Fuse the LCM-LoRA into the UNet (no adapter layers left to slow each step) and set LCMScheduler."""
        from tasks.engines.schedulers import use_scheduler

        pipe.load_lora_weights(self.lora_source(source, profile), adapter_name=LORA)
        pipe.fuse_lora(adapter_names=[LORA])
        pipe.unload_lora_weights()  # the fused weights stay; the LoRA layers go
        use_scheduler(pipe, "lcm")

    def lora_source(self, source: str, profile: str) -> str:
        """The tiny build's own LoRA, or the hub's from the Hugging Face cache (one clear line when absent)."""
        if profile == "tiny":
            return str(Path(source) / LORA)
        from tasks.models import extra_weights_source

        return extra_weights_source(self.name, LORA)


ENGINE = StableDiffusion15LCM()
