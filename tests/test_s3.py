"""S3-compatible storage against a real S3 endpoint on loopback (moto), through a fault-injecting proxy."""

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
from conftest import ASSET_COUNT, TEST_ACCESS_KEY, TEST_SECRET_KEY, minimal_manifest
from loopback_s3 import RESET, FaultyProxy

from flows.local_prefect import free_port
from tasks.catalogue import describe_asset
from tasks.s3 import S3Location, StorageError, check_bucket, list_bundles, parse_s3_url, upload_bundle_dir
from tasks.settings import get_settings
from tasks.verify import verify_bundle


@pytest.fixture
def bundle(tiny_bundle, tmp_path) -> Path:
    """A private copy of the session's tiny bundle."""
    return Path(shutil.copytree(tiny_bundle, tmp_path / tiny_bundle.name))


@pytest.fixture
def proxy(s3, moto_server, monkeypatch):
    """Route boto3 through a proxy that can inject failures; yields the proxy."""
    p = FaultyProxy(moto_server[1])
    monkeypatch.setenv("AWS_ENDPOINT_URL", p.url)
    yield p
    p.stop()


def _setting(monkeypatch, **values):
    for k, v in values.items():
        monkeypatch.setenv(f"GENBUNDLE_{k.upper()}", str(v))
    get_settings.cache_clear()


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "bundle.json").read_text())


def _keys(client, bucket, prefix="") -> dict[str, dict]:
    objects = client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return {o["Key"]: o for o in objects}


def test_url_parsing():
    assert parse_s3_url("s3://my-bucket/a/b/") == S3Location("my-bucket", "a/b")
    assert parse_s3_url("s3://my-bucket").key("x", "y.png") == "x/y.png"
    for bad in ("s3://", "s3://AB/x", "https://x/y", "s3://a_b/c"):
        with pytest.raises(StorageError):
            parse_s3_url(bad)


def test_upload_layout_content_types_and_manifest_last(s3, proxy, bundle):
    client, _, bucket = s3
    report = upload_bundle_dir(bundle, parse_s3_url(f"s3://{bucket}/team/covers"))
    manifest = _manifest(bundle)
    prefix = f"team/covers/{manifest['bundle_id']}/"
    assert report.url == f"s3://{bucket}/{prefix}"
    stored = _keys(client, bucket, prefix)
    unlisted = {"bundle.json", "index.html", "share.html"}  # the manifest, the bundle page, the share page
    assert set(stored) == {prefix + a["name"] for a in manifest["assets"]} | {prefix + name for name in unlisted}
    for a in manifest["assets"]:
        head = client.head_object(Bucket=bucket, Key=prefix + a["name"])
        assert head["ContentType"] == a["media_type"]
        assert head["ContentLength"] == a["bytes"]
        assert head["Metadata"]["sha256"] == a["sha256"]
    assert client.head_object(Bucket=bucket, Key=prefix + "bundle.json")["ContentType"] == "application/json"
    writes = [path for method, path in proxy.requests if method in ("PUT", "POST") and prefix in path]
    assert writes[-1].split("?")[0].endswith("/bundle.json")  # the manifest goes last
    assert set(report.verified_by.values()) == {"store checksum"}
    unlisted_bytes = sum((bundle / name).stat().st_size for name in ("bundle.json", "index.html"))
    assert report.bytes_sent == sum(a["bytes"] for a in manifest["assets"]) + unlisted_bytes  # share.html apart


def test_second_upload_sends_nothing(s3, bundle):
    _, _, bucket = s3
    target = parse_s3_url(f"s3://{bucket}/p")
    first = upload_bundle_dir(bundle, target)
    second = upload_bundle_dir(bundle, target)
    assert len(first.uploaded) == ASSET_COUNT + 2 and not first.skipped  # + the page and the manifest
    assert second.bytes_sent == 0 and not second.uploaded and len(second.skipped) == ASSET_COUNT + 2


def test_interrupted_upload_resumes_without_resending(s3, proxy, bundle, monkeypatch):
    client, _, bucket = s3
    target = parse_s3_url(f"s3://{bucket}/p")
    proxy.rules.append(lambda method, path: 500 if method == "PUT" and "car_with_sound.mp4" in path else None)
    _setting(monkeypatch, s3_max_attempts=2)
    with pytest.raises(StorageError) as err:
        upload_bundle_dir(bundle, target)
    message = str(err.value)
    assert "\n" not in message and f"the bundle is intact at {bundle}" in message
    prefix = f"p/{_manifest(bundle)['bundle_id']}/"
    assert prefix + "bundle.json" not in _keys(client, bucket, prefix)  # no manifest: not a complete bundle

    proxy.rules.clear()
    report = upload_bundle_dir(bundle, target)
    assert sorted(report.uploaded) == ["bundle.json", "car_with_sound.mp4", "index.html"]  # the page: after the assets
    sizes = {name: (bundle / name).stat().st_size for name in report.uploaded}
    assert report.bytes_sent == sum(sizes.values())
    assert verify_bundle(f"s3://{bucket}/{prefix}").ok


def test_transient_errors_are_retried(s3, proxy, bundle):
    _, _, bucket = s3
    budget = {"left": 3}

    def flaky(method, path):
        if method == "PUT" and budget["left"] > 0:
            budget["left"] -= 1
            return 503
        return None

    proxy.rules.append(flaky)
    report = upload_bundle_dir(bundle, parse_s3_url(f"s3://{bucket}/p"))
    assert len(proxy.failed) == 3 and len(report.uploaded) == ASSET_COUNT + 2


def test_a_store_that_stays_down_gives_one_line(s3, proxy, bundle, monkeypatch):
    _, _, bucket = s3
    _setting(monkeypatch, s3_max_attempts=2)
    proxy.rules.append(lambda method, path: 503 if method == "PUT" else None)
    with pytest.raises(StorageError) as err:
        upload_bundle_dir(bundle, parse_s3_url(f"s3://{bucket}/p"))
    assert "SlowDown (HTTP 503)" in str(err.value) and "intact at" in str(err.value)
    assert max(Counter(path for _, path, _ in proxy.failed).values()) >= 2  # retried before giving up


def test_connection_resets_are_retried(s3, proxy, bundle):
    _, _, bucket = s3
    budget = {"left": 2}

    def reset(method, path):
        if method == "PUT" and budget["left"] > 0:
            budget["left"] -= 1
            return RESET
        return None

    proxy.rules.append(reset)
    report = upload_bundle_dir(bundle, parse_s3_url(f"s3://{bucket}/p"))
    assert [status for _, _, status in proxy.failed] == [RESET, RESET] and len(report.uploaded) == ASSET_COUNT + 2
    assert verify_bundle(f"s3://{bucket}/p/{_manifest(bundle)['bundle_id']}").ok


def test_an_object_corrupted_in_transit_is_taken_down_and_sent_again(s3, proxy, bundle, monkeypatch):
    client, _, bucket = s3
    _setting(monkeypatch, s3_checksums="off")  # no checksum sent, so the store keeps what it got
    flipped = []

    def flip_one_byte(method, path, body):
        if method == "PUT" and path.split("?")[0].endswith("/engine.wav") and not flipped:
            flipped.append(path)
            return body[:100] + bytes([body[100] ^ 0xFF]) + body[101:]
        return body

    proxy.mutators.append(flip_one_byte)
    target = parse_s3_url(f"s3://{bucket}/p")
    with pytest.raises(StorageError, match="engine.wav does not match its SHA-256 after upload") as err:
        upload_bundle_dir(bundle, target)
    assert flipped and "\n" not in str(err.value)
    prefix = f"p/{_manifest(bundle)['bundle_id']}/"
    stored = _keys(client, bucket, prefix)
    assert prefix + "engine.wav" not in stored and prefix + "bundle.json" not in stored  # nothing to skip by mistake

    proxy.mutators.clear()
    report = upload_bundle_dir(bundle, target)
    assert sorted(report.uploaded) == ["bundle.json", "engine.wav", "index.html"]  # the page goes after the assets
    assert verify_bundle(f"s3://{bucket}/{prefix}").ok


def test_multipart_uploads_left_by_a_killed_run_are_aborted(s3, bundle):
    client, _, bucket = s3
    prefix = f"p/{_manifest(bundle)['bundle_id']}/"
    left = client.create_multipart_upload(Bucket=bucket, Key=prefix + "car_with_sound.mp4")["UploadId"]
    client.upload_part(Bucket=bucket, Key=prefix + "car_with_sound.mp4", UploadId=left, PartNumber=1, Body=b"x" * 1024)
    other = client.create_multipart_upload(Bucket=bucket, Key="elsewhere/big.bin")["UploadId"]
    upload_bundle_dir(bundle, parse_s3_url(f"s3://{bucket}/p"))
    in_progress = {u["UploadId"] for u in client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])}
    assert left not in in_progress and other in in_progress  # only the bundle's own prefix is cleared


def test_unreachable_endpoint(monkeypatch, bundle):
    port = free_port()  # nothing listens there
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    _setting(monkeypatch, s3_max_attempts=1)
    with pytest.raises(StorageError, match=f"cannot reach http://127.0.0.1:{port}"):
        upload_bundle_dir(bundle, parse_s3_url("s3://bucket/p"))
    get_settings.cache_clear()


def test_wrong_bucket(s3):
    with pytest.raises(StorageError) as err:
        check_bucket(parse_s3_url("s3://no-such-bucket-here/p"))
    assert "bucket 'no-such-bucket-here' does not exist" in str(err.value) and "GENBUNDLE_STORAGE" in str(err.value)


def test_bad_credentials(tmp_path, monkeypatch):
    """A second moto server with authentication on: an unknown access key is refused."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=os.environ | {"INITIAL_NO_AUTH_ACTION_COUNT": "0"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAUNKNOWNKEY000000")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", TEST_SECRET_KEY)
        get_settings.cache_clear()
        with pytest.raises(StorageError) as err:
            check_bucket(parse_s3_url("s3://some-bucket/p"))
        assert "refused the credentials" in str(err.value) and "AWS_ACCESS_KEY_ID" in str(err.value)
        assert TEST_SECRET_KEY not in str(err.value)
    finally:
        server.terminate()
        server.wait(timeout=10)


def _synthetic_bundle(folder: Path, size: int) -> Path:
    folder.mkdir()
    (folder / "big.bin").write_bytes(os.urandom(size))
    manifest = minimal_manifest("synthetic", {"title": "Big"}, [describe_asset(folder / "big.bin", "data")])
    (folder / "bundle.json").write_text(manifest.to_json())
    return folder


def test_large_files_go_multipart_and_are_checked_by_the_store_checksum(s3, proxy, tmp_path, monkeypatch):
    _, _, bucket = s3
    _setting(monkeypatch, s3_part_mb=5)
    folder = _synthetic_bundle(tmp_path / "b", 12 * 2**20)
    report = upload_bundle_dir(folder, parse_s3_url(f"s3://{bucket}/p"))
    assert any("uploads" in path and method == "POST" for method, path in proxy.requests)  # multipart
    assert report.verified_by["big.bin"] == "store checksum"
    assert verify_bundle(f"s3://{bucket}/p/synthetic").ok


def test_checksums_off_verifies_by_reading_back(s3, bundle, monkeypatch):
    _, _, bucket = s3
    _setting(monkeypatch, s3_checksums="off")
    report = upload_bundle_dir(bundle, parse_s3_url(f"s3://{bucket}/p"))
    assert set(report.verified_by.values()) == {"read-back"}
    assert upload_bundle_dir(bundle, parse_s3_url(f"s3://{bucket}/p")).bytes_sent == 0


def test_verify_finds_corruption_and_missing_objects(s3, bundle):
    client, _, bucket = s3
    upload_bundle_dir(bundle, parse_s3_url(f"s3://{bucket}/p"))
    url = f"s3://{bucket}/p/{_manifest(bundle)['bundle_id']}"
    assert verify_bundle(url).ok and verify_bundle(str(bundle)).ok
    key = parse_s3_url(url).key("engine.wav")
    client.put_object(Bucket=bucket, Key=key, Body=b"not the engine sound")
    client.delete_object(Bucket=bucket, Key=parse_s3_url(url).key("poster.png"))
    status = {a.name: a.status for a in verify_bundle(url).assets}
    assert status["engine.wav"] == "mismatch" and status["poster.png"] == "missing" and status["cover.png"] == "ok"
    (bundle / "cover.png").write_bytes(b"corrupt")
    assert {a.name: a.status for a in verify_bundle(str(bundle)).assets}["cover.png"] == "mismatch"


def test_presigned_links_work_and_hold_no_secret(s3, bundle, monkeypatch):
    _, _, bucket = s3
    _setting(monkeypatch, presign_expiry=600)
    report = upload_bundle_dir(bundle, parse_s3_url(f"s3://{bucket}/p"))
    assert report.expires_in == 600
    link = report.links["cover.png"]
    assert "X-Amz-Expires=600" in link
    assert TEST_ACCESS_KEY in link  # inherent to presigning: the key ID, never the secret
    assert TEST_SECRET_KEY not in json.dumps(report.model_dump())
    with urllib.request.urlopen(link) as resp:
        assert hashlib.sha256(resp.read()).hexdigest() == describe_asset(bundle / "cover.png", "cover").sha256


def test_ls_lists_bundles_with_titles(s3, bundle):
    client, _, bucket = s3
    upload_bundle_dir(bundle, parse_s3_url(f"s3://{bucket}/shelf"))
    client.put_object(Bucket=bucket, Key="shelf/half-done-123/cover.png", Body=b"x")
    client.put_object(Bucket=bucket, Key="shelf/.work/cover/0123abcd/result.json", Body=b"{}")  # the work area
    listing = {b.bundle_id: b for b in list_bundles(parse_s3_url(f"s3://{bucket}/shelf"))}
    assert set(listing) == {_manifest(bundle)["bundle_id"], "half-done-123"}
    done = listing[_manifest(bundle)["bundle_id"]]
    assert done.title == "The Forest of Glowing Things" and done.assets == ASSET_COUNT and done.created
    assert listing["half-done-123"].title is None


def test_client_configuration_follows_the_environment(monkeypatch):
    from tasks.s3 import s3_client

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    monkeypatch.setenv("AWS_REGION", "eu-central-1")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://minio.local:9000")
    _setting(monkeypatch, s3_checksums="off")
    client = s3_client()
    assert client.meta.endpoint_url == "http://minio.local:9000"
    assert client.meta.region_name == "eu-central-1"
    assert client.meta.config.s3["addressing_style"] == "path"  # custom endpoints get path-style
    assert client.meta.config.request_checksum_calculation == "when_required"

    monkeypatch.delenv("AWS_ENDPOINT_URL_S3")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    _setting(monkeypatch, s3_checksums="sha256", s3_addressing="auto")
    client = s3_client()
    assert client.meta.config.s3["addressing_style"] == "virtual"
    assert client.meta.config.request_checksum_calculation == "when_supported"

    monkeypatch.setenv("AWS_PROFILE", "no-such-profile")
    with pytest.raises(StorageError, match="AWS_PROFILE"):
        s3_client()
    get_settings.cache_clear()


def test_region_comes_from_the_profile_unless_aws_region_is_set(tmp_path, monkeypatch):
    from tasks.s3 import s3_client

    config = tmp_path / "config"
    config.write_text("[profile team]\nregion = eu-west-3\n\n[profile bare]\n")
    credentials = tmp_path / "credentials"
    credentials.write_text("[team]\naws_access_key_id = x\naws_secret_access_key = y\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()
    monkeypatch.setenv("AWS_PROFILE", "team")
    assert s3_client().meta.region_name == "eu-west-3"
    monkeypatch.setenv("AWS_DEFAULT_REGION", "ap-south-1")
    assert s3_client().meta.region_name == "ap-south-1"
    monkeypatch.setenv("AWS_REGION", "ca-central-1")
    assert s3_client().meta.region_name == "ca-central-1"
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_PROFILE", "bare")
    assert s3_client().meta.region_name == "us-east-1"  # no region anywhere
    get_settings.cache_clear()


# --- the work area's mirror when the store is down -------------------------------------------


def test_work_mirror_failures_warn_once_and_the_steps_go_on_locally(s3, proxy, tmp_path, monkeypatch, caplog):
    from tasks.workspace import StepResult, Workspace

    _, _, bucket = s3
    _setting(monkeypatch, s3_max_attempts=2)
    proxy.rules.append(lambda method, path: 503)  # the store is down
    remote = f"s3://{bucket}/p/.work"
    step = Workspace(root=str(tmp_path / "work"), remote=remote).step("cover", {"seed": 1})
    with caplog.at_level("WARNING", logger="tasks.workspace"):
        assert step.load(StepResult) is None  # the remote copy could not be looked up: made here instead
        step.file("cover.png").write_bytes(b"png")
        saved = step.save(StepResult(path=str(step.folder / "cover.png")))
    assert step.load(StepResult).path == saved.path
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]  # once, then it rests
    assert remote in warning and "SlowDown" in warning and "\n" not in warning and TEST_SECRET_KEY not in warning
    assert len(proxy.failed) == 2  # two attempts at the first transfer, none at the second

    dispatched = Workspace(root=str(tmp_path / "work2"), remote=remote, mirror_required=True).step("cover", {"seed": 1})
    dispatched.file("cover.png").write_bytes(b"png")
    with pytest.raises(StorageError, match="SlowDown"):  # workers hand files over only through the mirror
        dispatched.save(StepResult(path=str(dispatched.folder / "cover.png")))


def test_a_store_down_after_preflight_leaves_the_bundle_complete_locally(prefect_api, s3, proxy, tmp_path, monkeypatch):
    from flows.bundle import asset_bundle, runtime_label
    from tasks.brief import parse_brief
    from tasks.jobs import bundle_id

    _, _, bucket = s3
    _setting(monkeypatch, s3_max_attempts=2)
    # The bucket answers the preflight; then every request fails: generation mirrors, upload.
    proxy.rules.append(lambda method, path: None if method == "HEAD" and path.rstrip("/") == f"/{bucket}" else 503)
    brief = parse_brief({"title": "Roads Under Rain", "author": "B. Writer"})
    with pytest.raises(StorageError) as err:
        asset_bundle(brief, out=str(tmp_path), storage=f"s3://{bucket}/p")
    local = tmp_path / bundle_id(brief, runtime_label(False))
    assert "\n" not in str(err.value) and f"the bundle is intact at {local}" in str(err.value)
    assert verify_bundle(str(local)).ok
    assert any(".work" in path for _, path, _ in proxy.failed)  # the mirror was tried during generation
