"""Typesetting, checked by measuring the titled image."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tasks.brief import BriefError
from tasks.cover import MARGIN, MIN_CONTRAST, contrast_ratio, relative_luminance, typeset

W, H = 512, 768
rng = np.random.default_rng(0)


def _noise(h, w):
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


BACKGROUNDS = {
    "white": np.full((H, W, 3), 255, np.uint8),
    "black": np.zeros((H, W, 3), np.uint8),
    "mid-grey": np.full((H, W, 3), 118, np.uint8),  # the grey where neither black nor white text is easy
    "noise": _noise(H, W),
    "stripes": np.repeat(np.tile(np.array([[0], [255]], np.uint8), (H // 2, W))[:, :, None], 3, axis=2),
}


def measured_contrast(titled: np.ndarray, box, text_color) -> float:
    """Contrast of the text colour against the worst 2% of the background in the text box.

    Background: pixels away from the glyphs (their fill grown by a few pixels covers the
    anti-aliased edges and the outline), so what is left is what the reader sees behind the text.
    """
    from scipy.ndimage import binary_dilation

    x0, y0, x1, y1 = box
    region = titled[y0:y1, x0:x1].astype(np.float64)
    text_lum = float(relative_luminance(np.array(text_color)))
    lum = relative_luminance(region)
    glyphs = binary_dilation(np.abs(lum - text_lum) < 0.05, iterations=4)
    background = lum[~glyphs]
    assert background.size > 0.2 * lum.size
    worst = np.percentile(background, 98 if text_lum > 0.5 else 2)
    return contrast_ratio(text_lum, float(worst))


@pytest.mark.parametrize("name", sorted(BACKGROUNDS))
def test_text_is_legible_on_any_background(name):
    untitled = Image.fromarray(BACKGROUNDS[name])
    titled, d = typeset(untitled, "The Forest of Glowing Things", "A. N. Author", "Light waits")
    out = np.asarray(titled)
    assert measured_contrast(out, d["box"], d["text_color"]) >= MIN_CONTRAST
    assert d["contrast"] >= MIN_CONTRAST
    x0, y0, x1, y1 = d["box"]
    changed = np.abs(out[y0:y1, x0:x1].astype(int) - BACKGROUNDS[name][y0:y1, x0:x1]).mean()
    assert changed > 5  # the title band changed
    assert np.array_equal(np.asarray(untitled), BACKGROUNDS[name])  # the untitled cover is untouched


def test_text_goes_in_the_calmer_band():
    busy_top = np.concatenate([_noise(H // 2, W), np.full((H - H // 2, W, 3), 200, np.uint8)])
    _, d = typeset(Image.fromarray(busy_top), "Title", "Author")
    assert d["band"] == "bottom" and d["box"][1] > H / 2
    _, d = typeset(Image.fromarray(busy_top[::-1].copy()), "Title", "Author")
    assert d["band"] == "top" and d["box"][3] < H / 2


def test_text_stays_within_the_margins_and_wraps():
    title = "An Uncommonly Long Title That Has To Wrap Over Several Lines"
    _, d = typeset(Image.fromarray(BACKGROUNDS["black"]), title, "Author")
    margin = MARGIN * W
    x0, y0, x1, y1 = d["box"]
    assert x0 >= margin - 1 and x1 <= W - margin + 1 and y0 >= margin - 1
    assert 2 <= len(d["lines"]) <= 4 and d["lines"][-1] == "Author"
    assert " ".join(d["lines"][:-1]) == title


def test_a_title_that_cannot_fit_is_refused():
    with pytest.raises(BriefError, match="title: does not fit a 64x64 cover"):
        typeset(Image.fromarray(BACKGROUNDS["black"][:64, :64]), "Pneumonoultramicroscopicsilicovolcanoconiosis", "A")


def test_the_part_that_cannot_fit_is_named():
    with pytest.raises(BriefError, match="^author: does not fit a 64x64 cover"):
        typeset(Image.fromarray(BACKGROUNDS["black"][:64, :64]), "T", "Pneumonoultramicroscopicsilicovolcanoconiosis")


def test_font_is_selectable():
    font = Path("/usr/share/fonts/truetype/dejavu/DejaVuSerif-Bold.ttf")
    if not font.is_file():
        pytest.skip("no DejaVu font on this machine")
    default, _ = typeset(Image.fromarray(BACKGROUNDS["black"]), "Title", "Author")
    serif, _ = typeset(Image.fromarray(BACKGROUNDS["black"]), "Title", "Author", font=str(font))
    assert not np.array_equal(np.asarray(default), np.asarray(serif))
