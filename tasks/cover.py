"""Cover typesetting: title, tagline and author set onto the generated art with Pillow.

The text goes into the calmer of the top and bottom bands (less detail to fight with), is
sized to fit within margins and wrapped at word boundaries, and is made legible on whatever
lies beneath it: the region under the text is measured, the text colour chosen against it,
and a soft scrim darkens (or lightens) the region just enough that even its brightest (or
darkest) part keeps a WCAG contrast of at least 4.5:1 with the text.
"""

from __future__ import annotations

import sys
import unicodedata
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont
from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from tasks.brief import BriefError
from tasks.disclosure import png_info
from tasks.files import atomic_path
from tasks.progress import tracked
from tasks.workspace import StepResult, Workspace

TITLED_NAME = "cover_titled.png"
MIN_CONTRAST = 4.5  # WCAG AA for body text
CONTRAST_MARGIN = 1.15  # aim above the minimum: anti-aliasing and PNG rounding move pixels a little
MARGIN = 0.07  # of the cover's width, on every side
BAND = 0.36  # top or bottom band, as a share of the height
MAX_TITLE_LINES = 3
LINE_GAP = 0.18  # of the font size


def relative_luminance(rgb: np.ndarray) -> np.ndarray:
    """WCAG relative luminance of sRGB values in 0..255 (last axis RGB)."""
    c = np.asarray(rgb, dtype=np.float64) / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    return linear @ np.array([0.2126, 0.7152, 0.0722])


def contrast_ratio(l1: float, l2: float) -> float:
    hi, lo = max(l1, l2), min(l1, l2)
    return (hi + 0.05) / (lo + 0.05)


def busyness(region: np.ndarray) -> float:
    """How much detail a region holds: mean luminance gradient plus its spread."""
    lum = relative_luminance(region)
    return float(np.abs(np.diff(lum, axis=0)).mean() + np.abs(np.diff(lum, axis=1)).mean() + lum.std())


def load_font(font: str | None, size: int) -> ImageFont.FreeTypeFont:
    if font:
        return ImageFont.truetype(font, size)
    return ImageFont.load_default(size=size)  # Pillow's bundled TrueType font: no system fonts needed


def wrap(draw: ImageDraw.ImageDraw, text: str, font, width: float) -> list[str] | None:
    """Greedy word wrap to a pixel width; None when a single word is wider than the width."""
    lines: list[str] = []
    for word in text.split():
        if draw.textlength(word, font=font) > width:
            return None
        if lines and draw.textlength(f"{lines[-1]} {word}", font=font) <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines


class Line(BaseModel):
    text: str
    size: int
    y: int  # top of the line box


class Layout(BaseModel):
    lines: list[Line]
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 of the text block
    title_size: int


def layout_text(
    size: tuple[int, int], band: str, title: str, author: str, tagline: str | None, font: str | None
) -> Layout:
    """Fit title (largest), tagline and author into the band, largest sizes that fit."""
    width, height = size
    margin = round(MARGIN * width)
    usable_w, usable_h = width - 2 * margin, round(BAND * height) - margin
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    for title_size in range(max(12, width // 6), 5, -1):
        parts = [
            ("title", title, title_size),
            ("tagline", tagline, max(6, round(title_size * 0.42))),
            ("author", author, max(6, round(title_size * 0.5))),
        ]
        lines, culprit = [], None  # culprit: the field that did not fit at this size
        for field, text, px in parts:
            if not text:
                continue
            wrapped = wrap(draw, text, load_font(font, px), usable_w)
            if wrapped is None or (field == "title" and len(wrapped) > MAX_TITLE_LINES):
                culprit = field
                break
            lines += [(w, px) for w in wrapped]
        block_h = sum(round(px * (1 + LINE_GAP)) for _, px in lines)
        if culprit is None and block_h <= usable_h:
            break
    else:
        field = culprit or "title"  # everything wrapped but the block is too tall: the title is the biggest part
        raise BriefError(
            f"{field}: does not fit a {width}x{height} cover even at the smallest size; "
            "shorten it (or its longest word) or make the cover larger (cover.width, cover.height)"
        )
    y = margin if band == "top" else height - margin - block_h
    placed = []
    for text, px in lines:
        placed.append(Line(text=text, size=px, y=y))
        y += round(px * (1 + LINE_GAP))
    x0 = min(round((width - draw.textlength(ln.text, font=load_font(font, ln.size))) / 2) for ln in placed)
    box = (x0, placed[0].y, width - x0, y)
    return Layout(lines=placed, box=box, title_size=title_size)


# A code point no font maps (plane 16, private use): the font draws its .notdef glyph (an empty box) for it,
# and for any other character it lacks, whichever layout engine places the glyphs.
NOTDEF_PROBE = "\U0010fffd"
GLYPH_PROBE_SIZE = 32
MAX_NAMED = 10  # characters named in a refusal


def _rendering(font, text: str) -> tuple:
    mask = font.getmask(text)
    return mask.size, bytes(mask), font.getlength(text)


def missing_glyphs(text: str, font) -> list[str]:
    """The characters of `text` the font would draw as its .notdef box, in order of appearance.

    Whitespace is skipped: word wrapping splits on it and joins the words with plain spaces.
    """
    notdef = _rendering(font, NOTDEF_PROBE)
    return [ch for ch in dict.fromkeys(text) if not ch.isspace() and _rendering(font, ch) == notdef]


def _font_for(chars: list[str]) -> str:
    """A font to suggest for characters the configured one lacks."""
    names = [unicodedata.name(ch, "") for ch in chars]
    if any(n.startswith(("CJK", "HIRAGANA", "KATAKANA", "HANGUL", "BOPOMOFO", "IDEOGRAPHIC")) for n in names):
        return "Noto Sans CJK, Debian's fonts-noto-cjk"
    if any(unicodedata.category(ch) == "So" for ch in chars):
        return "Noto Emoji or DejaVu Sans; colour emoji fonts are bitmaps Pillow cannot scale"
    return "DejaVu Sans, /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf in the Docker image"


def check_glyphs(fields: dict[str, str | None], font: str | None) -> None:
    """Raise BriefError naming the field and the characters when the font cannot draw its text.

    Pillow draws a missing glyph as an empty box, silently; its bundled font covers little beyond ASCII.
    Right-to-left scripts need raqm (shaping and bidi): without it Pillow draws them unjoined and reversed.
    """
    probe = load_font(font, GLYPH_PROBE_SIZE)
    which = f"the font {Path(font).name}" if font else "Pillow's bundled font (cover.font unset)"
    for field, text in fields.items():
        if not text:
            continue
        if missing := missing_glyphs(text, probe):
            named = ", ".join(repr(ch) for ch in missing[:MAX_NAMED])
            more = f" and {len(missing) - MAX_NAMED} more" if len(missing) > MAX_NAMED else ""
            raise BriefError(
                f"{field}: {which} cannot draw {named}{more}; set cover.font to a font that covers them "
                f"(e.g. {_font_for(missing)})"
            )
        rtl = [ch for ch in dict.fromkeys(text) if unicodedata.bidirectional(ch) in ("R", "AL")]
        if rtl and probe.layout_engine != ImageFont.Layout.RAQM:
            raise BriefError(
                f"{field}: right-to-left text ({', '.join(repr(ch) for ch in rtl[:MAX_NAMED])}) needs Pillow's raqm "
                "layout for shaping and direction, which is not available here (PIL.features.check('raqm') is "
                "False): install libraqm and libfribidi, or write the field in a left-to-right script"
            )


def check_title_fits(size: tuple[int, int], title: str, author: str, tagline: str | None, font: str | None) -> None:
    """Raise BriefError now, before any model loads, if the font cannot draw the text or it cannot fit the cover."""
    check_glyphs({"title": title, "tagline": tagline, "author": author}, font)
    layout_text(size, "top", title, author, tagline, font)


def scrim_alpha(region: np.ndarray, text_lum: float, scrim_rgb: tuple[int, int, int]) -> float:
    """Least scrim opacity at which the region's worst pixel keeps the target contrast with the text."""
    target = MIN_CONTRAST * CONTRAST_MARGIN
    pixels = region.reshape(-1, 3).astype(np.float64)
    worst = (lambda lum: lum.max()) if text_lum > 0.5 else (lambda lum: lum.min())

    def ok(alpha: float) -> bool:
        blended = pixels * (1 - alpha) + np.array(scrim_rgb) * alpha
        return contrast_ratio(text_lum, float(worst(relative_luminance(blended)))) >= target

    if ok(0.0):
        return 0.0
    lo, hi = 0.0, 1.0
    for _ in range(14):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if ok(mid) else (mid, hi)
    return hi


class TitledCover(StepResult):
    band: str
    box: tuple[int, int, int, int]
    text_color: tuple[int, int, int]
    scrim_alpha: float
    contrast: float  # text against the brightest (or darkest) pixel under it, after the scrim
    title_size: int
    lines: list[str]
    seconds: float = 0.0


def typeset(image: Image.Image, title: str, author: str, tagline: str | None = None, font: str | None = None):
    """Return (titled image, details) for a cover image."""
    check_glyphs({"title": title, "tagline": tagline, "author": author}, font)
    image = image.convert("RGB")
    width, height = image.size
    pixels = np.asarray(image)
    band_h = round(BAND * height)
    band = "top" if busyness(pixels[:band_h]) <= busyness(pixels[-band_h:]) else "bottom"
    layout = layout_text(image.size, band, title, author, tagline, font)

    pad = max(4, round(0.02 * width))
    x0, y0, x1, y1 = layout.box
    region_box = (max(0, x0 - pad), max(0, y0 - pad), min(width, x1 + pad), min(height, y1 + pad))
    region = pixels[region_box[1] : region_box[3], region_box[0] : region_box[2]]
    light_text = float(np.median(relative_luminance(region))) < 0.4
    text_rgb, scrim_rgb = ((255, 255, 255), (0, 0, 0)) if light_text else ((0, 0, 0), (255, 255, 255))
    text_lum = float(relative_luminance(np.array(text_rgb)))
    alpha = scrim_alpha(region, text_lum, scrim_rgb)

    titled = image.copy()
    if alpha > 0:
        # Full opacity over the rows under the text, feathered beyond them so the scrim has no hard edge.
        feather = Image.new("L", image.size, 0)
        ImageDraw.Draw(feather).rectangle([0, region_box[1] - pad, width, region_box[3] + pad], fill=255)
        mask = np.array(feather.filter(ImageFilter.GaussianBlur(pad / 2)))
        mask[region_box[1] : region_box[3], :] = 255
        mask = Image.fromarray((mask * alpha).round().astype(np.uint8))
        titled = Image.composite(Image.new("RGB", image.size, scrim_rgb), titled, mask)

    draw = ImageDraw.Draw(titled)
    for ln in layout.lines:
        f = load_font(font, ln.size)
        x = round((width - draw.textlength(ln.text, font=f)) / 2)
        stroke = max(1, ln.size // 28)
        draw.text((x, ln.y), ln.text, font=f, fill=text_rgb, stroke_width=stroke, stroke_fill=scrim_rgb)

    scrimmed = region.astype(np.float64) * (1 - alpha) + np.array(scrim_rgb) * alpha
    lum = relative_luminance(scrimmed)
    worst = float(lum.max() if light_text else lum.min())
    details = {
        "band": band,
        "box": layout.box,
        "text_color": text_rgb,
        "scrim_alpha": round(alpha, 4),
        "contrast": round(contrast_ratio(text_lum, worst), 2),
        "title_size": layout.title_size,
        "lines": [ln.text for ln in layout.lines],
    }
    return titled, details


@task(name="title-cover", cache_policy=NO_CACHE)
def title_cover(
    cover: StepResult,
    workspace: Workspace,
    title: str,
    author: str,
    tagline: str | None = None,
    font: str | None = None,
) -> TitledCover:
    """Typeset the title onto the cover; the untitled cover stays beside it."""
    inputs = {"cover": cover.key, "title": title, "author": author, "tagline": tagline, "font": font}
    step = workspace.step("title", inputs, sys.modules[__name__])
    with tracked("title") as stage:
        if done := step.load(TitledCover):
            stage.detail = "reused"
            return done
        with Image.open(cover.path) as image:
            titled, details = typeset(image, title, author, tagline, font)
        disclosure = cover.disclosure and cover.disclosure.model_copy(update={"title": f"{title} by {author}"})
        path = step.file(TITLED_NAME)
        with atomic_path(path) as tmp:
            titled.save(tmp, format="PNG", pnginfo=png_info(disclosure) if disclosure else None)
    return step.save(TitledCover(path=str(path), seconds=stage.seconds, disclosure=disclosure, **details))
