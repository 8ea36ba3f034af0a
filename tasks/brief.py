"""The creative brief: what a person asks for, validated before any model loads.

Sizes, steps, guidance and scheduler are optional: left out, they take the model profile's
defaults from the registry (tasks/models.py). Given, they are checked against ranges that
the pipelines accept.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

Profile = Literal["tiny", "full"]
SchedulerName = Literal["dpm++", "ddim", "lms", "euler", "pndm"]

DEFAULT_COVER_PROMPT = (
    "A mystical forest with ancient trees and glowing creatures, fantasy book cover art, dramatic lighting."
)
DEFAULT_SOUND_PROMPT = "Car sound, realistic engine, accelerating, 5 seconds."
DEFAULT_VIDEO_PROMPT = "A car driving on a winding mountain road, cinematic, smooth camera movement."


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Generation(_Strict):
    prompt: str = Field(min_length=3, max_length=1000)
    negative_prompt: str | None = Field(None, max_length=1000, description="Replaces the template's negative prompt.")
    steps: int | None = Field(None, ge=1, le=200, description="Denoising steps; the profile's default when empty.")
    guidance: float | None = Field(None, ge=0.0, le=30.0, description="Classifier-free guidance scale.")
    scheduler: SchedulerName | None = Field(None, description="dpm++ (default), ddim, lms, euler or pndm.")

    @field_validator("prompt")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be blank")
        return v.strip()


def _multiple_of_8(v: int | None) -> int | None:
    if v is not None and v % 8:
        raise ValueError(f"must be a multiple of 8 (got {v}; try {round(v / 8) * 8 or 8})")
    return v


class CoverSpec(_Generation):
    prompt: str = Field(DEFAULT_COVER_PROMPT, min_length=3, max_length=1000)
    width: int | None = Field(None, ge=64, le=2048)
    height: int | None = Field(None, ge=64, le=2048)
    font: Path | None = Field(None, description="A TrueType/OpenType font file; Pillow's bundled font by default.")

    @field_validator("width", "height")
    @classmethod
    def _sides(cls, v: int | None) -> int | None:
        return _multiple_of_8(v)

    @field_validator("font")
    @classmethod
    def _font_readable(cls, v: Path | None) -> Path | None:
        if v is None:
            return v
        if not Path(v).is_file():
            raise ValueError(f"font file {v} does not exist")
        from PIL import ImageFont

        try:
            ImageFont.truetype(str(v), 12)
        except OSError:
            raise ValueError(f"{v} is not a TrueType/OpenType font Pillow can read; give a .ttf or .otf file") from None
        return v


class SoundSpec(_Generation):
    prompt: str = Field(DEFAULT_SOUND_PROMPT, min_length=3, max_length=1000)
    duration: float = Field(5.0, ge=1.0, le=30.0, description="Seconds of audio to generate.")
    loudness: float = Field(-14.0, ge=-40.0, le=-5.0, description="Integrated loudness target, LUFS.")
    true_peak: float = Field(-1.0, ge=-9.0, le=0.0, description="True-peak ceiling, dBTP.")


class VideoSpec(_Generation):
    prompt: str = Field(DEFAULT_VIDEO_PROMPT, min_length=3, max_length=1000)
    width: int | None = Field(None, ge=64, le=1280)
    height: int | None = Field(None, ge=32, le=1280)
    frames: int | None = Field(None, ge=2, le=120)
    fps: int | None = Field(None, ge=1, le=60)

    @field_validator("width", "height")
    @classmethod
    def _sides(cls, v: int | None) -> int | None:
        return _multiple_of_8(v)


class Brief(_Strict):
    """Everything one bundle needs. The same brief gives the same bundle id and the same outputs."""

    title: str = Field(min_length=1, max_length=120, description="Book title, typeset on the cover.")
    author: str = Field(min_length=1, max_length=80, description="Author's name, typeset on the cover.")
    tagline: str | None = Field(None, max_length=160, description="Optional line under the title.")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="Same brief and seed, same bundle.")
    models: Profile = Field("tiny", description="tiny: small random-weight models (placeholders); full: the real ones.")
    cover: CoverSpec = Field(CoverSpec(), description="The book cover (Stable Diffusion v1.5).")
    sound: SoundSpec = Field(SoundSpec(), description="The engine sound (AudioLDM).")
    video: VideoSpec = Field(VideoSpec(), description="The car clip (Zeroscope v2 576w).")
    trace: bool = Field(True, description="Add the diffusion trace: the cover noised and denoised, step by step.")

    @field_validator("title", "author", "tagline")
    @classmethod
    def _strip(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("must not be blank")
        return v.strip() if v is not None else v

    def fingerprint(self) -> str:
        """A stable hash of everything that shapes the outputs."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


class BriefError(ValueError):
    """A brief a person wrote is wrong; the message names the field and the fix."""


def describe_validation_error(err: ValidationError) -> str:
    """One line per problem, each naming its field by dotted path."""
    parts = []
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "brief"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "is not a brief field (check the spelling)"
        elif e["type"] == "missing":
            msg = "is required"
        parts.append(f"{field}: {msg}")
    return "; ".join(parts)


def parse_brief(data: dict) -> Brief:
    try:
        return Brief.model_validate(data)
    except ValidationError as err:
        raise BriefError(f"invalid brief: {describe_validation_error(err)}") from None


def load_brief_file(path: Path) -> dict:
    """Read a brief as a dict from a .json, .yaml or .yml file."""
    path = Path(path)
    if not path.is_file():
        raise BriefError(f"brief file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise BriefError(f"brief file {path} is not valid {path.suffix.lstrip('.').upper() or 'YAML'}: {err}") from None
    if not isinstance(data, dict):
        raise BriefError(f"brief file {path} must hold a mapping of fields (title, author, ...)")
    return data


def load_briefs_file(path: Path) -> list[tuple[str, Brief | BriefError]]:
    """Read many briefs: JSON Lines (one object per line) or CSV (one row each, dotted headers
    such as `cover.prompt` for nested fields). Returns (label, brief or its error) per entry, so
    one bad entry does not stop the others.
    """
    path = Path(path)
    if not path.is_file():
        raise BriefError(f"briefs file {path} does not exist")
    entries: list[tuple[str, dict | BriefError]] = []
    if path.suffix.lower() == ".csv":
        import csv

        with open(path, newline="", encoding="utf-8") as fh:
            for row_no, row in enumerate(csv.DictReader(fh), start=2):  # row 1 holds the headers
                data: dict = {}
                for header, cell in row.items():
                    if header and cell not in (None, ""):
                        *parents, leaf = header.strip().split(".")
                        node = data
                        for key in parents:
                            node = node.setdefault(key, {})
                        node[leaf] = yaml.safe_load(cell)  # "512" -> 512, text stays text
                entries.append((f"{path.name}:{row_no}", data))
    else:
        for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
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
