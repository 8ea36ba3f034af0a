"""Stable Audio Open 1.0: the engine sound in 44.1 kHz stereo, up to 47 s (a second sound engine).

A diffusion transformer over the latents of the Oobleck waveform VAE, conditioned on T5-base text
and on the clip's start and end in seconds. It makes `[batch, 2, samples]` at 44.1 kHz; the sound
chain (tasks/audio.py, tasks/video.py) keeps both channels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from tasks.engines.base import CostLimits, Engine, Licence, Params, PromptTemplate
from tasks.wav import write_wav

SCHEDULERS = ("cosine-dpm++",)  # the published CosineDPMSolverMultistepScheduler (an EDM sampler for v-prediction)
MAX_SECONDS = 47.0  # the published DiT's 1024 latents x the VAE's 2048 samples each = 47.55 s at 44.1 kHz
T5_MAX_LENGTH = 128  # the T5 conditioner's max_length in the published model


class StableAudioParams(Params):
    scheduler: Literal[SCHEDULERS]  # type: ignore[valid-type]
    duration: float = Field(
        ge=1.0, le=MAX_SECONDS, allow_inf_nan=False, description="Seconds of audio to generate (the model's limit: 47)."
    )


class StableAudioOpen(Engine):
    name = "stable-audio-open-1.0"
    role = "sound"
    title = "Stable Audio Open 1.0"
    pipeline_class = "StableAudioPipeline"
    weights = "stabilityai/stable-audio-open-1.0"
    # Released in June 2024 under a non-commercial licence, since relicensed: free for research,
    # non-commercial use, and commercial use by individuals and organisations with under US$1M annual
    # revenue (registered with Stability AI, within its acceptable use policy); an enterprise licence above that.
    licence = Licence(
        "Stability AI Community License",
        "https://huggingface.co/stabilityai/stable-audio-open-1.0/blob/main/LICENSE.md",
        commercial=True,
        conditions="free below US$1M annual revenue (registration, acceptable use policy); an enterprise licence above",
    )
    architecture = "stable_audio_open_1.0"  # benchmarks/configs/
    params = StableAudioParams
    # 100 steps at guidance 7: the model card's example (steps=100, cfg_scale=7) and the pipeline's
    # defaults. The tiny DiT's sample size gives at most 11.9 s, enough for the brief's 5 s.
    defaults = {
        "full": {"steps": 100, "guidance": 7.0, "scheduler": "cosine-dpm++", "duration": 5.0},
        "tiny": {"steps": 4, "guidance": 7.0, "scheduler": "cosine-dpm++", "duration": 5.0},
    }
    cost_limits = CostLimits(duration=30.0, steps=150)  # the model's 47 s stays the cap, with --allow-large
    schedulers = SCHEDULERS
    prompt = PromptTemplate(
        terms=("realistic recording", "stereo", "high quality", "clear", "close microphone"),
        negative="low quality, noise, hiss, distortion, clipping, music, speech",
    )
    denoiser = "transformer"
    # A 47 s clip decodes 2.1 M samples through 128-channel convolutions: the VAE's activations dominate.
    vram_headroom_gib = 4.0
    traceable = False  # its latents are a 1-D waveform code, not an image
    code = (write_wav,)

    def build_tiny(self):
        from diffusers import (
            AutoencoderOobleck,
            CosineDPMSolverMultistepScheduler,
            StableAudioDiTModel,
            StableAudioPipeline,
        )
        from diffusers.pipelines.stable_audio.modeling_stable_audio import StableAudioProjectionModel
        from transformers import T5Config, T5EncoderModel

        from tasks import tiny_models as tiny

        tokenizer = tiny.t5_tokenizer(T5_MAX_LENGTH)
        text_encoder = T5EncoderModel(
            T5Config(
                vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
            )
        )  # fmt: skip
        # The published compression (2x4x4x8x8 = 2048 samples per latent) at 44.1 kHz stereo, few channels.
        vae = AutoencoderOobleck(
            encoder_hidden_size=4,
            downsampling_ratios=[2, 4, 4, 8, 8],
            channel_multiples=[1, 2, 2, 2, 2],
            decoder_channels=4,
            decoder_input_channels=8,
            audio_channels=2,
            sampling_rate=44100,
        )
        # 256 latents x 2048 = 11.9 s at most; the VAE always decodes all of it, so no more than needed.
        transformer = StableAudioDiTModel(
            sample_size=256, in_channels=8, num_layers=2, attention_head_dim=8, num_attention_heads=4,
            num_key_value_attention_heads=2, out_channels=8, cross_attention_dim=32, time_proj_dim=16,
            global_states_input_dim=64, cross_attention_input_dim=32,
        )  # fmt: skip
        # The published conditioner's range of seconds (0 to 512).
        projection_model = StableAudioProjectionModel(
            text_encoder_dim=32, conditioning_dim=32, min_value=0, max_value=512
        )
        # The model card's sampler range (sigma 0.3 to 500); the rest are this scheduler's defaults, shown.
        scheduler = CosineDPMSolverMultistepScheduler(
            sigma_min=0.3,
            sigma_max=500.0,
            sigma_data=1.0,
            sigma_schedule="exponential",
            prediction_type="v_prediction",
            solver_order=2,
        )
        return StableAudioPipeline(
            vae=vae,
            text_encoder=text_encoder,
            projection_model=projection_model,
            tokenizer=tokenizer,
            transformer=transformer,
            scheduler=scheduler,
        )

    def call(self, pipe, job, generator, on_step):
        from tasks.errors import UserError

        duration = job.params["duration"]
        longest = pipe.transformer.config.sample_size * pipe.vae.hop_length / pipe.vae.config.sampling_rate
        if duration > longest:  # the tiny build's sample size is shorter than the published 47.55 s
            raise UserError(
                f"sound.duration: {duration:g} s is longer than these weights make (at most {longest:.2f} s)"
            )
        # StableAudioPipeline (diffusers 0.42) has no callback_on_step_end: its per-step `callback` is its hook.
        audio = pipe(
            prompt=job.prompt,
            negative_prompt=job.negative_prompt,
            audio_end_in_s=duration,
            num_inference_steps=job.steps,
            guidance_scale=job.guidance,
            generator=generator,
            callback=lambda i, t, latents: on_step(i),
            callback_steps=1,
        ).audios[0]
        # [channels, samples] -> [samples, channels]: one WAV channel per column.
        return audio.T.float().cpu().numpy(), int(pipe.vae.config.sampling_rate)

    def write(self, output, path: Path, job, disclosure) -> dict[str, str]:
        samples, rate = output
        write_wav(path, samples, rate, disclosure)
        return {}

    def tune(self, pipe, policy: str, compile: bool) -> None:
        """A 1-D audio DiT and a Conv1d VAE: channels_last is a layout for 4-D image tensors and does
        not apply; only torch.compile of the transformer, on request."""
        if compile and policy == "gpu":  # offload hooks move weights mid-graph: not compiled then
            pipe.transformer.compile()


ENGINE = StableAudioOpen()
