"""Alt text: the tiny BLIP captioner (built and loaded like the diffusion pipelines) captions the cover."""

import json

import pytest

from tasks.caption import caption_cover, faithfulness
from tasks.models import ModelNotAvailable, model_source


def test_the_cover_has_alt_text_from_the_captioner(tiny_bundle):
    manifest = json.loads((tiny_bundle / "bundle.json").read_text())
    caption = manifest["post_processing"]["cover_caption"]
    assert caption["text"] and isinstance(caption["flagged"], bool)
    covers = [a for a in manifest["assets"] if a["role"] in ("cover", "cover_titled")]
    assert len(covers) == 2 and all(a["alt_text"] == caption["text"] for a in covers)


def test_captioning_is_deterministic_and_reused(tiny_bundle, workspace):
    from tasks.workspace import StepResult

    cover = StepResult(path=str(tiny_bundle / "cover.png"), key="the-cover")
    first = caption_cover.fn(cover, "a mystical forest", "tiny", workspace)
    again = caption_cover.fn(cover, "a mystical forest", "tiny", workspace)
    assert again.reused and again.text == first.text


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
    with pytest.raises(ModelNotAvailable, match="caption model 'Salesforce/blip-image-captioning-base'"):
        model_source("caption", "full")
