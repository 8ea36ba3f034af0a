"""Settings read from the environment (prefix GENBUNDLE_); the only configuration there is.

Model caches follow HF_HOME, S3 the standard AWS_* variables, Prefect its PREFECT_* ones.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from tasks.errors import SettingError

ENV_PREFIX = "GENBUNDLE_"


def _default_model_cache() -> Path:
    return Path.home() / ".cache" / "genbundle" / "models"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    out: Path = Field(Path("bundles"), description="Local folder that bundles are stored under.")
    model_cache: Path = Field(
        default_factory=_default_model_cache, description="Where the tiny profile's pipelines are built and kept."
    )
    weights: dict[str, str] = Field(
        default_factory=dict,
        description='Full weights per engine, a JSON object: {"sd15": "/models/sd15"}; a brief\'s weights field wins.',
    )
    caption_model: str = Field("Salesforce/blip-image-captioning-base", description="BLIP captioner: hub id or folder.")
    safety_model: str = Field(
        "stable-diffusion-v1-5/stable-diffusion-v1-5",
        description="Hub id or folder holding Stable Diffusion's safety_checker/ and feature_extractor/.",
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # The CUDA fast path (tasks/acceleration.py); the CPU always runs float32, whole, uncompiled.
    # float32 is accepted too: full precision on CUDA (twice the memory, slower), what the CPU runs anyway.
    dtype: Literal["float16", "bfloat16", "float32"] = Field(
        "float16", description="Precision of the pipelines on CUDA."
    )
    memory: Literal["auto", "gpu", "model_offload", "sequential_offload"] = Field(
        "auto", description="Where the weights live on CUDA; auto picks by the GPU's memory."
    )
    compile: bool = Field(False, description="torch.compile the denoiser: slower first run, faster after.")
    prompt_model: str | None = Field(
        None, description="Optional transformers text-generation model (hub id or folder) that rewrites prompts."
    )

    device_watts: float | None = Field(
        None,
        gt=0,
        le=5000,
        allow_inf_nan=False,
        description="Power of the generating device, for energy estimates where NVML cannot measure.",
    )
    safety: Literal["on", "off"] = Field("on", description="Run Stable Diffusion's safety checker on the cover.")
    safety_action: Literal["blur", "drop", "fail"] = Field(
        "blur", description="What happens to a flagged cover: blurred, left out of the bundle, or the run fails."
    )
    licence_policy: Literal["any", "commercial"] = Field(
        "any",
        description="commercial: refuse, before any model loads, a brief with an engine that forbids commercial use.",
    )
    blocked_terms: str | None = Field(
        None, description="Comma-separated words or phrases that no prompt, title or tagline may contain."
    )
    allow_large: bool = Field(
        False,
        description="Run jobs over their engine's comfortable sizes, frames, steps or seconds (as --allow-large does).",
    )

    # Dispatch (flows/generate.py): how long a generation on a GPU pool may show no sign of life (no
    # heartbeat from its run, no worker polling its pool) before the bundle run gives up on it.
    # Above Prefect's shortest flow-run heartbeat interval (30 s), so one late heartbeat is not a death.
    dispatch_stall_seconds: float = Field(
        120, ge=45, le=86400, allow_inf_nan=False,
        description="Seconds a dispatched generation may go without a heartbeat or a polling worker before "
        "the bundle run ends, naming the pool.",
    )  # fmt: skip

    # Jobs of one engine with the same settings (their prompts and seeds aside) go through one pipeline call,
    # this many at most (tasks/generation.py); 1 makes them one by one. More per call costs more GPU memory.
    generation_batch: int = Field(
        4, ge=1, le=64, description="Jobs with the same engine and settings generated together in one pipeline call."
    )

    # Storage: bundles are always written under `out`; with an s3:// URL here they are uploaded too.
    # The S3 endpoint, region and credentials come from the standard AWS_* variables.
    # Checked by tasks.storage.storage_target, so a bad value is one clear line, not a settings traceback.
    storage: str | None = Field(
        None,
        description="s3://bucket/prefix to upload bundles to, or a local folder (or file:// URL), the same as out; "
        "local only (under out) when unset.",
    )
    s3_checksums: Literal["sha256", "off"] = Field(
        "sha256", description="off: send no checksums, for stores that reject boto3's; uploads are then read back."
    )
    s3_addressing: Literal["auto", "path", "virtual"] = Field(
        "auto", description="auto: path-style when a custom endpoint (AWS_ENDPOINT_URL) is set, virtual-host otherwise."
    )
    s3_max_attempts: int = Field(5, ge=1, le=20, description="Attempts per request, with backoff, on 5xx/throttling.")
    s3_connect_timeout: float = Field(5.0, gt=0, le=120, allow_inf_nan=False)
    s3_concurrency: int = Field(4, ge=1, le=32, description="Assets uploaded at once (and parts per asset).")
    s3_part_mb: int = Field(8, ge=5, le=512, description="Multipart threshold and part size, MiB.")
    presign_expiry: int = Field(3600, ge=1, le=604800, description="Seconds a shared (presigned) link stays valid.")

    # C2PA content credentials (tasks/provenance.py): both set, or neither (assets unsigned).
    c2pa_cert: str | None = Field(
        None, description="PEM file: the signing certificate chain, end-entity first, intermediates after, no root."
    )
    c2pa_key: str | None = Field(None, description="PEM file: the private key of the end-entity certificate.")
    c2pa_trust: str | None = Field(
        None, description="PEM file of root certificates that `genbundle verify` trusts as signers' anchors."
    )

    @field_validator("out", "model_cache", mode="before")
    @classmethod
    def _not_blank(cls, v):
        # An empty variable would be Path("") == the current folder: silently writing there is a surprise.
        if isinstance(v, str) and not v.strip():
            raise ValueError("is empty, which would mean the current folder: give a folder")
        return v


def _env_name(field: str) -> str:
    return f"{ENV_PREFIX}{field.upper()}"


def _default_of(field: str) -> str:
    info = Settings.model_fields[field]
    default = info.get_default(call_default_factory=True)
    return "" if default is None or default == {} else f" (default {default})"


def describe_settings_error(err: Exception) -> str:
    """One line naming the environment variable, the value it had, what is allowed and the fix."""
    if isinstance(err, ValidationError):
        e = err.errors()[0]
        field = str(e["loc"][0]) if e["loc"] else "?"
        value = e.get("input")
        shown = f"={str(value)[:60]!r}" if isinstance(value, (str, int, float)) else ""
        msg = e["msg"].removeprefix("Value error, ")
        return f"{_env_name(field)}{shown}: {msg}; fix it or unset it{_default_of(field)}"
    # pydantic-settings' own error: a value meant to be JSON (GENBUNDLE_WEIGHTS) that does not parse.
    field = str(err).split('"')[1] if '"' in str(err) else "?"
    example = ' e.g. {"sd15": "/models/sd15"}' if field == "weights" else ""
    return f"{_env_name(field)}: not valid JSON ({err.__cause__ or err}): give a JSON object{example}, or unset it"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The settings, read once. A bad GENBUNDLE_* variable is a SettingError: one line, exit 2."""
    try:
        return Settings()
    except (ValidationError, SettingsError) as err:
        raise SettingError(describe_settings_error(err)) from None


def allow_large_jobs() -> None:
    """What --allow-large does: GENBUNDLE_ALLOW_LARGE=1 for this process, so the flows it runs see it too."""
    os.environ[_env_name("allow_large")] = "1"
    get_settings.cache_clear()
