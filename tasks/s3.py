"""S3-compatible storage (AWS S3, MinIO, R2, Ceph, B2): upload, verify, list, share.

A bundle goes to `<prefix>/<bundle-id>/<asset>`, assets concurrently (multipart above the part
size), the manifest last. Every object is checked against the manifest's SHA-256: by the
store's own SHA-256 checksum where it keeps one (whole-object or per-part composite), by
reading it back otherwise. An object already there with the same size and hash is skipped, so
uploading twice sends nothing and an interrupted upload resumes where it stopped, object by
object (a half-sent multipart object is sent again; its stale parts are aborted). Transient
errors are retried with backoff by botocore's standard retry mode; whatever still fails ends
in one StorageError line. Credentials are left to boto3 and never written anywhere.
"""

from __future__ import annotations

import base64
import hashlib
import os
import threading
import time
import urllib.parse
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel

from tasks.errors import SettingError, UserError
from tasks.logs import run_logger
from tasks.manifest import MANIFEST_NAME, Manifest
from tasks.page import HTML_TYPE, PAGE_NAME, SHARE_NAME, render_page
from tasks.settings import Settings, get_settings


class StorageError(UserError):
    """Storage failed in a way a person can fix; the message is one line that says how."""


@dataclass(frozen=True)
class S3Location:
    bucket: str
    prefix: str  # without leading or trailing slashes; may be empty

    def key(self, *parts: str) -> str:
        return "/".join(p.strip("/") for p in (self.prefix, *parts) if p.strip("/"))

    def url(self, *parts: str) -> str:
        return f"s3://{self.bucket}/{self.key(*parts)}"

    def child(self, name: str) -> S3Location:
        return S3Location(self.bucket, self.key(name))


def is_s3_url(target: str | None) -> bool:
    return bool(target) and str(target).startswith("s3://")


def parse_s3_url(url: str) -> S3Location:
    if not is_s3_url(url):
        raise StorageError(f"storage: {url!r} is not an s3:// URL (expected s3://bucket/prefix)")
    bucket, _, prefix = url[len("s3://") :].partition("/")
    if not (3 <= len(bucket) <= 63) or bucket != bucket.lower() or "_" in bucket:
        raise StorageError(f"storage: {url!r} does not name a valid bucket (3-63 lower-case letters, digits, - or .)")
    return S3Location(bucket, prefix.strip("/"))


# --- client ---------------------------------------------------------------------------------


def endpoint_url() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def s3_client(settings: Settings | None = None):
    """A boto3 S3 client configured from the standard AWS_* variables and GENBUNDLE_S3_* settings."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import ProfileNotFound

    settings = settings or get_settings()
    endpoint = endpoint_url()
    addressing = settings.s3_addressing
    if addressing == "auto":
        addressing = "path" if endpoint else "virtual"
    checksums = "when_supported" if settings.s3_checksums == "sha256" else "when_required"
    try:
        session = boto3.session.Session(profile_name=os.environ.get("AWS_PROFILE") or None)
    except ProfileNotFound as err:
        raise StorageError(f"storage: {err}; fix AWS_PROFILE") from None
    # AWS_REGION, else the session's (AWS_DEFAULT_REGION, then the profile's); us-east-1 only when none is set.
    region = os.environ.get("AWS_REGION") or session.region_name or "us-east-1"
    config = Config(
        region_name=region,
        retries={"mode": "standard", "total_max_attempts": settings.s3_max_attempts},  # the first attempt included
        s3={"addressing_style": addressing},
        signature_version="s3v4",  # SigV4 presigned links: what R2, MinIO and current AWS regions accept
        request_checksum_calculation=checksums,
        response_checksum_validation=checksums,
        connect_timeout=settings.s3_connect_timeout,
        max_pool_connections=max(10, settings.s3_concurrency * 4),
    )
    if endpoint:  # botocore's "Invalid endpoint" would surface as a traceback from deep inside the run
        parsed = urllib.parse.urlparse(endpoint)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            name = "AWS_ENDPOINT_URL_S3" if os.environ.get("AWS_ENDPOINT_URL_S3") else "AWS_ENDPOINT_URL"
            raise SettingError(f"{name}={endpoint!r} is not a URL: give http(s)://host[:port], or unset it for AWS")
    try:
        return session.client("s3", endpoint_url=endpoint, config=config)
    except ValueError as err:  # e.g. "Provided region_name ... doesn't match a supported format"
        raise SettingError(f"AWS_REGION: {str(err).rstrip('.')}: give a region such as us-east-1") from None


_CREDENTIAL_CODES = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AccessDenied",
    "ExpiredToken",
    "InvalidToken",
    "403",
}


def _describe_client_error(err, location: S3Location, where: str) -> str:
    code = str(err.response.get("Error", {}).get("Code", "?"))
    status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if code == "NoSuchBucket" or (code == "404" and err.operation_name == "HeadBucket"):
        return f"bucket '{location.bucket}' does not exist at {where}: create it or fix GENBUNDLE_STORAGE"
    if code in _CREDENTIAL_CODES or status == 403:
        return (
            f"{where} refused the credentials ({code}): check AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY or AWS_PROFILE"
        )
    return f"{where} answered {code} (HTTP {status}) to {err.operation_name}"


@contextmanager
def storage_errors(location: S3Location, *, intact: Path | None = None) -> Iterator[None]:
    """Turn boto errors into one StorageError line that names the cause and the fix."""
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError, NoCredentialsError

    where = endpoint_url() or "AWS S3"
    after = f"; the bundle is intact at {intact}" if intact else ""
    try:
        yield
    except StorageError as err:
        raise StorageError(f"{err}{after}") from None
    except NoCredentialsError:
        raise StorageError(
            f"storage: no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE{after}"
        ) from None
    except (ClientError, S3UploadFailedError) as err:
        cause = err if isinstance(err, ClientError) else (err.__cause__ or err.__context__)  # upload_file wraps it
        if isinstance(cause, ClientError):
            message = _describe_client_error(cause, location, where)
        else:
            message = f"upload to {where} failed: {err}"
        raise StorageError(f"storage: {message}{after}") from None
    except EndpointConnectionError:
        raise StorageError(f"storage: cannot reach {where}: check AWS_ENDPOINT_URL and the network{after}") from None
    except BotoCoreError as err:
        raise StorageError(f"storage: {type(err).__name__} talking to {where}: {err}{after}") from None


def check_bucket(location: S3Location, client=None) -> None:
    """Fail fast (before any GPU work) when the bucket is missing or the credentials are refused."""
    with storage_errors(location):
        (client or s3_client()).head_bucket(Bucket=location.bucket)


# --- hashing --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Digests:
    sha256_hex: str
    full_b64: str  # base64 SHA-256 of the whole object, as S3 reports a single-part checksum
    composite_b64: str  # base64 SHA-256 of the part digests, as S3 reports a multipart checksum


def file_digests(path: Path, part_size: int) -> Digests:
    whole, parts = hashlib.sha256(), []
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(part_size), b""):
            whole.update(chunk)
            parts.append(hashlib.sha256(chunk).digest())
    composite = hashlib.sha256(b"".join(parts)).digest()
    return Digests(whole.hexdigest(), base64.b64encode(whole.digest()).decode(), base64.b64encode(composite).decode())


def stored_sha256(client, bucket: str, key: str) -> tuple[str, int]:
    """Read an object back and hash it: (hex sha256, bytes)."""
    body = client.get_object(Bucket=bucket, Key=key)["Body"]
    digest, size = hashlib.sha256(), 0
    for chunk in iter(lambda: body.read(1 << 20), b""):
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


# --- upload ---------------------------------------------------------------------------------


class UploadReport(BaseModel):
    url: str  # s3://bucket/prefix/bundle-id/
    uploaded: list[str]
    skipped: list[str]
    bytes_sent: int
    seconds: float
    links: dict[str, str]  # presigned GET per file, and the share page's (share.html: the link to give people)
    expires_in: int
    verified_by: dict[str, str]  # file -> "store checksum" | "read-back"

    def summary(self) -> str:
        return f"{len(self.uploaded)} uploaded ({self.bytes_sent:,} bytes sent), {len(self.skipped)} already there"


class _Uploader:
    def __init__(self, client, location: S3Location, settings: Settings):
        from boto3.s3.transfer import TransferConfig

        self.client, self.location, self.settings = client, location, settings
        self.part_size = settings.s3_part_mb * 2**20
        self.transfer = TransferConfig(
            multipart_threshold=self.part_size,
            multipart_chunksize=self.part_size,
            max_concurrency=settings.s3_concurrency,
        )
        self.checksums = settings.s3_checksums == "sha256"
        self.sent = 0
        self._lock = threading.Lock()

    def _head(self, key: str) -> dict | None:
        from botocore.exceptions import ClientError

        try:
            extra = {"ChecksumMode": "ENABLED"} if self.checksums else {}
            return self.client.head_object(Bucket=self.location.bucket, Key=key, **extra)
        except ClientError as err:
            if err.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                return None
            raise

    def _matches_store_checksum(self, head: dict, digests: Digests) -> bool | None:
        """True/False when the store reports a SHA-256 checksum, None when it does not."""
        reported = head.get("ChecksumSHA256")
        if not reported:
            return None
        base = reported.split("-")[0]  # multipart: "<composite>-<parts>"
        return base in (digests.full_b64, digests.composite_b64)

    def already_there(self, key: str, size: int, digests: Digests) -> bool:
        return self._holds(self._head(key), size, digests)

    def other_there(self, key: str, size: int, digests: Digests) -> bool:
        """Whether an object is there holding other bytes than these."""
        head = self._head(key)
        return head is not None and not self._holds(head, size, digests)

    def _holds(self, head: dict | None, size: int, digests: Digests) -> bool:
        """Whether an object (its HEAD answer; None: no object) holds these bytes."""
        if (
            head is None
            or head["ContentLength"] != size
            or head.get("Metadata", {}).get("sha256") != digests.sha256_hex
        ):
            return False
        return self._matches_store_checksum(head, digests) is not False

    def verify(self, key: str, size: int, digests: Digests) -> str:
        """Check the stored object against the expected hash; returns how it was checked."""
        head = self._head(key)
        if head is None or head["ContentLength"] != size:
            raise StorageError(f"storage: {self.location.url(key)} is missing or has the wrong size after upload")
        match = self._matches_store_checksum(head, digests)
        how = "store checksum"
        if match is None:  # the store keeps no SHA-256 for it: read it back
            match, how = stored_sha256(self.client, self.location.bucket, key)[0] == digests.sha256_hex, "read-back"
        if not match:
            raise StorageError(f"storage: {self.location.url(key)} does not match its SHA-256 after upload")
        return how

    def put(self, path: Path, key: str, media_type: str, expected_sha256: str) -> tuple[bool, str]:
        """Upload one file unless an identical object is there; returns (uploaded, verified by)."""
        size = path.stat().st_size
        digests = file_digests(path, self.part_size)
        if digests.sha256_hex != expected_sha256:
            raise StorageError(f"storage: local file {path} does not match the manifest's SHA-256; not uploading it")
        if self.already_there(key, size, digests):
            return False, "already stored"
        extra = {"ContentType": media_type, "Metadata": {"sha256": digests.sha256_hex}}
        if self.checksums:
            extra["ChecksumAlgorithm"] = "SHA256"

        def count(n: int) -> None:
            with self._lock:
                self.sent += n

        self.client.upload_file(
            str(path), self.location.bucket, key, ExtraArgs=extra, Config=self.transfer, Callback=count
        )
        try:
            return True, self.verify(key, size, digests)
        except StorageError:
            # Its sha256 metadata looks right, so a later run would skip it by size and metadata: take it down.
            self.client.delete_object(Bucket=self.location.bucket, Key=key)
            raise

    def abort_stale_multipart(self) -> int:
        """Abort multipart uploads under the bundle's prefix that a killed run left (they are billed).

        boto3 cannot resume one, so resume is per object: a half-sent object is sent again whole.
        Best effort: a store or policy that refuses the listing does not stop the upload.
        """
        from botocore.exceptions import ClientError

        prefix, aborted = self.location.key() + "/", 0
        try:
            pages = self.client.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.location.bucket, Prefix=prefix
            )
            for page in pages:
                for upload in page.get("Uploads", []):
                    if upload["Key"].startswith(prefix):
                        self.client.abort_multipart_upload(
                            Bucket=self.location.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                        )
                        aborted += 1
        except ClientError as err:
            run_logger(__name__).warning(
                "storage: could not clear unfinished multipart uploads under %s: %s",
                self.location.url(),
                err.response.get("Error", {}).get("Code", "?"),
            )
        return aborted


def presigned_links(client, location: S3Location, names: list[str], expires_in: int) -> dict[str, str]:
    """Shareable GET links; signed locally, so no request is made and no secret is in them."""
    return {
        name: client.generate_presigned_url(
            "get_object", Params={"Bucket": location.bucket, "Key": location.key(name)}, ExpiresIn=expires_in
        )
        for name in names
    }


def write_share_page(client, location: S3Location, manifest: Manifest, expires_in: int) -> str:
    """Upload the bundle page with presigned links (share.html) for a private bucket; returns its own presigned link.

    Rewritten at every upload (and by `genbundle gallery`): its links expire, the page says when.
    Not listed in the manifest; the upload reports it apart from the bundle's files.
    """
    from datetime import UTC, datetime, timedelta

    names = [a.name for a in manifest.assets] + [MANIFEST_NAME]
    until = (datetime.now(UTC) + timedelta(seconds=expires_in)).strftime("%Y-%m-%d %H:%M UTC")
    note = (
        f"The links on this page are presigned: they work until {until} ({expires_in // 60} minutes after this "
        "page was written), for anyone who has the page. Ask for a fresh link after that."
    )
    html = render_page(manifest, presigned_links(client, location, names, expires_in), note)
    client.put_object(
        Bucket=location.bucket, Key=location.key(SHARE_NAME), Body=html.encode("utf-8"), ContentType=HTML_TYPE
    )
    return presigned_links(client, location, [SHARE_NAME], expires_in)[SHARE_NAME]


def upload_bundle_dir(local_dir: Path, target: S3Location, settings: Settings | None = None) -> UploadReport:
    """Upload a stored local bundle to `<target>/<bundle-id>/`, manifest last; returns what was done."""
    settings = settings or get_settings()
    local_dir = Path(local_dir)
    manifest_path = local_dir / MANIFEST_NAME
    if not manifest_path.is_file():
        raise StorageError(f"storage: {local_dir} holds no {MANIFEST_NAME}: not a complete bundle")
    manifest = Manifest.read(manifest_path)
    location = target.child(manifest.bundle_id)
    started = time.perf_counter()

    with storage_errors(location, intact=local_dir):
        client = s3_client(settings)
        client.head_bucket(Bucket=location.bucket)
        up = _Uploader(client, location, settings)
        up.abort_stale_multipart()
        manifest_sha = hashlib.sha256(manifest_path.read_bytes()).hexdigest()
        # A different manifest already there would describe assets about to be replaced: take it down first.
        # Only a different one: another upload of the same bundle may have just put this very manifest.
        if up.other_there(
            location.key(MANIFEST_NAME), manifest_path.stat().st_size, file_digests(manifest_path, up.part_size)
        ):
            client.delete_object(Bucket=location.bucket, Key=location.key(MANIFEST_NAME))

        results: dict[str, tuple[bool, str]] = {}
        with ThreadPoolExecutor(max_workers=settings.s3_concurrency) as pool:
            futures = {
                a.name: pool.submit(up.put, local_dir / a.name, location.key(a.name), a.media_type, a.sha256)
                for a in manifest.assets
            }
            for name, future in futures.items():
                results[name] = future.result()
        page = local_dir / PAGE_NAME  # the bundle page: not listed in the manifest, sent before it like an asset
        if page.is_file():
            results[PAGE_NAME] = up.put(
                page, location.key(PAGE_NAME), HTML_TYPE, file_digests(page, up.part_size).sha256_hex
            )
        share_link = write_share_page(client, location, manifest, settings.presign_expiry)
        results[MANIFEST_NAME] = up.put(manifest_path, location.key(MANIFEST_NAME), "application/json", manifest_sha)

        links = presigned_links(client, location, list(results), settings.presign_expiry) | {SHARE_NAME: share_link}
    return UploadReport(
        url=location.url() + "/",
        uploaded=[n for n, (done, _) in results.items() if done],
        skipped=[n for n, (done, _) in results.items() if not done],
        bytes_sent=up.sent,
        seconds=time.perf_counter() - started,
        links=links,
        expires_in=settings.presign_expiry,
        verified_by={n: how for n, (_, how) in results.items()},
    )


# --- reading back ---------------------------------------------------------------------------


def read_manifest(client, location: S3Location) -> Manifest | None:
    from botocore.exceptions import ClientError

    try:
        body = client.get_object(Bucket=location.bucket, Key=location.key(MANIFEST_NAME))["Body"].read()
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            return None
        raise
    return Manifest.from_json(body, location.url(MANIFEST_NAME))


class BundleListing(BaseModel):
    url: str
    bundle_id: str
    title: str | None  # None: no manifest (an upload that has not finished)
    created: str | None
    assets: int
    bytes: int


def list_bundles(target: S3Location) -> list[BundleListing]:
    """The bundles under an s3:// prefix, with title and date from each manifest."""
    with storage_errors(target):
        client = s3_client()
        prefix = target.key() + "/" if target.key() else ""
        found = []
        for page in client.get_paginator("list_objects_v2").paginate(
            Bucket=target.bucket, Prefix=prefix, Delimiter="/"
        ):
            for common in page.get("CommonPrefixes", []):
                bundle = common["Prefix"][len(prefix) :].strip("/")
                if bundle.startswith("."):  # the work area (.work), not a bundle: ids never start with a dot
                    continue
                manifest = read_manifest(client, target.child(bundle))
                found.append(
                    BundleListing(
                        url=target.url(bundle) + "/",
                        bundle_id=bundle,
                        title=manifest.title if manifest else None,
                        created=manifest.created if manifest else None,
                        assets=len(manifest.assets) if manifest else 0,
                        bytes=sum(a.bytes for a in manifest.assets) if manifest else 0,
                    )
                )
    return sorted(found, key=lambda b: b.created or "", reverse=True)
