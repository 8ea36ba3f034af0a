"""Compute and energy accounting: seconds per asset and an energy estimate in Wh.

On an NVIDIA GPU the energy is measured: NVML's energy counter (Volta and newer) of the GPU
this process computes on, read before and after, when the NVML bindings are installed (the
`gpu` extra: nvidia-ml-py). Otherwise it is estimated as seconds times a device power:
GENBUNDLE_DEVICE_WATTS when set, else a typical figure for the device (a desktop CPU package,
a data-centre GPU), and the manifest says which it was.

Both count the whole device: NVML reads the GPU's counter, the estimate charges the whole
package. Steps that run at the same time (the flow generates cover, sound and video at once)
are each metered alone, so their sum counts the overlap more than once: an upper bound.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from pydantic import BaseModel

from tasks.settings import get_settings

TYPICAL_WATTS = {"cpu": 65.0, "cuda": 300.0}
OVERLAP_NOTE = (
    "Concurrent steps overlap (cover, sound and video are generated at once, post-processing runs beside them) "
    "and each is metered on the whole device, so the total is an upper bound."
)


class Energy(BaseModel):
    seconds: float
    watts: float  # average power over the work
    energy_wh: float
    source: str  # "nvml" | "GENBUNDLE_DEVICE_WATTS" | "typical <device> power (estimate)"
    device: str = "unknown"  # where the work ran: "cuda" or "cpu" (records made before this field say unknown)


def _nvml_handle(pynvml):
    """The NVML handle of the GPU this process computes on. Matched by UUID: CUDA's device indices
    follow CUDA_VISIBLE_DEVICES (and fastest-first order), NVML's do not."""
    import torch

    uuid = torch.cuda.get_device_properties(torch.cuda.current_device()).uuid
    return pynvml.nvmlDeviceGetHandleByUUID(f"GPU-{uuid}")


def _nvml_energy_mj():
    """A reader of this process's GPU's cumulative energy in mJ, or None where NVML is not available."""
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = _nvml_handle(pynvml)
        pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)  # raises where the GPU lacks the counter
        return lambda: pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
    except Exception:  # noqa: BLE001  (no bindings, no driver, an older GPU or a MIG slice: estimate instead)
        return None


def estimate(seconds: float, device: str) -> Energy:
    configured = get_settings().device_watts
    watts, source = (
        (configured, "GENBUNDLE_DEVICE_WATTS")
        if configured
        else (TYPICAL_WATTS[device], f"typical {device} power (estimate)")
    )
    return Energy(seconds=seconds, watts=watts, energy_wh=watts * seconds / 3600, source=source, device=device)


@contextmanager
def metered(device: str) -> Iterator[list[Energy]]:
    """Measure the work in the block; the list it yields holds the Energy once the block ends."""
    read = _nvml_energy_mj() if device == "cuda" else None
    start_mj = read() if read else None
    start = time.perf_counter()
    result: list[Energy] = []
    yield result
    if device == "cuda":  # the block's kernels may still be queued: wait for them
        import torch

        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    if read is not None:
        wh = (read() - start_mj) / 3.6e6
        watts = wh * 3600 / max(seconds, 1e-9)
        result.append(Energy(seconds=seconds, watts=watts, energy_wh=wh, source="nvml", device=device))
    else:
        result.append(estimate(seconds, device))
