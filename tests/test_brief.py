import json

import pytest

from flows.cli import brief_from_args, build_parser
from tasks.brief import (
    DEFAULT_COVER_PROMPT,
    DEFAULT_SOUND_PROMPT,
    DEFAULT_VIDEO_PROMPT,
    BriefError,
    load_brief_file,
    parse_brief,
)


def test_defaults_are_the_seed_prompts():
    brief = parse_brief({"title": "T", "author": "A"})
    assert (brief.cover.prompt, brief.sound.prompt, brief.video.prompt) == (
        DEFAULT_COVER_PROMPT,
        DEFAULT_SOUND_PROMPT,
        DEFAULT_VIDEO_PROMPT,
    )
    assert brief.sound.duration is None and brief.models == "tiny" and brief.seed == 0  # the engine's default
    assert [brief.engine_for(role).default for role in ("cover", "sound", "video")] == [True, True, True]


@pytest.mark.parametrize(
    "data, expected",
    [
        ({"author": "A"}, "title: is required"),
        (
            {"title": "T", "author": "A", "cover": {"width": 100}},
            "cover.width: must be a multiple of 8 (got 100; try 96)",
        ),
        ({"title": "T", "author": "A", "video": {"height": 36}}, "video.height: must be a multiple of 8"),
        ({"title": "T", "author": "A", "colour": "red"}, "colour: is not a brief field"),
        ({"title": "T", "author": "A", "seed": -1}, "seed: Input should be greater than or equal to 0"),
        ({"title": "T", "author": "A", "models": "huge"}, "models: Input should be 'tiny' or 'full'"),
        (
            {"title": "T", "author": "A", "sound": {"duration": 90}},
            "sound.duration: Input should be less than or equal to 30",
        ),
        ({"title": "T", "author": "A", "cover": {"scheduler": "heun"}}, "cover.scheduler: Input should be"),
        (
            {"title": "T", "author": "A", "cover": {"engine": "dalle"}},
            "cover.engine: unknown engine 'dalle'; registered:",
        ),
        (
            {"title": "T", "author": "A", "cover": {"engine": "audioldm"}},
            "cover.engine: audioldm makes the sound, not the cover; choose sd15",
        ),
        ({"title": "T", "author": "A", "video": {"frames": 500}}, "video.frames: Input should be less than or equal"),
        (
            {"title": "T", "author": "A", "cover": {"guidance": "nan"}},
            "cover.guidance: Input should be a finite number",
        ),
        ({"title": "   ", "author": "A"}, "title: must not be blank"),
        (
            {"title": "T", "author": "A", "cover": {"font": "/no/such/font.ttf"}},
            "cover.font: font file /no/such/font.ttf does not exist",
        ),
    ],
)
def test_bad_briefs_name_the_field(data, expected):
    with pytest.raises(BriefError) as err:
        parse_brief(data)
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


def test_a_file_that_is_not_a_font_is_refused(tmp_path):
    not_a_font = tmp_path / "notes.ttf"
    not_a_font.write_text("not a font")
    with pytest.raises(BriefError) as err:
        parse_brief({"title": "T", "author": "A", "cover": {"font": str(not_a_font)}})
    assert str(err.value) == (
        f"invalid brief: cover.font: {not_a_font} is not a TrueType/OpenType font Pillow can read; "
        "give a .ttf or .otf file"
    )


def test_bundle_id_comes_from_the_resolved_jobs_and_the_runtime():
    from tasks.jobs import bundle_id

    a = parse_brief({"title": "T", "author": "A"})
    assert bundle_id(a, "cpu/float32") == bundle_id(parse_brief({"author": "A", "title": "T"}), "cpu/float32")
    assert bundle_id(a, "cpu/float32") != bundle_id(a, "cuda/float16")
    for other in ({"seed": 1}, {"models": "full"}, {"cover": {"engine": "sd15", "steps": 5}}):
        assert bundle_id(a, "cpu/float32") != bundle_id(
            parse_brief({"title": "T", "author": "A", **other}), "cpu/float32"
        )
    # Naming the default engine, or its default settings, is the same request: the same bundle.
    explicit = parse_brief({"title": "T", "author": "A", "cover": {"engine": "sd15", "steps": 4}})
    assert bundle_id(explicit, "cpu/float32") == bundle_id(a, "cpu/float32")


def test_brief_from_yaml_and_json(tmp_path):
    (tmp_path / "b.yaml").write_text("title: Night Roads\nauthor: K. Lee\ncover:\n  width: 512\n  height: 768\n")
    (tmp_path / "b.json").write_text(json.dumps({"title": "Night Roads", "author": "K. Lee", "sound": {"duration": 3}}))
    assert parse_brief(load_brief_file(tmp_path / "b.yaml")).cover.height == 768
    assert parse_brief(load_brief_file(tmp_path / "b.json")).sound.duration == 3.0


def test_unreadable_brief_files(tmp_path):
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    (tmp_path / "broken.json").write_text("{nope")
    with pytest.raises(BriefError, match="must hold a mapping"):
        load_brief_file(tmp_path / "list.yaml")
    with pytest.raises(BriefError, match="is not valid JSON"):
        load_brief_file(tmp_path / "broken.json")
    with pytest.raises(BriefError, match="does not exist"):
        load_brief_file(tmp_path / "missing.yaml")


def test_brief_files_that_are_no_text_are_refused_naming_the_file(tmp_path):
    (tmp_path / "folder.yaml").mkdir()
    (tmp_path / "image.yaml").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    (tmp_path / "latin1.yaml").write_bytes("title: Café\nauthor: A\n".encode("latin-1"))
    (tmp_path / "broken.yaml").write_text("title: [T\nauthor: A\n")
    expected = {
        "folder.yaml": "is a folder: give a .yaml, .yml or .json file",
        "image.yaml": "is a binary file, not text: give a UTF-8 .yaml, .yml or .json file",
        "latin1.yaml": "is not UTF-8 text (byte 10): save it as UTF-8",
        "broken.yaml": "is not valid YAML: expected ',' or ']', but got ':' at line 2, column 7",
    }
    for name, message in expected.items():
        with pytest.raises(BriefError) as err:
            load_brief_file(tmp_path / name)
        assert str(err.value) == f"brief file {tmp_path / name} {message}"  # one line, PyYAML's several joined


def test_a_font_path_that_is_a_folder_says_so(tmp_path):
    with pytest.raises(BriefError) as err:
        parse_brief({"title": "T", "author": "A", "cover": {"font": str(tmp_path)}})
    assert str(err.value) == f"invalid brief: cover.font: {tmp_path} is a folder: give a .ttf or .otf font file"


def test_flags_override_the_file(tmp_path):
    (tmp_path / "b.yaml").write_text("title: From File\nauthor: K. Lee\nseed: 3\n")
    args = build_parser().parse_args(
        [
            "run",
            str(tmp_path / "b.yaml"),
            "--seed",
            "9",
            "--sound-prompt",
            "a diesel idling",
            "--set",
            "cover.width=512",
            "--set",
            "video.fps=12",
            "--models",
            "tiny",
        ]
    )
    brief = brief_from_args(args)
    assert (brief.title, brief.seed, brief.sound.prompt) == ("From File", 9, "a diesel idling")
    assert (brief.cover.width, brief.video.fps) == (512, 12)


def test_bad_set_flag():
    args = build_parser().parse_args(["run", "--set", "cover.width"])
    with pytest.raises(BriefError, match="expected FIELD=VALUE"):
        brief_from_args(args)
