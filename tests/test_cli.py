"""The command line as a person uses it: a subprocess, its exit code, its output."""

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import ASSET_COUNT

pytestmark = pytest.mark.slow  # each test runs the command line as a subprocess


def genbundle(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=os.environ | {"PYTHONPATH": str(Path(__file__).parents[1])},
        timeout=600,
    )


def test_bad_brief_exits_2_with_one_line_naming_the_field(tmp_path):
    result = genbundle("run", "--title", "T", "--set", "cover.width=100", "--out", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: invalid brief: cover.width: must be a multiple of 8 (got 100; try 96)"
    ]
    assert "Traceback" not in result.stderr and not any(tmp_path.iterdir())


def test_a_brief_file_must_name_title_and_author(tmp_path):
    brief = tmp_path / "brief.yaml"
    brief.write_text("seed: 3\n")
    result = genbundle("run", str(brief), "--author", "K. Lee", "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["error: invalid brief: title: is required"]
    assert not (tmp_path / "out").exists()


def test_missing_full_models_exit_1_with_the_fix(tmp_path):
    result = genbundle("run", "--models", "full", "--out", str(tmp_path))
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert "genbundle models pull --models full" in line
    assert not any(tmp_path.iterdir())


def test_run_makes_a_bundle_and_prints_where(tmp_path):
    result = genbundle("run", "--title", "Night Roads", "--author", "K. Lee", "--seed", "5", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    location = Path(result.stdout.strip().splitlines()[-1])
    assert location.parent == tmp_path.resolve()
    manifest = json.loads((location / "bundle.json").read_text())
    assert manifest["brief"]["seed"] == 5 and len(manifest["assets"]) == ASSET_COUNT
    assert "car_with_sound.mp4" in result.stderr  # the summary table
    assert "Placeholder outputs" in result.stderr
    assert "Error logging to API" not in result.stderr  # the logs reached the temporary server before it stopped


def test_a_title_too_long_for_the_cover_is_refused_before_generation(tmp_path):
    result = genbundle("run", "--title", "Supercalifragilisticexpialidocious" * 3, "--out", str(tmp_path))
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: title: does not fit a 128x192 cover") and "cover.width" in line
    assert not any(tmp_path.iterdir())


def test_run_to_s3_then_verify_ls_and_run_again_sending_nothing(s3, tmp_path):
    """The storage issue's 'done when', as a person would do it, against the loopback endpoint."""
    from conftest import TEST_SECRET_KEY

    _, _, bucket = s3
    target = f"s3://{bucket}/team"
    args = ("run", "--title", "Night Roads", "--author", "K. Lee", "--out", str(tmp_path), "--storage", target)
    first = genbundle(*args)
    assert first.returncode == 0, first.stderr
    url = first.stdout.strip().splitlines()[-1]
    assert url.startswith(f"{target}/night-roads-")
    assert "cover_titled.png\thttp" in first.stdout  # shareable links printed
    assert f"{ASSET_COUNT + 2} uploaded" in first.stderr  # the assets, the page, the manifest
    share = next(line for line in first.stdout.splitlines() if line.startswith("share.html\thttp"))
    with urllib.request.urlopen(share.split("\t")[1]) as resp:  # the bundle's page, the link to give people
        assert b"<h1>Night Roads</h1>" in resp.read()

    verify = genbundle("verify", url)
    assert verify.returncode == 0 and verify.stdout.strip().endswith(f"verified: {url}")
    assert verify.stdout.count("ok ") == ASSET_COUNT

    listing = genbundle("ls", target)
    assert listing.returncode == 0 and "Night Roads" in listing.stdout and url in listing.stdout

    again = genbundle(*args)
    assert again.returncode == 0, again.stderr
    assert f"0 uploaded (0 bytes sent), {ASSET_COUNT + 2} already there" in again.stderr
    for result in (first, verify, listing, again):
        assert TEST_SECRET_KEY not in result.stdout + result.stderr


def test_storage_errors_before_any_generation(s3, tmp_path):
    result = genbundle("run", "--out", str(tmp_path), "--storage", "s3://no-such-bucket-anywhere/x")
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert "bucket 'no-such-bucket-anywhere' does not exist" in line
    assert not any(tmp_path.iterdir())  # nothing generated, nothing written


def test_verify_and_upload_commands_on_a_local_bundle(tiny_bundle, s3, tmp_path):
    import shutil

    _, _, bucket = s3
    bundle = Path(shutil.copytree(tiny_bundle, tmp_path / tiny_bundle.name))
    ok = genbundle("verify", str(bundle))
    assert ok.returncode == 0 and ok.stdout.count("ok ") == ASSET_COUNT

    uploaded = genbundle("upload", str(bundle), f"s3://{bucket}/later")
    assert uploaded.returncode == 0 and f"{ASSET_COUNT + 2} uploaded" in uploaded.stdout

    (bundle / "engine.wav").write_bytes(b"RIFF and nothing else")
    bad = genbundle("verify", str(bundle))
    assert bad.returncode == 1
    assert any(line.startswith("mismatch engine.wav (expected ") for line in bad.stdout.splitlines())
    assert bad.stdout.strip().endswith(f"FAILED: {bundle}")


def test_submit_without_a_server_says_so(tmp_path):
    import os as _os

    brief = tmp_path / "b.yaml"
    brief.write_text("title: T\nauthor: A\n")
    env = {k: v for k, v in _os.environ.items() if k != "PREFECT_API_URL"}
    result = subprocess.run(
        [sys.executable, "-m", "flows.cli", "submit", str(brief)],
        capture_output=True, text=True, timeout=120,
        env=env | {"PYTHONPATH": str(Path(__file__).parents[1]), "PREFECT_HOME": str(tmp_path / "home")},
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip() == "error: no Prefect server to send the event to: set PREFECT_API_URL"


def test_prompt_policy_refuses_before_generation(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "flows.cli", "run", "--video-prompt", "a car chase full of gore", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
        env=os.environ | {"PYTHONPATH": str(Path(__file__).parents[1]), "GENBUNDLE_BLOCKED_TERMS": "gore"},
    )  # fmt: skip
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: video.prompt: refused by the prompt policy: it contains 'gore'")
    assert not any(tmp_path.iterdir())


def test_batch_shows_progress_from_the_start(tmp_path):
    """The first line comes before Prefect and the models load; then a line per brief as it starts and ends."""
    briefs = tmp_path / "briefs.jsonl"
    briefs.write_text('{"title": "Row One", "author": "A"}\n{"title": "Row Two", "author": "B", "seed": 2}\n')
    command = [sys.executable, "-m", "flows.cli", "batch", str(briefs), "--out", str(tmp_path / "out")]
    env = os.environ | {"PYTHONPATH": str(Path(__file__).parents[1])}
    started = time.monotonic()
    run = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = run.stderr.readline()
    first_after = time.monotonic() - started
    rest, stderr = run.communicate(timeout=600)
    whole_run = time.monotonic() - started
    assert run.returncode == 0, stderr
    assert first.startswith(f"batch: 2 briefs from {briefs}, up to 2 at a time")
    # A ratio, not seconds: on a loaded machine both grow. Before the fix the first line came with the
    # first bundle's, after Prefect and the models had loaded (most of the run).
    assert first_after < whole_run / 4, f"the first line came after {first_after:.1f} s of {whole_run:.1f} s"
    lines = stderr.splitlines()
    for label in ("briefs.jsonl:1", "briefs.jsonl:2"):
        assert f"started  {label}" in lines
        assert any(line.startswith(f"done     {label} (") for line in lines), stderr
    assert any(line.endswith("[2/2]") for line in lines)
    assert "Traceback" not in stderr


def test_the_flows_import_without_torch():
    """A process worker imports the bundle flow to run its cancellation hooks, `genbundle batch` and `grid`
    import it to start: torch (2 s and 180 MiB here) is loaded only by what generates or builds a model."""
    flows = "flows.bundle", "flows.batch", "flows.generate", "flows.cli", "flows.warm_worker"
    check = (
        f"import sys; import {', '.join(flows)}; print(sorted(m for m in ('torch', 'diffusers') if m in sys.modules))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, cwd=Path(__file__).parents[1]
    )
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.strip() == "[]"
