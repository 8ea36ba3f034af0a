"""The cover safety check: Stable Diffusion's safety checker (tiny, offline) and the flag actions."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from tasks.errors import UserError
from tasks.safety import check_cover_safety, load_safety_checker
from tasks.workspace import StepResult


def test_the_verdict_and_its_compute_are_in_the_manifest(tiny_bundle):
    manifest = json.loads((tiny_bundle / "bundle.json").read_text())
    safety = manifest["post_processing"]["safety"]
    assert safety == {"checker": "StableDiffusionSafetyChecker", "flagged": False, "action": "blur", "applied": "none"}
    compute = manifest["compute"]["per_step"]["safety"]
    assert compute["seconds"] > 0 and compute["device"] == manifest["engines"]["cover"]["device"]


@pytest.fixture
def flagging_checker():
    """The real tiny checker with its concept thresholds pushed below any similarity: it flags everything."""
    checker, _, _ = load_safety_checker("tiny")
    saved = checker.concept_embeds_weights.detach().clone()
    with torch.no_grad():
        checker.concept_embeds_weights.fill_(-2.0)
    yield
    with torch.no_grad():
        checker.concept_embeds_weights.copy_(saved)


def _cover(tiny_bundle, key):
    return StepResult(path=str(tiny_bundle / "cover.png"), key=key)


def test_a_passing_cover_is_published_unchanged(tiny_bundle, workspace):
    verdict = check_cover_safety.fn(_cover(tiny_bundle, "pass"), "tiny", workspace, "blur")
    assert not verdict.flagged and verdict.applied == "none"
    assert np.array_equal(np.asarray(Image.open(verdict.path)), np.asarray(Image.open(tiny_bundle / "cover.png")))


def test_flag_actions(tiny_bundle, workspace, flagging_checker):
    blurred = check_cover_safety.fn(_cover(tiny_bundle, "b"), "tiny", workspace, "blur")
    assert blurred.flagged and blurred.applied == "blurred"
    original = np.asarray(Image.open(tiny_bundle / "cover.png"), dtype=float)
    published = np.asarray(Image.open(blurred.path), dtype=float)
    assert np.abs(np.diff(published, axis=1)).mean() < 0.2 * np.abs(np.diff(original, axis=1)).mean()

    dropped = check_cover_safety.fn(_cover(tiny_bundle, "d"), "tiny", workspace, "drop")
    assert dropped.applied == "dropped"

    with pytest.raises(UserError, match="flagged by the safety checker"):
        check_cover_safety.fn(_cover(tiny_bundle, "f"), "tiny", workspace, "fail")


def test_a_dropped_cover_leaves_no_cover_assets(prefect_api, tmp_path, monkeypatch, flagging_checker):
    from flows.bundle import asset_bundle
    from tasks.brief import parse_brief
    from tasks.settings import get_settings

    monkeypatch.setenv("GENBUNDLE_SAFETY_ACTION", "drop")
    get_settings.cache_clear()
    try:
        location = asset_bundle(parse_brief({"title": "Dropped", "author": "A", "seed": 3}), out=str(tmp_path))
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
    manifest = json.loads((tmp_path / location.rsplit("/", 1)[1] / "bundle.json").read_text())
    roles = {a["role"] for a in manifest["assets"]}
    assert not roles & {"cover", "cover_titled", "trace_forward"} and {"video_with_sound", "sound"} <= roles
    assert manifest["post_processing"]["safety"]["applied"] == "dropped"
    assert "safety" in manifest["compute"]["per_step"] and "cover" not in manifest["compute"]["per_asset"]
