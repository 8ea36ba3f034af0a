"""The CUDA fast path's decisions, checked where they can be without a GPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tasks.acceleration import GIB, choose_memory_policy
from tasks.engines import ROLES, default_engine

# Zeroscope v2 576w in float16: UNet3D 1.41 G parameters, all three models 1.84 G (benchmarks/configs).
VIDEO_TOTAL, VIDEO_UNET = 2 * 1_835_275_563, 2 * 1_411_233_860


def test_memory_policy_follows_the_free_gpu_memory():
    headroom = int(default_engine("video").vram_headroom_gib * GIB)
    assert choose_memory_policy(VIDEO_TOTAL, VIDEO_UNET, headroom, free=78 * GIB) == "gpu"  # an H100
    assert choose_memory_policy(VIDEO_TOTAL, VIDEO_UNET, headroom, free=7 * GIB) == "model_offload"
    assert choose_memory_policy(VIDEO_TOTAL, VIDEO_UNET, headroom, free=5 * GIB) == "sequential_offload"


def test_tiny_pipelines_use_pytorch_sdpa_attention_and_stay_whole_on_the_cpu():
    from tasks.acceleration import attention_processors
    from tasks.models import load_pipeline

    for role in ROLES:
        engine = default_engine(role)
        loaded = load_pipeline(engine.name, "tiny")
        assert attention_processors(getattr(loaded.pipe, engine.denoiser)) == {"AttnProcessor2_0"}, engine.name
        assert loaded.memory == "cpu"


def test_expandable_segments_are_set_before_torch_allocates_and_a_user_setting_wins():
    code = "import tasks.acceleration, os; print(os.environ.get('PYTORCH_ALLOC_CONF'))"
    env = {k: v for k, v in os.environ.items() if "ALLOC_CONF" not in k} | {"PYTHONPATH": str(Path(__file__).parents[1])}
    run = lambda **extra: subprocess.run(
        [sys.executable, "-c", code], env=env | extra, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert run() == "expandable_segments:True"
    assert run(PYTORCH_CUDA_ALLOC_CONF="max_split_size_mb:128") == "None"
