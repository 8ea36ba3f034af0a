"""The gallery: one page of many bundles, from a local folder of bundles or an s3:// prefix.

Local: `gallery.html` in the folder (or where `out` says), with relative links to each bundle's
`index.html` and titled cover. S3: the gallery is uploaded to `<prefix>/gallery.html` beside the
bundles, and every link on it is presigned; so that the bundle pages it links work as long as it
does, each bundle's share page (`share.html`) is rewritten with fresh links on the way. Nothing
is written to the current folder unless `out` names it.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

from tasks.errors import UserError
from tasks.files import atomic_path
from tasks.manifest import MANIFEST_NAME, Manifest, ManifestError
from tasks.page import GALLERY_NAME, HTML_TYPE, PAGE_NAME, GalleryEntry, render_gallery, thumbnail_name


def _newest_first(entries: list[GalleryEntry]) -> list[GalleryEntry]:
    return sorted(entries, key=lambda e: e.manifest.created if e.manifest else "", reverse=True)


def _write(path: Path, html: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(html, encoding="utf-8")


def local_gallery(folder: Path, out: Path | None = None) -> Path:
    """Write the gallery of the bundles in `folder` to `out` (default `<folder>/gallery.html`); returns its path."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(
            f"gallery: {folder} is not a folder: give the folder bundles are stored in (--out, GENBUNDLE_OUT) "
            "or s3://bucket/prefix"
        )
    out = Path(out) if out else folder / GALLERY_NAME
    base = out.resolve().parent  # links are relative to where the gallery is written

    def link(path: Path) -> str:
        return quote(os.path.relpath(path.resolve(), base).replace(os.sep, "/"))

    entries = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):  # .work is not one
        try:
            manifest = Manifest.read(sub / MANIFEST_NAME) if (sub / MANIFEST_NAME).is_file() else None
        except ManifestError:
            manifest = None
        if manifest is None and not any(sub.iterdir()):
            continue
        page = sub / PAGE_NAME if (sub / PAGE_NAME).is_file() else sub / MANIFEST_NAME  # bundles made before pages
        thumb = thumbnail_name(manifest) if manifest else None
        entries.append(
            GalleryEntry(
                bundle_id=sub.name,
                manifest=manifest,
                page=link(page) if manifest else None,
                thumbnail=link(sub / thumb) if thumb else None,
            )
        )
    _write(out, render_gallery(_newest_first(entries), str(folder)))
    return out


def s3_gallery(url: str, out: Path | None = None) -> tuple[str, int]:
    """Upload the gallery of the bundles under an s3:// prefix beside them; returns (its presigned link, expiry s).

    With `out`, a copy is written there too (its presigned links expire like the uploaded one's).
    """
    from tasks.s3 import (
        list_bundles,
        parse_s3_url,
        presigned_links,
        read_manifest,
        s3_client,
        storage_errors,
        write_share_page,
    )
    from tasks.settings import get_settings

    target = parse_s3_url(url)
    expiry = get_settings().presign_expiry
    entries = []
    with storage_errors(target):
        client = s3_client()
        for listing in list_bundles(target):
            location = target.child(listing.bundle_id)
            manifest = read_manifest(client, location) if listing.title is not None else None
            if manifest is None:
                entries.append(GalleryEntry(listing.bundle_id, None, None, None))
                continue
            page = write_share_page(client, location, manifest, expiry)
            thumb = thumbnail_name(manifest)
            thumb_link = presigned_links(client, location, [thumb], expiry)[thumb] if thumb else None
            entries.append(GalleryEntry(listing.bundle_id, manifest, page, thumb_link))
        until = (datetime.now(UTC) + timedelta(seconds=expiry)).strftime("%Y-%m-%d %H:%M UTC")
        note = f"The links on this page are presigned: they work until {until}; genbundle gallery makes new ones."
        html = render_gallery(_newest_first(entries), target.url(), note)
        client.put_object(
            Bucket=target.bucket, Key=target.key(GALLERY_NAME), Body=html.encode("utf-8"), ContentType=HTML_TYPE
        )
        link = presigned_links(client, target, [GALLERY_NAME], expiry)[GALLERY_NAME]
    if out:
        _write(Path(out), html)
    return link, expiry
