"""The storage setting and the local store step: what it accepts, and a replaced bundle that never looks complete."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import minimal_manifest

from tasks.catalogue import describe_asset
from tasks.manifest import Manifest
from tasks.s3 import StorageError
from tasks.settings import get_settings
from tasks.storage import out_root, storage_target, store_bundle
from tasks.workspace import Workspace


@pytest.fixture
def env(monkeypatch):
    """Set GENBUNDLE_* variables for one test, with fresh settings."""

    def set_(**values):
        for k, v in values.items():
            monkeypatch.setenv(f"GENBUNDLE_{k.upper()}", str(v))
        get_settings.cache_clear()

    monkeypatch.delenv("GENBUNDLE_STORAGE", raising=False)
    monkeypatch.delenv("GENBUNDLE_OUT", raising=False)  # the test session sets one
    get_settings.cache_clear()
    yield set_
    get_settings.cache_clear()


def test_storage_accepts_s3_a_local_folder_or_a_file_url(env, tmp_path):
    assert storage_target(None) is None and storage_target("  ") is None
    assert storage_target("s3://bucket-1/team/covers") == "s3://bucket-1/team/covers"
    assert storage_target(str(tmp_path / "shelf")) == str(tmp_path / "shelf")
    assert storage_target("relative/shelf") == "relative/shelf"
    assert storage_target(f"file://{tmp_path}/my%20shelf") == f"{tmp_path}/my shelf"
    assert storage_target("file://localhost/srv/bundles") == "/srv/bundles"
    env(storage="file:///srv/bundles")
    assert storage_target() == "/srv/bundles"


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("gs://bucket/p", "not supported"),
        ("http://minio:9000/bucket", "not supported"),
        ("S3://bucket/p", "lower-case"),
        ("s3:/bucket/p", "lower-case"),
        ("file://server/share", "file:///absolute/path"),
        ("s3://Bad_Bucket/p", "valid bucket"),
    ],
)
def test_other_storage_values_fail_in_one_line_naming_the_setting(env, value, says):
    env(storage=value)
    with pytest.raises(StorageError) as err:
        storage_target()
    message = str(err.value)
    assert says in message and "\n" not in message
    assert "GENBUNDLE_STORAGE" in message or "valid bucket" in message  # the bucket error names s3://bucket


def test_a_local_storage_folder_means_the_same_as_out(env, tmp_path):
    shelf = tmp_path / "shelf"
    assert out_root(None, str(shelf)) == shelf
    assert out_root(str(shelf), f"file://{shelf}") == shelf  # both given, the same folder: fine
    assert out_root(str(tmp_path / "x"), "s3://bucket-1/p") == tmp_path / "x"  # s3: out is the local copy
    ws = Workspace.for_storage(None, str(shelf))
    assert ws.root == str((shelf / ".work").resolve()) and ws.remote is None
    with pytest.raises(StorageError, match="--out \\(GENBUNDLE_OUT\\)") as err:
        out_root(str(tmp_path / "elsewhere"), str(shelf))
    assert "\n" not in str(err.value)

    env(storage=shelf)  # from the environment only
    assert out_root() == shelf
    env(out=tmp_path / "other")
    with pytest.raises(StorageError, match="give one of them"):
        out_root()


def _bundle(work: Path, files: dict[str, bytes], brief: dict) -> tuple[Manifest, dict[str, str]]:
    work.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (work / name).write_bytes(data)
    assets = [describe_asset(work / name, "data") for name in files]
    return minimal_manifest("b-1", brief, assets), {n: str(work / n) for n in files}


def test_a_replaced_bundle_drops_its_old_manifest_first_and_its_old_assets_last(tmp_path):
    out = tmp_path / "bundles"
    old = _bundle(tmp_path / "w1", {"a.bin": b"old a", "b.bin": b"old b"}, {"title": "One"})
    folder = Path(store_bundle.fn(*old, out=str(out)))
    (folder / "notes.txt").write_text("the user's own file")

    # A new bundle in the same folder whose second asset cannot be read: the store fails half-way.
    manifest, files = _bundle(tmp_path / "w2", {"a.bin": b"new a", "c.bin": b"new c"}, {"title": "Two"})
    os.unlink(files["c.bin"])
    with pytest.raises(FileNotFoundError):
        store_bundle.fn(manifest, files, out=str(out))
    assert not (folder / "bundle.json").exists()  # the old manifest no longer vouches for changed assets

    manifest, files = _bundle(tmp_path / "w2", {"a.bin": b"new a", "c.bin": b"new c"}, {"title": "Two"})
    store_bundle.fn(manifest, files, out=str(out))
    assert sorted(p.name for p in folder.iterdir()) == ["a.bin", "bundle.json", "c.bin", "notes.txt"]
    assert (folder / "a.bin").read_bytes() == b"new a" and (folder / "notes.txt").exists()
    assert json.loads((folder / "bundle.json").read_text())["brief"] == {"title": "Two"}

    before = (folder / "bundle.json").stat().st_mtime_ns
    store_bundle.fn(manifest, files, out=str(out))  # the same bundle again: left as it is
    assert (folder / "bundle.json").stat().st_mtime_ns == before


@pytest.mark.slow
def test_run_rejects_an_unknown_storage_scheme_before_any_model_loads(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "flows.cli", "run", "--out", str(tmp_path), "--storage", "gs://bucket/covers"],
        check=False,
        capture_output=True,
        text=True,
        env=os.environ | {"PYTHONPATH": str(Path(__file__).parents[1])},
        timeout=300,
    )
    assert result.returncode == 2  # what was typed is wrong: an input error, like a bad brief
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: storage: 'gs://bucket/covers'") and "GENBUNDLE_STORAGE" in line
    assert not any(tmp_path.iterdir())
