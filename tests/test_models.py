import pytest

from tasks import models
from tasks.engines import ROLES, default_engine
from tasks.engines.schedulers import SCHEDULERS, use_scheduler
from tasks.models import ModelNotAvailable, load_pipeline, model_source

SD15 = default_engine("cover").name


@pytest.mark.parametrize("role", ROLES)
def test_tiny_pipelines_are_saved_and_loaded_back_with_from_pretrained(role):
    engine = default_engine(role)
    source = model_source(engine.name, "tiny")
    assert (models.Path(source) / "model_index.json").is_file()
    loaded = load_pipeline(engine.name, "tiny")
    assert type(loaded.pipe).__name__ == engine.pipeline_class
    assert loaded.source == source
    assert all(not m.training for m in loaded.pipe.components.values() if hasattr(m, "training"))


def test_the_tiny_captioner_is_saved_and_loaded_back_with_from_pretrained():
    from tasks.caption import load_captioner

    source = model_source("caption", "tiny")
    assert (models.Path(source) / "config.json").is_file()
    model, processor, _ = load_captioner("tiny")
    assert (type(model).__name__, type(processor).__name__) == ("BlipForConditionalGeneration", "BlipProcessor")
    assert model.name_or_path == source and not model.training
    assert load_captioner("tiny")[0] is model  # loaded once per process


def test_the_tiny_safety_checker_is_saved_and_loaded_back_in_the_sd_folder_layout():
    from tasks.safety import load_safety_checker, safety_checker_folder

    root = safety_checker_folder("tiny")
    assert root == model_source("safety", "tiny")
    assert (models.Path(root) / "safety_checker" / "config.json").is_file()
    assert (models.Path(root) / "feature_extractor" / "preprocessor_config.json").is_file()
    checker, _, _ = load_safety_checker("tiny")
    assert type(checker).__name__ == "StableDiffusionSafetyChecker"
    assert checker.config._name_or_path == root and not checker.training


def test_a_loaded_pipeline_is_reused():
    assert load_pipeline(SD15, "tiny") is load_pipeline(SD15, "tiny")


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_schedulers_are_selectable(name):
    pipe = load_pipeline(SD15, "tiny").pipe
    use_scheduler(pipe, name)
    assert type(pipe.scheduler).__name__ == SCHEDULERS[name][0]
    # The model's noise schedule survives the swap.
    assert pipe.scheduler.config.beta_schedule == "scaled_linear"
    use_scheduler(pipe, "dpm++")


def test_unknown_scheduler():
    with pytest.raises(ValueError, match="choose one of"):
        use_scheduler(load_pipeline(SD15, "tiny").pipe, "heun")


def test_full_profile_without_weights_says_how_to_fetch_them():
    with pytest.raises(ModelNotAvailable) as err:
        model_source(SD15, "full")
    message = str(err.value)
    assert default_engine("cover").weights in message
    assert "genbundle models pull --models full" in message and f"GENBUNDLE_WEIGHTS['{SD15}']" in message


def test_full_profile_loads_a_local_folder_through_the_same_path(settings_env):
    """Any diffusers folder works as full weights: here the tiny one, named in GENBUNDLE_WEIGHTS."""
    import json

    sound = default_engine("sound").name
    settings_env(GENBUNDLE_WEIGHTS=json.dumps({sound: model_source(sound, "tiny")}))
    assert model_source(sound, "full") == model_source(sound, "tiny")
    with pytest.raises(ModelNotAvailable, match=f"cover engine {SD15}"):
        model_source(SD15, "full")


LOAD_IN_THREADS = """
import threading
import tasks.caption as caption, tasks.models as models, tasks.safety as safety
from tasks.engines import ROLES, default_engine
engines = [default_engine(role).name for role in ROLES]
for m in (*engines, "caption", "safety"):
    models.model_source(m, "tiny")
errors = []
def run(load):
    try:
        load()
    except Exception as err:
        errors.append(repr(err))
loads = [lambda m=m: models.load_pipeline(m, "tiny") for m in engines]
loads += [lambda: caption.load_captioner("tiny"), lambda: safety.load_safety_checker("tiny")]
threads = [threading.Thread(target=run, args=(load,)) for load in loads]
[t.start() for t in threads]
[t.join() for t in threads]
modules = [m for m, _, _ in caption._loaded.values()] + [c for c, _, _ in safety._loaded.values()]
modules += [c for lp in models._loaded.values() for c in lp.pipe.components.values() if hasattr(c, "parameters")]
meta = sum(p.is_meta for m in modules for p in m.parameters())
print(errors)
print(len(errors), meta, len(modules))
"""


@pytest.mark.slow
def test_models_load_safely_from_concurrent_threads():
    """Loads in several threads at once (as the flow's tasks do) must leave no weight unmaterialised."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = os.environ | {"PYTHONPATH": str(Path(__file__).parents[1])}
    result = subprocess.run(
        [sys.executable, "-c", LOAD_IN_THREADS], check=False, capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    errors, meta, modules = map(int, result.stdout.split()[-3:])
    assert (errors, meta) == (0, 0) and modules >= 10, result.stdout[-2000:]
