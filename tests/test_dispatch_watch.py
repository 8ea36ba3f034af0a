"""The bundle run's wait for its generation runs follows Prefect's event stream instead of polling the API."""

from __future__ import annotations

import threading

import pytest
from prefect import flow

from flows.dispatch_watch import RunEvents, await_runs, cancel_runs

POOL = "watch-test-pool"


@flow
def stand_in():
    """Never run: its runs only stand for generation runs whose states the tests set."""


@pytest.fixture
def client(prefect_api):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    with get_client(sync_client=True) as client:
        try:
            client.create_work_pool(WorkPoolCreate(name=POOL, type="process"))
        except ObjectAlreadyExists:
            pass
        yield client


def _running_runs(client, roles) -> dict:
    from prefect.states import Running

    runs = {role: client.create_flow_run(stand_in) for role in roles}
    for run in runs.values():
        client.set_flow_run_state(run.id, Running(), force=True)
    return runs


def _complete_later(runs, seconds: float) -> threading.Timer:
    """Set the runs Completed after `seconds`, from another thread, as their worker would."""

    def complete():
        from prefect.client.orchestration import get_client
        from prefect.states import Completed

        with get_client(sync_client=True) as other:
            for run in runs:
                other.set_flow_run_state(run.id, Completed(), force=True)

    timer = threading.Timer(seconds, complete)
    timer.start()
    return timer


def test_a_runs_end_arrives_on_the_event_stream(client):
    (run,) = _running_runs(client, ["cover"]).values()
    events = RunEvents({"cover": run.id})
    try:
        timer = _complete_later([run], 1.0)
        events.wait_for_an_end(timeout=120)  # returns at the event; without one only after 120 s, ended empty
        timer.join()
        assert events.following
        assert events.ended == {"cover"}
    finally:
        events.close()


def test_waiting_reads_each_run_when_it_starts_and_when_it_ends_not_in_between(client, monkeypatch):
    runs = _running_runs(client, ["cover", "sound"])
    reads = []
    read_flow_run = type(client).read_flow_run

    def counted(self, flow_run_id):
        reads.append(flow_run_id)
        return read_flow_run(self, flow_run_id)

    monkeypatch.setattr(type(client), "read_flow_run", counted)
    timer = _complete_later(runs.values(), 3.0)  # polling every 0.5 s would read each run 6 times meanwhile
    ended = await_runs(runs, dict.fromkeys(runs, POOL))
    timer.join()
    assert {role: run.state.type.value for role, run in ended.items()} == {"cover": "COMPLETED", "sound": "COMPLETED"}
    # Once at the start, once at its end, and one more if the API showed the end a moment after the stream.
    assert all(reads.count(run.id) <= 3 for run in runs.values()), reads
    # A warm cpu worker waits like this for bundle after bundle: nothing may be left following the stream.
    assert not [t for t in threading.enumerate() if t.name == "dispatch-events"]


def test_without_the_event_stream_the_wait_reads_the_api_and_still_ends(client, monkeypatch):
    class Unreachable:
        async def __aenter__(self):
            raise OSError("events socket unreachable")

        async def __aexit__(self, *exc):
            return False

    import prefect.events.clients

    monkeypatch.setattr(prefect.events.clients, "get_events_subscriber", lambda **_: Unreachable())
    runs = _running_runs(client, ["video"])
    timer = _complete_later(runs.values(), 2.0)
    ended = await_runs(runs, {"video": POOL})
    timer.join()
    assert ended["video"].state.is_completed()


def test_cancelling_ends_runs_not_started_and_leaves_running_ones_to_their_worker(client):
    """A running run goes through Cancelling, so its worker stops its process. One not started, taken by
    a worker (Pending) or not (Scheduled), ends Cancelled at once: left Cancelling, a run its process
    worker was still submitting stayed Cancelling for good. An ended one stays as it ended."""
    from prefect.states import Completed, Pending, Running, Scheduled

    runs = {name: client.create_flow_run(stand_in, state=state()) for name, state in
            [("scheduled", Scheduled), ("taken", Pending), ("running", Running), ("done", Completed)]}  # fmt: skip
    cancel_runs(client, runs.values())
    states = {name: client.read_flow_run(run.id).state.type.value for name, run in runs.items()}
    assert states == {"scheduled": "CANCELLED", "taken": "CANCELLED", "running": "CANCELLING", "done": "COMPLETED"}
