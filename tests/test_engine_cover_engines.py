"""The two extra cover engines: SDXL base 1.0 (`sdxl`) and SD 1.5 with the LCM-LoRA in 4 to 8 steps
(`sd15-lcm`): their constraints, a whole tiny bundle with each, and proof that the LoRA is loaded."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tasks.engines import engine

torch.set_num_threads(1)  # the other core runs CI; nothing here is timed against a budget

TINY_SIZE = (128, 192)


def _brief(cover: dict):
    from tasks.brief import parse_brief

    return parse_brief({"title": "Two Engines", "author": "C. Over", "cover": cover})


# --- (1) each engine's own constraints, as one line naming the brief field ---------------------


@pytest.mark.parametrize(
    ("cover", "message"),
    [
        ({"engine": "sdxl", "width": 830}, r"cover\.width: must be a multiple of 8 \(got 830; try 832\)$"),
        ({"engine": "sdxl", "height": 64}, r"cover\.height: Input should be greater than or equal to 128$"),
        ({"engine": "sdxl", "height": 4096}, r"cover\.height: Input should be less than or equal to 2048$"),
        ({"engine": "sd15-lcm", "steps": 3}, r"cover\.steps: the LCM-LoRA samples in 4 to 8 steps \(got 3\)$"),
        ({"engine": "sd15-lcm", "steps": 25}, r"cover\.steps: the LCM-LoRA samples in 4 to 8 steps \(got 25\)$"),
        ({"engine": "sd15-lcm", "guidance": 7.5}, r"cover\.guidance: Input should be less than or equal to 2"),
        ({"engine": "sd15-lcm", "scheduler": "dpm++"}, r"cover\.scheduler: Input should be 'lcm'$"),
    ],
)
def test_each_engine_refuses_what_its_model_cannot_do_in_one_line(cover, message):
    from tasks.brief import BriefError

    with pytest.raises(BriefError, match=message) as refused:
        _brief(cover)
    assert "\n" not in str(refused.value)


def test_the_engines_accept_their_own_ranges_and_fill_in_their_defaults():
    sdxl, lcm = engine("sdxl"), engine("sd15-lcm")
    assert sdxl.resolve({}, "full").model_dump() == {
        "steps": 50, "guidance": 5.0, "scheduler": "euler", "width": 832, "height": 1216,
    }  # fmt: skip
    assert [lcm.resolve({"steps": s}, "full").steps for s in (4, 8)] == [4, 8]
    assert lcm.resolve({}, "full").scheduler == "lcm" and lcm.schedulers == ("lcm",)
    assert _brief({"engine": "sd15-lcm"}).engine_for("cover") is lcm
    assert lcm.extra_weights == {"lcm_lora": "latent-consistency/lcm-lora-sdv1-5"}
    assert lcm.weights == engine("sd15").weights  # the same base weights as sd15


# --- (2) a whole tiny bundle with each engine ---------------------------------------------------


@pytest.mark.parametrize(
    ("name", "scheduler", "scheduler_class", "steps", "licence"),
    [
        ("sdxl", "euler", "EulerDiscreteScheduler", 3, "CreativeML-OpenRAIL++-M"),
        ("sd15-lcm", "lcm", "LCMScheduler", 4, "CreativeML-OpenRAIL-M (LCM-LoRA: CreativeML-OpenRAIL++-M)"),
    ],
)
def test_a_tiny_bundle_with_each_cover_engine(prefect_api, tmp_path, name, scheduler, scheduler_class, steps, licence):
    from PIL import Image

    from flows.bundle import asset_bundle
    from tasks.manifest import Manifest

    eng = engine(name)
    started = time.perf_counter()
    location = Path(asset_bundle(_brief({"engine": name}), out=str(tmp_path)))
    print(f"{name}: tiny bundle in {time.perf_counter() - started:.1f} s")
    manifest = Manifest.read(location / "bundle.json")

    run = manifest.engines["cover"]
    assert (run.name, run.scheduler, run.scheduler_class, run.steps) == (name, scheduler, scheduler_class, steps)
    assert (run.licence, run.commercial_use, run.licence_url) == (licence, True, eng.licence.url)
    assert run.pipeline_class == eng.pipeline_class and run.params["width"] == TINY_SIZE[0]

    for file in ("cover.png", "cover_titled.png"):
        with Image.open(location / file) as im:
            assert (im.format, im.size) == ("PNG", TINY_SIZE), file
            assert im.text["genbundle:ai_generated"] == "true", file
            pixels = np.asarray(im.convert("RGB"), dtype=np.float32)
        assert pixels.std() > 1.0, file  # a real picture, not a blank
    names = {a.name for a in manifest.assets}
    trace = {"trace_forward.png", "trace_reverse.png", "noise_schedule.png"}
    assert eng.traceable and trace <= names  # both engines' VAEs picture their latents
    with Image.open(location / "trace_reverse.png") as strip:
        assert strip.format == "PNG" and strip.width == TINY_SIZE[0] * min(steps, 6)
    cover = next(a for a in manifest.assets if a.name == "cover.png")
    assert {(lic.engine, lic.licence) for lic in cover.licences} == {(name, licence)}


# --- (3) the LCM-LoRA is really loaded ---------------------------------------------------------


def _tiny_job(name: str):
    from tasks.jobs import resolve_job
    from tasks.prompts import expand_prompts

    brief = _brief({"engine": name})
    return resolve_job(brief, "cover", expand_prompts.fn(brief)["cover"])


def test_the_lcm_lora_is_fused_into_every_layer_it_adapts_and_changes_the_cover():
    """The engine's pipeline against the same tiny weights without the adapter, with the same LCM
    scheduler, seed and settings: every module the LoRA file adapts has other weights, and the cover differs."""
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import load_file

    from tasks.engines.schedulers import use_scheduler
    from tasks.models import load_pipeline

    lcm = engine("sd15-lcm")
    loaded = load_pipeline("sd15-lcm", "tiny")
    plain = StableDiffusionPipeline.from_pretrained(loaded.source, **lcm.load_kwargs)
    use_scheduler(plain, "lcm")
    plain.set_progress_bar_config(disable=True)
    assert type(loaded.pipe.scheduler).__name__ == type(plain.scheduler).__name__ == "LCMScheduler"

    lora_file = load_file(Path(loaded.source) / "lcm_lora" / "pytorch_lora_weights.safetensors")
    adapted = {k.removeprefix("unet.").removesuffix(".lora_A.weight") for k in lora_file if k.endswith("lora_A.weight")}
    fused, base = dict(loaded.pipe.unet.named_modules()), dict(plain.unet.named_modules())
    changed = {m for m in adapted if not torch.equal(fused[m].weight, base[m].weight)}
    assert len(adapted) > 40 and changed == adapted  # attention, feed-forward, convolutions, time embeddings
    assert not any("lora" in n for n in fused)  # fused, and the adapter layers removed: plain modules again

    job = _tiny_job("sd15-lcm")
    covers = []
    for pipe in (loaded.pipe, plain):
        with torch.inference_mode():
            image, _ = lcm.call(pipe, job, torch.Generator("cpu").manual_seed(job.seed), lambda step: None)
        covers.append(np.asarray(image, dtype=np.float32))
    assert covers[0].shape == covers[1].shape == (TINY_SIZE[1], TINY_SIZE[0], 3)
    assert np.abs(covers[0] - covers[1]).mean() > 2.0  # grey levels, out of 255


def test_a_missing_lcm_lora_is_one_line_saying_how_to_fetch_it():
    from tasks.models import ModelNotAvailable

    with pytest.raises(ModelNotAvailable) as missing:
        engine("sd15-lcm").lora_source("/nonexistent/sd15", "full")  # the test session's empty HF cache
    message = str(missing.value)
    assert "\n" not in message and "latent-consistency/lcm-lora-sdv1-5" in message
    assert "genbundle models pull --models full --engine sd15-lcm" in message


# --- SDXL's VAE in float16 ----------------------------------------------------------------------


def test_sdxl_keeps_a_float16_overflowing_vae_in_float32_and_decodes_itself(tmp_path):
    """On CUDA the pipeline loads in float16; SDXL's VAE (force_upcast) must stay float32 for the cover
    and for the diffusion trace. Here on the CPU in float16: the UNet runs in half, the decode in full."""
    from diffusers import StableDiffusionXLPipeline

    from tasks.models import model_source
    from tasks.trace import forward_frames

    sdxl = engine("sdxl")
    pipe = StableDiffusionXLPipeline.from_pretrained(
        model_source("sdxl", "tiny"), dtype=torch.float16, **sdxl.load_kwargs
    )
    pipe.set_progress_bar_config(disable=True)
    assert pipe.vae.config.force_upcast and pipe.vae.config.scaling_factor == 0.13025
    sdxl.prepare(pipe, "", "full")
    assert (pipe.unet.dtype, pipe.vae.dtype) == (torch.float16, torch.float32)
    job = _tiny_job("sdxl")
    with torch.inference_mode():
        image, snapshots = sdxl.call(pipe, job, torch.Generator("cpu").manual_seed(job.seed), lambda step: None)
    assert image.size == TINY_SIZE and snapshots.steps == [1, 2, 3]
    assert snapshots.latents[0].dtype == torch.float16  # the UNet's own precision
    image.save(tmp_path / "cover.png")
    with torch.inference_mode():  # the trace encodes and decodes with the float32 VAE
        frames = forward_frames(pipe, str(tmp_path / "cover.png"), job.seed)
    assert [frame.size for _, frame in frames] == [TINY_SIZE] * 6
    assert np.asarray(frames[0][1], dtype=np.float32).std() > 1.0
