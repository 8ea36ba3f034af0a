"""Two runs of the same brief at the same moment (a schedule and a trigger) both end well and leave
one complete, verifiable bundle, locally and in the bucket."""

import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tasks.workspace import RESULT_NAME, StepResult, Workspace


def _leftovers(names) -> list[str]:
    """Temporary names (atomic_path's .part files, staging folders, a manifest set aside) among `names`."""
    return [n for n in names if (Path(n).name.startswith(".") and Path(n).name != ".work") or n.endswith(".part")]


def _make_step(root: str, remote: str, content: bytes, start_at: float) -> tuple[str, bytes, bool]:
    """In its own process: make the step's file, wait for the shared moment, save the step."""
    step = Workspace(root=root, remote=remote, mirror_required=True).step("cover", {"seed": 1})
    step.file("cover.png").write_bytes(content)
    time.sleep(max(0.0, start_at - time.time()))
    saved = step.save(StepResult(path=str(step.file("cover.png"))))
    return saved.path, Path(saved.path).read_bytes(), saved.reused


def test_a_step_made_twice_at_once_keeps_the_first_and_both_take_it(s3, tmp_path):
    """Outputs need not be byte-identical (signing times, GPU kernels): whoever publishes first wins."""
    client, _, bucket = s3
    root, remote = str(tmp_path / "work"), f"s3://{bucket}/p/.work"
    start_at = time.time() + 3  # both processes started and imported by then
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        made = pool.starmap(_make_step, [(root, remote, b"first", start_at), (root, remote, b"second", start_at)])

    (path,) = {p for p, _, _ in made}
    (content,) = {c for _, c, _ in made}
    assert sorted(reused for _, _, reused in made) == [False, True]  # one published, the other took it
    folder = Path(path).parent
    assert sorted(p.name for p in folder.iterdir()) == ["cover.png", RESULT_NAME]
    assert Path(path).read_bytes() == content and not _leftovers(os.listdir(folder.parent))
    listing = client.list_objects_v2(Bucket=bucket, Prefix="p/")["Contents"]
    assert sorted(o["Key"].rsplit("/", 1)[1] for o in listing) == ["cover.png", RESULT_NAME]
    assert client.get_object(Bucket=bucket, Key=f"p/.work/cover/{folder.name}/cover.png")["Body"].read() == content


@pytest.mark.slow
def test_two_runs_of_one_brief_at_once_both_succeed_and_leave_one_bundle(s3, tmp_path):
    from conftest import ASSET_COUNT, BUNDLE_FILES  # here: the step test's processes import this module

    client, _, bucket = s3
    target = f"s3://{bucket}/team"
    args = ["run", "--title", "Twice At Once", "--author", "T. Wins", "--out", str(tmp_path), "--storage", target]
    command = [sys.executable, "-m", "flows.cli", *args]
    env = os.environ | {"PYTHONPATH": str(Path(__file__).parents[1])}  # with the s3 fixture's AWS_* settings
    runs = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)]
    runs.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [run.communicate(timeout=600) for run in runs]
    for run, (_, stderr) in zip(runs, outputs, strict=True):
        assert run.returncode == 0, stderr

    (url,) = {stdout.strip().splitlines()[-1] for stdout, _ in outputs}  # both report the same bundle
    (bundle,) = [p for p in tmp_path.iterdir() if not p.name.startswith(".")]
    assert url == f"{target}/{bundle.name}/"
    assert {p.name for p in bundle.iterdir()} == BUNDLE_FILES
    assert not [p for p in tmp_path.rglob("*") if _leftovers([p.name])]  # the work area too

    for where in (str(bundle), url):
        verify = subprocess.run(
            [sys.executable, "-m", "flows.cli", "verify", where], env=env, capture_output=True, text=True, timeout=300
        )
        assert verify.returncode == 0 and verify.stdout.count("ok ") == ASSET_COUNT, verify.stdout + verify.stderr

    keys = [
        o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket) for o in page["Contents"]
    ]
    assert not _leftovers(keys)
    stored = {k.rsplit("/", 1)[1] for k in keys if k.startswith(f"team/{bundle.name}/")}
    assert stored == BUNDLE_FILES | {"share.html"}
