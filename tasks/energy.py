"""Compute and energy accounting: seconds per asset and an energy estimate in Wh.

On an NVIDIA GPU the energy is measured: NVML's energy counter (Volta and newer) read before
and after, when the NVML bindings (nvidia-ml-py) are installed. Otherwise it is estimated as
seconds times a device power: GENBUNDLE_DEVICE_WATTS when set, else a typical figure for the
device (a desktop CPU package, a data-centre GPU), and the manifest says which it was.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from pydantic import BaseModel

from tasks.settings import get_settings

TYPICAL_WATTS = {"cpu": 65.0, "cuda": 300.0}


class Energy(BaseModel):
    seconds: float
    watts: float  # average power over the work
    energy_wh: float
    source: str  # "nvml" | "GENBUNDLE_DEVICE_WATTS" | "typical <device> power (estimate)"


def _nvml_energy_mj():
    """A reader of the GPU's cumulative energy in mJ, or None where NVML is not available."""
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)  # raises where the GPU lacks the counter
        return lambda: pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
    except Exception:  # no bindings, no driver, or an older GPU
        return None


def estimate(seconds: float, device: str) -> Energy:
    configured = get_settings().device_watts
    watts, source = (
        (configured, "GENBUNDLE_DEVICE_WATTS")
        if configured
        else (TYPICAL_WATTS[device], f"typical {device} power (estimate)")
    )
    return Energy(seconds=seconds, watts=watts, energy_wh=watts * seconds / 3600, source=source)


@contextmanager
def metered(device: str) -> Iterator[list[Energy]]:
    """Measure the work in the block; the list it yields holds the Energy once the block ends."""
    read = _nvml_energy_mj() if device == "cuda" else None
    start_mj = read() if read else None
    start = time.perf_counter()
    result: list[Energy] = []
    yield result
    seconds = time.perf_counter() - start
    if read is not None:
        wh = (read() - start_mj) / 3.6e6
        result.append(Energy(seconds=seconds, watts=wh * 3600 / max(seconds, 1e-9), energy_wh=wh, source="nvml"))
    else:
        result.append(estimate(seconds, device))
