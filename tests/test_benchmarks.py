"""The benchmark's plain-function bundle must do the flow's work, or its overhead figure means nothing."""

from __future__ import annotations

import json
from pathlib import Path


def test_plain_bundle_makes_the_same_bundle_as_the_flow(tiny_bundle, tmp_path):
    from benchmarks.plain_bundle import plain_bundle
    from tasks.brief import Brief

    flow_manifest = json.loads((tiny_bundle / "bundle.json").read_text())
    brief = Brief.model_validate(flow_manifest["brief"])
    plain = Path(plain_bundle(brief, out=str(tmp_path)))
    plain_manifest = json.loads((plain / "bundle.json").read_text())

    assert plain.name == tiny_bundle.name  # same bundle id: same brief
    roles = lambda m: {(a["role"], a["name"]) for a in m["assets"]}  # noqa: E731
    assert roles(plain_manifest) == roles(flow_manifest)
    assert plain_manifest["post_processing"].keys() == flow_manifest["post_processing"].keys()
    assert set(plain_manifest["steps"].values()) == {"made"}  # made again, in a new work area
