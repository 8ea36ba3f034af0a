"""The benchmark's plain-function bundle must do the flow's work, or its overhead figure means nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def test_plain_bundle_makes_the_same_bundle_as_the_flow(tiny_bundle, tmp_path):
    from benchmarks.plain_bundle import plain_bundle
    from tasks.brief import Brief

    flow_manifest = json.loads((tiny_bundle / "bundle.json").read_text())
    brief = Brief.model_validate(flow_manifest["brief"])
    plain = Path(plain_bundle(brief, out=str(tmp_path)))
    plain_manifest = json.loads((plain / "bundle.json").read_text())

    assert plain.name == tiny_bundle.name  # same bundle id: same brief
    roles = lambda m: {(a["role"], a["name"]) for a in m["assets"]}
    assert roles(plain_manifest) == roles(flow_manifest)
    assert plain_manifest["post_processing"].keys() == flow_manifest["post_processing"].keys()
    assert set(plain_manifest["steps"].values()) == {"made"}  # made again, in a new work area


# Parameter counts of the published models (SD 1.5's are the well-known 859.52M / 83.65M / 123.06M;
# the others match their published fp32/fp16 weight files, see benchmarks/configs/SOURCES.md).
PUBLISHED_PARAMETERS = {
    "cover": {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480},
    "sound": {"unet": 185_036_552, "vae": 55_376_873, "text_encoder": 125_302_016, "vocoder": 55_264_897},
    "video": {"unet": 1_411_233_860, "vae": 83_653_863, "text_encoder": 340_387_840},
}


def test_the_benchmark_builds_the_published_architectures_at_full_size():
    """Built on the meta device: the shapes are real, no memory is used."""
    from benchmarks.gpu_models import build_real_size

    for modality, expected in PUBLISHED_PARAMETERS.items():
        pipe = build_real_size(modality, "meta", dtype=None)
        counts = {name: sum(p.numel() for p in pipe.components[name].parameters()) for name in expected}
        assert counts == expected, modality


@pytest.mark.slow
def test_the_gpu_benchmark_runs_end_to_end_on_tiny_models(tmp_path):
    import subprocess
    import sys

    from tasks.engines import ROLES

    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_models", "--arch", "tiny", "--repeat", "1", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600, cwd=Path(__file__).parents[1],
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads(next(tmp_path.glob("gpu-tiny-*.json")).read_text())
    assert set(figures["roles"]) == set(ROLES)
    assert all(r["seconds"] > 0 and r["steps_per_s"] > 0 for r in figures["roles"].values())
    assert figures["bundle"]["concurrent_s"] > 0 and figures["baseline"]["total_s"] > 0
    assert "| cover | 128x192 |" in result.stdout
