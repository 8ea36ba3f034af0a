"""Alt text: the tiny BLIP captioner (built and loaded like the diffusion pipelines) captions the cover."""

import json
from pathlib import Path

import pytest

from tasks.caption import caption_cover, faithfulness
from tasks.manifest import PLACEHOLDER_CAPTION, cover_alt_text
from tasks.models import ModelNotAvailable, model_source
from tasks.prompts import content_words


def test_the_cover_has_alt_text_from_the_captioner(tiny_bundle):
    manifest = json.loads((tiny_bundle / "bundle.json").read_text())
    caption = manifest["post_processing"]["cover_caption"]
    words = content_words(caption["text"]) & content_words(manifest["brief"]["cover"]["prompt"])
    assert caption["text"] and caption["shared_words"] == sorted(words) and caption["flagged"] == (not words)
    covers = [a for a in manifest["assets"] if a["role"] in ("cover", "cover_titled")]
    # Random weights write word salad: the alt text says so, so nobody publishes it as a description.
    assert len(covers) == 2 and all(a["alt_text"] == f"{PLACEHOLDER_CAPTION} {caption['text']}" for a in covers)
    assert manifest["compute"]["per_step"]["cover_caption"]["seconds"] > 0


def test_a_caption_sharing_no_word_with_the_prompt_is_flagged_in_the_bundle(prefect_api, tmp_path):
    """The tiny captioner's words come from its small vocabulary; this prompt uses none of them."""
    from flows.bundle import asset_bundle
    from tasks.artifacts import summary_markdown
    from tasks.brief import parse_brief
    from tasks.manifest import Manifest

    brief = {"title": "Zebra", "author": "Q", "cover": {"prompt": "zebra quokka xylophone"}, "trace": False}
    location = asset_bundle(parse_brief(brief), out=str(tmp_path))
    manifest = Manifest.read(Path(location) / "bundle.json")
    caption = manifest.post_processing["cover_caption"]
    assert caption["text"] and caption["shared_words"] == [] and caption["flagged"] is True
    assert "**flagged: it shares no content word with the prompt**" in summary_markdown(manifest, location)


def test_the_placeholder_caption_is_marked_on_the_page_and_in_the_summary(tiny_bundle):
    from tasks.artifacts import summary_markdown
    from tasks.manifest import Manifest

    manifest = Manifest.read(tiny_bundle / "bundle.json")
    text = manifest.post_processing["cover_caption"]["text"]
    page = (tiny_bundle / "index.html").read_text()
    assert f'alt="{PLACEHOLDER_CAPTION} ' in page and f"<q>{PLACEHOLDER_CAPTION} " in page
    assert f"_{PLACEHOLDER_CAPTION} {text}_" in summary_markdown(manifest, str(tiny_bundle))


def test_a_real_captioners_text_is_the_alt_text_as_it_is():
    assert cover_alt_text("a forest at dusk", "full") == "a forest at dusk"
    assert cover_alt_text("a forest at dusk", "tiny") == f"{PLACEHOLDER_CAPTION} a forest at dusk"


def test_captioning_is_deterministic(tiny_bundle, tmp_path):
    """Two fresh work areas: the caption is made twice, not reused, and comes out the same."""
    from tasks.workspace import StepResult, Workspace

    cover = StepResult(path=str(tiny_bundle / "cover.png"), key="the-cover")
    first, second = (
        caption_cover.fn(cover, "a mystical forest", "tiny", Workspace(root=str(tmp_path / area)))
        for area in ("a", "b")
    )
    assert not first.reused and not second.reused and first.path != second.path
    assert first.text and second.text == first.text


def test_a_finished_caption_is_reused(tiny_bundle, workspace):
    from tasks.workspace import StepResult

    cover = StepResult(path=str(tiny_bundle / "cover.png"), key="the-cover")
    first = caption_cover.fn(cover, "a mystical forest", "tiny", workspace)
    again = caption_cover.fn(cover, "a mystical forest", "tiny", workspace)
    assert not first.reused and again.reused and again.text == first.text


@pytest.mark.parametrize(
    "caption, shared, flagged",
    [
        ("a dark forest with glowing trees", ["forest", "glowing", "trees"], False),
        ("a bowl of fruit on a table", [], True),
    ],
)
def test_faithfulness_note(caption, shared, flagged):
    assert faithfulness(caption, "A mystical forest with ancient trees, glowing creatures") == (shared, flagged)


def test_the_full_captioner_is_required_like_the_other_models():
    with pytest.raises(ModelNotAvailable, match="caption weights 'Salesforce/blip-image-captioning-base'"):
        model_source("caption", "full")
