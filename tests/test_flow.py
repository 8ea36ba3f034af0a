"""The asset-bundle flow end to end on the tiny pipelines, under one Prefect test API."""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import ASSET_COUNT
from conftest import BUNDLE_FILES as EXPECTED
from PIL import Image

from tasks.engines import ROLES, default_engine
from tasks.files import sha256_file
from tasks.manifest import DISCLOSURE, PLACEHOLDER_CAPTION, TINY_NOTE, Manifest


def _manifest(bundle: Path) -> dict:
    return json.loads((bundle / "bundle.json").read_text())


def test_the_bundle_is_complete(tiny_bundle):
    assert {p.name for p in tiny_bundle.iterdir()} == EXPECTED
    assert not list(tiny_bundle.glob(".*part"))  # no half-written files


def test_manifest_hashes_and_sizes_match_the_files(tiny_bundle):
    manifest = _manifest(tiny_bundle)
    assert {a["name"] for a in manifest["assets"]} == EXPECTED - {"bundle.json", "index.html"}
    for asset in manifest["assets"]:
        path = tiny_bundle / asset["name"]
        assert asset["sha256"] == sha256_file(path)
        assert asset["bytes"] == path.stat().st_size


def test_manifest_records_how_it_was_made(tiny_bundle):
    m = _manifest(tiny_bundle)
    assert m["disclosure"] == DISCLOSURE and "AI-generated" in m["disclosure"]
    assert m["placeholder"] == TINY_NOTE
    assert m["brief"]["title"] == "The Forest of Glowing Things"
    assert list(m["engines"]) == list(m["prompts"]) == list(ROLES)
    for role in ROLES:
        expected, engine = default_engine(role), m["engines"][role]
        assert (engine["name"], engine["pipeline_class"]) == (expected.name, expected.pipeline_class)
        assert (engine["licence"], engine["commercial_use"]) == (expected.licence.name, expected.licence.commercial)
        assert {"model", "profile", "scheduler", "steps", "guidance", "seed", "dtype", "device"} <= engine.keys()
        assert m["prompts"][role]["original"] and m["prompts"][role]["prompt"]
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


def test_every_asset_records_the_licences_of_the_engines_it_holds(tiny_bundle):
    manifest = Manifest.read(tiny_bundle / "bundle.json")  # the typed model reads what the flow wrote
    licences = {a.name: {lic.engine for lic in a.licences} for a in manifest.assets}
    cover, sound, video = (default_engine(role).name for role in ROLES)
    assert licences["cover_titled.png"] == licences["trace_forward.png"] == {cover}
    assert licences["engine.wav"] == {sound} and licences["poster.png"] == {video}
    assert licences["car_with_sound.mp4"] == {video, sound}
    commercial = {role: default_engine(role).licence.commercial for role in ROLES}
    assert manifest.commercial_use == all(commercial.values())
    assert {a.name: a.commercial_use for a in manifest.assets}["cover.png"] == commercial["cover"]


def test_the_manifest_holds_no_path_of_this_machine(tiny_bundle):
    """A bundle travels (S3, another machine): no model cache, work area or home folder in bundle.json."""
    from tasks.models import tiny_version
    from tasks.settings import get_settings

    text = (tiny_bundle / "bundle.json").read_text()
    cache, work = get_settings().model_cache, tiny_bundle.parent / ".work"
    for local in (cache, cache.resolve(), work, work.resolve(), tiny_bundle.parent, Path.home()):
        assert str(local) not in text, local
    for role, run in _manifest(tiny_bundle)["engines"].items():
        assert run["model_path"] == tiny_version(run["name"]), role  # the tiny build's folder name


@pytest.mark.parametrize(
    "source, portable",
    [
        (
            "/home/u/.cache/huggingface/hub/models--stabilityai--sdxl-turbo/snapshots/71153311",
            "stabilityai/sdxl-turbo@71153311",
        ),
        ("/srv/weights/my-finetune", "my-finetune"),
        ("stabilityai/sdxl-turbo", "stabilityai/sdxl-turbo"),
    ],
)
def test_full_weights_are_recorded_without_local_paths(source, portable):
    from tasks.models import portable_source

    assert portable_source(source) == portable


def test_the_titled_cover_differs_from_the_untitled_one(tiny_bundle):
    plain = np.asarray(Image.open(tiny_bundle / "cover.png"), dtype=float)
    titled = np.asarray(Image.open(tiny_bundle / "cover_titled.png"), dtype=float)
    assert plain.shape == titled.shape and np.abs(plain - titled).mean() > 1.0


def test_same_brief_same_place_same_outputs(tiny_bundle, tmp_path):
    """The same brief made again from nothing lands in a folder of the same name with the same
    pictures and sound (within tolerance); made again in the same place, it is left as it was."""
    from flows.bundle import asset_bundle
    from tasks.brief import parse_brief

    brief = parse_brief({"title": "The Forest of Glowing Things", "author": "A. N. Author", "tagline": "Light waits"})
    manifest_before = (tiny_bundle / "bundle.json").read_text()
    fresh = Path(asset_bundle(brief, out=str(tmp_path)))  # a new work area: everything is generated again
    assert fresh.name == tiny_bundle.name
    assert set(_manifest(fresh)["steps"].values()) == {"made"}
    for name in ("cover.png", "cover_titled.png", "poster.png"):
        a, b = (np.asarray(Image.open(folder / name), dtype=float) for folder in (tiny_bundle, fresh))
        assert a.shape == b.shape and np.abs(a - b).max() <= 2.0, name
    x, y = sf.read(tiny_bundle / "engine.wav")[0], sf.read(fresh / "engine.wav")[0]
    np.testing.assert_allclose(x, y, atol=1e-3)

    again = Path(asset_bundle(brief, out=str(tiny_bundle.parent)))
    assert again == tiny_bundle
    assert (again / "bundle.json").read_text() == manifest_before  # byte-identical: left as it was
    # ...but the UI summary of this run shows this run: its own timings, every step found finished.
    summary = _summaries(again)[-1]
    assert "This run made 0 of" in summary and "found finished by an earlier run: " in summary
    stored_total = _manifest(again)["timings_seconds"]["total_before_store"]
    assert f"| total_before_store | {stored_total:.2f} |" not in summary


def _summaries(bundle: Path) -> list[str]:
    """The summary artifacts published for a bundle stored at `bundle`, oldest first."""
    import anyio
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async def read():
        async with get_client() as client:
            key = f"bundle-{bundle.name}"
            return await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))

    # Every run of this brief publishes under this key (other tests make it again, elsewhere too).
    artifacts = sorted(anyio.run(read), key=lambda a: a.created)
    assert artifacts and all(a.type == "markdown" for a in artifacts)
    return [a.data for a in artifacts if str(bundle) in a.data]


def test_the_summary_artifact_is_published(tiny_bundle):
    (markdown,) = _summaries(tiny_bundle)[:1]
    assert "car_with_sound.mp4" in markdown and "Placeholder outputs" in markdown
    assert "Licences: " in markdown and default_engine("video").licence.name in markdown
    assert f"`{tiny_bundle / 'trace_reverse.png'}`" in markdown  # local only: where the trace pictures are


def _summary(tiny_bundle, upload=None, **caption):
    from tasks.artifacts import summary_markdown

    manifest = Manifest.read(tiny_bundle / "bundle.json")
    manifest.post_processing["cover_caption"] |= caption
    return summary_markdown(manifest, str(tiny_bundle), upload)


def test_the_summary_shows_the_caption_and_whether_it_is_flagged(tiny_bundle):
    unflagged = _summary(tiny_bundle, text="a glowing forest", shared_words=["forest", "glowing"], flagged=False)
    alt = f"{PLACEHOLDER_CAPTION} a glowing forest"  # the tiny profile's caption is marked as a placeholder
    assert f"Cover alt text (BLIP caption): _{alt}_ (shares with the prompt: forest, glowing)" in unflagged
    assert "flagged" not in unflagged
    flagged = _summary(tiny_bundle, text="a bowl of fruit", shared_words=[], flagged=True)
    assert "a bowl of fruit_ (**flagged: it shares no content word with the prompt**)" in flagged


def test_the_summary_shows_compute_and_energy(tiny_bundle):
    compute = _manifest(tiny_bundle)["compute"]
    seconds = sum(e["seconds"] for e in [*compute["per_asset"].values(), *compute["per_step"].values()])
    (line,) = [line for line in _summary(tiny_bundle).splitlines() if line.startswith("**Compute:**")]
    assert f"**Compute:** {seconds:.1f} s, {compute['total_wh'] * 1000:.2f} mWh in all" in line
    assert "(cpu: typical cpu power (estimate))" in line and line.endswith(compute["note"])


def test_the_summary_embeds_the_uploaded_pictures_or_names_the_local_files(tiny_bundle):
    from tasks.s3 import UploadReport

    pictures = {
        "cover_titled.png": "titled cover",
        "trace_forward.png": "forward process",
        "trace_reverse.png": "reverse process",
        "noise_schedule.png": "noise schedule",
    }
    local = _summary(tiny_bundle)
    assert "![" not in local  # an image artifact needs a URL the UI can fetch
    assert all(f"`{tiny_bundle / name}`" in local for name in list(pictures)[1:])

    names = [a["name"] for a in _manifest(tiny_bundle)["assets"]]
    links = {n: f"https://store.example/b/{n}?X-Amz-Signature=1" for n in names}
    upload = UploadReport(
        url="s3://b/p/", uploaded=names, skipped=[], bytes_sent=1, seconds=0.1, links=links, expires_in=3600,
        verified_by={},
    )  # fmt: skip
    uploaded = _summary(tiny_bundle, upload)
    for name, alt in pictures.items():
        assert f"![The Forest of Glowing Things, {alt}]({links[name]})" in uploaded, name
    assert "local files" not in uploaded


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
    assert f"{ASSET_COUNT + 2} uploaded" in markdown  # the assets, the page and the manifest
    assert "noise schedule](http" in markdown and "reverse process](http" in markdown  # pictures embedded
    everything = markdown + "\n".join(log.message for log in logs) + (local / "bundle.json").read_text()
    assert logs and TEST_SECRET_KEY not in everything
    manifest = client.get_object(Bucket=bucket, Key=url.split(bucket + "/", 1)[1] + "bundle.json")["Body"].read()
    assert TEST_SECRET_KEY.encode() not in manifest and b"X-Amz-Signature" not in manifest


def test_compute_and_energy_for_every_asset_and_model_step(tiny_bundle):
    from tasks.models import runtime

    m = _manifest(tiny_bundle)
    compute = m["compute"]
    per_asset, per_step = compute["per_asset"], compute["per_step"]
    assert set(per_asset) == {a["role"] for a in m["assets"]} and set(per_step) == {"cover_caption", "safety"}
    entries = {**per_asset, **per_step}
    for name, e in entries.items():
        assert e["seconds"] > 0 and e["energy_wh"] == pytest.approx(e["watts"] * e["seconds"] / 3600), name
        assert e["source"] == "typical cpu power (estimate)"  # no NVML on a CPU; no GENBUNDLE_DEVICE_WATTS set
    # Model steps say the device they ran on; post-processing is CPU work wherever the models run.
    device = runtime().device
    assert m["engines"]["cover"]["device"] == device
    for name in ("cover", "sound_raw", "video", "trace_forward", "trace_reverse", "cover_caption", "safety"):
        assert entries[name]["device"] == device, name
    for name in ("cover_titled", "sound", "video_with_sound", "poster", "noise_schedule"):
        assert entries[name]["device"] == "cpu", name
    assert compute["total_wh"] == pytest.approx(sum(e["energy_wh"] for e in entries.values()), abs=1e-5)
    assert "upper bound" in compute["note"]  # cover, sound and video were metered alone while running at once
    assert "compute" not in m["post_processing"]["cover_caption"]  # kept in one place


def test_timings_cover_every_stage_but_writing_the_manifest(tiny_bundle):
    timings = _manifest(tiny_bundle)["timings_seconds"]
    for stage in ("poster", "caption", "safety", "trace"):
        assert timings[stage] > 0, stage
    assert not {"manifest", "store"} & set(timings)  # the manifest holds the timings, so it is written after them
    assert timings["total_before_store"] >= timings["cover"] + timings["safety"]  # the check waits for the cover


def test_every_task_leaves_caching_to_the_work_area():
    """Prefect's default cache policy hashes every call's inputs and looks for a stored result that, with
    results not persisted, is never there: 3-12 ms a task run. A step finds its own output in the work area."""
    import importlib
    import pkgutil

    from prefect import Task
    from prefect.cache_policies import NO_CACHE

    import tasks

    found = {}
    for module in pkgutil.walk_packages(tasks.__path__, "tasks."):
        for value in vars(importlib.import_module(module.name)).values():
            if isinstance(value, Task):
                found[value.name] = value.cache_policy
    assert len(found) >= 14 and all(policy is NO_CACHE for policy in found.values()), found
