"""Resume, not regenerate: a re-run reuses every finished step; a change redoes only what depends on it."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows.bundle import asset_bundle
from tasks import generation, video
from tasks.brief import parse_brief
from tasks.engines import ROLES

BRIEF = {"title": "Resume Me", "author": "R. Tester", "seed": 21}


def _run(out: Path, **changes) -> tuple[dict, dict]:
    """Run the flow; returns (the manifest's step record, pipeline calls made by this run)."""
    before = generation.pipeline_calls.copy()
    location = Path(asset_bundle(parse_brief(BRIEF | changes), out=str(out)))
    calls = generation.pipeline_calls - before
    return json.loads((location / "bundle.json").read_text())["steps"], dict(calls)


def test_a_failed_run_resumes_without_regenerating(prefect_api, tmp_path, monkeypatch):
    real_ffmpeg = video.run_ffmpeg

    def broken_mux(args, **kwargs):
        if "aac" in args:
            raise RuntimeError("injected: the mux died")
        return real_ffmpeg(args, **kwargs)

    monkeypatch.setattr(video, "run_ffmpeg", broken_mux)
    before = generation.pipeline_calls.copy()
    with pytest.raises(RuntimeError, match="the mux died"):
        asset_bundle(parse_brief(BRIEF), out=str(tmp_path))
    assert dict(generation.pipeline_calls - before) == dict.fromkeys(ROLES, 1)
    assert not (tmp_path / "resume-me").exists() and not list(tmp_path.glob("resume-me-*"))  # nothing stored

    monkeypatch.setattr(video, "run_ffmpeg", real_ffmpeg)
    steps, calls = _run(tmp_path)
    assert calls == {}  # no pipeline ran again
    assert steps == {
        "cover": "reused", "cover_titled": "reused", "sound_raw": "reused", "sound": "reused",
        "video": "reused", "video_with_sound": "made", "poster": "reused",
        "trace_forward": "reused", "trace_reverse": "reused", "noise_schedule": "reused",
    }  # fmt: skip


def test_a_change_redoes_only_what_depends_on_it(prefect_api, tmp_path):
    _run(tmp_path)
    steps, calls = _run(tmp_path, video={"prompt": "A red car on a coast road at dusk"})
    assert calls == {"video": 1}
    assert [r for r, s in steps.items() if s == "made"] == ["video", "video_with_sound", "poster"]

    steps, calls = _run(tmp_path, title="Resume Me Again")
    assert calls == {} and [r for r, s in steps.items() if s == "made"] == ["cover_titled"]

    steps, calls = _run(tmp_path, seed=22)
    assert calls == dict.fromkeys(ROLES, 1) and set(steps.values()) == {"made"}


def _published(kind_folder: Path) -> bool:
    """A step of this kind is published: its result file is in a step folder, not in a writer's
    staging folder beside it (`.<key>.*.partial`, which holds result.json just before the rename)."""
    return any(not p.parent.name.startswith(".") for p in kind_folder.glob("*/result.json"))


@pytest.mark.slow
def test_a_killed_run_resumes_without_regenerating(prefect_api, tmp_path):
    """SIGKILL the command line once the generations are done; the next run calls no pipeline."""
    env = os.environ | {"PYTHONPATH": str(Path(__file__).parents[1])}
    args = [sys.executable, "-m", "flows.cli", "run", "--title", "Killed Midway", "--out", str(tmp_path)]
    # Its own process group, so the kill takes Prefect's temporary server with it.
    run = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    work = tmp_path / ".work"
    deadline = time.time() + 300
    while time.time() < deadline and run.poll() is None:
        if all(_published(work / kind) for kind in ("cover", "sound", "video")):
            os.killpg(run.pid, signal.SIGKILL)
            break
        time.sleep(0.01)
    run.wait(timeout=60)
    assert run.returncode == -signal.SIGKILL, f"the run ended by itself (exit {run.returncode}) before the kill"
    assert not list(tmp_path.glob("killed-midway-*/bundle.json"))

    # The same brief as the command line's (its defaults: author Anonymous, seed 0), run here so
    # that this process's pipeline calls can be counted.
    brief = {"title": "Killed Midway", "author": "Anonymous"}
    before = generation.pipeline_calls.copy()
    location = Path(asset_bundle(parse_brief(brief), out=str(tmp_path)))
    assert dict(generation.pipeline_calls - before) == {}  # no generation pipeline ran again
    generations = json.loads((location / "bundle.json").read_text())["compute"]["per_asset"]
    assert all(generations[role]["reused"] for role in ("cover", "sound_raw", "video"))


def test_a_work_key_covers_the_code_that_makes_its_output_not_whole_modules(monkeypatch, tmp_path):
    """Editing the mux or the loudness limiter must not regenerate the video or the sound; editing an
    engine's own file regenerates what that engine makes, and nothing else."""
    from tasks import audio, video, workspace
    from tasks.engines import engine
    from tasks.generation import generation_step
    from tasks.jobs import resolve_jobs
    from tasks.workspace import Workspace

    area = Workspace(root=str(tmp_path))
    jobs = resolve_jobs(parse_brief({"title": "Keys", "author": "K"}))

    def keys() -> dict[str, str]:
        return {role: generation_step(job, area).key for role, job in jobs.items()}

    before, real_hash = keys(), workspace._source_hash

    def edited(*changed):  # as if the source of these had been changed
        monkeypatch.setattr(workspace, "_source_hash", lambda code: real_hash(code) + ("*" if code in changed else ""))

    edited(video.mux_sound_onto_video.fn, video.make_poster.fn, audio, audio.limit_peaks)
    assert keys() == before
    video_engine = sys.modules[type(engine(jobs["video"].engine)).__module__]
    edited(video_engine)
    after = keys()
    assert after["video"] != before["video"] and {r: after[r] for r in ("cover", "sound")} == {
        r: before[r] for r in ("cover", "sound")
    }
