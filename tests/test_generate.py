"""The generation flow the GPU pools run: per-job outcomes, readable run names, and cover jobs
that leave the bundle flow no image-model work."""

import pickle
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client

from flows.bundle import asset_bundle
from flows.generate import GenerationIncomplete, generate_jobs
from tasks import generation
from tasks.brief import parse_brief
from tasks.cover_finishing import CoverFinish
from tasks.generation import Generated
from tasks.jobs import resolve_job
from tasks.manifest import Manifest
from tasks.prompts import expand_prompts
from tasks.workspace import Step, Workspace

BRIEF = {"title": "Made Elsewhere", "author": "W. Orker", "seed": 7}


def test_a_bad_job_fails_alone_and_the_bundle_reuses_the_cover_steps(prefect_api, tmp_path, settings_env):
    settings_env(GENBUNDLE_OUT=str(tmp_path))  # the worker's own folder, here also the bundle flow's
    brief = parse_brief(BRIEF)
    workspace = Workspace.for_storage(str(tmp_path), None)
    good = resolve_job(brief, "cover", expand_prompts.fn(brief)["cover"])
    bad = good.model_copy(update={"scheduler": "no-such-scheduler"})  # the pipeline call raises for real
    finish = [CoverFinish.for_brief(brief, with_title=False)] * 2

    state = generate_jobs([bad, good], None, finish, return_state=True)
    assert state.is_failed() and state.message == "1 of 2 generation jobs failed"
    failed, made = state.result(raise_on_failure=False).outcomes
    # Called (as a process worker's engine calls it), the run raises that error, outcomes and all,
    # also once pickled into the run's stored result.
    with pytest.raises(GenerationIncomplete, match="^1 of 2 generation jobs failed$") as raised:
        generate_jobs([bad, good], None, finish)
    assert pickle.loads(pickle.dumps(raised.value)).outcomes == [failed, made]
    assert failed.key is None and "unknown scheduler 'no-such-scheduler'" in failed.error
    assert made.error is None and Step(workspace, "cover", made.key).load(Generated) is not None
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(state.state_details.flow_run_id)
    assert run.name.startswith("cover-") and run.name.endswith("-seed7-and-1-more")

    # Safety check, caption and trace were made by the cover flow: the bundle flow finds them.
    steps = {kind: next((Path(workspace.root) / kind).glob("*/result.json")) for kind in ("safety", "caption", "trace")}
    written = {kind: path.stat().st_mtime_ns for kind, path in steps.items()}
    before = generation.pipeline_calls.copy()
    location = Path(asset_bundle(brief, out=str(tmp_path)))
    assert dict(generation.pipeline_calls - before) == {"sound": 1, "video": 1}  # no cover made again
    assert {kind: path.stat().st_mtime_ns for kind, path in steps.items()} == written
    record = Manifest.read(location / "bundle.json").steps
    assert {role: record[role] for role in ("cover", "trace_forward", "trace_reverse", "noise_schedule")} == {
        "cover": "reused", "trace_forward": "reused", "trace_reverse": "reused", "noise_schedule": "reused",
    }  # fmt: skip


def test_every_roles_pool_has_a_deployment_of_the_one_generation_flow():
    import yaml

    from flows.generate import deployment_name
    from tasks.engines import ROLES

    spec = yaml.safe_load((Path(__file__).parents[1] / "deployments" / "prefect.yaml").read_text())
    generation = {d["name"]: d for d in spec["deployments"] if d["entrypoint"].startswith("flows/generate.py")}
    assert set(generation) == {role.pool for role in ROLES.values()}
    for role in ROLES:
        deployment = generation[deployment_name(role).split("/")[1]]
        assert deployment["entrypoint"] == "flows/generate.py:generate_jobs"
        assert deployment["work_pool"]["name"] == ROLES[role].pool


def test_a_run_cancelled_before_its_engine_started_generates_nothing(prefect_api, tmp_path, settings_env):
    """A process worker that finds no process to stop marks a cancelled run Cancelled; the run's process,
    starting just after, sets it Running (Prefect lets a run leave Cancelled) and must not generate."""
    from prefect.flow_engine import run_flow
    from prefect.states import Cancelled, Cancelling, Pending

    settings_env(GENBUNDLE_OUT=str(tmp_path))
    brief = parse_brief(BRIEF)
    job = resolve_job(brief, "cover", expand_prompts.fn(brief)["cover"])
    with get_client(sync_client=True) as client:
        run = client.create_flow_run(generate_jobs, parameters={"jobs": [job.model_dump(mode="json")]}, state=Pending())
        client.set_flow_run_state(run.id, Cancelling(), force=True)  # the bundle run was cancelled
        client.set_flow_run_state(run.id, Cancelled(), force=True)  # by the worker: no process to stop yet
        run = client.read_flow_run(run.id)

    before = generation.pipeline_calls.copy()
    state = run_flow(generate_jobs, flow_run=run, return_type="state")  # as the run's own process does
    assert state.is_cancelled() and state.message == "cancelled: 1 of 1 generation jobs not started"
    assert generation.pipeline_calls == before


def test_queued_generation_runs_show_what_they_make_and_cancelling_them_ends_the_wait(prefect_api, tmp_path):
    """No worker polls these pools: the runs wait, named for their jobs (as the UI lists them while they
    wait), and cancelling them, as a cancelled bundle run does, ends the dispatcher's wait at once."""
    import threading

    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.exceptions import ObjectAlreadyExists

    from flows.dispatch_watch import cancel_runs
    from flows.generate import DispatchError, dispatch_generations, run_name
    from tasks.engines import ROLES

    brief = parse_brief(BRIEF | {"seed": 8})
    prompts = expand_prompts.fn(brief)
    jobs = {role: [resolve_job(brief, role, prompts[role])] for role in ("cover", "sound")}
    with get_client(sync_client=True) as client:
        flow_id = client.create_flow(generate_jobs)
        deployments = []
        for role in jobs:
            try:
                client.create_work_pool(WorkPoolCreate(name=ROLES[role].pool, type="process"))
            except ObjectAlreadyExists:
                pass
            deployments.append(client.create_deployment(flow_id, ROLES[role].pool, work_pool_name=ROLES[role].pool))
        made, queued = {}, []
        dispatching = threading.Thread(
            target=lambda: made.update(dispatch_generations(jobs, Workspace.for_storage(str(tmp_path), None)))
        )
        dispatching.start()
        try:
            for _ in range(100):
                queued = client.read_flow_runs(
                    deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=deployments))
                )
                if len(queued) == 2:
                    break
                dispatching.join(0.2)
        finally:
            cancel_runs(client, queued)  # as a cancelled bundle run does
            dispatching.join(30)
            for deployment in deployments:  # this session's other tests expect no generation deployments
                client.delete_deployment(deployment)
    assert sorted(r.name for r in queued) == sorted(run_name(js) for js in jobs.values())
    assert {r.state.type.value for r in queued} == {"SCHEDULED"}
    assert not dispatching.is_alive()
    for role in jobs:
        (error,) = made[role]
        assert isinstance(error, DispatchError) and "ended Cancelled" in str(error)
