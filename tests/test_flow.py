"""The asset-bundle flow end to end on the tiny pipelines, under one Prefect test API."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tasks.manifest import DISCLOSURE, TINY_NOTE
from tasks.storage import sha256_file

EXPECTED = {
    "cover.png", "cover_titled.png", "engine_raw.wav", "engine.wav", "car.mp4", "car_with_sound.mp4",
    "poster.png", "trace_forward.png", "trace_reverse.png", "noise_schedule.png", "bundle.json",
}  # fmt: skip


def _manifest(bundle: Path) -> dict:
    return json.loads((bundle / "bundle.json").read_text())


def test_the_bundle_is_complete(tiny_bundle):
    assert {p.name for p in tiny_bundle.iterdir()} == EXPECTED
    assert not list(tiny_bundle.glob(".*part"))  # no half-written files


def test_manifest_hashes_and_sizes_match_the_files(tiny_bundle):
    manifest = _manifest(tiny_bundle)
    assert {a["name"] for a in manifest["assets"]} == EXPECTED - {"bundle.json"}
    for asset in manifest["assets"]:
        path = tiny_bundle / asset["name"]
        assert asset["sha256"] == sha256_file(path)
        assert asset["bytes"] == path.stat().st_size


def test_manifest_records_how_it_was_made(tiny_bundle):
    m = _manifest(tiny_bundle)
    assert m["disclosure"] == DISCLOSURE and "AI-generated" in m["disclosure"]
    assert m["placeholder"] == TINY_NOTE
    assert m["brief"]["title"] == "The Forest of Glowing Things"
    for modality, cls in [
        ("image", "StableDiffusionPipeline"),
        ("sound", "AudioLDMPipeline"),
        ("video", "TextToVideoSDPipeline"),
    ]:
        engine = m["engines"][modality]
        assert engine["pipeline_class"] == cls
        assert {"model", "profile", "scheduler", "steps", "guidance", "seed", "dtype", "device"} <= engine.keys()
        assert m["prompts"][modality]["original"] and m["prompts"][modality]["prompt"]
    assert set(m["versions"]) >= {"python", "torch", "diffusers", "transformers", "prefect"}
    for stage in ("prompts", "cover", "sound", "video", "title", "normalise", "mux"):
        assert m["timings_seconds"][stage] >= 0
    assets = {a["name"]: a for a in m["assets"]}
    assert (assets["cover.png"]["width"], assets["cover.png"]["height"]) == (128, 192)
    assert assets["engine.wav"]["sample_rate"] == 48000 and assets["engine.wav"]["duration"] == 5.0
    assert assets["engine.wav"]["loudness_lufs"] == pytest.approx(-14.0, abs=0.5)
    assert assets["engine.wav"]["true_peak_dbtp"] <= -1.0
    assert assets["car_with_sound.mp4"]["fps"] == 8.0
    assert "fade-out" in m["post_processing"]["mux"]["audio_fit"]


def test_the_titled_cover_differs_from_the_untitled_one(tiny_bundle):
    plain = np.asarray(Image.open(tiny_bundle / "cover.png"), dtype=float)
    titled = np.asarray(Image.open(tiny_bundle / "cover_titled.png"), dtype=float)
    assert plain.shape == titled.shape and np.abs(plain - titled).mean() > 1.0


def test_same_brief_same_place_same_outputs(tiny_bundle):
    """Run the same brief again: same bundle folder, same pictures and sound (within tolerance)."""
    from flows.bundle import asset_bundle
    from tasks.brief import parse_brief

    before = {n: np.asarray(Image.open(tiny_bundle / n), dtype=float) for n in ("cover.png", "poster.png")}
    manifest_before = (tiny_bundle / "bundle.json").read_text()
    brief = parse_brief({"title": "The Forest of Glowing Things", "author": "A. N. Author", "tagline": "Light waits"})
    again = Path(asset_bundle(brief, out=str(tiny_bundle.parent)))
    assert again == tiny_bundle
    for name, pixels in before.items():
        assert np.abs(np.asarray(Image.open(again / name), dtype=float) - pixels).max() <= 2.0
    # Byte-identical assets: the stored bundle, manifest included, is left as it was.
    assert (again / "bundle.json").read_text() == manifest_before


def test_the_summary_artifact_is_published(tiny_bundle):
    import anyio
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async def read():
        async with get_client() as client:
            key = f"bundle-{tiny_bundle.name}"
            return await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))

    artifacts = anyio.run(read)
    assert artifacts and artifacts[0].type == "markdown"
    markdown = artifacts[0].data
    assert "car_with_sound.mp4" in markdown and "Placeholder outputs" in markdown


def test_bundle_uploaded_to_s3_with_links_and_no_secret(s3, tmp_path):
    """The flow with an s3:// target: uploaded, verified, linked from the artifact, no secret anywhere."""
    import anyio
    from conftest import TEST_SECRET_KEY
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, LogFilter, LogFilterFlowRunId

    from flows.bundle import asset_bundle
    from tasks.brief import parse_brief
    from tasks.verify import verify_bundle

    client, _, bucket = s3
    brief = parse_brief({"title": "Mountain Roads", "author": "K. Lee", "seed": 11})
    state = asset_bundle(brief, out=str(tmp_path), storage=f"s3://{bucket}/bundles", return_state=True)
    url = state.result()
    assert url.startswith(f"s3://{bucket}/bundles/mountain-roads-") and verify_bundle(url).ok
    local = tmp_path / url.rstrip("/").rsplit("/", 1)[1]
    assert verify_bundle(str(local)).ok  # the local copy stays

    async def read():
        async with get_client() as api:
            key = f"bundle-{local.name}"
            arts = await api.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
            logs = await api.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[state.state_details.flow_run_id]))
            )
            return arts, logs

    artifacts, logs = anyio.run(read)
    markdown = artifacts[0].data
    assert "X-Amz-Signature=" in markdown and "presigned" in markdown  # each asset linked
    assert "11 uploaded" in markdown
    everything = markdown + "\n".join(log.message for log in logs) + (local / "bundle.json").read_text()
    assert logs and TEST_SECRET_KEY not in everything
    manifest = client.get_object(Bucket=bucket, Key=url.split(bucket + "/", 1)[1] + "bundle.json")["Body"].read()
    assert TEST_SECRET_KEY.encode() not in manifest and b"X-Amz-Signature" not in manifest


def test_generations_report_progress_artifacts(tiny_bundle):
    import anyio
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterType

    async def read():
        async with get_client() as client:
            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(type=ArtifactFilterType(any_=["progress"]))
            )

    progress = anyio.run(read)
    described = {a.description.split(":")[0] for a in progress if a.data == 100.0}
    assert described >= {"image", "sound", "video"}  # each generation reached 100 %


def test_compute_and_energy_per_asset(tiny_bundle):
    compute = _manifest(tiny_bundle)["compute"]
    per = compute["per_asset"]
    assert {"cover", "sound_raw", "video", "cover_titled", "sound", "video_with_sound"} <= set(per)
    for role, e in per.items():
        assert e["seconds"] > 0 and e["energy_wh"] == pytest.approx(e["watts"] * e["seconds"] / 3600), role
        assert e["source"] == "typical cpu power (estimate)"  # no NVML on a CPU; no GENBUNDLE_DEVICE_WATTS set
    assert compute["total_wh"] == pytest.approx(sum(e["energy_wh"] for e in per.values()), abs=1e-5)


def test_configured_device_power_is_used(monkeypatch):
    from tasks.energy import estimate
    from tasks.settings import get_settings

    monkeypatch.setenv("GENBUNDLE_DEVICE_WATTS", "120")
    get_settings.cache_clear()
    try:
        e = estimate(30.0, "cpu")
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
    assert (e.watts, e.energy_wh, e.source) == (120.0, 1.0, "GENBUNDLE_DEVICE_WATTS")
