"""The batch flow: many briefs, bounded concurrency, failures reported without losing the others."""

import json
import pickle

import pytest

from flows.batch import BatchFailed, asset_bundle_batch, batch_report
from tasks.brief import load_briefs_file


def test_briefs_from_csv_with_dotted_headers(tmp_path):
    path = tmp_path / "briefs.csv"
    path.write_text("title,author,seed,cover.width,sound.prompt\nA,B,3,512,a diesel idling\nC,,1,,\n")
    (_, ok), (label_bad, bad) = load_briefs_file(path)
    assert (ok.title, ok.seed, ok.cover.width, ok.sound.prompt) == ("A", 3, 512, "a diesel idling")
    assert label_bad == "briefs.csv:3" and "author: is required" in str(bad)


def test_batch_reports_failures_and_makes_the_rest(prefect_api, tmp_path):
    briefs = tmp_path / "briefs.jsonl"
    lines = [
        {"title": "Batch One", "author": "A"},
        {"title": "Batch Two", "author": "B", "seed": 2},
        {"title": "Pneumonoultramicroscopicsilicovolcanoconiosis" * 2, "author": "C"},  # cannot fit the cover
        {"title": "Bad", "author": "D", "cover": {"width": 100}},  # invalid
    ]
    briefs.write_text("\n".join(json.dumps(x) for x in lines) + "\n{not json\n")
    state = asset_bundle_batch(str(briefs), out=str(tmp_path / "out"), max_concurrency=2, return_state=True)
    assert state.is_failed() and "2 of 5 bundles made" in state.message
    assert "not made: briefs.jsonl:3, briefs.jsonl:4, briefs.jsonl:5 (see" in state.message
    report = batch_report(state)
    status = [r["status"] for r in report]
    assert status == ["done", "done", "failed", "invalid", "invalid"]
    assert "title: does not fit" in report[2]["detail"]
    assert "cover.width: must be a multiple of 8" in report[3]["detail"]
    assert "not valid JSON" in report[4]["detail"]
    for row in report[:2]:
        assert (tmp_path / "out" / row["detail"].rsplit("/", 1)[1] / "bundle.json").is_file()


def test_a_failed_batch_resolves_into_an_exception_naming_the_brief(prefect_api, tmp_path):
    """A worker's engine raises the exception of the run's final state: it must be one (issue 12:
    a list as the Failed state's data gave a TypeError), naming the brief, with every row."""
    briefs = tmp_path / "briefs.jsonl"
    briefs.write_text(json.dumps({"title": "Bad", "author": "D", "cover": {"width": 100}}) + "\n")
    state = asset_bundle_batch(str(briefs), out=str(tmp_path / "out"), return_state=True)
    assert state.is_failed() and "0 of 1 bundles made; not made: briefs.jsonl:1" in state.message
    with pytest.raises(BatchFailed, match="not made: briefs.jsonl:1") as raised:
        state.result()
    assert str(raised.value) == state.message
    with pytest.raises(BatchFailed, match="not made: briefs.jsonl:1"):
        asset_bundle_batch(str(briefs), out=str(tmp_path / "out"))  # the engine's own path, as on a worker
    # A persisted result is pickled: the rows must survive it.
    (row,) = pickle.loads(pickle.dumps(raised.value)).report
    assert row["status"] == "invalid" and "cover.width" in row["detail"]


def test_missing_briefs_file(prefect_api, tmp_path):
    with pytest.raises(Exception, match="does not exist"):
        asset_bundle_batch(str(tmp_path / "nope.jsonl"))


def test_a_dispatched_batch_reports_generations_that_cannot_start(prefect_api, tmp_path):
    """No generation deployments on this server: every brief is reported with why, none is lost."""
    briefs = tmp_path / "briefs.jsonl"
    lines = [
        {"title": "Never Dispatched", "author": "A"},
        {"title": "Pneumonoultramicroscopicsilicovolcanoconiosis" * 2, "author": "B"},
    ]
    briefs.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    state = asset_bundle_batch(str(briefs), out=str(tmp_path / "out"), dispatch=True, return_state=True)
    assert state.is_failed() and "0 of 2 bundles made" in state.message
    no_pool, too_long = batch_report(state)
    assert no_pool["status"] == "failed" and "no deployment generate/" in no_pool["detail"]
    assert "genbundle deploy" in no_pool["detail"]
    assert too_long["status"] == "failed" and "title: does not fit" in too_long["detail"]
