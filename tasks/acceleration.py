"""The fast path on CUDA: where the weights live, memory layout, attention, compilation.

A pipeline arrives here loaded in its runtime precision (float16 by default, GENBUNDLE_DTYPE
for bfloat16) and leaves placed on the device. On the CPU nothing changes: float32, whole.

The memory policy is chosen by the GPU memory free when the pipeline is placed:
- `gpu`: the whole pipeline on the GPU (fastest);
- `model_offload`: each model moves to the GPU only while it runs (accelerate hooks);
- `sequential_offload`: each layer moves to the GPU only while it runs (slowest, least memory).
Offload is enabled instead of `.to("cuda")`, never after it: a pipeline already on the GPU keeps
its weights there. A generation that runs out of GPU memory anyway is retried once under the next
lighter policy (tasks/generation.py).
"""

from __future__ import annotations

import gc
import os

from tasks.settings import get_settings

# Before torch's CUDA allocator starts: segments that grow in place instead of fragmenting when
# three pipelines of different shapes share one GPU. A value the user set is kept.
if "PYTORCH_CUDA_ALLOC_CONF" not in os.environ:
    os.environ.setdefault("PYTORCH_ALLOC_CONF", "expandable_segments:True")

GIB = 2**30
POLICIES = ("gpu", "model_offload", "sequential_offload")


def weight_bytes(pipe) -> tuple[int, int]:
    """(all weights, the largest model's weights) of a pipeline, in bytes."""
    sizes = [
        sum(p.numel() * p.element_size() for p in component.parameters())
        for component in pipe.components.values()
        if hasattr(component, "parameters")
    ]
    return sum(sizes), max(sizes, default=0)


def choose_memory_policy(total: int, largest: int, headroom: int, free: int) -> str:
    """The fastest policy that fits: all weights, else the largest model, plus activations, in `free` bytes."""
    if total + headroom <= free:
        return "gpu"
    if largest + headroom <= free:
        return "model_offload"
    return "sequential_offload"


def lighter_policy(policy: str) -> str | None:
    """The policy after this one in POLICIES (less on the GPU, slower); None after the last, and on the CPU."""
    if policy not in POLICIES[:-1]:
        return None
    return POLICIES[POLICIES.index(policy) + 1]


def release_gpu_memory() -> None:
    """Give back the GPU memory of tensors no longer referenced: collected (pipelines and hooks hold
    reference cycles), then returned from torch's cache so the next placement can use it."""
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def place(pipe, engine, device: str, policy: str | None = None) -> str:
    """Put the pipeline on its device with the engine's fast path applied; returns the memory policy used.

    `policy` forces one (a retry after running out of memory); otherwise GENBUNDLE_MEMORY decides."""
    if device != "cuda":
        return "cpu"
    import torch

    settings = get_settings()
    policy = policy or settings.memory
    if policy == "auto":
        free, _ = torch.cuda.mem_get_info()
        policy = choose_memory_policy(*weight_bytes(pipe), int(engine.vram_headroom_gib * GIB), free)
    torch.backends.cudnn.benchmark = True  # fixed shapes per pipeline: the fastest convolution once found
    if policy == "gpu":
        pipe.to("cuda")
    elif policy == "model_offload":
        pipe.enable_model_cpu_offload()
    else:
        pipe.enable_sequential_cpu_offload()
    engine.tune(pipe, policy, settings.compile)
    return policy


def attention_processors(denoiser) -> set[str]:
    """Class names of a denoiser's attention processors (AttnProcessor2_0 is PyTorch SDPA)."""
    return {type(p).__name__ for p in denoiser.attn_processors.values()}
