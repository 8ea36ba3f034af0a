"""The engine registry: every engine declares itself completely, a new engine is one file (here: this
test file), and `genbundle engines` lists what is registered."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import Field, field_validator

from tasks.engines import (
    ROLES,
    Engine,
    Licence,
    Params,
    PromptTemplate,
    all_engines,
    default_engine,
    multiple_of,
    register,
)
from tasks.engines.schedulers import SCHEDULERS

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", sorted(all_engines()))
def test_every_engine_declares_itself_completely(name):
    engine = all_engines()[name]
    assert engine.role in ROLES and engine.pipeline_class and engine.weights and engine.title
    assert isinstance(engine.licence, Licence) and engine.licence.url.startswith("https://")
    assert set(engine.schedulers) <= set(SCHEDULERS)
    assert engine.prompt.terms and engine.prompt.negative
    for profile in ("full", "tiny"):  # the defaults are valid settings of the engine itself
        resolved = engine.resolve({}, profile)
        assert resolved.scheduler in engine.schedulers and resolved.steps >= 1


def test_each_role_has_exactly_one_default_engine():
    for role in ROLES:
        assert sum(e.default for e in all_engines().values() if e.role == role) == 1, role
        assert default_engine(role).role == role


def test_the_seed_engines_licences_say_whether_commercial_use_is_allowed():
    licences = {role: default_engine(role).licence for role in ROLES}
    assert licences["cover"].commercial is True  # CreativeML OpenRAIL-M, within its use restrictions
    assert (licences["sound"].name, licences["sound"].commercial) == ("CC-BY-NC-SA-4.0", False)
    assert (licences["video"].name, licences["video"].commercial) == ("CC-BY-NC-4.0", False)


def test_genbundle_engines_lists_the_registry_as_json_for_scripts():
    result = subprocess.run(
        [sys.executable, "-m", "flows.cli", "engines", "--json"], capture_output=True, text=True, cwd=REPO, check=True
    )
    listed = {e["name"]: e for e in json.loads(result.stdout)}
    assert set(listed) == set(all_engines())
    for name, engine in all_engines().items():
        entry = listed[name]
        assert (entry["role"], entry["pipeline_class"], entry["weights"]) == (
            engine.role,
            engine.pipeline_class,
            engine.weights,
        )
        assert (entry["licence"], entry["commercial_use"]) == (engine.licence.name, engine.licence.commercial)
        assert entry["tiny_build"] is True and entry["default_steps"] == engine.defaults["full"]["steps"]
    table = subprocess.run(
        [sys.executable, "-m", "flows.cli", "engines"], capture_output=True, text=True, cwd=REPO, check=False
    )
    assert table.returncode == 0 and all(name in table.stdout for name in all_engines())


# --- a toy engine, from this file alone ------------------------------------------------------


class ToyParams(Params):
    scheduler: str = Field(pattern="^(ddim|euler)$")
    width: int = Field(ge=32, le=256)
    height: int = Field(ge=32, le=256)

    _sides = field_validator("width", "height")(multiple_of(32))


class ToyCover(Engine):
    """A second cover engine: Stable Diffusion's pipeline class with a smaller UNet, its own sizes,
    schedulers, prompt template and licence, and no diffusion trace."""

    name = "toy-cover"
    role = "cover"
    title = "Toy cover engine"
    pipeline_class = "StableDiffusionPipeline"
    weights = "example/toy-cover"
    licence = Licence("Apache-2.0", "https://www.apache.org/licenses/LICENSE-2.0", commercial=True)
    params = ToyParams
    defaults = {
        "full": {"steps": 8, "guidance": 5.0, "scheduler": "euler", "width": 256, "height": 256},
        "tiny": {"steps": 3, "guidance": 5.0, "scheduler": "euler", "width": 96, "height": 160},
    }
    schedulers = ("ddim", "euler")
    prompt = PromptTemplate(terms=("toy style",), negative="blurry")
    load_kwargs = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}

    def build_tiny(self):
        from diffusers import StableDiffusionPipeline, UNet2DConditionModel

        from tasks import tiny_models as tiny

        tokenizer = tiny.clip_tokenizer()
        unet = UNet2DConditionModel(
            block_out_channels=(8, 16), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=32, attention_head_dim=4, norm_num_groups=4,
        )  # fmt: skip
        return StableDiffusionPipeline(
            vae=tiny.image_vae(), text_encoder=tiny.clip_text_encoder(len(tokenizer)), tokenizer=tokenizer, unet=unet,
            scheduler=tiny.scheduler(), safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )  # fmt: skip

    def call(self, pipe, job, generator, on_step):
        return pipe(
            prompt=job.prompt, negative_prompt=job.negative_prompt, width=job.params["width"],
            height=job.params["height"], num_inference_steps=job.steps, guidance_scale=job.guidance,
            generator=generator, callback_on_step_end=lambda pipe, i, t, tensors: on_step(i) or tensors,
        ).images[0]  # fmt: skip

    def write(self, output, path, job, disclosure):
        from tasks.disclosure import png_info

        output.save(path, format="PNG", pnginfo=png_info(disclosure))
        return {}


@pytest.fixture
def toy_engine():
    from tasks import engines

    engine = register(ToyCover())
    yield engine
    engines._registered.pop(engine.name)


def test_a_brief_names_the_toy_engine_and_its_own_constraints_apply(toy_engine):
    from tasks.brief import BriefError, parse_brief

    brief = parse_brief({"title": "Toy", "author": "T", "cover": {"engine": "toy-cover"}})
    assert brief.engine_for("cover") is toy_engine
    with pytest.raises(BriefError, match=r"cover\.width: must be a multiple of 32 \(got 100; try 96\)"):
        parse_brief({"title": "Toy", "author": "T", "cover": {"engine": "toy-cover", "width": 100}})
    with pytest.raises(BriefError, match=r"cover\.scheduler: String should match pattern"):
        parse_brief({"title": "Toy", "author": "T", "cover": {"engine": "toy-cover", "scheduler": "pndm"}})


def test_a_bundle_made_with_an_engine_registered_from_a_test_file(prefect_api, toy_engine, tmp_path):
    from PIL import Image

    from flows.bundle import asset_bundle
    from tasks.brief import parse_brief
    from tasks.manifest import Manifest

    brief = parse_brief({"title": "Toy", "author": "T", "cover": {"engine": "toy-cover"}})
    location = Path(asset_bundle(brief, out=str(tmp_path)))
    manifest = Manifest.read(location / "bundle.json")
    run = manifest.engines["cover"]
    assert (run.name, run.licence, run.scheduler, run.steps) == ("toy-cover", "Apache-2.0", "euler", 3)
    assert manifest.prompts["cover"].prompt.endswith("toy style")
    with Image.open(location / "cover.png") as cover:
        assert cover.size == (96, 160)
    names = {a.name for a in manifest.assets}
    assert "cover_titled.png" in names and "trace_forward.png" not in names  # not traceable: no trace
    assert {lic.engine for lic in next(a for a in manifest.assets if a.name == "cover.png").licences} == {"toy-cover"}
