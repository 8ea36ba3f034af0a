"""A work-pool worker that runs its flow runs inside its own process, so models stay loaded.

Why: a process worker starts a fresh Python process for every flow run, so every generation
re-imports torch and reloads its pipelines (tasks/models.py keeps them for the life of a process).
A GPU machine runs one warm worker per GPU instead: `genbundle worker --pool gpu-image --slots N`.

How: `WarmWorker` is a process worker (type "process": it polls the same pools, beside plain
process workers) whose `run` does not start a subprocess. It loads the deployment's flow once per
entrypoint (`load_flow_from_flow_run`, which also runs the deployment's pull steps), then runs each
flow run with Prefect's engine (`run_flow`) in a thread of this process. The runs are ordinary flow
runs: states, logs and heartbeats reach the server as they do from a subprocess. The worker's
limit is its GPU slots: how many runs it executes at once (default 1).

Environment: a process worker gives each run's subprocess its own environment updated by the job
`env` (pool defaults, then the deployment's and the run's job variables). Runs here share the
worker's process, so the worker applies its pool's `env` defaults once, to its own environment,
when it starts (`apply_pool_env`: read from the API; the pool's values win over the worker's own, as
they would in a subprocess; the log names the variables, never their values). PREFECT_* variables
are not applied (Prefect's settings are read when the process starts): set them where the worker
starts. What it cannot apply: a deployment's or run's `env`, or a pool change made after it started
(runs share one environment): a run whose env differs names those variables in a warning.

What a subprocess would have had and a run here does not, beside that: being killed on
cancellation (a run not started yet is not run; a running one finishes its work, then is marked
Cancelled; the worker never kills itself). A worker stopped with a run in flight marks it
Crashed. Flow-run heartbeats are on, every HEARTBEAT_SECONDS unless
PREFECT_FLOWS_HEARTBEAT_FREQUENCY is set: the dispatcher tells a dead worker by them.

Latency: besides polling every PREFECT_WORKER_QUERY_SECONDS, the worker follows the server's event
stream for runs scheduled on its pool and polls as soon as one is, and again whenever one of its slots
frees (a run scheduled while all were busy is not left for the next interval): a dispatched run starts
without waiting up to a query interval (10 s by default) per hop. Where the stream is unavailable, the
worker polls on its interval as any worker does.

Health: `serve(..., with_healthcheck=True)` (`genbundle worker --with-healthcheck`) starts
Prefect's own worker health server, as `prefect worker start --with-healthcheck` does: GET /health
on PREFECT_WORKER_WEBSERVER_HOST:PREFECT_WORKER_WEBSERVER_PORT (Prefect's defaults: 0.0.0.0:8080)
answers 200 while the worker polls its pool, 503 once it has not polled for 30 query intervals
(PREFECT_WORKER_QUERY_SECONDS, default 10 s: 5 minutes). Runs execute in threads, so the polling
loop, and the health answer, go on while they work.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import os
from typing import TYPE_CHECKING
from uuid import UUID

import anyio
import anyio.abc
import httpx
from prefect.exceptions import InfrastructureNotAvailable
from prefect.states import Cancelled
from prefect.workers.process import ProcessJobConfiguration, ProcessWorker, ProcessWorkerResult

from tasks.errors import UserError

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun
    from prefect.flows import Flow

SCHEDULED_EVENT = "prefect.flow-run.Scheduled"
HEARTBEAT_SECONDS = 30  # Prefect's minimum; its default (180 s) would make a dead worker slow to notice
PID_PREFIX = "in-process:"  # the runs' infrastructure_pid: no process id, so nothing can kill this worker


def heartbeat_settings() -> dict:
    """The settings a run here gets: heartbeats every HEARTBEAT_SECONDS, unless the operator chose."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, get_current_settings

    flows = get_current_settings().flows
    if "heartbeat_frequency" in flows.model_fields_set and flows.heartbeat_frequency is not None:
        return {}  # the operator's frequency; "off" (None, as genbundle run sets it) does not hold here
    return {PREFECT_FLOWS_HEARTBEAT_FREQUENCY: HEARTBEAT_SECONDS}


def end_runs_without_heartbeat_join() -> None:
    """Flow runs in this process end without waiting for their heartbeat thread. Prefect's sync engine
    joins it at the end of a run, and it sleeps in 1 s steps: the run's slot stayed taken up to 1 s
    after the run was Completed. Prefect's async engine does not join it (`join_on_exit=False`), and
    the thread ends by itself at its next step; this process's flow runs get the same."""
    import prefect.flow_engine

    send = prefect.flow_engine._send_heartbeats
    if not isinstance(send, functools.partial):
        prefect.flow_engine._send_heartbeats = functools.partial(send, join_on_exit=False)


def apply_pool_env(env: dict[str, str | None], environ=os.environ) -> tuple[list[str], list[str]]:
    """Apply a work pool's `env` to this process's environment, as a process worker applies it to a
    run's subprocess: the pool's values win; a None value unsets. PREFECT_* variables are left out
    (Prefect's settings were read when this process started). Returns (names applied, names left
    out), sorted: names only, since values may be secrets."""
    applied, left_out = [], []
    for key, value in env.items():
        if key.startswith("PREFECT_"):
            left_out.append(key)
        elif value is None:
            if environ.pop(key, None) is not None:
                applied.append(key)
        else:
            environ[key] = str(value)
            applied.append(key)
    if applied:
        from tasks.settings import get_settings

        get_settings.cache_clear()  # GENBUNDLE_* settings are read once per process: read them again
    return sorted(applied), sorted(left_out)


async def pool_env(work_pool, client) -> dict[str, str | None]:
    """The `env` a run on `work_pool` gets from the pool alone: its base job template's `env` with
    the variables' defaults, templates (blocks, variables) resolved, as Prefect's process worker
    builds a run's configuration before the deployment's and run's job variables."""
    configuration = await ProcessJobConfiguration.from_template_and_values(
        work_pool.base_job_template, values={}, client=client
    )
    return dict(configuration.env or {})


def _execute(flow: Flow, flow_run: FlowRun, settings: dict, logger):
    """In a worker thread: the flow run through Prefect's engine, to its final state. Without
    `parameters`, run_flow takes them from the flow run and adds the flow's defaults, as the
    engine does for a deployment run in a subprocess."""
    from prefect.flow_engine import run_flow
    from prefect.settings import temporary_settings

    with temporary_settings(updates=settings):
        state = run_flow(flow, flow_run=flow_run, return_type="state", error_logger=logger)
        if inspect.isawaitable(state):  # an async flow: its own event loop, in this thread
            state = asyncio.run(state)
    return state


class WarmWorker(ProcessWorker):
    type = "process"  # polls process pools, beside plain process workers
    _description = "Execute flow runs inside the worker's own process, so loaded models are reused between runs."
    _display_name = "Warm (in-process)"

    def __init__(self, *args, limit: int | None = 1, **kwargs):
        super().__init__(*args, limit=limit, **kwargs)
        self._flows: dict[str, Flow] = {}  # entrypoint -> flow, loaded once
        self._flow_lock = asyncio.Lock()
        self._not_started: set[UUID] = set()  # handed to this worker, not yet in the engine
        self._cancelled: set[UUID] = set()  # cancelled before the engine got them
        self._settings = heartbeat_settings()
        self._follow_task: asyncio.Task | None = None
        self._wake = asyncio.Event()  # poll now: a run was scheduled on the pool, or a slot was freed

    @classmethod
    def __dispatch_key__(cls) -> str:
        return "genbundle-warm"  # its own key in Prefect's worker registry: "process" stays ProcessWorker

    @property
    def slots(self) -> int | None:
        """Flow runs this worker executes at once (its GPU slots)."""
        return self._limit

    async def setup(self) -> None:
        """Prefect's setup (client, first sync with the pool), then the pool's `env` applied to this
        process, once, before the first poll: runs share this process's environment."""
        await super().setup()
        end_runs_without_heartbeat_join()
        work_pool = self._work_pool or await self.client.read_work_pool(self._work_pool_name)
        applied, left_out = apply_pool_env(await pool_env(work_pool, self.client))
        if applied:
            self._logger.info(
                "warm worker %r: applied work pool %r's env to this process: %s",
                self.name, work_pool.name, ", ".join(applied),
            )  # fmt: skip
        if left_out:
            self._logger.warning(
                "warm worker %r: work pool %r's env sets %s, which are not applied (Prefect reads its "
                "settings when the process starts): set them where the worker starts",
                self.name, work_pool.name, ", ".join(left_out),
            )  # fmt: skip
        self._follow_task = asyncio.create_task(self._poll_when_scheduled(work_pool.id))

    async def teardown(self, *exc_info) -> None:
        if self._follow_task:
            self._follow_task.cancel()
            await asyncio.gather(self._follow_task, return_exceptions=True)
        await super().teardown(*exc_info)

    async def _poll_when_scheduled(self, pool_id: UUID) -> None:
        """Poll as soon as the server tells of a run scheduled on this pool. Events that come together
        make one poll; a lost stream is followed again after a query interval."""
        from prefect.events.clients import get_events_subscriber
        from prefect.events.filters import EventFilter, EventNameFilter, EventRelatedFilter
        from prefect.settings import PREFECT_WORKER_QUERY_SECONDS

        scheduled = EventFilter(
            event=EventNameFilter(name=[SCHEDULED_EVENT]),
            related=EventRelatedFilter(id=[f"prefect.work-pool.{pool_id}"]),
        )

        async def poll_on_wake() -> None:
            while True:
                await self._wake.wait()
                self._wake.clear()
                try:
                    await self.get_and_submit_flow_runs()
                except Exception as err:  # noqa: BLE001 - the polling loop reports a server that fails
                    self._logger.debug("warm worker %r: an early poll failed: %s", self.name, err)

        poller = asyncio.create_task(poll_on_wake())
        try:
            while True:
                try:
                    async with get_events_subscriber(filter=scheduled) as events:
                        async for _ in events:
                            self._wake.set()
                except Exception as err:  # noqa: BLE001 - polling goes on; the stream is only a shortcut
                    self._logger.debug("warm worker %r: event stream lost (%s); polling only", self.name, err)
                await asyncio.sleep(PREFECT_WORKER_QUERY_SECONDS.value())
        finally:
            poller.cancel()
            await asyncio.gather(poller, return_exceptions=True)

    def _release_limit_slot(self, flow_run_id: UUID) -> None:
        """A run scheduled while every slot was busy was left for the next poll (a query interval
        later): poll as soon as a slot is free instead."""
        super()._release_limit_slot(flow_run_id)
        self._wake.set()

    async def _flow(self, flow_run: FlowRun) -> Flow:
        from prefect.flows import load_flow_from_flow_run

        if flow_run.deployment_id is None:
            raise ValueError("a warm worker runs deployment runs only")
        entrypoint = (await self.client.read_deployment(flow_run.deployment_id)).entrypoint
        async with self._flow_lock:
            if entrypoint not in self._flows:
                # its client is injected (Prefect 3.9: `client_injector`): the flow run is the first argument
                flow = await load_flow_from_flow_run(flow_run, use_placeholder_flow=False)
                self._flows[entrypoint] = flow
            return self._flows[entrypoint]

    def _warn_unapplied_env(self, flow_run: FlowRun, configuration: ProcessJobConfiguration) -> None:
        """A subprocess would get the run's whole `env`; a run here shares the worker's environment,
        which has the pool's `env` as it was when the worker started. Names only: values may be secrets."""
        unapplied = sorted(
            key
            for key, value in configuration.env.items()
            if not key.startswith("PREFECT_") and os.environ.get(key) != value
        )
        if unapplied:
            self.get_flow_run_logger(flow_run).warning(
                "warm worker %r: this run shares the worker's environment, so %s from the deployment or "
                "flow run (or set on the pool after the worker started) are not applied: set them on the "
                "pool and restart the worker, or set them where the worker starts",
                self.name, ", ".join(unapplied),
            )  # fmt: skip

    async def run(
        self,
        flow_run: FlowRun,
        configuration: ProcessJobConfiguration,
        task_status: anyio.abc.TaskStatus | None = None,
    ) -> ProcessWorkerResult:
        flow = await self._flow(flow_run)  # a failure here is reported by the base worker: run Crashed
        identifier = f"{PID_PREFIX}{flow_run.id}"
        self._not_started.add(flow_run.id)
        (task_status or anyio.TASK_STATUS_IGNORED).started(identifier)
        logger = self.get_flow_run_logger(flow_run)
        try:
            self._warn_unapplied_env(flow_run, configuration)
            flow_run = await self.client.read_flow_run(flow_run.id)  # as the engine's subprocess reads it
            if flow_run.id in self._cancelled or flow_run.state.is_final() or flow_run.state.is_cancelling():
                if flow_run.state.is_cancelling():
                    await self.client.set_flow_run_state(
                        flow_run.id, Cancelled(message="Cancelled before it started."), force=True
                    )
                logger.info("warm worker %r: run cancelled before it started; not run", self.name)
                return ProcessWorkerResult(status_code=0, identifier=identifier)
            self._not_started.discard(flow_run.id)  # no await since the check: a cancel now finds it started
            state = await anyio.to_thread.run_sync(
                _execute, flow, flow_run, self._settings, logger, abandon_on_cancel=True
            )
        except anyio.get_cancelled_exc_class():  # the worker is stopping with this run in flight
            with anyio.CancelScope(shield=True):
                await self._propose_crashed_state(flow_run, f"warm worker {self.name!r} stopped during the run")
            raise
        except Exception as err:  # noqa: BLE001 - the engine failed: the base worker marks the run Crashed
            logger.error("warm worker %r could not run it: %s: %s", self.name, type(err).__name__, err)
            return ProcessWorkerResult(status_code=1, identifier=identifier)
        finally:
            self._not_started.discard(flow_run.id)
            self._cancelled.discard(flow_run.id)
        if state.is_cancelling():  # cancelled while in the engine, which cannot stop it here: it finished first
            message = f"Cancelled while running in warm worker {self.name!r}; its work finished first."
            await self.client.set_flow_run_state(flow_run.id, Cancelled(message=message), force=True)
        # 0 even for a Failed run: the engine set its state; non-zero would have it marked Crashed.
        return ProcessWorkerResult(status_code=0, identifier=identifier)

    async def kill_infrastructure(
        self, infrastructure_pid: str, configuration: ProcessJobConfiguration, grace_seconds: int = 30
    ) -> None:
        """Cancel a run that has not entered the engine yet; never kill a process (it would be this one)."""
        if not infrastructure_pid.startswith(PID_PREFIX):
            raise InfrastructureNotAvailable(f"{infrastructure_pid!r} is not a run of a warm worker")
        flow_run_id = UUID(infrastructure_pid.removeprefix(PID_PREFIX))
        if flow_run_id not in self._not_started:  # in the engine: it finishes (the base worker then leaves it be)
            raise InfrastructureNotAvailable(f"flow run {flow_run_id} is running inside warm worker {self.name!r}")
        self._cancelled.add(flow_run_id)  # run() skips it; the base worker marks it Cancelled


async def _check_pool(pool: str) -> None:
    """A server to poll, and the pool on it: refused at once, not warned about at every poll."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import get_current_settings

    api = get_current_settings().api.url
    if not api:
        raise UserError("no Prefect server to take runs from: set PREFECT_API_URL")
    async with get_client() as client:
        try:
            await client.read_work_pool(pool)
        except ObjectNotFound:
            raise UserError(
                f"work pool {pool} is not on the Prefect server {api}: create it with `genbundle deploy`"
            ) from None
        except httpx.TransportError as err:
            raise UserError(
                f"cannot reach the Prefect server {api} ({err}): start it, or fix PREFECT_API_URL"
            ) from None


async def serve(pool: str, slots: int = 1, name: str | None = None, with_healthcheck: bool = False) -> None:
    """Poll `pool` and run its flow runs in this process, `slots` at a time, until stopped. With
    `with_healthcheck`, Prefect's worker health server answers GET /health meanwhile."""
    await _check_pool(pool)
    worker = WarmWorker(work_pool_name=pool, limit=slots, name=name, create_pool_if_not_found=False)
    await worker.start(with_healthcheck=with_healthcheck)
