"""Where bundles live: the storage setting, and the store step (local disk).

Every file is written atomically (tasks/files.py). The manifest is stored last: a reader that
sees `bundle.json` can rely on every asset it lists being there.
"""

from __future__ import annotations

import os
import re
import shutil
import urllib.parse
import urllib.request
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.files import atomic_path, sha256_file
from tasks.manifest import MANIFEST_NAME, Manifest, ManifestError
from tasks.page import PAGE_NAME
from tasks.settings import get_settings


def out_root(out: str | Path | None = None, storage: str | None = None) -> Path:
    """The local folder bundles are stored under: `out` (--out, GENBUNDLE_OUT) or a local storage target.

    A storage setting that names a local folder means the same as `out`; both given and
    different is an error. With `out` given and no `storage`, `out` is taken as already resolved.
    """
    if out is not None and storage is None:
        return Path(out)
    settings = get_settings()
    target = storage_target(storage)
    if target is None or target.startswith("s3://"):
        return Path(out) if out is not None else settings.out
    given = out if out is not None else (settings.out if "out" in settings.model_fields_set else None)
    if given is not None and not _same_path(given, target):
        from tasks.s3 import StorageError

        raise StorageError(
            f"storage: the storage setting names the folder {target!r} but --out (GENBUNDLE_OUT) names "
            f"{str(given)!r}: give one of them, or the same folder"
        )
    return Path(target)


def _same_path(a: str | Path, b: str | Path) -> bool:
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")  # two letters or more: a Windows drive ("C:") is a path


def storage_target(storage: str | None = None) -> str | None:
    """The storage setting (the argument, else GENBUNDLE_STORAGE), checked before any model loads.

    Returns an s3:// URL (bundles are uploaded there too), a local folder (the same as --out;
    a file:// URL is turned into its path), or None (local only, under --out).
    """
    from tasks.s3 import StorageError, parse_s3_url

    value = storage if storage is not None else get_settings().storage
    if value is None or not str(value).strip():
        return None
    value = str(value).strip()
    if value.startswith("s3://"):
        parse_s3_url(value)  # a bucket name S3 would refuse fails here, not after the generation
        return value
    if value.startswith("file://"):
        parsed = urllib.parse.urlparse(value)
        if parsed.netloc not in ("", "localhost") or not parsed.path:
            raise StorageError(
                f"storage: {value!r} in --storage (GENBUNDLE_STORAGE) is not a usable file:// URL: "
                "write file:///absolute/path"
            )
        return urllib.request.url2pathname(parsed.path)
    if _SCHEME.match(value):
        hint = " (the scheme is lower-case: s3://)" if value.lower().startswith("s3:") else ""
        raise StorageError(
            f"storage: {value!r} in --storage (GENBUNDLE_STORAGE) is not supported{hint}: "
            "give s3://bucket/prefix, a local folder or file:///path"
        )
    return value


@task(name="store-bundle", cache_policy=NO_CACHE)
def store_bundle(manifest: Manifest, files: dict[str, str], out: str | None = None, page: str | None = None) -> str:
    """Write the files (name -> path in the work area), the bundle page (`page`, the HTML of index.html),
    then the manifest, into `<out>/<bundle-id>/`.

    Returns the folder's path. A bundle already stored with the very same brief and asset hashes
    is left as it is, manifest included: the same request is the same bundle, so storing (and
    uploading) it again changes nothing. A different bundle in the folder is replaced: its
    manifest first, then the assets, then its assets the new one lacks, the new manifest last.
    """
    target = out_root(out) / manifest.bundle_id
    target.mkdir(parents=True, exist_ok=True)
    manifest_path, replaced = target / MANIFEST_NAME, target / f".{MANIFEST_NAME}.replaced"
    old = _read_manifest(manifest_path)
    if not _same_bundle(target, old, manifest):
        # Until the new manifest is in, the folder must not look complete: the old one is moved
        # aside first (kept, hidden, so a replacement cut short still knows which files were the old bundle's).
        if manifest_path.exists():
            os.replace(manifest_path, replaced)
        previous = old or _read_manifest(replaced)
        for name, source in files.items():
            with atomic_path(target / name) as tmp:
                shutil.copyfile(source, tmp)
        # Assets of the old bundle that the new one lacks; files no manifest listed are the user's.
        listed = {a.name for a in manifest.assets} | set(files)
        for name in {a.name for a in previous.assets} - listed if previous else ():
            if Path(name).name == name and name != MANIFEST_NAME:
                (target / name).unlink(missing_ok=True)
        if page is not None:  # not listed in the manifest (it shows the hashes), but before it like an asset
            with atomic_path(target / PAGE_NAME) as tmp:
                tmp.write_text(page, encoding="utf-8")
        with atomic_path(manifest_path) as tmp:
            tmp.write_text(manifest.to_json(), encoding="utf-8")
    replaced.unlink(missing_ok=True)
    return str(target.resolve())


def _read_manifest(path: Path) -> Manifest | None:
    """A stored manifest, or None when there is none (or it is unreadable: then it is replaced)."""
    try:
        return Manifest.read(path)
    except ManifestError:
        return None


def _same_bundle(folder: Path, stored: Manifest | None, manifest: Manifest) -> bool:
    """Whether a stored manifest describes the same brief and byte-identical assets."""
    if stored is None:
        return False

    def identity(m: Manifest):
        return m.brief, sorted((a.name, a.sha256) for a in m.assets)

    return identity(stored) == identity(manifest) and all(
        (folder / a.name).is_file() and sha256_file(folder / a.name) == a.sha256 for a in stored.assets
    )


@task(name="upload-bundle", tags=["storage"], cache_policy=NO_CACHE)
def upload_bundle(location: str, storage: str):
    """Upload the stored local bundle to S3-compatible storage, manifest last (see tasks/s3.py)."""
    from tasks.s3 import parse_s3_url, upload_bundle_dir

    return upload_bundle_dir(Path(location), parse_s3_url(storage))
