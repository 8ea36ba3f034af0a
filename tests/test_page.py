"""The bundle page and the gallery: rendered from the manifest, stored beside the assets, and opened in a
real headless Chromium from the folder (file://) and from the loopback S3 store (the share page).

Set GENBUNDLE_UPDATE_SCREENSHOT=1 to write the desktop screenshot of the tiny bundle's page to
docs/bundle_page.png (the README shows it).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import time
import urllib.error
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import pytest
from conftest import ASSET_COUNT, TEST_SECRET_KEY
from headless import Chromium, chromium_path

from tasks.manifest import MANIFEST_NAME, Manifest
from tasks.page import GALLERY_NAME, PAGE_NAME, SHARE_NAME, render_page
from tasks.s3 import list_bundles, parse_s3_url, upload_bundle_dir
from tasks.verify import verify_bundle

ROOT = Path(__file__).resolve().parent.parent
DESKTOP, PHONE = (1280, 900), (390, 844)
SHOT_HEIGHT = 1500  # the screenshot: the header, the covers, the sound and the video

# Waits (at most 20 s) for every image to decode and every media element's metadata, then reports.
CHECK = """(async () => {
  const media = [...document.querySelectorAll('audio, video')];
  const ready = m => m.readyState >= 1 ? Promise.resolve() : new Promise(done => {
    m.addEventListener('loadedmetadata', done, {once: true});
    m.addEventListener('error', done, {once: true});
  });
  const timeout = new Promise(done => setTimeout(done, 20000));
  await Promise.race([Promise.all([...media.map(ready), ...[...document.images].map(i => i.decode().catch(() => 0))]),
                      timeout]);
  const described = el => !!(el.getAttribute('aria-label') && el.closest('figure')
                             && el.closest('figure').querySelector('figcaption'));
  return {
    images: [...document.images].map(i => ({src: i.currentSrc, ok: i.complete && i.naturalWidth > 0,
                                            alt: i.getAttribute('alt') || ''})),
    media: media.map(m => ({tag: m.tagName.toLowerCase(), src: m.currentSrc, duration: m.duration,
                            error: m.error ? m.error.code : null, described: described(m),
                            poster: m.getAttribute('poster')})),
    scrollWidth: document.scrollingElement.scrollWidth, innerWidth: window.innerWidth,
    scripts: document.scripts.length,
  };
})()"""

# Plays the muxed clip (muted) for a moment: audio bytes decoded means the video carries its sound.
PLAY = """(async () => {
  const v = document.querySelector('video');
  v.muted = true; await v.play(); await new Promise(done => setTimeout(done, 600)); v.pause();
  return {audio: v.webkitAudioDecodedByteCount, video: v.webkitVideoDecodedByteCount};
})()"""


@pytest.fixture(scope="module")
def chromium():
    executable = chromium_path()
    if executable is None:
        reason = "chromium is not installed: apt-get install -y chromium (CI's .ci/run installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)  # CI must run the browser test, not skip it
        pytest.skip(reason)
    browser = Chromium(executable)
    yield browser
    browser.close()


def _check_page(browser: Chromium, url: str, inside: str) -> dict:
    """Open the page at desktop and phone widths; every element must work and no request leave `inside`."""
    started = time.perf_counter()
    found = {}
    for name, (width, height) in (("desktop", DESKTOP), ("phone", PHONE)):
        session = browser.open(url, width, height, mobile=name == "phone")
        report = browser.evaluate(session, CHECK)
        assert report["scripts"] == 0
        assert len(report["images"]) == 6, report["images"]  # two covers, the poster, three trace pictures
        for image in report["images"]:
            assert image["ok"], f"{name}: {image['src']} did not decode"
            assert image["alt"].strip(), f"{name}: {image['src']} has no alt text"
        assert [m["tag"] for m in report["media"]] == ["audio", "video"]
        for m in report["media"]:
            assert m["error"] is None and m["duration"] and 0 < m["duration"] < 1e6, f"{name}: {m}"
            assert m["described"], f"{name}: {m['tag']} lacks an aria-label or a figcaption"
        assert report["media"][1]["poster"]
        if name == "phone":
            assert report["scrollWidth"] <= report["innerWidth"], "the page overflows a phone's width"
        else:
            played = browser.evaluate(session, PLAY)
            assert played["video"] > 0 and played["audio"] > 0, played  # the clip plays with its sound
            found["screenshot"] = browser.screenshot(session, width, SHOT_HEIGHT)
        requests = browser.requests(session)
        assert any(r.endswith("cover_titled.png") or "cover_titled.png?" in r for r in requests), requests
        outside = [r for r in requests if not (r.startswith(inside) or r.startswith("data:"))]
        assert not outside, f"{name}: requests outside the bundle: {outside}"
        assert not [f for f in browser.failures(session) if f.get("type") != "Media" or not f.get("canceled")]
        found[name] = report
    found["seconds"] = time.perf_counter() - started
    return found


def test_store_writes_the_page_before_the_manifest_unlisted(tiny_bundle):
    manifest = Manifest.read(tiny_bundle / MANIFEST_NAME)
    page = tiny_bundle / PAGE_NAME
    assert page.is_file() and PAGE_NAME not in {a.name for a in manifest.assets} and len(manifest.assets) == ASSET_COUNT
    assert page.stat().st_mtime_ns <= (tiny_bundle / MANIFEST_NAME).stat().st_mtime_ns
    assert verify_bundle(str(tiny_bundle)).ok  # the page is not listed, so verify has nothing to say about it
    html = page.read_text()
    for a in manifest.assets:  # every file's size and hash, and a relative link to it
        assert a.sha256 in html and f"{a.bytes:,}" in html and f'href="{a.name}"' in html
    for text in (manifest.disclosure, manifest.placeholder, "may <strong>not</strong> be used commercially"):
        assert text in html
    for run in manifest.engines.values():
        assert run.licence in html and run.model in html
    assert "<script" not in html and "http://" not in html.split("<h2>Engines")[0]  # nothing loaded from outside
    print(f"page: {page.stat().st_size} bytes")


def test_the_page_is_replaced_with_its_bundle_and_kept_with_it(tmp_path):
    from conftest import minimal_manifest

    from tasks.catalogue import describe_asset
    from tasks.storage import store_bundle

    (tmp_path / "a.bin").write_bytes(b"a")
    manifest = minimal_manifest("b-1", {"title": "One"}, [describe_asset(tmp_path / "a.bin", "data")])
    files = {"a.bin": str(tmp_path / "a.bin")}
    folder = Path(store_bundle.fn(manifest, files, str(tmp_path / "out"), "<p>first</p>"))
    assert (folder / PAGE_NAME).read_text() == "<p>first</p>"
    store_bundle.fn(manifest, files, str(tmp_path / "out"), "<p>second</p>")  # the same bundle: left as it is
    assert (folder / PAGE_NAME).read_text() == "<p>first</p>"
    manifest.brief = {"title": "Two"}
    store_bundle.fn(manifest, files, str(tmp_path / "out"), "<p>two</p>")  # another bundle: its page with it
    assert (folder / PAGE_NAME).read_text() == "<p>two</p>" and not list(folder.glob(".*part"))


def test_text_from_the_brief_is_escaped(tiny_bundle):
    manifest = Manifest.read(tiny_bundle / MANIFEST_NAME)
    hostile = '<script>alert("x")</script> & "quotes"'
    manifest.brief = manifest.brief | {"title": hostile, "author": "<b>me</b>"}
    manifest.prompts["cover"].original = hostile
    html = render_page(manifest)
    assert "<script>" not in html and "<b>me</b>" not in html
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &quot;quotes&quot;" in html

    class Tags(HTMLParser):
        def __init__(self):
            super().__init__()
            self.images = []

        def handle_starttag(self, tag, attrs):
            if tag == "img":
                self.images.append(dict(attrs))

    parser = Tags()
    parser.feed(html)
    assert all(img["alt"] for img in parser.images)
    assert any(hostile in img["alt"] for img in parser.images)  # the title, unescaped back, is in the alt text


def test_page_in_chromium_from_the_folder(chromium, tiny_bundle, tmp_path):
    found = _check_page(chromium, (tiny_bundle / PAGE_NAME).as_uri(), tiny_bundle.as_uri() + "/")
    print(f"browser check (desktop + phone, file://): {found['seconds']:.2f} s")
    from PIL import Image

    shot = Image.open(io.BytesIO(found["screenshot"]))
    assert shot.size == (DESKTOP[0], SHOT_HEIGHT)
    # Kept small for the repository: a palette PNG (the tiny profile's pictures are noise).
    small = shot.convert("RGB").quantize(colors=64)
    target = ROOT / "docs" / "bundle_page.png" if os.environ.get("GENBUNDLE_UPDATE_SCREENSHOT") else tmp_path / "s.png"
    small.save(target, optimize=True)
    print(f"screenshot: {target} ({target.stat().st_size} bytes)")


def test_page_in_chromium_from_s3(chromium, s3, tiny_bundle, tmp_path):
    client, endpoint, bucket = s3
    bundle = Path(shutil.copytree(tiny_bundle, tmp_path / tiny_bundle.name))
    report = upload_bundle_dir(bundle, parse_s3_url(f"s3://{bucket}/shelf"))
    assert PAGE_NAME in report.uploaded and SHARE_NAME not in report.uploaded
    inside = f"{endpoint}/{bucket}/shelf/{bundle.name}/"
    share = report.links[SHARE_NAME]
    assert share.startswith(inside + SHARE_NAME + "?")
    with urllib.request.urlopen(share) as resp:
        html = resp.read().decode()
        assert resp.headers["Content-Type"].startswith("text/html")
    assert TEST_SECRET_KEY not in html and "presigned: they work until" in html
    # Every link on the share page is presigned, for this bundle's objects only (the licences' pages aside).
    for link in re.findall(r'(?<!rel="license noreferrer" )(?:src|href|poster)="(http[^"]+)"', html):
        assert link.startswith(inside) and "X-Amz-Signature=" in link, link
    found = _check_page(chromium, share, inside)
    print(f"browser check (desktop + phone, S3 share page): {found['seconds']:.2f} s")
    # The bucket is private: index.html's relative links need a public-read bucket. Made one, they work.
    with pytest.raises(urllib.error.HTTPError, match="403"):
        urllib.request.urlopen(inside + PAGE_NAME)
    public = {"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{bucket}/*"}
    client.put_bucket_policy(Bucket=bucket, Policy=json.dumps({"Version": "2012-10-17", "Statement": [public]}))
    _check_page(chromium, inside + PAGE_NAME, inside)
    # A second upload sends none of the bundle again, but writes a fresh share page.
    again = upload_bundle_dir(bundle, parse_s3_url(f"s3://{bucket}/shelf"))
    assert again.bytes_sent == 0 and not again.uploaded and SHARE_NAME in again.links


def test_gallery_of_a_folder(tiny_bundle, tmp_path, chromium):
    from tasks.gallery import local_gallery

    shelf = tmp_path / "shelf"
    bundle = Path(shutil.copytree(tiny_bundle, shelf / tiny_bundle.name))
    (shelf / "half-done").mkdir()
    (shelf / "half-done" / "cover.png").write_bytes(b"x")
    (shelf / ".work").mkdir()
    out = local_gallery(shelf)
    assert out == shelf / GALLERY_NAME
    html = out.read_text()
    assert f'href="{bundle.name}/index.html"' in html and "half-done" in html and ".work" not in html
    session = chromium.open(out.as_uri(), *PHONE, mobile=True)
    report = chromium.evaluate(session, CHECK)
    assert len(report["images"]) == 1 and report["images"][0]["ok"] and report["images"][0]["alt"]
    assert report["scrollWidth"] <= report["innerWidth"]
    elsewhere = local_gallery(shelf, tmp_path / "pages" / "all.html")  # links relative to where it is written
    assert f'href="../shelf/{bundle.name}/index.html"' in elsewhere.read_text()


def test_gallery_of_s3_uploads_beside_the_bundles(s3, tiny_bundle, tmp_path, chromium):
    from tasks.gallery import s3_gallery

    client, endpoint, bucket = s3
    bundle = Path(shutil.copytree(tiny_bundle, tmp_path / tiny_bundle.name))
    upload_bundle_dir(bundle, parse_s3_url(f"s3://{bucket}/shelf"))
    cwd = set(Path.cwd().iterdir())
    link, expiry = s3_gallery(f"s3://{bucket}/shelf")
    assert set(Path.cwd().iterdir()) == cwd  # nothing written to the current folder
    assert link.startswith(f"{endpoint}/{bucket}/shelf/{GALLERY_NAME}?") and expiry == 3600
    with urllib.request.urlopen(link) as resp:
        html = resp.read().decode()
    share = re.search(r'href="([^"]+share\.html[^"]+)"', html).group(1).replace("&amp;", "&")
    with urllib.request.urlopen(share) as resp:
        assert hashlib.sha256(resp.read()).hexdigest()  # the bundle page it links opens
    session = chromium.open(link, *DESKTOP)
    report = chromium.evaluate(session, CHECK)
    assert len(report["images"]) == 1 and report["images"][0]["ok"]
    assert all(r.startswith(f"{endpoint}/{bucket}/shelf/") for r in chromium.requests(session))
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="shelf/")["Contents"]}
    assert f"shelf/{GALLERY_NAME}" in keys and f"shelf/{bundle.name}/{SHARE_NAME}" in keys
    assert [b.bundle_id for b in list_bundles(parse_s3_url(f"s3://{bucket}/shelf"))] == [bundle.name]
