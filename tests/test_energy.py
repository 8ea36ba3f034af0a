"""Compute and energy accounting: the meter on this machine's device, and NVML where a GPU has it."""

import time

import pytest

from tasks.energy import TYPICAL_WATTS, estimate, metered
from tasks.settings import get_settings


def test_cpu_work_is_timed_and_estimated_at_the_typical_package_power():
    with metered("cpu") as energy:
        time.sleep(0.05)
    (e,) = energy
    assert 0.05 <= e.seconds < 1.0 and e.device == "cpu"
    assert (e.watts, e.source) == (TYPICAL_WATTS["cpu"], "typical cpu power (estimate)")
    assert e.energy_wh == pytest.approx(e.watts * e.seconds / 3600)


def test_configured_device_power_is_used(monkeypatch):
    monkeypatch.setenv("GENBUNDLE_DEVICE_WATTS", "120")
    get_settings.cache_clear()
    try:
        e = estimate(30.0, "cuda")
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
    assert (e.watts, e.energy_wh, e.source, e.device) == (120.0, 1.0, "GENBUNDLE_DEVICE_WATTS", "cuda")


def test_nvml_measures_the_gpu_this_process_uses():
    """Runs where the `gpu` extra (nvidia-ml-py) is installed and a CUDA GPU is present."""
    pynvml = pytest.importorskip("pynvml")
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    from tasks.energy import _nvml_handle

    pynvml.nvmlInit()
    index = torch.cuda.current_device()
    handle = _nvml_handle(pynvml)
    assert pynvml.nvmlDeviceGetUUID(handle) == f"GPU-{torch.cuda.get_device_properties(index).uuid}"
    a = torch.randn(4096, 4096, device="cuda")
    with metered("cuda") as energy:
        deadline = time.perf_counter() + 1.0
        while time.perf_counter() < deadline:
            a = (a @ a).clamp_(-1, 1)
    (e,) = energy
    assert (e.source, e.device) == ("nvml", "cuda")
    assert e.seconds >= 1.0 and 10 < e.watts < 2000  # a busy GPU draws tens to hundreds of watts
