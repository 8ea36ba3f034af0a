import pytest

from tasks.brief import BriefError, parse_brief
from tasks.policy import check_prompt_policy
from tasks.settings import get_settings


@pytest.fixture
def blocked(monkeypatch):
    monkeypatch.setenv("GENBUNDLE_BLOCKED_TERMS", "gore, real person ,Logo")
    get_settings.cache_clear()
    yield
    monkeypatch.undo()
    get_settings.cache_clear()


@pytest.mark.parametrize(
    "brief, field, term",
    [
        ({"video": {"prompt": "A car crash with GORE everywhere"}}, "video.prompt", "gore"),
        ({"cover": {"prompt": "a portrait of a Real  Person, oil"}}, None, None),  # two spaces: not the phrase
        ({"cover": {"prompt": "a portrait of a real person, oil"}}, "cover.prompt", "real person"),
        ({"tagline": "Now with our logo!"}, "tagline", "logo"),
        ({"sound": {"prompt": "gorge wind, engine idling"}}, None, None),  # whole words only
    ],
)
def test_blocked_terms_are_refused_with_the_field(blocked, brief, field, term):
    b = parse_brief({"title": "T", "author": "A"} | brief)
    if field is None:
        check_prompt_policy(b)
        return
    with pytest.raises(BriefError) as err:
        check_prompt_policy(b)
    assert str(err.value).startswith(f"{field}: refused by the prompt policy: it contains '{term}'")


def test_no_policy_means_no_refusal():
    check_prompt_policy(parse_brief({"title": "T", "author": "A", "video": {"prompt": "gore"}}))
