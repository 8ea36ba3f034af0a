"""Waiting for dispatched generation runs without waiting forever.

A generation run on a GPU pool can die with its worker (a killed process, a lost machine) and stay
Running on the server for good; a pool with no worker leaves its runs Scheduled for good. So the
bundle run watches each of its generation runs for signs of life:

- a run that has started shows life by Prefect's flow-run heartbeats (PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
  which `genbundle worker` sets; a process worker's runs send them when the worker has it set);
  a run that has sent none yet counts as alive while a worker polls its pool;
- a run not started yet is alive while a worker polls its pool (it may be queued behind others).

A run with no sign of life for GENBUNDLE_DISPATCH_STALL_SECONDS is given up: marked Crashed (never
started: Cancelled), so no worker picks it up later and the UI tells the truth, and the bundle run
ends naming the role, the pool and what to do. When the bundle run itself ends first (a failure,
a cancellation, Ctrl-C), its unfinished generation runs are cancelled with it.
"""

from __future__ import annotations

import datetime
import time

from tasks.settings import get_settings

# How often a run's state is read: an ended run is seen 0.25 s late on average (run_deployment's wait: 5 s).
POLL_SECONDS = 0.5
LIFE_CHECK_SECONDS = 5.0  # how often its heartbeats and its pool's workers are looked at
HEARTBEAT_EVENT = "prefect.flow-run.heartbeat"


class Stalled(Exception):
    """A generation run showed no sign of life for the stall limit; it has been marked Crashed."""


def await_runs(created: dict, pools: dict[str, str]) -> dict:
    """Each role's run (`created`, role -> FlowRun; `pools`, role -> its work pool) once it has ended,
    or a Stalled error for a run given up. Unfinished runs are cancelled if the wait is interrupted."""
    from prefect.client.orchestration import get_client

    stall = datetime.timedelta(seconds=get_settings().dispatch_stall_seconds)
    watched_since = _now()
    pending, ended = dict(created), {}
    last_check = dict.fromkeys(created, float("-inf"))
    with get_client(sync_client=True) as client:
        try:
            while pending:
                for role, run in list(pending.items()):
                    run = pending[role] = client.read_flow_run(run.id)
                    if run.state.is_final():
                        ended[role] = pending.pop(role)
                    elif time.monotonic() - last_check[role] >= LIFE_CHECK_SECONDS:
                        last_check[role] = time.monotonic()
                        last_sign = max(_last_sign_of_life(client, run, pools[role]) or watched_since, watched_since)
                        if _now() - last_sign > stall:
                            ended[role] = _give_up(client, pending.pop(role), pools[role], stall.total_seconds())
                if pending:
                    time.sleep(POLL_SECONDS)
        except BaseException:
            cancel_runs(client, pending.values())
            raise
    return ended


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _last_sign_of_life(client, run, pool: str) -> datetime.datetime | None:
    """The run's latest heartbeat once it has sent one; before that, the latest of its pool's workers'."""
    if run.state.is_running() and (beat := _latest_heartbeat(client, run)):
        return beat
    beats = [w.last_heartbeat_time for w in client.read_workers_for_work_pool(pool) if w.last_heartbeat_time]
    return max(beats, default=None)


def _latest_heartbeat(client, run) -> datetime.datetime | None:
    from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter, EventResourceFilter

    query = EventFilter(
        event=EventNameFilter(name=[HEARTBEAT_EVENT]),
        resource=EventResourceFilter(id=[f"prefect.flow-run.{run.id}"]),
        occurred=EventOccurredFilter(since=run.start_time or run.created),
    )  # newest first
    return next((event.occurred for event in client.read_events(filter=query, limit=1).events), None)


def _give_up(client, run, pool: str, stall: float) -> Stalled:
    from prefect.states import Cancelled, Crashed

    started = run.state.is_running()
    why = (
        f"no heartbeat for {stall:.0f} s: its worker died or lost the server"
        if started
        else f"no worker polled the pool '{pool}' for {stall:.0f} s"
    )
    state = Crashed if started else Cancelled
    client.set_flow_run_state(run.id, state(message=f"given up by the bundle run: {why}"), force=True)
    return Stalled(
        f"run '{run.name}': {why} (GENBUNDLE_DISPATCH_STALL_SECONDS): start `genbundle worker --pool {pool}` on a GPU machine "
        "and run the bundle again; what was finished is reused"
    )


def cancel_runs(client, runs) -> None:
    """Cancel runs that have not ended: Running ones through Cancelling (their worker stops them)."""
    from prefect.states import Cancelled, Cancelling

    for run in runs:
        current = client.read_flow_run(run.id).state
        if current.is_final():
            continue
        state = Cancelling if current.is_running() else Cancelled
        try:
            client.set_flow_run_state(run.id, state(message="its bundle run ended first"), force=True)
        except Exception:  # noqa: BLE001 - the bundle run's own error is the one to report
            pass
