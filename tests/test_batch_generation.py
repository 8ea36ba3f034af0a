"""Jobs of one engine with the same settings go through one pipeline call (the batch dimension): each
job keeps its own seed's noise and its own work-area step, record and diffusion trace."""

from __future__ import annotations

import logging

import numpy as np
import torch
from PIL import Image

from flows.generate import CANCELLED_ERROR, generate_jobs
from tasks import generation, progress
from tasks.brief import parse_brief
from tasks.engines import engine
from tasks.generation import Generated, generate, generate_batch
from tasks.jobs import resolve_job
from tasks.prompts import expand_prompts
from tasks.workspace import Step, Workspace

SIZE = {"width": 64, "height": 64}  # the tiny pipeline's smallest cover: a few tenths of a second a call


def _cover(seed: int, **cover):
    brief = parse_brief({"title": "Batched", "author": "B. Atch", "seed": seed, "cover": SIZE | cover})
    return resolve_job(brief, "cover", expand_prompts.fn(brief)["cover"])


def _made(workspace: Workspace, outcomes) -> list[Generated]:
    return [Step(workspace, "cover", o.key).load(Generated) for o in outcomes]


def _pixels(path: str) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im, dtype=np.int16)


def test_jobs_with_the_same_settings_share_one_call_and_match_their_single_runs(prefect_api, tmp_path, settings_env):
    settings_env(GENBUNDLE_OUT=str(tmp_path / "batched"))
    jobs = [_cover(seed) for seed in (11, 12, 13)]
    jobs[1] = jobs[1].model_copy(update={"prompt": "a lighthouse in a storm"})  # prompts differ per job too
    before = generation.pipeline_calls.copy()
    outcomes = generate_jobs(jobs)
    assert dict(generation.pipeline_calls - before) == {"cover": 1}  # three jobs, one pipeline call
    batched = _made(Workspace.for_storage(str(tmp_path / "batched"), None), outcomes)
    assert [m.engine.batch for m in batched] == [3, 3, 3]
    assert [m.engine.seed for m in batched] == [11, 12, 13]
    assert all(m.generate_seconds == m.engine.energy.seconds for m in batched)  # each its share of the call

    for job, made in zip(jobs, batched, strict=True):
        single = generate.fn(job, Workspace(root=str(tmp_path / f"single-{job.seed}")))
        assert single.engine.batch == 1
        # Each item's noise is its own seed's; the batched matmuls may round the last bits differently,
        # which moves a pixel by one step at most (measured: a few pixels of 12288 values, by 1).
        difference = np.abs(_pixels(made.path) - _pixels(single.path))
        assert difference.max() <= 1 and difference.mean() < 0.01
        # Its own diffusion trace: the latents of its own item of the batch, not the first one's.
        mine, alone = (torch.load(g.files["reverse_trace"])["latents"] for g in (made, single))
        assert len(mine) == len(alone) and all(torch.allclose(a, b, atol=1e-3) for a, b in zip(mine, alone))
    assert np.abs(_pixels(batched[0].path) - _pixels(batched[2].path)).mean() > 5  # and the seeds differ

    before = generation.pipeline_calls.copy()
    again = generate_jobs(jobs)  # a re-run finds every job's step: nothing is generated
    assert dict(generation.pipeline_calls - before) == {}
    assert [o.key for o in again] == [o.key for o in outcomes]


def test_batches_are_grouped_by_settings_and_capped_and_a_bad_job_fails_alone(prefect_api, tmp_path, settings_env):
    settings_env(GENBUNDLE_OUT=str(tmp_path), GENBUNDLE_GENERATION_BATCH="2")
    a, c, d = (_cover(seed) for seed in (21, 23, 24))
    wide = _cover(22, width=96)  # other settings: its own call
    bad = _cover(25).model_copy(update={"scheduler": "no-such-scheduler"})  # the pipeline call raises for real
    before = generation.pipeline_calls.copy()
    state = generate_jobs([a, wide, bad, c, d], return_state=True)
    assert dict(generation.pipeline_calls - before) == {"cover": 3}  # [a, c] (at most 2), [wide], [d]
    assert state.is_failed() and state.message == "1 of 5 generation jobs failed"
    outcomes = state.result(raise_on_failure=False).outcomes
    assert "unknown scheduler 'no-such-scheduler'" in outcomes[2].error
    made = _made(Workspace.for_storage(str(tmp_path), None), [o for i, o in enumerate(outcomes) if i != 2])
    assert [(m.engine.seed, m.engine.batch, m.engine.params["width"]) for m in made] == [
        (21, 2, 64), (22, 1, 96), (23, 2, 64), (24, 1, 64),
    ]  # fmt: skip


def test_jobs_made_before_take_no_place_in_a_batch(prefect_api, tmp_path, settings_env):
    """A re-run of four jobs, two made by an earlier run: the other two go through one call, not two."""
    settings_env(GENBUNDLE_OUT=str(tmp_path), GENBUNDLE_GENERATION_BATCH="2")
    jobs = [_cover(seed) for seed in (41, 42, 43, 44)]
    generate_jobs([jobs[0], jobs[2]])
    before = generation.pipeline_calls.copy()
    outcomes = generate_jobs(jobs)
    assert dict(generation.pipeline_calls - before) == {"cover": 1}  # [41 made, 42, 43 made, 44]: 42 and 44 together
    made = _made(Workspace.for_storage(str(tmp_path), None), outcomes)
    assert [(m.engine.seed, m.engine.batch) for m in made] == [(41, 2), (42, 2), (43, 2), (44, 2)]


def test_a_batch_whose_call_fails_is_made_one_by_one(monkeypatch, workspace, caplog):
    """Out of GPU memory with three jobs in one call (faked: no GPU here), each is made alone instead."""
    eng = engine("sd15")
    real = eng.call_batch

    def call_batch(pipe, jobs, generators, on_step):
        if len(jobs) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real(pipe, jobs, generators, on_step)

    monkeypatch.setattr(eng, "call_batch", call_batch)
    jobs = [_cover(seed) for seed in (31, 32, 33)]
    before = generation.pipeline_calls.copy()
    with caplog.at_level(logging.WARNING, logger="tasks.generation"):
        results = generate_batch.fn(jobs, workspace)
    assert dict(generation.pipeline_calls - before) == {"cover": 3}
    assert [r.engine.batch for r in results] == [1, 1, 1]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "3 sd15 jobs in one call failed (OutOfGpuMemory" in warnings[0]
    assert warnings[0].endswith("making them one by one")


def test_a_run_being_cancelled_starts_no_new_batch(prefect_api, tmp_path, settings_env):
    """A warm worker cannot kill a run: the flow itself stops between batches once it is Cancelling."""
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run
    from prefect.states import Cancelling

    settings_env(GENBUNDLE_OUT=str(tmp_path))
    jobs = [_cover(41), _cover(42), _cover(43, width=96)]  # two batches: [41, 42] and [43]

    def cancel_after_the_first_batch(stage: progress.Stage) -> None:
        if stage.name == "cover" and stage.status == "done":
            with get_client(sync_client=True) as client:  # as `prefect flow-run cancel` does
                client.set_flow_run_state(flow_run.get_id(), Cancelling(), force=True)

    progress.add_listener(cancel_after_the_first_batch)
    try:
        before = generation.pipeline_calls.copy()
        state = generate_jobs(jobs, return_state=True)
    finally:
        progress.remove_listener(cancel_after_the_first_batch)
    assert dict(generation.pipeline_calls - before) == {"cover": 1}
    assert state.is_cancelled() and state.message == "cancelled: 1 of 3 generation jobs not started"
    outcomes = state.result(raise_on_failure=False).outcomes
    assert [o.error for o in outcomes] == [None, None, CANCELLED_ERROR]
    assert all(m is not None for m in _made(Workspace.for_storage(str(tmp_path), None), outcomes[:2]))
