"""The generation flow that every GPU work pool runs, and the dispatcher that starts it.

One flow serves every engine: it takes a list of jobs, so one model load serves them all (the
batch flow hands a role all its briefs at once), and reports each job's outcome: one bad job
fails alone. Jobs of one engine with the same settings go through the pipeline together, in its
batch dimension (tasks/generation.py: plan_batches, generate_batch), so a batch of briefs costs
fewer GPU passes. For a cover it also does every model step the bundle will ask of it (safety
check, caption, diffusion trace: tasks/cover_finishing.py), so the CPU pool needs none of those
models. Between batches it stops starting new ones when its run is being cancelled (a warm
worker runs it in its own process and cannot kill it).

Everything travels through the work area: the files, each run's report, and the dispatcher's
note of where a job's output lies. A worker keeps its own work area (its GENBUNDLE_OUT) and hands
files over through the s3:// mirror: no folder of one machine is ever named to another. Without
a mirror, the workers must share the dispatcher's folder (one machine, same GENBUNDLE_OUT).
Generation keys hold the worker's device and dtype, which only the worker knows.
"""

from __future__ import annotations

import re

from prefect import flow, get_run_logger
from prefect.states import Cancelled, Failed
from pydantic import BaseModel

import tasks.generation
from flows.dispatch_watch import Stalled, await_runs, cancel_runs
from tasks.cover_finishing import CoverFinish, finish_cover
from tasks.engines import ROLES, engine
from tasks.errors import UserError
from tasks.generation import Generated, generate_batch, generation_step, plan_batches
from tasks.jobs import Job
from tasks.policy import check_jobs
from tasks.workspace import RESULT_NAME, Step, StepResult, Workspace


def deployment_name(role: str) -> str:
    """The deployment (flow/deployment, deployments/prefect.yaml) that generates a role on its GPU pool."""
    return f"generate/{ROLES[role].pool}"


class JobOutcome(BaseModel):
    key: str | None = None  # the finished generation's step in the work area
    error: str | None = None  # why this job failed; the run's other jobs went on


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


def _run_name() -> str:
    from prefect.runtime import flow_run

    return run_name([Job.model_validate(j) for j in flow_run.parameters.get("jobs") or []])


def run_name(jobs: list[Job]) -> str:
    """Run names like cover-a-mystical-forest-with-ancient-seed0 (-and-2-more for a batch). The dispatcher
    names its runs so when it creates them: a run cancelled before it starts keeps that name in the UI."""
    if not jobs:
        return "generate-no-jobs"
    slug = "-".join(re.findall(r"[a-z0-9]+", jobs[0].prompt.lower())[:5])
    more = f"-and-{len(jobs) - 1}-more" if len(jobs) > 1 else ""
    return f"{jobs[0].role}-{slug}-seed{jobs[0].seed}{more}"


CANCELLED_ERROR = "not started: the generation run was cancelled"


class GenerationIncomplete(Exception):
    """The data of a generation run that ended Failed or Cancelled: what it raises when called, with
    every job's outcome in `outcomes`. (Prefect turns a failed state's data into the exception it
    raises: a plain list of outcomes became a TypeError, in the run's log on a process worker too.)"""

    def __init__(self, message: str, outcomes: list[JobOutcome]):
        super().__init__(message)
        self.outcomes = outcomes

    def __reduce__(self):  # the outcomes travel with it when Prefect stores the run's result
        return type(self), (str(self), self.outcomes)


def _cancelled() -> bool:
    """Whether this flow run is being cancelled, or was before it started (one API read).

    A run cancelled before it started is marked Cancelled (by its bundle run's cancel_runs, or by a
    process worker that found no process yet to stop), and its engine, starting just after, may still
    set it Running (Prefect lets a run leave Cancelled): then the state before the last Running is
    Cancelling or Cancelled."""
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    try:
        with get_client(sync_client=True) as client:
            states = sorted(client.read_flow_run_states(flow_run.get_id()), key=lambda s: s.timestamp)
    except Exception:  # noqa: BLE001 - an API hiccup must not cost the jobs made so far: go on
        return False
    if states and states[-1].is_running():
        states = states[:-1]  # running now: was it cancelled just before?
    return bool(states) and (states[-1].is_cancelling() or states[-1].is_cancelled())


@flow(name="generate", flow_run_name=_run_name)
def generate_jobs(
    jobs: list[Job], remote: str | None = None, finish: list[CoverFinish | None] | None = None
) -> list[JobOutcome]:
    """Generate a list of jobs, any engine, in this process (each pipeline loads once), those with the same
    engine and settings batched into one pipeline call (GENBUNDLE_GENERATION_BATCH at most), in this
    machine's work area, mirrored to `remote` (the dispatcher's s3:// work area) when given.
    `finish` (one entry per job, or none) asks for a cover's finishing model steps too.

    Each job's outcome goes into the run's report in the work area, and is its result. The run ends
    Failed when any job failed, Cancelled when it stopped early: then its result is a
    GenerationIncomplete error holding the outcomes."""
    from prefect.runtime import flow_run

    if finish is not None and len(finish) != len(jobs):
        raise ValueError(f"finish: {len(finish)} entries for {len(jobs)} jobs; give one per job")
    workspace = Workspace.for_worker(remote)
    logger = get_run_logger()
    outcomes: list[JobOutcome | None] = [None] * len(jobs)

    def failed(i: int, error: str) -> None:
        logger.error("%s job %d (seed %d) failed: %s", jobs[i].role, i + 1, jobs[i].seed, error)
        outcomes[i] = JobOutcome(error=error)

    checked = []
    for i, job in enumerate(jobs):
        try:
            check_jobs([job])  # jobs may come straight to this flow, not through a bundle's preflight
            checked.append(i)
        except Exception as err:  # noqa: BLE001 - one bad job must not cost the others theirs
            failed(i, f"{type(err).__name__}: {err}")

    def is_made(k: int) -> bool:
        return generation_step(jobs[checked[k]], workspace).load(Generated) is not None

    batches = [[checked[k] for k in batch] for batch in plan_batches([jobs[i] for i in checked], is_made)]
    for n, batch in enumerate(batches):
        # A warm worker cannot kill a cancelled run: it stops here, before each batch, instead.
        if _cancelled():
            for i in (i for rest in batches[n:] for i in rest):
                outcomes[i] = JobOutcome(error=CANCELLED_ERROR)
            logger.warning("run cancelled: %d of %d jobs not started", sum(map(len, batches[n:])), len(jobs))
            break
        for i, made in zip(batch, generate_batch([jobs[i] for i in batch], workspace), strict=True):
            if isinstance(made, str):
                failed(i, made)
                continue
            try:
                if finish is not None and finish[i] is not None:
                    finish_cover(made, finish[i], workspace)
                outcomes[i] = JobOutcome(key=made.key)
            except Exception as err:  # noqa: BLE001 - one bad job must not cost the others theirs
                failed(i, f"{type(err).__name__}: {err}")
    _record(_report_step(workspace, flow_run.get_id()), RunReport, outcomes=outcomes)
    if not_started := sum(o.error == CANCELLED_ERROR for o in outcomes):
        message = f"cancelled: {not_started} of {len(jobs)} generation jobs not started"
        return Cancelled(message=message, data=GenerationIncomplete(message, outcomes))
    if errors := sum(o.error is not None for o in outcomes):
        message = f"{errors} of {len(jobs)} generation jobs failed"
        return Failed(message=message, data=GenerationIncomplete(message, outcomes))
    return outcomes


# --- dispatching ---------------------------------------------------------------------------


class DispatchError(UserError):
    pass


HANDOVER_HINT = (
    "set GENBUNDLE_STORAGE to the same s3:// URL on every machine (workers hand files over through it), "
    "or, on one machine, give the workers the bundle flow's GENBUNDLE_OUT"
)


def _dispatched_step(job: Job, finish: CoverFinish | None, workspace: Workspace) -> Step:
    """Where the dispatcher notes a job's finished step: keyed like the step itself but without the
    runtime, which only the worker knows, and with the cover's finishing steps, which it also made."""
    inputs = {"job": job.model_dump(mode="json"), "finish": finish and finish.model_dump()}
    eng = engine(job.engine)
    code = (*eng.source_modules(), *eng.code, tasks.generation)
    return workspace.step(f"dispatched-{job.role}", inputs, *code)


def _found(note_step: Step, role: str) -> Generated | None:
    note = note_step.load(Dispatched)
    return Step(note_step.workspace, role, note.made).load(Generated) if note else None


def dispatch_generations(
    jobs: dict[str, list[Job]], workspace: Workspace, finish: list[CoverFinish] | None = None
) -> dict[str, list[Generated | DispatchError]]:
    """Generate on the GPU work pools: one deployment run per role for all its jobs, started
    concurrently, outputs read back from the work area (shared storage), not from the runs' results.

    Jobs an earlier dispatch finished are not sent again. Returns, per role and in job order,
    each job's output or the error that says why it failed; `finish` (one per cover job) asks the
    cover's pool for each cover's safety check, caption and trace too.
    """
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound

    workspace = workspace.model_copy(update={"mirror_required": True})  # the workers hand files over through it
    finishes = {m: [finish[i] if finish and m == "cover" else None for i in range(len(js))] for m, js in jobs.items()}
    notes = {
        m: [_dispatched_step(job, finishes[m][i], workspace) for i, job in enumerate(js)] for m, js in jobs.items()
    }
    results: dict[str, list] = {m: [_found(note, m) for note in notes[m]] for m in jobs}
    todo = {m: [i for i, r in enumerate(results[m]) if r is None] for m in jobs}
    todo = {m: idx for m, idx in todo.items() if idx}

    def start(role: str):
        params = {"jobs": [jobs[role][i].model_dump(mode="json") for i in todo[role]]}
        params["remote"] = workspace.remote  # never a local folder: the worker has its own
        wanted = [finishes[role][i] for i in todo[role]]
        if any(wanted):
            params["finish"] = [f and f.model_dump() for f in wanted]
        try:
            name = run_name([jobs[role][i] for i in todo[role]])
            return run_deployment(deployment_name(role), parameters=params, timeout=0, flow_run_name=name)
        except ObjectNotFound:
            raise DispatchError(
                f"no deployment {deployment_name(role)} on the Prefect server: create it with `genbundle deploy`"
            ) from None

    # Created one after another (a SQLite server answers concurrent writes with "database is locked"),
    # then awaited together: they run meanwhile, each on its own pool.
    created = {}
    try:
        for role in todo:
            created[role] = start(role)
    except BaseException:
        with get_client(sync_client=True) as client:
            cancel_runs(client, created.values())
        raise
    runs = await_runs(created, {role: ROLES[role].pool for role in created})

    for role, run in runs.items():
        name = deployment_name(role)
        if isinstance(run, Stalled):
            for i in todo[role]:
                results[role][i] = DispatchError(f"{name} {run}")
            continue
        outcomes = _outcomes(run, workspace, len(todo[role]))
        for i, outcome in zip(todo[role], outcomes, strict=True):
            made = outcome.key and Step(workspace, role, outcome.key).load(Generated)
            if outcome.error:
                results[role][i] = DispatchError(f"{name} run '{run.name}': {outcome.error}")
            elif not made:
                results[role][i] = DispatchError(
                    f"{name} run '{run.name}' made {role} {outcome.key} but it is not in the work area "
                    f"{workspace.remote or workspace.root}: {HANDOVER_HINT}"
                )
            else:
                _record(notes[role][i], Dispatched, made=outcome.key)
                results[role][i] = made.model_copy(update={"reused": False})  # made for this run, read back
    return results


def _outcomes(run, workspace: Workspace, count: int) -> list[JobOutcome]:
    """A finished run's report; when it has none (crashed, cancelled, storage not shared), every job failed."""
    report = _report_step(workspace, run.id).load(RunReport)
    if report is not None and len(report.outcomes) == count:
        return report.outcomes
    if run.state.is_completed():
        why = (
            f"completed but its report is not in the work area {workspace.remote or workspace.root}: "
            f"{HANDOVER_HINT}, and run the same genbundle version everywhere"
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
