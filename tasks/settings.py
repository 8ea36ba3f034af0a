"""Settings read from the environment (prefix GENBUNDLE_); the only configuration there is.

Model caches follow HF_HOME, S3 the standard AWS_* variables, Prefect its PREFECT_* ones.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_model_cache() -> Path:
    return Path.home() / ".cache" / "genbundle" / "models"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GENBUNDLE_", extra="ignore")

    out: Path = Field(Path("bundles"), description="Local folder that bundles are stored under.")
    model_cache: Path = Field(
        default_factory=_default_model_cache, description="Where the tiny profile's pipelines are built and kept."
    )
    image_model: str = Field("stable-diffusion-v1-5/stable-diffusion-v1-5", description="Hub id or local folder.")
    sound_model: str = Field("cvssp/audioldm-s-full-v2", description="Hub id or local folder.")
    video_model: str = Field("cerspense/zeroscope_v2_576w", description="Hub id or local folder.")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    prompt_model: str | None = Field(
        None, description="Optional transformers text-generation model (hub id or folder) that rewrites prompts."
    )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
