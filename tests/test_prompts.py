import logging

import pytest

from tasks.brief import parse_brief
from tasks.engines import ROLES, default_engine
from tasks.models import load_tokenizer
from tasks.prompts import expand_one, expand_prompts, looks_degenerate, rewrite_with_model

COVER = default_engine("cover")


@pytest.fixture(scope="module")
def clip_tokenizer():
    return load_tokenizer(COVER.name, "tiny")


def test_expansion_adds_each_engines_template_terms_within_the_limit():
    prompts = expand_prompts.fn(parse_brief({"title": "T", "author": "A"}))
    assert list(prompts) == list(ROLES)
    for role, p in prompts.items():
        engine = default_engine(role)
        tok = load_tokenizer(engine.name, "tiny")
        assert p.prompt.startswith(p.original.rstrip("."))
        assert len(p.prompt) > len(p.original)
        assert p.tokens == len(tok(p.prompt).input_ids) <= p.token_limit == 77
        assert p.negative_prompt == engine.prompt.negative
        assert not p.dropped_terms and p.trimmed is None


def test_terms_already_said_are_not_repeated():
    prompts = expand_prompts.fn(parse_brief({"title": "T", "author": "A"}))
    # The seed video prompt already says "cinematic"; the template must not say it twice.
    assert prompts["video"].prompt.lower().count("cinematic") == 1


def test_long_prompt_is_trimmed_loudly_and_recorded(clip_tokenizer, caplog):
    long = " ".join(f"tree{i}" for i in range(120))
    with caplog.at_level(logging.WARNING, logger="genbundle.prompts"):
        p = expand_one("cover", COVER.prompt, long, None, clip_tokenizer)
    assert p.tokens <= 77
    assert p.trimmed and p.prompt + " " + p.trimmed == long
    assert p.dropped_terms == list(COVER.prompt.terms)
    assert "longer than 77 tokens" in caplog.text and "no room" in caplog.text


def test_long_negative_prompt_is_trimmed_loudly_and_recorded(clip_tokenizer, caplog):
    long = ", ".join(f"blur{i}" for i in range(120))
    with caplog.at_level(logging.WARNING, logger="genbundle.prompts"):
        p = expand_one("cover", COVER.prompt, "a red dragon", long, clip_tokenizer)
    assert p.negative_tokens <= 77
    assert p.negative_trimmed and p.negative_prompt + " " + p.negative_trimmed == long
    assert "negative prompt is too long" in caplog.text


def test_negative_prompt_override(clip_tokenizer):
    p = expand_one("cover", COVER.prompt, "a red dragon", "people, crowds", clip_tokenizer)
    assert p.negative_prompt == "people, crowds"


@pytest.mark.parametrize(
    "text, degenerate",
    [
        ("", True),
        ("car car car car car car car", True),
        ("@@@ ### $$$ %%% ^^^ &&& ***", True),
        ("a bowl of fruit on a wooden table", True),  # nothing in common with the original
        ("a roaring sports car engine revving hard on a mountain pass", False),
    ],
)
def test_degenerate_rewrites_are_detected(text, degenerate):
    assert looks_degenerate("car engine accelerating", text) is degenerate


def test_rewrite_model_with_random_weights_falls_back_to_the_template(tmp_path, clip_tokenizer, caplog):
    """A real transformers text-generation model (tiny, random weights) writes gibberish: the template wins."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from tasks.tiny_models import roberta_tokenizer

    tokenizer = roberta_tokenizer()
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2, n_positions=256))
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)

    with caplog.at_level(logging.WARNING, logger="genbundle.prompts"):
        sound = default_engine("sound")
        tokenizer = load_tokenizer(sound.name, "tiny")
        p = expand_one(
            "sound", sound.prompt, "car engine accelerating", None, tokenizer, rewrite_with_model(str(tmp_path))
        )
    assert p.rewritten_by is None
    assert p.prompt.startswith("car engine accelerating, ")
    assert "looked degenerate" in caplog.text


def test_an_engines_token_limit_bounds_a_tokenizer_that_reports_none(clip_tokenizer):
    """A tokenizer may report no real limit (a huge model_max_length); the engine's own bound applies."""
    from tasks.engines import PromptTemplate

    clip_tokenizer.model_max_length = 10**30
    try:
        template = PromptTemplate(terms=("highly detailed",), negative="blurry", token_limit=12)
        p = expand_one("cover", template, " ".join(f"tree{i}" for i in range(40)), None, clip_tokenizer)
    finally:
        clip_tokenizer.model_max_length = 77
    assert p.token_limit == 12 and p.tokens <= 12 and p.trimmed
