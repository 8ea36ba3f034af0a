"""Waiting for dispatched generation runs without waiting forever.

The wait follows the runs' flow-run events (state changes, heartbeats) on Prefect's event stream,
as Prefect's own wait_for_flow_run does: a run's end is seen as it happens, and the server is not
asked for each run's state twice a second meanwhile. A run is read from the API when an event says
it ended, and every LIFE_CHECK_SECONDS for its signs of life; if the stream cannot be followed,
every POLL_SECONDS.

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

import asyncio
import contextvars
import datetime
import queue
import threading
import time

from tasks.settings import get_settings

POLL_SECONDS = 0.5  # how often a run's state is read when the event stream cannot be followed
LIFE_CHECK_SECONDS = 5.0  # how often a run is read, and its pool's workers looked at, without events
HEARTBEAT_EVENT = "prefect.flow-run.heartbeat"
RUN_RESOURCE = "prefect.flow-run."  # an event's resource id: this and the run's id
CANCEL_MESSAGE = "its bundle run ended first"


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
    events = RunEvents({role: run.id for role, run in created.items()})
    with get_client(sync_client=True) as client:
        try:
            while pending:
                for role, run in list(pending.items()):
                    life_check_due = time.monotonic() - last_check[role] >= LIFE_CHECK_SECONDS
                    if not (life_check_due or role in events.ended or not events.following):
                        continue
                    run = pending[role] = client.read_flow_run(run.id)
                    if run.state.is_final():
                        ended[role] = pending.pop(role)
                    elif life_check_due:
                        last_check[role] = time.monotonic()
                        beat = events.beats.get(role) if run.state.is_running() else None
                        last_sign = max(beat or _pool_heartbeat(client, pools[role]) or watched_since, watched_since)
                        if _now() - last_sign > stall:
                            ended[role] = _give_up(client, pending.pop(role), pools[role], stall.total_seconds())
                # A final state can reach the stream before API reads show it: read again soon.
                soon = not events.following or events.ended & pending.keys()
                if pending:
                    events.wait_for_an_end(POLL_SECONDS if soon else LIFE_CHECK_SECONDS)
        except BaseException:
            cancel_runs(client, pending.values())
            raise
        finally:
            events.close()
    return ended


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _pool_heartbeat(client, pool: str) -> datetime.datetime | None:
    """The latest heartbeat of the pool's workers: a run not started, or silent so far, lives while they poll."""
    beats = [w.last_heartbeat_time for w in client.read_workers_for_work_pool(pool) if w.last_heartbeat_time]
    return max(beats, default=None)


class RunEvents:
    """The flow-run events of some runs (`runs`, role -> run id), as they occur on Prefect's event stream,
    read by a thread of its own so the wait stays plain blocking code (a SIGTERM or Ctrl-C reaches it as
    before). The subscriber reconnects and fills the gap itself; `following` is False once it gave up."""

    def __init__(self, runs: dict):
        from prefect.events.clients import get_events_subscriber
        from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

        self.roles = {f"{RUN_RESOURCE}{run_id}": role for role, run_id in runs.items()}
        self.beats: dict[str, datetime.datetime] = {}  # role -> its run's latest heartbeat on the stream
        self.ended: set[str] = set()  # roles whose run's final state was on the stream
        self.following = True
        query = EventFilter(
            event=EventNameFilter(prefix=[RUN_RESOURCE]), resource=EventResourceFilter(id=list(self.roles))
        )
        self._events: queue.Queue = queue.Queue()
        self._loop = asyncio.new_event_loop()
        # Made here, where Prefect's settings (the API URL) are in the context; the thread gets a copy of it.
        self._listening = self._loop.create_task(
            self._listen(get_events_subscriber(filter=query, reconnect_on_clean_close=True))
        )
        context = contextvars.copy_context()
        self._thread = threading.Thread(target=context.run, args=(self._follow,), name="dispatch-events", daemon=True)
        self._thread.start()

    async def _listen(self, subscriber) -> None:
        async with subscriber:
            async for event in subscriber:
                self._events.put(event)

    def _follow(self) -> None:
        try:
            self._loop.run_until_complete(self._listening)
        except BaseException:  # noqa: BLE001 - closed, or the stream failed: the wait reads the API instead
            pass
        finally:
            self.following = False
            self._events.put(None)  # wakes a wait in progress

    def wait_for_an_end(self, timeout: float) -> None:
        """Until an event says a run reached a final state, or `timeout` seconds; noting heartbeats on the way."""
        from prefect.client.schemas.objects import TERMINAL_STATES, StateType

        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                event = self._events.get(timeout=left)
            except queue.Empty:
                return
            if event is None:
                return
            if (role := self.roles.get(event.resource.id)) is None:
                continue
            if event.event == HEARTBEAT_EVENT:
                self.beats[role] = max(self.beats.get(role, event.occurred), event.occurred)
            elif (state := event.resource.get("prefect.state-type")) and StateType(state) in TERMINAL_STATES:
                self.ended.add(role)
                return

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._listening.cancel)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self._loop.close()


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
    """Cancel runs that have not ended. A running one is set Cancelling, as `prefect flow-run cancel`
    does: its worker stops its process and marks it Cancelled. One not started yet is marked Cancelled
    at once: set Cancelling while its process worker was still submitting it, Prefect's engine refused
    to start it and nothing marked it Cancelled, so it stayed Cancelling for good. Should its process
    start anyway (Prefect lets a run leave Cancelled), the generate flow sees it was cancelled and
    generates nothing; a warm worker does not run it."""
    from prefect.states import Cancelled, Cancelling

    for run in runs:
        try:
            state = client.read_flow_run(run.id).state
            if state is None or state.is_final():
                continue
            if state.is_running():
                client.set_flow_run_state(run.id, Cancelling(message=CANCEL_MESSAGE))
            else:
                client.set_flow_run_state(run.id, Cancelled(message=CANCEL_MESSAGE), force=True)
        except Exception:  # noqa: BLE001 - the bundle run's own error is the one to report
            pass
