"""The generation flow the GPU pools run: per-job outcomes, readable run names, and cover jobs
that leave the bundle flow no image-model work."""

from pathlib import Path

from prefect.client.orchestration import get_client

from flows.bundle import asset_bundle
from flows.generate import generate_jobs
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
    failed, made = state.result(raise_on_failure=False)
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
