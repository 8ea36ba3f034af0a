"""The creative brief: what a person asks for, validated before any model loads.

Each role's section (cover, sound, video) names its engine (the seed engine when left out).
Sizes, steps, guidance and scheduler are optional: left out, they take the engine's defaults
for the profile. Given, they are checked by the engine against what its pipeline accepts.
"""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path
from typing import ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tasks.engines import ROLES, Engine, UnknownEngine, check_params, default_engine, engine, engines_for
from tasks.errors import InputError

Profile = Literal["tiny", "full"]

DEFAULT_COVER_PROMPT = (
    "A mystical forest with ancient trees and glowing creatures, fantasy book cover art, dramatic lighting."
)
DEFAULT_SOUND_PROMPT = "Car sound, realistic engine, accelerating, 5 seconds."
DEFAULT_VIDEO_PROMPT = "A car driving on a winding mountain road, cinematic, smooth camera movement."
_PROFILE_DEFAULT = "the engine's default for the profile when empty"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Section(_Strict):
    """What every role's section asks for: the engine and its generation settings.

    The generation settings are checked by the engine the section names (its own sizes, frame
    counts, durations and schedulers), once the brief is complete (see Brief._engines_accept).
    """

    generation_fields: ClassVar[tuple[str, ...]] = ("steps", "guidance", "scheduler")

    prompt: str = Field(min_length=3, max_length=1000)
    negative_prompt: str | None = Field(None, max_length=1000, description="Replaces the template's negative prompt.")
    engine: str | None = Field(
        None, description="The engine that makes it (`genbundle engines`); the seed engine when empty."
    )
    weights: str | None = Field(None, description="Full weights: hub id or local folder; the engine's own when empty.")
    steps: int | None = Field(None, description=f"Denoising steps; {_PROFILE_DEFAULT}.")
    guidance: float | None = Field(None, description=f"Classifier-free guidance scale; {_PROFILE_DEFAULT}.")
    scheduler: str | None = Field(
        None, description=f"dpm++, ddim, lms, euler or pndm, as the engine accepts; {_PROFILE_DEFAULT}."
    )

    @field_validator("prompt")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be blank")
        return v.strip()

    def generation_settings(self) -> dict:
        """The settings given for the engine (left-out ones are the engine's defaults)."""
        return {name: getattr(self, name) for name in self.generation_fields if getattr(self, name) is not None}


class CoverSpec(_Section):
    generation_fields: ClassVar[tuple[str, ...]] = (*_Section.generation_fields, "width", "height")

    prompt: str = Field(DEFAULT_COVER_PROMPT, min_length=3, max_length=1000)
    width: int | None = Field(None, description=f"Pixels; {_PROFILE_DEFAULT}.")
    height: int | None = Field(None, description=f"Pixels; {_PROFILE_DEFAULT}.")
    font: Path | None = Field(None, description="A TrueType/OpenType font file; Pillow's bundled font by default.")

    @field_validator("font")
    @classmethod
    def _font_readable(cls, v: Path | None) -> Path | None:
        if v is None:
            return v
        if Path(v).is_dir():
            raise ValueError(f"{v} is a folder: give a .ttf or .otf font file")
        if not Path(v).is_file():
            raise ValueError(f"font file {v} does not exist")
        from PIL import ImageFont

        try:
            ImageFont.truetype(str(v), 12)
        except OSError:
            raise ValueError(f"{v} is not a TrueType/OpenType font Pillow can read; give a .ttf or .otf file") from None
        return v


class SoundSpec(_Section):
    generation_fields: ClassVar[tuple[str, ...]] = (*_Section.generation_fields, "duration")

    prompt: str = Field(DEFAULT_SOUND_PROMPT, min_length=3, max_length=1000)
    duration: float | None = Field(None, description=f"Seconds of audio to generate; {_PROFILE_DEFAULT}.")
    loudness: float = Field(
        -14.0, ge=-40.0, le=-5.0, allow_inf_nan=False, description="Integrated loudness target, LUFS."
    )
    true_peak: float = Field(-1.0, ge=-9.0, le=0.0, allow_inf_nan=False, description="True-peak ceiling, dBTP.")


class VideoSpec(_Section):
    generation_fields: ClassVar[tuple[str, ...]] = (*_Section.generation_fields, "width", "height", "frames", "fps")

    prompt: str = Field(DEFAULT_VIDEO_PROMPT, min_length=3, max_length=1000)
    width: int | None = Field(None, description=f"Pixels; {_PROFILE_DEFAULT}.")
    height: int | None = Field(None, description=f"Pixels; {_PROFILE_DEFAULT}.")
    frames: int | None = Field(None, description=f"Frames to generate; {_PROFILE_DEFAULT}.")
    fps: int | None = Field(None, description=f"Frames per second; {_PROFILE_DEFAULT}.")


class Brief(_Strict):
    """Everything one bundle needs. The same brief, on the same runtime, gives the same bundle."""

    title: str = Field(min_length=1, max_length=120, description="Book title, typeset on the cover.")
    author: str = Field(min_length=1, max_length=80, description="Author's name, typeset on the cover.")
    tagline: str | None = Field(None, max_length=160, description="Optional line under the title.")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="Same brief and seed, same bundle.")
    models: Profile = Field("tiny", description="tiny: small random-weight models (placeholders); full: the real ones.")
    cover: CoverSpec = Field(CoverSpec(), description="The book cover.")
    sound: SoundSpec = Field(SoundSpec(), description="The engine sound.")
    video: VideoSpec = Field(VideoSpec(), description="The car clip.")
    trace: bool = Field(True, description="Add the diffusion trace: the cover noised and denoised, step by step.")
    licence_policy: Literal["any", "commercial"] | None = Field(
        None, description="commercial: every engine must allow commercial use (as GENBUNDLE_LICENCE_POLICY does)."
    )

    @field_validator("title", "author", "tagline")
    @classmethod
    def _strip(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("must not be blank")
        if v is not None and (found := control_characters(v)):
            raise ValueError(f"holds invisible control characters {found}; remove them")
        return v.strip() if v is not None else v

    @model_validator(mode="after")
    def _engines_accept(self) -> Brief:
        """Each section's engine exists, makes that role, and accepts the settings given for the profile."""
        for role in ROLES:
            self.engine_for(role)
            check_params(self.engine_for(role), self.section(role).generation_settings(), self.models, role)
        return self

    def section(self, role: str) -> _Section:
        return getattr(self, role)

    def engine_for(self, role: str) -> Engine:
        name = self.section(role).engine
        if name is None:
            return default_engine(role)
        try:
            found = engine(name)
        except UnknownEngine as err:
            raise ValueError(f"{role}.engine: {err}") from None
        if found.role != role:
            choices = ", ".join(e.name for e in engines_for(role))
            raise ValueError(f"{role}.engine: {name} makes the {found.role}, not the {role}; choose {choices}")
        return found


# Whitespace that word wrapping turns into spaces; every other Cc/Cf character is refused in cover text.
_WRAPPED_WHITESPACE = frozenset("\t\n\r")
# Zero-width (non-)joiners are Cf but part of ordinary Persian and Indic spelling: kept, the font check decides.
_JOINERS = frozenset("\u200c\u200d")


def control_characters(text: str) -> str:
    """The control and format characters in cover text, e.g. "U+202E (RIGHT-TO-LEFT OVERRIDE)"; '' when none.

    Bidi overrides, zero-width spaces and terminal escapes would reorder, hide or garble what is printed.
    """
    found = dict.fromkeys(
        ch for ch in text if unicodedata.category(ch) in ("Cc", "Cf") and ch not in _WRAPPED_WHITESPACE | _JOINERS
    )
    return ", ".join(f"U+{ord(ch):04X} ({unicodedata.name(ch, 'a control character')})" for ch in found)


class BriefError(InputError):
    """A brief a person wrote is wrong; the message names the field and the fix."""


def read_text_file(path: Path, what: str) -> str:
    """The text of a file a person named (`what`: "brief file", ...), or a BriefError naming it and the fix."""
    path = Path(path)
    if path.is_dir():
        raise BriefError(f"{what} {path} is a folder: give a .yaml, .yml or .json file")
    if not path.exists():
        raise BriefError(f"{what} {path} does not exist")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise BriefError(f"{what} {path} cannot be read ({err.strerror})") from None
    if b"\0" in data:  # UTF-16 text or a binary (an image, an archive): YAML would report it cryptically
        raise BriefError(f"{what} {path} is a binary file, not text: give a UTF-8 .yaml, .yml or .json file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise BriefError(f"{what} {path} is not UTF-8 text (byte {err.start}): save it as UTF-8") from None


def _yaml_problem(err: yaml.YAMLError) -> str:
    """PyYAML's message on one line: the problem and where it is."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return " ".join(f"{problem}{where}".split())


def describe_validation_error(err: ValidationError) -> str:
    """One line per problem, each naming its field by dotted path."""
    parts = []
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "is not a brief field (check the spelling)"
        elif e["type"] == "missing":
            msg = "is required"
        parts.append(f"{field}: {msg}" if field else msg)  # a whole-brief check names its fields itself
    return "; ".join(parts)


def parse_brief(data: dict) -> Brief:
    try:
        return Brief.model_validate(data)
    except ValidationError as err:
        raise BriefError(f"invalid brief: {describe_validation_error(err)}") from None


def load_brief_file(path: Path) -> dict:
    """Read a brief as a dict from a .json, .yaml or .yml file."""
    path = Path(path)
    text = read_text_file(path, "brief file")
    kind = "JSON" if path.suffix.lower() == ".json" else "YAML"
    try:
        data = json.loads(text) if kind == "JSON" else yaml.safe_load(text)
    except json.JSONDecodeError as err:
        raise BriefError(f"brief file {path} is not valid JSON: {err}") from None
    except yaml.YAMLError as err:
        raise BriefError(f"brief file {path} is not valid YAML: {_yaml_problem(err)}") from None
    if not isinstance(data, dict):
        raise BriefError(f"brief file {path} must hold a mapping of fields (title, author, ...)")
    return data


def load_briefs_file(path: Path) -> list[tuple[str, Brief | BriefError]]:
    """Read many briefs: JSON Lines (one object per line) or CSV (one row each, dotted headers
    such as `cover.prompt` for nested fields). Returns (label, brief or its error) per entry, so
    one bad entry does not stop the others.
    """
    path = Path(path)
    text = read_text_file(path, "briefs file")
    entries: list[tuple[str, dict | BriefError]] = []
    if path.suffix.lower() == ".csv":
        import csv
        import io

        with io.StringIO(text, newline="") as fh:
            for row_no, row in enumerate(csv.DictReader(fh), start=2):  # row 1 holds the headers
                data: dict = {}
                for header, cell in row.items():
                    if header and cell not in (None, ""):
                        *parents, leaf = header.strip().split(".")
                        node = data
                        for key in parents:
                            node = node.setdefault(key, {})
                        try:
                            node[leaf] = yaml.safe_load(cell)  # "512" -> 512, text stays text
                        except yaml.YAMLError:  # "a: b: c" is text too, not a crash of the whole batch
                            node[leaf] = cell
                entries.append((f"{path.name}:{row_no}", data))
    else:
        for line_no, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
                entries.append(
                    (f"{path.name}:{line_no}", data if isinstance(data, dict) else BriefError("not an object"))
                )
            except json.JSONDecodeError as err:
                entries.append((f"{path.name}:{line_no}", BriefError(f"not valid JSON: {err}")))
    parsed: list[tuple[str, Brief | BriefError]] = []
    for label, data in entries:
        if isinstance(data, BriefError):
            parsed.append((label, data))
            continue
        try:
            parsed.append((label, parse_brief(data)))
        except BriefError as err:
            parsed.append((label, err))
    return parsed
