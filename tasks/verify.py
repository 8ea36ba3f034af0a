"""Re-hash a stored bundle, on local disk or in S3, against its manifest, and validate the C2PA
content credentials of every file the manifest says was signed."""

from __future__ import annotations

import tempfile
from pathlib import Path

from pydantic import BaseModel

from tasks.errors import InputError
from tasks.files import sha256_file
from tasks.manifest import MANIFEST_NAME, Asset, Manifest
from tasks.provenance import CredentialCheck, read_credentials, trust_anchors
from tasks.s3 import StorageError, is_s3_url, parse_s3_url, read_manifest, s3_client, storage_errors


class AssetCheck(BaseModel):
    name: str
    status: str  # "ok" | "mismatch" | "missing"
    expected_sha256: str
    found_sha256: str | None = None
    expected_bytes: int
    found_bytes: int | None = None
    credentials: CredentialCheck | None = None  # for a file the manifest says was signed


class BundleCheck(BaseModel):
    target: str
    assets: list[AssetCheck]
    signing: str | None = None  # the manifest's credentials line: who signed, or "unsigned: ..."

    @property
    def ok(self) -> bool:
        return all(a.status == "ok" and (a.credentials is None or a.credentials.ok) for a in self.assets)


def _check(asset: Asset, found: tuple[str, int] | None) -> AssetCheck:
    check = AssetCheck(name=asset.name, status="missing", expected_sha256=asset.sha256, expected_bytes=asset.bytes)
    if found is not None:
        check.found_sha256, check.found_bytes = found
        matches = found == (asset.sha256, asset.bytes)
        check.status = "ok" if matches else "mismatch"
    return check


def _check_credentials(manifest: Manifest, checks: list[AssetCheck], local_path, anchors: bytes | None) -> None:
    """Read back the credentials of each signed asset that is there; `local_path(name)` gives a file to read."""
    for asset, check in zip(manifest.assets, checks, strict=True):
        if asset.credentials and asset.credentials.signed and check.status != "missing":
            check.credentials = read_credentials(local_path(asset.name), anchors)


def verify_bundle(target: str, trust: str | None = None) -> BundleCheck:
    """Hash every asset the manifest lists, reading each back from where it is stored, and validate
    the credentials of the signed ones (against the trust anchors in `trust`, else GENBUNDLE_C2PA_TRUST)."""
    anchors = trust_anchors(trust)
    if is_s3_url(target):
        from botocore.exceptions import ClientError

        from tasks.s3 import stored_sha256

        location = parse_s3_url(target)
        with storage_errors(location):
            client = s3_client()
            manifest = read_manifest(client, location)
            if manifest is None:
                raise StorageError(f"storage: no {MANIFEST_NAME} at {location.url()}: not a complete bundle")

            def found(name: str):
                try:
                    return stored_sha256(client, location.bucket, location.key(name))
                except ClientError as err:
                    if err.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                        return None
                    raise

            checks = [_check(a, found(a.name)) for a in manifest.assets]
            with tempfile.TemporaryDirectory(prefix="genbundle-verify-") as tmp:  # c2pa reads files: fetch them

                def fetched(name: str) -> Path:
                    client.download_file(location.bucket, location.key(name), str(Path(tmp) / name))
                    return Path(tmp) / name

                _check_credentials(manifest, checks, fetched, anchors)
    else:
        folder = Path(target)
        if not folder.exists():  # the name typed is wrong: not an incomplete bundle
            raise InputError(f"verify: {folder} does not exist: give a bundle folder or s3://bucket/prefix/<bundle-id>")
        if not folder.is_dir():
            raise InputError(f"verify: {folder} is a file: give the bundle's folder (the one holding {MANIFEST_NAME})")
        if not (folder / MANIFEST_NAME).is_file():
            raise StorageError(f"storage: no {MANIFEST_NAME} in {folder}: not a complete bundle")
        manifest = Manifest.read(folder / MANIFEST_NAME)

        def found(name: str):
            path = folder / name
            return (sha256_file(path), path.stat().st_size) if path.is_file() else None

        checks = [_check(a, found(a.name)) for a in manifest.assets]
        _check_credentials(manifest, checks, lambda name: folder / name, anchors)
    return BundleCheck(target=str(target), assets=checks, signing=manifest.credentials)
