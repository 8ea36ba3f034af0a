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


def _engines_with_architectures():
    from benchmarks.gpu_models import measured_engines

    return {engine.name: engine for engine in measured_engines()}


@pytest.mark.parametrize("name", sorted(_engines_with_architectures()))
def test_the_benchmark_builds_the_published_architecture_at_full_size(name):
    """Built on the meta device: the shapes are real, no memory is used. The published counts are
    kept beside the configs (benchmarks/configs/<architecture>/parameters.json, sources in SOURCES.md)."""
    from benchmarks.gpu_models import build_real_size, published_parameters

    engine = _engines_with_architectures()[name]
    expected = published_parameters(engine)
    pipe = build_real_size(engine, "meta", dtype=None)
    counts = {part: sum(p.numel() for p in pipe.components[part].parameters()) for part in expected}
    assert counts == expected


def test_every_seed_engine_has_its_architecture():
    from tasks.engines import ROLES, default_engine

    assert {default_engine(role).name for role in ROLES} <= set(_engines_with_architectures())


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
    assert {e["role"] for e in figures["engines"].values()} == set(ROLES)
    assert set(figures["engines"]) == set(_engines_with_architectures())
    assert all(r["seconds"] > 0 and r["steps_per_s"] > 0 for r in figures["engines"].values())
    assert figures["bundle"]["concurrent_s"] > 0 and figures["baseline"]["total_s"] > 0
    assert "| sd15 | cover | 1.07 B | 128x192 |" in result.stdout
