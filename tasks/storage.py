"""Where bundles live: the bundle id, atomic writes, and the store step (local disk).

Every file is written under a temporary name and renamed into place, so a crash never leaves
a half-written file that looks finished. The manifest is stored last: a reader that sees
`bundle.json` can rely on every asset it lists being there.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from prefect import task

from tasks.brief import Brief
from tasks.settings import get_settings

MANIFEST_NAME = "bundle.json"
_UMASK = os.umask(0o022)  # read once at import (os.umask can only be read by setting it)...
os.umask(_UMASK)  # ...and put back at once, before any task thread runs


def bundle_id(brief: Brief) -> str:
    """Readable and stable: the title's slug and a hash of the whole brief (seed and profile included)."""
    slug = re.sub(r"[^a-z0-9]+", "-", brief.title.lower()).strip("-")[:40].strip("-") or "bundle"
    return f"{slug}-{brief.fingerprint()[:12]}"


def out_root(out: str | Path | None = None) -> Path:
    return Path(out) if out is not None else get_settings().out


@contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path beside `final`; rename it into place only if the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.stem}.", suffix=final.suffix + ".part", dir=final.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; finished files get the usual permissions
    try:
        yield Path(tmp)
        os.replace(tmp, final)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def storage_target(storage: str | None = None) -> str | None:
    """The upload target: the argument, else GENBUNDLE_STORAGE; None means local only."""
    return storage if storage is not None else get_settings().storage


@task(name="store-bundle")
def store_bundle(manifest: dict, files: dict[str, str], out: str | None = None) -> str:
    """Write the files (name -> path in the work area), then the manifest, into `<out>/<bundle-id>/`.

    Returns the folder's path. A bundle already stored with the very same brief and asset hashes
    is left as it is, manifest included: the same request is the same bundle, so storing (and
    uploading) it again changes nothing.
    """
    target = out_root(out) / manifest["bundle_id"]
    target.mkdir(parents=True, exist_ok=True)
    if not _same_bundle(target / MANIFEST_NAME, manifest):
        for name, source in files.items():
            with atomic_path(target / name) as tmp:
                shutil.copyfile(source, tmp)
        with atomic_path(target / MANIFEST_NAME) as tmp:
            tmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return str(target.resolve())


def _same_bundle(stored_manifest: Path, manifest: dict) -> bool:
    """Whether a stored manifest describes the same brief and byte-identical assets."""
    if not stored_manifest.is_file():
        return False

    def identity(m: dict):
        return m.get("brief"), sorted((a["name"], a["sha256"]) for a in m.get("assets", []))

    stored = json.loads(stored_manifest.read_text(encoding="utf-8"))
    folder = stored_manifest.parent
    return identity(stored) == identity(manifest) and all(
        (folder / a["name"]).is_file() and sha256_file(folder / a["name"]) == a["sha256"] for a in stored["assets"]
    )


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@task(name="upload-bundle", tags=["storage"])
def upload_bundle(location: str, storage: str):
    """Upload the stored local bundle to S3-compatible storage, manifest last (see tasks/s3.py)."""
    from tasks.s3 import parse_s3_url, upload_bundle_dir

    return upload_bundle_dir(Path(location), parse_s3_url(storage))
