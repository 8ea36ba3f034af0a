"""The bundle page (`index.html`) and the gallery of many bundles: HTML rendered from the typed manifest.

Plain functions, no Prefect: the store step, the S3 upload and `genbundle gallery` call them. A page is
self-contained: inline CSS, no scripts, and it loads nothing but the bundle's own files (relative links
in the folder and a public bucket; presigned links in the share page of a private bucket). Every text
that comes from a brief or a model (title, prompts, caption) is escaped.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from html import escape
from urllib.parse import quote

from tasks.manifest import MANIFEST_NAME, Manifest

PAGE_NAME = "index.html"  # in the bundle, written before the manifest; not listed in it (it shows the hashes)
SHARE_NAME = "share.html"  # in the store only: the page with presigned links, rewritten at every upload
GALLERY_NAME = "gallery.html"
HTML_TYPE = "text/html; charset=utf-8"

# Light theme only, every text colour at least 7:1 on its background (WCAG AAA for body text).
STYLE = """
*{box-sizing:border-box}
body{margin:0;font:16px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1b1b1b;background:#fff}
main{max-width:1100px;margin:0 auto;padding:1rem}
h1{font-size:1.8rem;margin:.5rem 0}h2{font-size:1.3rem;margin-top:2rem;border-bottom:1px solid #ccc}
a{color:#0b4f9c}
img,video{max-width:100%;height:auto;display:block;background:#eee}
audio{width:100%;max-width:480px}
figure{margin:0 0 1rem}figcaption{font-size:.9rem;color:#333;margin-top:.3rem}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(min(100%,240px),1fr));gap:1rem;align-items:start}
.note{padding:.75rem 1rem;border-left:4px solid #8a5a00;background:#fff6e0;color:#1b1b1b}
.disclosure{border-left-color:#0b4f9c;background:#eaf2fb}
.scroll{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;font-size:.9rem;margin:.5rem 0}
th,td{border:1px solid #bbb;padding:.3rem .5rem;text-align:left;vertical-align:top}
th{background:#f0f0f0}
code{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.85em;word-break:break-all}
.grid img,.grid video{width:100%}
.thumb{width:120px;height:auto}
"""

TRACE_PICTURES = {
    "trace_forward.png": (
        "Forward process: noise added",
        "the finished cover encoded by the VAE, noised at increasing timesteps with the model's "
        "training noise schedule, and decoded, left to right",
    ),
    "trace_reverse.png": (
        "Reverse process: noise removed",
        "the latents held at several denoising steps while the cover was generated, decoded, left to right",
    ),
    "noise_schedule.png": (
        "Noise schedule",
        "a plot of how much signal and how much noise the schedule leaves at each timestep",
    ),
}


def _table(header: list[str], rows: list[list[str]]) -> str:
    """A table of cells already escaped, in a wrapper that scrolls on its own at phone width."""
    head = "".join(f'<th scope="col">{h}</th>' for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _document(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<meta name="referrer" content="no-referrer">\n'  # presigned links must not leak through Referer
        '<link rel="icon" href="data:,">\n'  # no favicon request outside the bundle
        f"<title>{escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<main>\n{body}\n</main>\n"
        "</body>\n</html>\n"
    )


def render_page(manifest: Manifest, links: Mapping[str, str] | None = None, expiry_note: str | None = None) -> str:
    """The bundle page. `links` (file name -> URL) replaces the relative links, e.g. with presigned
    ones; `expiry_note` then says when they stop working."""
    assets = {a.name: a for a in manifest.assets}
    brief = manifest.brief

    def href(name: str) -> str:
        return escape(links[name] if links and name in links else quote(name))

    def img(name: str, alt: str) -> str:
        a = assets[name]
        size = f' width="{a.width}" height="{a.height}"' if a.width else ""
        return f'<img src="{href(name)}" alt="{escape(alt)}"{size}>'

    title, author = str(brief.get("title", "")), str(brief.get("author", ""))
    parts = [f"<h1>{escape(title)}</h1>", f"<p>by {escape(author)}"]
    if brief.get("tagline"):
        parts[-1] += f" &middot; <em>{escape(str(brief['tagline']))}</em>"
    parts[-1] += f"</p><p>Bundle <code>{escape(manifest.bundle_id)}</code>, made {escape(manifest.created)}.</p>"
    if expiry_note:
        parts.append(f'<p class="note" role="note">{escape(expiry_note)}</p>')
    parts.append(
        f'<p class="note disclosure" role="note"><strong>Disclosure:</strong> {escape(manifest.disclosure)}</p>'
    )
    if manifest.placeholder:
        parts.append(f'<p class="note" role="note"><strong>Placeholder:</strong> {escape(manifest.placeholder)}</p>')

    # The cover, titled and untitled: the caption is their alt text.
    figures = []
    for name, label in (("cover_titled.png", "The titled cover"), ("cover.png", "The cover art, untitled")):
        if name in assets:
            caption = assets[name].alt_text or f"cover art for {title}"
            alt = caption + (f", with the title {title} and the author {author} set on it" if "titled" in name else "")
            figures.append(f"<figure>{img(name, alt)}<figcaption>{label}. Alt text (a BLIP caption of the "
                           f"picture): <q>{escape(caption)}</q></figcaption></figure>")  # fmt: skip
    if figures:
        parts += ["<h2>Cover</h2>", f'<div class="grid">{"".join(figures)}</div>']

    prompts = manifest.prompts
    media = []
    if "engine.wav" in assets:
        a = assets["engine.wav"]
        label = f"The engine sound, {a.duration or 0:.2f} s, normalised to {a.loudness_lufs} LUFS"
        media.append(
            f'<figure><audio controls preload="metadata" src="{href("engine.wav")}" aria-label="{escape(label)}">'
            f'<a href="{href("engine.wav")}">engine.wav</a></audio><figcaption>{escape(label)}. No speech: '
            f"a generated sound for the prompt <q>{escape(prompts['sound'].original if 'sound' in prompts else '')}"
            f'</q>. The raw sound as generated: <a href="{href("engine_raw.wav")}">engine_raw.wav</a>.'
            "</figcaption></figure>"
        )
    if "car_with_sound.mp4" in assets:
        a = assets["car_with_sound.mp4"]
        label = f"The video clip with the engine sound, {a.duration or 0:.2f} s, {a.details()}"
        poster = f' poster="{href("poster.png")}"' if "poster.png" in assets else ""
        size = f' width="{a.width}" height="{a.height}"' if a.width else ""
        media.append(
            f'<figure><video controls preload="metadata" src="{href("car_with_sound.mp4")}"{poster}{size} '
            f'aria-label="{escape(label)}"><a href="{href("car_with_sound.mp4")}">car_with_sound.mp4</a></video>'
            f"<figcaption>{escape(label)}. Generated for the prompt <q>"
            f"{escape(prompts['video'].original if 'video' in prompts else '')}</q>; no dialogue. Silent clip: "
            f'<a href="{href("car.mp4")}">car.mp4</a>.</figcaption></figure>'
        )
    if "poster.png" in assets:
        media.append(
            f"<figure>{img('poster.png', f'Poster frame of the video clip for {title}')}"
            "<figcaption>The poster: a frame of the clip picked by ffmpeg's thumbnail filter.</figcaption></figure>"
        )
    if media:
        parts += ["<h2>Sound and video</h2>", f'<div class="grid">{"".join(media)}</div>']

    traced = [
        f"<figure>{img(name, f'{head}: {desc}')}<figcaption>{head}: {desc}.</figcaption></figure>"
        for name, (head, desc) in TRACE_PICTURES.items()
        if name in assets
    ]
    if traced:
        parts += ["<h2>The diffusion trace</h2>", "".join(traced)]

    if prompts:
        rows = [
            [
                escape(role),
                escape(p.original),
                escape(p.prompt),
                escape(p.negative_prompt),
                f"{p.tokens} / {p.token_limit}"
                + (f"; dropped: {escape(', '.join(p.dropped_terms))}" if p.dropped_terms else ""),
            ]
            for role, p in prompts.items()
        ]
        parts += ["<h2>Prompts as used</h2>", _table(["role", "brief", "prompt", "negative prompt", "tokens"], rows)]

    verdict = "may" if manifest.commercial_use else "may <strong>not</strong>"
    rows = []
    for role, run in manifest.engines.items():
        licence = f'<a rel="license noreferrer" href="{escape(run.licence_url)}">{escape(run.licence)}</a>'
        commercial = (
            ("yes" + (f", {escape(run.licence_conditions)}" if run.licence_conditions else ""))
            if run.commercial_use
            else "no"
        )
        rows.append([
            escape(role), f"{escape(run.title)}<br><code>{escape(run.pipeline_class)}</code>", escape(run.model),
            licence, commercial, str(run.seed),
            f"{escape(run.scheduler)}, {run.steps} steps, guidance {run.guidance:g}",
            f"{escape(run.device)} {escape(run.dtype)} ({escape(run.memory)})",
        ])  # fmt: skip
    if rows:
        parts += [
            "<h2>Engines and licences</h2>",
            _table(["role", "engine", "weights", "licence", "commercial use", "seed", "sampling", "device"], rows),
            f"<p>The bundle as a whole {verdict} be used commercially: each file is under the licences of the "
            "engines whose output it holds (see the files below).</p>",
        ]

    compute = manifest.compute or {}
    entries = {**compute.get("per_asset", {}), **compute.get("per_step", {})}
    if entries:
        rows = [
            [escape(k), f"{e['seconds']:.2f}", f"{e['energy_wh'] * 1000:.2f}", escape(str(e.get("device", "unknown"))),
             escape(str(e["source"])), "reused" if e.get("reused") else "made"]
            for k, e in entries.items()
        ]  # fmt: skip
        parts += [
            "<h2>Compute and energy</h2>",
            _table(["step", "seconds", "mWh", "device", "source", "this run"], rows),
            f"<p>In all {compute.get('total_wh', 0) * 1000:.2f} mWh; "
            f"this run {compute.get('this_run_wh', 0) * 1000:.2f} mWh. {escape(str(compute.get('note', '')))}</p>",
        ]
    if manifest.timings_seconds:
        rows = [[escape(k), f"{v:.2f}"] for k, v in manifest.timings_seconds.items()]
        parts += ["<h2>Timings</h2>", _table(["stage", "seconds"], rows)]

    rows = []
    for a in manifest.assets:
        licences = ", ".join(dict.fromkeys(lic.licence for lic in a.licences)) or "-"
        rows.append([
            f'<a href="{href(a.name)}">{escape(a.name)}</a>', escape(a.role), escape(a.media_type),
            f"{a.bytes:,}", escape(a.details()), escape(licences), f"<code>{a.sha256}</code>",
        ])  # fmt: skip
    parts += [
        "<h2>Files</h2>",
        _table(["file", "role", "type", "bytes", "details", "licences", "SHA-256"], rows),
        f'<p>The manifest, <a href="{href(MANIFEST_NAME)}">{MANIFEST_NAME}</a>, lists these files with their '
        "hashes; <code>genbundle verify</code> re-hashes them. This page is rendered from it and is not "
        "listed in it.</p>",
    ]
    versions = ", ".join(f"{escape(k)} {escape(v)}" for k, v in manifest.versions.items())
    if versions:
        parts.append(f"<p><small>Made with {versions}.</small></p>")
    return _document(f"{title}: bundle {manifest.bundle_id}", "\n".join(parts))


@dataclass(frozen=True)
class GalleryEntry:
    """One bundle in the gallery: its manifest (None when unfinished) and where its page and thumbnail are."""

    bundle_id: str
    manifest: Manifest | None
    page: str | None  # URL of the bundle's page
    thumbnail: str | None  # URL of the titled cover (or the cover, or the poster)


THUMBNAILS = ("cover_titled.png", "cover.png", "poster.png")


def thumbnail_name(manifest: Manifest) -> str | None:
    names = {a.name for a in manifest.assets}
    return next((n for n in THUMBNAILS if n in names), None)


def render_gallery(entries: list[GalleryEntry], where: str, expiry_note: str | None = None) -> str:
    """One page of many bundles: title, author, date, a thumbnail and a link to each bundle's page."""
    rows = []
    for e in entries:
        m = e.manifest
        if m is None:
            rows.append([escape(e.bundle_id), "(unfinished: no manifest)", "", "", ""])
            continue
        name = thumbnail_name(m)
        thumb = ""
        if e.thumbnail and name:
            a = next(a for a in m.assets if a.name == name)
            alt = f"Cover of {m.title}" + (f": {a.alt_text}" if a.alt_text else "")
            size = f' width="{a.width}" height="{a.height}"' if a.width else ""
            thumb = f'<img class="thumb" src="{escape(e.thumbnail)}" alt="{escape(alt)}"{size}>'
        link = f'<a href="{escape(e.page)}">{escape(m.title)}</a>' if e.page else escape(m.title)
        rows.append(
            [
                thumb,
                link,
                escape(str(m.brief.get("author", ""))),
                escape(m.created),
                f"<code>{escape(e.bundle_id)}</code>",
            ]
        )
    parts = [f"<h1>Bundles in {escape(where)}</h1>", f"<p>{len(entries)} bundle{'s' if len(entries) != 1 else ''}.</p>"]
    if expiry_note:
        parts.append(f'<p class="note" role="note">{escape(expiry_note)}</p>')
    parts.append(_table(["cover", "title", "author", "made", "bundle"], rows))
    return _document(f"Bundles in {where}", "\n".join(parts))
