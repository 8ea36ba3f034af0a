"""AudioLDM (s-full-v2): the engine sound (the seed engine for the sound role).

AudioLDMPipeline sits in diffusers' deprecated pipelines (last maintained in 0.33.1) but still runs
in 0.42; it is the class the seed model was published for, and logs a deprecation line on load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from tasks.engines.base import CostLimits, Engine, Licence, Params, PromptTemplate
from tasks.wav import write_wav

SCHEDULERS = ("dpm++", "ddim", "lms", "euler", "pndm")


class AudioLDMParams(Params):
    scheduler: Literal[SCHEDULERS]  # type: ignore[valid-type]
    duration: float = Field(ge=1.0, le=30.0, allow_inf_nan=False, description="Seconds of audio to generate.")


class AudioLDM(Engine):
    name = "audioldm"
    role = "sound"
    default = True  # the seed engine
    title = "AudioLDM (s-full-v2)"
    pipeline_class = "AudioLDMPipeline"
    weights = "cvssp/audioldm-s-full-v2"
    licence = Licence("CC-BY-NC-SA-4.0", "https://huggingface.co/cvssp/audioldm-s-full-v2", commercial=False)
    architecture = "audioldm_s_full_v2"  # benchmarks/configs/
    params = AudioLDMParams
    # The length comes from the brief (5 s by default); AudioLDM is tuned for low guidance.
    defaults = {
        "full": {"steps": 20, "guidance": 2.5, "scheduler": "dpm++", "duration": 5.0},
        "tiny": {"steps": 4, "guidance": 2.5, "scheduler": "dpm++", "duration": 5.0},
    }
    cost_limits = CostLimits(duration=10.0, steps=100)  # trained on 10 s clips
    schedulers = SCHEDULERS
    prompt = PromptTemplate(
        terms=("realistic", "close microphone", "high quality studio recording", "clear"),
        negative="low quality, noise, hiss, distortion, clipping, music, speech",
    )
    vram_headroom_gib = 1.0
    batchable = True  # prompts, negative prompts and generators as lists
    code = (write_wav,)

    def build_tiny(self):
        from diffusers import AudioLDMPipeline, AutoencoderKL, UNet2DConditionModel
        from transformers import ClapTextConfig, ClapTextModelWithProjection, SpeechT5HifiGan, SpeechT5HifiGanConfig

        from tasks import tiny_models as tiny

        tokenizer = tiny.roberta_tokenizer()
        unet = UNet2DConditionModel(
            block_out_channels=(16, 32),
            layers_per_block=1,
            sample_size=32,
            in_channels=4,
            out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=(16, 32),
            norm_num_groups=8,
            class_embed_type="simple_projection",
            projection_class_embeddings_input_dim=32,
            class_embeddings_concat=True,
        )
        # AudioLDM's VAE works on a one-channel mel spectrogram, with 4x compression as in the real one.
        vae = AutoencoderKL(
            in_channels=1,
            out_channels=1,
            block_out_channels=(8, 8, 8),
            down_block_types=("DownEncoderBlock2D",) * 3,
            up_block_types=("UpDecoderBlock2D",) * 3,
            latent_channels=4,
            norm_num_groups=4,
            layers_per_block=1,
        )
        text_encoder = ClapTextModelWithProjection(
            ClapTextConfig(
                vocab_size=len(tokenizer),
                hidden_size=32,
                intermediate_size=37,
                num_attention_heads=4,
                num_hidden_layers=2,
                projection_dim=32,
                max_position_embeddings=tiny.TOKEN_LIMIT + 2 + 1,  # RoBERTa positions start after the pad id.
                bos_token_id=0,
                pad_token_id=1,
                eos_token_id=2,
            )
        )
        # A random HiFi-GAN with the default initializer_range (0.01) is near-silent and 0.25 saturates;
        # 0.1 gives a noise at a plausible level (peak about -10 dBFS).
        vocoder = SpeechT5HifiGan(
            SpeechT5HifiGanConfig(
                model_in_dim=64,
                sampling_rate=16000,
                upsample_initial_channel=32,
                upsample_rates=[4, 4, 10],  # 160 samples per mel frame, as in AudioLDM.
                upsample_kernel_sizes=[8, 8, 20],
                resblock_kernel_sizes=[3, 7],
                resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5]],
                normalize_before=False,
                initializer_range=0.1,
            )
        )
        return AudioLDMPipeline(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=tiny.scheduler(),
            vocoder=vocoder,
        )

    def call_batch(self, pipe, jobs, generators, on_step):
        # AudioLDMPipeline predates callback_on_step_end: its per-step `callback` is the only hook it has.
        first = jobs[0]  # the jobs share every setting but their prompts and seeds
        audios = pipe(
            prompt=[job.prompt for job in jobs],
            negative_prompt=[job.negative_prompt for job in jobs],
            audio_length_in_s=first.params["duration"],
            num_inference_steps=first.steps,
            guidance_scale=first.guidance,
            generator=list(generators),
            callback=lambda i, t, latents: on_step(i),
            callback_steps=1,
        ).audios
        rate = int(pipe.vocoder.config.sampling_rate)
        return [(np.asarray(audio, dtype=np.float32), rate) for audio in audios]

    def write(self, output, path: Path, job, disclosure) -> dict[str, str]:
        samples, rate = output
        write_wav(path, samples, rate, disclosure)
        return {}


ENGINE = AudioLDM()
