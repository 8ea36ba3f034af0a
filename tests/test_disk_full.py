"""A disk without room: refused before the run when it is short already, one line and nothing
half-written when it fills during the run, and a re-run after space is freed resumes.

The disk is a real small tmpfs (this needs root, as CI has; elsewhere the tests skip).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).parents[1]


@pytest.fixture
def small_disk(tmp_path):
    def mount(mib: int) -> Path:
        folder = tmp_path / f"disk-{mib}m"
        folder.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mib}m", "tmpfs", str(folder)], capture_output=True)
        if done.returncode != 0:
            if os.environ.get("CI"):
                pytest.fail(f"CI must be able to mount a tmpfs: {done.stderr.decode().strip()}")
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
        mounted.append(folder)
        return folder

    mounted: list[Path] = []
    yield mount
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_an_output_folder_without_room_is_refused_before_any_model_loads(small_disk):
    disk = small_disk(2)
    started = time.monotonic()
    run = subprocess.run(
        [sys.executable, "-m", "flows.cli", "run", "--title", "T", "--author", "A", "--out", str(disk / "bundles")],
        capture_output=True, text=True, timeout=300, env=os.environ | {"PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: the output folder (--out, GENBUNDLE_OUT): "), run.stderr
    assert "MiB free; this brief's bundle needs about" in lines[0] and "free some space" in lines[0]
    assert time.monotonic() - started < 30  # no model was loaded
    assert not any(disk.iterdir())


def test_a_disk_filling_mid_run_fails_in_one_line_leaves_no_partial_bundle_and_the_rerun_resumes(
    small_disk, prefect_api, monkeypatch, capsys
):
    import flows.cli
    from tasks import progress
    from tasks.manifest import MANIFEST_NAME

    disk = small_disk(9)  # more than the estimate (about 7.4 MiB for the tiny profile), so the run starts
    ballast = disk / "ballast"

    def fill_the_disk_once_the_cover_is_made(stage) -> None:
        if stage.name == "cover" and stage.status == "done" and not ballast.exists():
            free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
            with open(ballast, "wb") as fh:  # everything but 16 KiB: the next sizeable write fails
                fh.write(b"\0" * (free - 16 * 1024))

    argv = ["run", "--title", "Full Roads", "--author", "K. Lee", "--out", str(disk)]
    progress.add_listener(fill_the_disk_once_the_cover_is_made)
    try:
        code = flows.cli.main(argv)
    finally:
        progress.remove_listener(fill_the_disk_once_the_cover_is_made)
    stderr = capsys.readouterr().err
    assert code == 1, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(f"run failed: no space left in {disk} ("), stderr[-3000:]
    assert "this brief's bundle needs about" in last and "finished steps are kept" in last
    assert "Traceback" not in stderr
    # nothing half-written: no bundle folder without its manifest (the work area aside)
    partial = [p for p in disk.iterdir() if p.is_dir() and p.name != ".work" and not (p / MANIFEST_NAME).exists()]
    assert not partial, partial

    ballast.unlink()
    assert flows.cli.main(argv) == 0
    stderr = capsys.readouterr().err
    assert "reused" in stderr  # the cover made before the disk filled is not made again
    bundles = [p for p in disk.iterdir() if p.is_dir() and p.name != ".work"]
    assert len(bundles) == 1 and (bundles[0] / MANIFEST_NAME).exists()
