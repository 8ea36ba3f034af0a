"""The schedulers an engine may accept, by the name a brief uses, and how one is swapped in."""

from __future__ import annotations

from tasks.lazy import lazy_import

# name -> (diffusers class, extra config)
SCHEDULERS: dict[str, tuple[str, dict]] = {
    "dpm++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    "ddim": ("DDIMScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True}),
    "unipc": ("UniPCMultistepScheduler", {}),  # Wan 2.1's own (flow-matching, from its config)
    "lcm": ("LCMScheduler", {}),  # latent consistency: 4 to 8 steps with an LCM model or LoRA
    "cosine-dpm++": ("CosineDPMSolverMultistepScheduler", {}),  # Stable Audio Open's own
}


def use_scheduler(pipe, name: str) -> None:
    """Swap the pipeline's scheduler for the named one, keeping the model's noise schedule."""
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")
    cls_name, extra = SCHEDULERS[name]
    cls = lazy_import("diffusers", cls_name)
    if type(pipe.scheduler) is cls and all(pipe.scheduler.config.get(k) == v for k, v in extra.items()):
        return
    pipe.scheduler = cls.from_config(pipe.scheduler.config, **extra)
