"""Cover text the font cannot draw, or that holds control characters, is refused before any model loads."""

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFont, features

from tasks.brief import BriefError, parse_brief
from tasks.cover import check_title_fits, missing_glyphs, typeset

DEJAVU = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")  # in the Docker image (fonts-dejavu-core)
SIZE = (512, 768)
needs_dejavu = pytest.mark.skipif(not DEJAVU.is_file(), reason="no DejaVu Sans on this machine")


def _cjk_font() -> str | None:
    """A font on this machine that maps 漢 (U+6F22), found by fontconfig; None when there is none."""
    if not shutil.which("fc-list"):
        return None
    listed = subprocess.run(["fc-list", ":charset=6f22", "file"], capture_output=True, text=True).stdout
    files = sorted(line.split(":")[0].strip() for line in listed.splitlines() if line.strip())
    return next((f for f in files if f.lower().endswith((".ttf", ".otf", ".ttc"))), None)


# --- control characters: refused by the brief itself -------------------------------------------


@pytest.mark.parametrize("field", ["title", "author", "tagline"])
@pytest.mark.parametrize(
    "char, name",
    [
        ("\x07", "U+0007 (a control character)"),
        ("\x1b", "U+001B (a control character)"),  # a terminal escape
        ("\u202e", "U+202E (RIGHT-TO-LEFT OVERRIDE)"),  # reorders what follows it
        ("\u200b", "U+200B (ZERO WIDTH SPACE)"),
        ("\ufeff", "U+FEFF (ZERO WIDTH NO-BREAK SPACE)"),
        ("\x00", "U+0000 (a control character)"),
    ],
)
def test_control_characters_are_refused_naming_the_field(field, char, name):
    brief = {"title": "Title", "author": "Author", field: f"Bad{char}Text"}
    with pytest.raises(BriefError) as err:
        parse_brief(brief)
    message = str(err.value)
    assert message == f"invalid brief: {field}: holds invisible control characters {name}; remove them"
    assert "\n" not in message


def test_ordinary_whitespace_and_joiners_are_not_control_characters():
    brief = parse_brief({"title": "Two\tWords\nHere", "author": "می\u200cخواهم", "tagline": "  padded  "})
    assert brief.title == "Two\tWords\nHere" and brief.author == "می\u200cخواهم" and brief.tagline == "padded"


# --- glyphs: checked against the font that will draw the text ----------------------------------


def test_ascii_and_typographic_quotes_pass_with_the_bundled_font():
    check_title_fits(SIZE, "The “Forest” of Glowing Things…", "A. N. O'Author", "Light waits", None)


@pytest.mark.parametrize(
    "text, named, hint",
    [
        ("Café Crème", "'é', 'è'", "DejaVu Sans"),  # the bundled Aileron subset has no accented letters
        ("漢字の本", "'漢', '字', 'の', '本'", "Noto Sans CJK"),
        ("Smile 😀", "'😀'", "Noto Emoji"),
        ("שלום", "'ש', 'ל', 'ו', 'ם'", "DejaVu Sans"),
    ],
)
def test_text_the_bundled_font_cannot_draw_is_refused_naming_the_characters(text, named, hint):
    with pytest.raises(BriefError) as err:
        check_title_fits(SIZE, text, "Author", None, None)
    message = str(err.value)
    assert message.startswith(f"title: Pillow's bundled font (cover.font unset) cannot draw {named}; ")
    assert "set cover.font to a font that covers them" in message and hint in message


@pytest.mark.parametrize("field", ["author", "tagline"])
def test_the_field_that_cannot_be_drawn_is_named(field):
    parts = {"title": "Title", "author": "Author", "tagline": "Tagline"} | {field: "字"}
    with pytest.raises(BriefError, match=f"^{field}: Pillow's bundled font .* cannot draw '字'"):
        check_title_fits(SIZE, parts["title"], parts["author"], parts["tagline"], None)


def test_many_missing_characters_are_counted_not_all_listed():
    with pytest.raises(BriefError, match=r"cannot draw '一', .* and 5 more; "):
        check_title_fits(SIZE, "一二三四五六七八九十百千万亿兆", "A", None, None)


def test_typesetting_refuses_too_rather_than_drawing_boxes():
    with pytest.raises(BriefError, match="^title: .* cannot draw '漢'"):
        typeset(Image.new("RGB", SIZE), "漢", "Author")


@needs_dejavu
def test_accented_latin_cyrillic_and_emoji_pass_with_a_font_that_covers_them():
    check_title_fits(SIZE, "Café Crème à la Ñandú", "Zoë Ødegård", "Заголовок 😀", str(DEJAVU))
    titled, details = typeset(Image.new("RGB", SIZE), "Café Crème", "Zoë Ødegård", font=str(DEJAVU))
    assert " ".join(details["lines"][:-1]) == "Café Crème" and details["lines"][-1] == "Zoë Ødegård"


@needs_dejavu
def test_a_covered_character_differs_from_the_fonts_empty_box():
    """The check itself: DejaVu has é and lacks 漢 (each judged by what the font really draws)."""
    font = ImageFont.truetype(str(DEJAVU), 32)
    assert missing_glyphs("é 漢 é", font) == ["漢"]
    assert missing_glyphs("é", ImageFont.load_default(size=32)) == ["é"]


@needs_dejavu
def test_cjk_is_refused_with_dejavu_naming_the_font_and_a_cjk_font():
    with pytest.raises(BriefError, match=r"^title: the font DejaVuSans.ttf cannot draw '漢', '字'; .*Noto Sans CJK"):
        check_title_fits(SIZE, "漢字", "Author", None, str(DEJAVU))


def test_cjk_passes_with_a_font_that_covers_it():
    font = _cjk_font()
    if font is None:
        pytest.skip("no font covering CJK on this machine (fc-list :charset=6f22 is empty; e.g. fonts-noto-cjk)")
    check_title_fits(SIZE, "漢字の本", "著者", None, font)
    _, details = typeset(Image.new("RGB", SIZE), "漢字の本", "著者", font=font)
    assert "".join(details["lines"][:-1]) == "漢字の本"


# --- right-to-left: needs raqm -------------------------------------------------------------------


@needs_dejavu
def test_right_to_left_text_is_refused_without_raqm(monkeypatch):
    """Pillow's basic layout neither joins Arabic letters nor reverses the order: refuse rather than misdraw."""
    import tasks.cover

    def basic(font, size):
        return ImageFont.truetype(font, size, layout_engine=ImageFont.Layout.BASIC)

    monkeypatch.setattr(tasks.cover, "load_font", basic)
    check_title_fits(SIZE, "Café", "Author", None, str(DEJAVU))  # left-to-right text still passes
    with pytest.raises(BriefError, match=r"^title: right-to-left text \('س', 'ل', 'ا', 'م'\) needs Pillow's raqm"):
        check_title_fits(SIZE, "سلام", "Author", None, str(DEJAVU))
    with pytest.raises(BriefError, match=r"^author: right-to-left text \('ש'"):
        check_title_fits(SIZE, "Title", "שלום", None, str(DEJAVU))


@needs_dejavu
@pytest.mark.skipif(not features.check("raqm"), reason="this Pillow has no raqm layout")
def test_right_to_left_text_is_shaped_with_raqm():
    check_title_fits(SIZE, "سلام عليكم", "שלום", None, str(DEJAVU))
    font = ImageFont.truetype(str(DEJAVU), 48)
    assert font.layout_engine == ImageFont.Layout.RAQM
    # Shaped: joined letters make the word narrower than its isolated letters side by side.
    assert font.getlength("سلام") < sum(font.getlength(ch) for ch in "سلام")
    titled, _ = typeset(Image.new("RGB", SIZE), "سلام", "Author", font=str(DEJAVU))
    assert np.asarray(titled).any()


# --- preflight and the command line ------------------------------------------------------------


def test_preflight_refuses_a_title_the_font_cannot_draw():
    from flows.bundle import preflight

    with pytest.raises(BriefError, match="^title: Pillow's bundled font .* cannot draw '漢'"):
        preflight(parse_brief({"title": "漢", "author": "Author"}))


@pytest.mark.parametrize(
    "args, line",
    [
        (["--title", "漢字"], "title: Pillow's bundled font (cover.font unset) cannot draw '漢', '字'"),
        (["--title", "Bell\x07"], "title: holds invisible control characters U+0007"),
    ],
)
def test_the_command_line_refuses_in_one_line_with_exit_2(tmp_path, args, line):
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", "run", *args, "--author", "A", "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=120, cwd=Path(__file__).parent.parent,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and line in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
