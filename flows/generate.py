"""One flow per modality: what the GPU work pools run, and the dispatcher that starts them.

Each flow takes a list of jobs, so one model load serves them all (the batch flow hands a
modality all its briefs at once), and reports each job's outcome: one bad job fails alone.
The image flow also does every image-model step the bundle will ask of a cover (safety check,
caption, diffusion trace), so the CPU pool needs none of those models.

Everything travels through the work area (shared storage when the workers are on other
machines): the files, each run's report, and the dispatcher's note of where a job's output
lies. Generation keys hold the worker's device and dtype, which only the worker knows.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable

from prefect import flow, get_run_logger
from prefect.states import Failed
from pydantic import BaseModel

import tasks.generation
import tasks.models
from tasks.audio import generate_sound
from tasks.brief import Brief
from tasks.caption import caption_cover
from tasks.errors import UserError
from tasks.generation import Generated, Job
from tasks.image import generate_cover
from tasks.policy import check_jobs
from tasks.safety import check_cover_safety
from tasks.settings import get_settings
from tasks.trace import trace_diffusion
from tasks.video import generate_video
from tasks.workspace import RESULT_NAME, Step, StepResult, Workspace

# modality -> (deployment "flow/deployment" in deployments/prefect.yaml, step kind, task module)
DEPLOYMENTS = {
    "image": ("generate-cover/gpu-image", "cover", "tasks.image"),
    "sound": ("generate-sound/gpu-audio", "sound", "tasks.audio"),
    "video": ("generate-video/gpu-video", "video", "tasks.video"),
}


class JobOutcome(BaseModel):
    key: str | None = None  # the finished generation's step in the work area
    error: str | None = None  # why this job failed; the run's other jobs went on


class CoverFinish(BaseModel):
    """The image-model steps the bundle flow will run on a cover (see flows/bundle.py _finish_cover),
    with the same inputs, so that made on the image pool they are found finished there."""

    caption_prompt: str
    trace: bool
    safety: bool
    safety_action: str

    @classmethod
    def for_brief(cls, brief: Brief) -> CoverFinish:
        settings = get_settings()  # the bundle flow's settings decide, not the worker's
        return cls(
            caption_prompt=brief.cover.prompt,
            trace=brief.trace,
            safety=settings.safety == "on",
            safety_action=settings.safety_action,
        )


class RunReport(StepResult):
    """A generation run's outcome per job; its own result file is its only file."""

    outcomes: list[JobOutcome]


class Dispatched(StepResult):
    """The dispatcher's note of the step a worker made a job in; its own result file is its only file."""

    made: str


def _record(step: Step, model: type[StepResult], **fields) -> StepResult:
    return step.save(model(path=str(step.file(RESULT_NAME)), **fields))


def _report_step(workspace: Workspace, flow_run_id) -> Step:
    return workspace.step("runs", {"flow_run": str(flow_run_id)})


def _run_name(kind: str) -> Callable[[], str]:
    """Run names like cover-a-mystical-forest-with-ancient-seed0 (-and-2-more for a batch)."""

    def name() -> str:
        from prefect.runtime import flow_run

        jobs = [Job.model_validate(j) for j in flow_run.parameters.get("jobs") or []]
        if not jobs:
            return f"{kind}-no-jobs"
        slug = "-".join(re.findall(r"[a-z0-9]+", jobs[0].prompt.lower())[:5])
        more = f"-and-{len(jobs) - 1}-more" if len(jobs) > 1 else ""
        return f"{kind}-{slug}-seed{jobs[0].seed}{more}"

    return name


def _run_jobs(kind: str, jobs: list[Job], make: Callable[[int, Job], StepResult], workspace: Workspace):
    """Make each job, catching its failure; report the outcomes in the work area and return them.
    The run ends Failed, with the outcomes as its result, when any job failed."""
    from prefect.runtime import flow_run

    logger = get_run_logger()
    outcomes = []
    for i, job in enumerate(jobs):
        try:
            check_jobs([job])  # jobs may come straight to this flow, not through a bundle's preflight
            outcomes.append(JobOutcome(key=make(i, job).key))
        except Exception as err:  # noqa: BLE001 - one bad job must not cost the others theirs
            logger.error("%s job %d (seed %d) failed: %s: %s", kind, i + 1, job.seed, type(err).__name__, err)
            outcomes.append(JobOutcome(error=f"{type(err).__name__}: {err}"))
    _record(_report_step(workspace, flow_run.get_id()), RunReport, outcomes=outcomes)
    failed = sum(o.error is not None for o in outcomes)
    if failed:
        return Failed(message=f"{failed} of {len(jobs)} {kind} jobs failed", data=outcomes)
    return outcomes


def _finish_cover(cover: Generated, job: Job, finish: CoverFinish, workspace: Workspace) -> None:
    """The image-model steps after a cover, in the order and with the inputs the bundle flow uses."""
    published, flagged = cover, False
    if finish.safety:
        verdict = check_cover_safety(cover, job.profile, workspace, finish.safety_action)
        if verdict.applied == "dropped":
            return
        published, flagged = verdict, verdict.flagged
    caption_cover(published, finish.caption_prompt, job.profile, workspace)
    if finish.trace and not flagged:
        trace_diffusion(cover, job.profile, workspace, job.seed)


@flow(name="generate-cover", flow_run_name=_run_name("cover"), persist_result=True)
def generate_covers(jobs: list[Job], workspace: Workspace, finish: list[CoverFinish] | None = None) -> list[JobOutcome]:
    """Cover images for a list of jobs (Stable Diffusion); with `finish` (one per job), also each
    cover's safety check, caption and diffusion trace."""
    if finish is not None and len(finish) != len(jobs):
        raise ValueError(f"finish: {len(finish)} entries for {len(jobs)} jobs; give one per job")

    def make(i: int, job: Job) -> Generated:
        cover = generate_cover(job, workspace)
        if finish is not None:
            _finish_cover(cover, job, finish[i], workspace)
        return cover

    return _run_jobs("cover", jobs, make, workspace)


@flow(name="generate-sound", flow_run_name=_run_name("sound"), persist_result=True)
def generate_sounds(jobs: list[Job], workspace: Workspace) -> list[JobOutcome]:
    """Engine sounds for a list of jobs (AudioLDM)."""
    return _run_jobs("sound", jobs, lambda i, job: generate_sound(job, workspace), workspace)


@flow(name="generate-video", flow_run_name=_run_name("video"), persist_result=True)
def generate_videos(jobs: list[Job], workspace: Workspace) -> list[JobOutcome]:
    """Car clips for a list of jobs (Zeroscope)."""
    return _run_jobs("video", jobs, lambda i, job: generate_video(job, workspace), workspace)


# --- dispatching ---------------------------------------------------------------------------


class DispatchError(UserError):
    pass


def _dispatched_step(modality: str, job: Job, finish: CoverFinish | None, workspace: Workspace) -> Step:
    """Where the dispatcher notes a job's finished step: keyed like the step itself but without the
    runtime, which only the worker knows, and with the cover's finishing steps, which it also made."""
    _, kind, module = DEPLOYMENTS[modality]
    inputs = {"job": job.model_dump(mode="json"), "finish": finish and finish.model_dump()}
    return workspace.step(f"dispatched-{kind}", inputs, sys.modules[module], tasks.generation, tasks.models)


def _found(note_step: Step, kind: str) -> Generated | None:
    note = note_step.load(Dispatched)
    return Step(note_step.workspace, kind, note.made).load(Generated) if note else None


def dispatch_generations(
    jobs: dict[str, list[Job]], workspace: Workspace, finish: list[CoverFinish] | None = None
) -> dict[str, list[Generated | DispatchError]]:
    """Generate on the GPU work pools: one deployment run per modality for all its jobs, started
    concurrently, outputs read back from the work area (shared storage), not from the runs' results.

    Jobs an earlier dispatch finished are not sent again. Returns, per modality and in job order,
    each job's output or the error that says why it failed; `finish` (one per image job) asks the
    image pool for each cover's safety check, caption and trace too.
    """
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound

    workspace = workspace.model_copy(update={"mirror_required": True})  # the workers hand files over through it
    notes = {
        m: [
            _dispatched_step(m, job, finish[i] if finish and m == "image" else None, workspace)
            for i, job in enumerate(js)
        ]
        for m, js in jobs.items()
    }
    results: dict[str, list] = {m: [_found(note, DEPLOYMENTS[m][1]) for note in notes[m]] for m in jobs}
    todo = {m: [i for i, r in enumerate(results[m]) if r is None] for m in jobs}
    todo = {m: idx for m, idx in todo.items() if idx}

    def start(modality: str):
        params = {"jobs": [jobs[modality][i].model_dump(mode="json") for i in todo[modality]]}
        params["workspace"] = workspace.model_dump()
        if modality == "image" and finish:
            params["finish"] = [finish[i].model_dump() for i in todo[modality]]
        try:
            return run_deployment(DEPLOYMENTS[modality][0], parameters=params, timeout=0)
        except ObjectNotFound:
            raise DispatchError(
                f"no deployment {DEPLOYMENTS[modality][0]} on the Prefect server: create it with `genbundle deploy`"
            ) from None

    # Created one after another (a SQLite server answers concurrent writes with "database is locked"),
    # then awaited together: they run meanwhile, each on its own pool.
    created = {m: start(m) for m in todo}
    runs = {m: _wait(run) for m, run in created.items()}

    for modality, run in runs.items():
        name, kind, _ = DEPLOYMENTS[modality]
        outcomes = _outcomes(run, workspace, len(todo[modality]))
        for i, outcome in zip(todo[modality], outcomes, strict=True):
            made = outcome.key and Step(workspace, kind, outcome.key).load(Generated)
            if outcome.error:
                results[modality][i] = DispatchError(f"{name} run '{run.name}': {outcome.error}")
            elif not made:
                results[modality][i] = DispatchError(
                    f"{name} run '{run.name}' made {kind} {outcome.key} but it is not in the work area "
                    f"{workspace.remote or workspace.root}: do the workers share GENBUNDLE_STORAGE (or GENBUNDLE_OUT)?"
                )
            else:
                _record(notes[modality][i], Dispatched, made=outcome.key)
                results[modality][i] = made
    return results


def _wait(run, poll_seconds: float = 1.0):
    """The run once it has ended (run_deployment's own wait polls every 5 s)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        while not (run := client.read_flow_run(run.id)).state.is_final():
            time.sleep(poll_seconds)
    return run


def _outcomes(run, workspace: Workspace, count: int) -> list[JobOutcome]:
    """A finished run's report; when it has none (crashed, cancelled, storage not shared), every job failed."""
    report = _report_step(workspace, run.id).load(RunReport)
    if report is not None and len(report.outcomes) == count:
        return report.outcomes
    if run.state.is_completed():
        why = (
            f"completed but its report is not in the work area {workspace.remote or workspace.root}: do the "
            "workers share GENBUNDLE_STORAGE (or GENBUNDLE_OUT) and run the same genbundle version?"
        )
    else:
        why = f"ended {run.state.name}: {run.state.message}"
    return [JobOutcome(error=why)] * count


def raise_failures(made: dict[str, list[Generated | DispatchError]]) -> dict[str, list[Generated]]:
    """The outputs, or one DispatchError naming every job that failed."""
    errors = [str(r) for results in made.values() for r in results if isinstance(r, DispatchError)]
    if errors:
        raise DispatchError("; ".join(errors))
    return made
