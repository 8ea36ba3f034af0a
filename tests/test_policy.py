import pytest

from tasks.brief import BriefError, parse_brief
from tasks.policy import check_jobs, check_prompt_policy
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


@pytest.fixture
def block(monkeypatch):
    """Set GENBUNDLE_BLOCKED_TERMS for one test."""

    def set_terms(terms: str) -> None:
        monkeypatch.setenv("GENBUNDLE_BLOCKED_TERMS", terms)
        get_settings.cache_clear()

    yield set_terms
    monkeypatch.undo()
    get_settings.cache_clear()


def _jobs(brief):
    from tasks.jobs import resolve_jobs
    from tasks.prompts import expand_prompts

    return list(resolve_jobs(brief, expand_prompts.fn(brief)).values())


def _added_by_expansion(brief) -> str:
    """A word the expansion puts into the cover prompt that the brief does not have."""
    from tasks.prompts import content_words

    return min(content_words(_jobs(brief)[0].prompt) - content_words(brief.cover.prompt))


def test_a_term_the_expansion_adds_is_refused_in_the_jobs(block):
    brief = parse_brief({"title": "T", "author": "A"})
    term = _added_by_expansion(brief)
    block(term)
    check_prompt_policy(brief)  # the brief itself is clean
    with pytest.raises(BriefError, match=rf"^cover\.prompt \(as expanded\): refused by the prompt policy: .*'{term}'"):
        check_jobs(_jobs(brief))


def test_negative_prompts_may_name_blocked_terms(block):
    """A negative prompt names terms to steer away from them: that is no reason to refuse."""
    from tasks.prompts import content_words

    jobs = _jobs(parse_brief({"title": "T", "author": "A"}))
    only_negative = set().union(*(content_words(j.negative_prompt) for j in jobs))
    only_negative -= set().union(*(content_words(j.prompt) for j in jobs))
    assert "watermark" in only_negative
    block(",".join(sorted(only_negative)))
    check_jobs(jobs)


def test_the_bundle_flow_refuses_expanded_prompts_before_generating(block, prefect_api, tmp_path):
    from flows.bundle import asset_bundle

    brief = parse_brief({"title": "T", "author": "A"})
    block(_added_by_expansion(brief))
    with pytest.raises(BriefError, match="as expanded"):
        asset_bundle(brief, out=str(tmp_path))
    assert not (tmp_path / ".work" / "cover").exists()  # nothing was generated


def _commercial_engines() -> dict:
    """For each role, an engine whose licence allows commercial use."""
    from tasks.engines import ROLES, engines_for

    return {role: {"engine": next(e.name for e in engines_for(role) if e.licence.commercial)} for role in ROLES}


def test_the_licence_policy_names_the_field_and_the_engine_that_forbids_commercial_use(settings_env):
    settings_env(GENBUNDLE_LICENCE_POLICY="commercial")
    from tasks.engines import default_engine
    from tasks.policy import check_licences

    refused = [role for role in ("cover", "sound", "video") if not default_engine(role).licence.commercial]
    with pytest.raises(BriefError) as err:
        check_licences(parse_brief({"title": "T", "author": "A"}))
    message, engine = str(err.value), default_engine(refused[0])
    assert message.startswith(f"{refused[0]}.engine: {engine.name} (the default) is licensed {engine.licence.name}")
    assert "GENBUNDLE_LICENCE_POLICY=commercial" in message and "\n" not in message
    check_licences(parse_brief({"title": "T", "author": "A", **_commercial_engines()}))  # all allowed: no refusal


def test_the_brief_can_ask_for_commercial_use_itself():
    from tasks.policy import check_licences

    check_licences(parse_brief({"title": "T", "author": "A"}))  # no policy: the seed engines are fine
    with pytest.raises(BriefError, match=r"\.engine: .* licence_policy: commercial asks for it"):
        check_licences(parse_brief({"title": "T", "author": "A", "licence_policy": "commercial"}))
    check_licences(parse_brief({"title": "T", "author": "A", "licence_policy": "commercial", **_commercial_engines()}))


@pytest.mark.slow
def test_run_refuses_a_non_commercial_brief_before_any_model_loads(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    cache = tmp_path / "models"
    env = os.environ | {
        "GENBUNDLE_LICENCE_POLICY": "commercial",
        "GENBUNDLE_MODEL_CACHE": str(cache),
        "PYTHONPATH": str(Path(__file__).parents[1]),
    }
    result = subprocess.run(
        [sys.executable, "-m", "flows.cli", "run", "--out", str(tmp_path / "out")],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and ".engine: " in line and "does not allow commercial use" in line
    assert not (tmp_path / "out").exists() and not cache.exists()  # nothing written, no model built
