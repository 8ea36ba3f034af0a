"""A generation that runs out of GPU memory: retried once under the next lighter memory policy, then one line.

There is no GPU here, so only the device's facts are faked: placement reports the policy it is asked for
(`gpu` when none is forced, as `auto` picks on a large GPU) and the engine's call raises torch's
out-of-memory error. The retry, the reload and the record are the real code, on the tiny cover pipeline.
"""

from __future__ import annotations

import logging

import pytest
import torch

from tasks import acceleration, models
from tasks.brief import parse_brief
from tasks.engines import engine
from tasks.generation import OutOfGpuMemory, generate
from tasks.jobs import resolve_job
from tasks.prompts import expand_prompts


def _cover_job():
    brief = parse_brief({"title": "T", "author": "A", "cover": {"width": 64, "height": 64}})
    return resolve_job(brief, "cover", expand_prompts.fn(brief)["cover"])


def _fake_gpu(monkeypatch, placed_as: str) -> list[str | None]:
    """Placement on a pretend GPU: records the policy each load forced (None: the setting's choice) and
    reports it, or `placed_as` when none was forced. The pipeline cache is this test's own."""
    forced: list[str | None] = []

    def place(pipe, eng, device, policy=None):
        forced.append(policy)
        return policy or placed_as

    monkeypatch.setattr(acceleration, "place", place)
    monkeypatch.setattr(models, "_loaded", {})  # pretend placements stay out of other tests' pipelines
    return forced


def _out_of_memory(monkeypatch, engine_name: str, times: int) -> list[object]:
    """The engine's call raises torch.OutOfMemoryError the first `times` calls; returns the pipelines called."""
    eng = engine(engine_name)
    real_call = eng.call
    pipes = []

    def call(pipe, job, generator, on_step):
        pipes.append(pipe)
        if len(pipes) <= times:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real_call(pipe, job, generator, on_step)

    monkeypatch.setattr(eng, "call", call)
    return pipes


def test_out_of_memory_is_retried_once_under_the_next_lighter_policy(monkeypatch, workspace, caplog):
    job = _cover_job()
    forced = _fake_gpu(monkeypatch, placed_as="gpu")
    pipes = _out_of_memory(monkeypatch, job.engine, times=1)
    with caplog.at_level(logging.WARNING, logger="tasks.generation"):
        result = generate.fn(job, workspace)
    assert forced == [None, "model_offload"]  # loaded as the setting chose, then reloaded one policy lighter
    assert pipes[0] is not pipes[1]  # the retry ran on the reloaded pipeline, not the failed placement
    assert result.engine.memory == "model_offload"  # the manifest records where it actually ran
    assert result.path.endswith("cover.png")
    assert "ran out of GPU memory under gpu; retrying once under model_offload" in caplog.text
    (cached,) = models._loaded.values()
    assert (cached.pipe, cached.memory) == (pipes[1], "model_offload")  # later jobs start from what worked


def test_a_second_out_of_memory_fails_with_one_line_naming_the_fix(monkeypatch, workspace):
    job = _cover_job()
    forced = _fake_gpu(monkeypatch, placed_as="gpu")
    _out_of_memory(monkeypatch, job.engine, times=2)
    with pytest.raises(OutOfGpuMemory) as failed:
        generate.fn(job, workspace)
    message = str(failed.value)
    assert forced == [None, "model_offload"]  # one retry, not a walk down every policy
    assert "\n" not in message
    assert message.startswith("cover engine sd15 ran out of GPU memory under gpu then model_offload: ")
    assert "lower its size, frames or steps" in message and "GENBUNDLE_MEMORY=sequential_offload" in message


def test_out_of_memory_under_the_lightest_policy_fails_at_once(monkeypatch, workspace):
    job = _cover_job()
    forced = _fake_gpu(monkeypatch, placed_as="sequential_offload")
    _out_of_memory(monkeypatch, job.engine, times=1)
    with pytest.raises(OutOfGpuMemory, match="under sequential_offload: lower its size") as failed:
        generate.fn(job, workspace)
    assert forced == [None]  # nothing lighter to reload under
    assert "GENBUNDLE_MEMORY" not in str(failed.value)  # the setting is already as light as it goes
