"""Disclosure inside the files themselves: each asset says it is AI-generated, and how it was made.

- PNG: text chunks (Software, Description, Comment, and genbundle's own keys) plus an XMP packet
  with the IPTC digital source type "trainedAlgorithmicMedia", the standard mark for media made
  by a generative model;
- MP4: container metadata (title, comment, description), written by ffmpeg;
- WAV: the RIFF INFO chunk (title, comment, software), written by libsndfile.
Common tools read them back: Pillow, exiftool, ffprobe or `ffmpeg -i`, soundfile.
"""

from __future__ import annotations

from importlib import metadata

from pydantic import BaseModel

AI_GENERATED = "AI-generated with diffusion models (genbundle); not a photograph, recording or film of real events."
IPTC_TRAINED_ALGORITHMIC_MEDIA = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"


class Disclosure(BaseModel):
    """What every asset carries about its making."""

    title: str  # the asset's title, e.g. the book title
    prompt: str
    seed: int
    model: str
    pipeline: str

    @property
    def generator(self) -> str:
        try:
            version = metadata.version("genbundle")
        except metadata.PackageNotFoundError:
            version = "dev"
        return f"genbundle {version} ({self.pipeline})"

    def fields(self) -> dict[str, str]:
        return {
            "ai_generated": "true",
            "disclosure": AI_GENERATED,
            "generator": self.generator,
            "prompt": self.prompt,
            "seed": str(self.seed),
            "model": self.model,
        }


# --- PNG ----------------------------------------------------------------------------------


def _xmp(d: Disclosure) -> str:
    from xml.sax.saxutils import escape

    return (
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description rdf:about="" xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/" '
        'xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:xmp="http://ns.adobe.com/xap/1.0/">'
        f"<Iptc4xmpExt:DigitalSourceType>{IPTC_TRAINED_ALGORITHMIC_MEDIA}</Iptc4xmpExt:DigitalSourceType>"
        f"<xmp:CreatorTool>{escape(d.generator)}</xmp:CreatorTool>"
        f'<dc:description><rdf:Alt><rdf:li xml:lang="x-default">{escape(AI_GENERATED)}</rdf:li></rdf:Alt></dc:description>'
        "</rdf:Description></rdf:RDF></x:xmpmeta>"
    )


def png_info(d: Disclosure):
    """PNG text chunks and an XMP packet for Pillow's `save(..., pnginfo=...)`."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("Title", d.title)
    info.add_text("Software", d.generator)
    info.add_itxt("Description", d.prompt)
    info.add_itxt("Comment", AI_GENERATED)
    for key, value in d.fields().items():
        info.add_itxt(f"genbundle:{key}", value)
    info.add_itxt("XML:com.adobe.xmp", _xmp(d))
    return info


def disclosure_from_png(image) -> Disclosure | None:
    """Read a disclosure back from an opened PNG (to carry it on to images derived from it)."""
    text = getattr(image, "text", {}) or {}
    if text.get("genbundle:ai_generated") != "true":
        return None
    pipeline = text["genbundle:generator"].split("(", 1)[-1].rstrip(")")
    return Disclosure(
        title=text.get("Title", ""), prompt=text["genbundle:prompt"], seed=int(text["genbundle:seed"]),
        model=text["genbundle:model"], pipeline=pipeline,
    )  # fmt: skip


# --- MP4 and WAV ----------------------------------------------------------------------------


def ffmpeg_metadata(d: Disclosure) -> list[str]:
    """ffmpeg arguments that write the disclosure as MP4 container metadata."""
    tags = {"title": d.title, "comment": AI_GENERATED, "description": d.prompt, "encoded_by": d.generator}
    args: list[str] = []
    for key, value in tags.items():
        args += ["-metadata", f"{key}={value}"]
    return args


def write_wav_tags(sound_file, d: Disclosure) -> None:
    """Set the RIFF INFO tags on a soundfile.SoundFile opened for writing (before any samples)."""
    sound_file.title = d.title
    sound_file.comment = f"{AI_GENERATED} Prompt: {d.prompt} Seed: {d.seed}. Model: {d.model}."
    sound_file.software = d.generator
