"""The tiny profile on the CPU, per engine combination: a warm bundle with each engine in its role.

    .venv/bin/python -m benchmarks.engine_combinations [--repeat 3] [--no-update]

In one process (as a long-lived worker would), for the seed engines, for each other engine in its
role with the seed engines in the other two, and for the all-commercial combination (where every
role has one): the first bundle (the pipelines not loaded yet are loaded), then `--repeat` warm
bundles, each with a new seed so nothing is reused. Combinations take turns, starting each round
with the next one, so none always runs first.
Prints a table, writes JSON to benchmarks/results/cpu-tiny-engines.json and rewrites its section
of BENCHMARKS.md; the ratio column is the median warm bundle against the seed engines' own.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def combinations() -> dict[str, dict[str, str]]:
    """Label -> {role: engine}: the seed engines, each other engine alone, the all-commercial set."""
    from tasks.engines import ROLES, all_engines, default_engine

    seed = {role: default_engine(role).name for role in ROLES}
    combos = {"seed engines": seed}
    for engine in sorted(all_engines().values(), key=lambda e: (list(ROLES).index(e.role), e.name)):
        if engine.name != seed[engine.role]:
            combos[f"{engine.role}: {engine.name}"] = seed | {engine.role: engine.name}
    commercial = {
        role: [e.name for e in all_engines().values() if e.role == role and e.licence.commercial] for role in ROLES
    }
    if all(commercial.values()):
        combos["all commercial"] = {role: names[0] for role, names in commercial.items()}
    return combos


def measure(repeat: int, out: Path) -> dict:
    from flows.bundle import asset_bundle
    from flows.local_prefect import local_prefect
    from tasks.brief import parse_brief

    combos = combinations()

    def bundle(engines: dict[str, str], seed: int) -> float:
        brief = parse_brief({"title": "Benchmark", "author": "G. Bundle", "seed": seed} | {
            role: {"engine": name} for role, name in engines.items()
        })  # fmt: skip
        started = time.perf_counter()
        asset_bundle(brief, out=str(out))
        return time.perf_counter() - started

    results = {label: {"engines": engines, "warm_s": []} for label, engines in combos.items()}
    with local_prefect() as server:
        if server:
            server.wait_ready()
        for label, engines in combos.items():
            results[label]["first_s"] = bundle(engines, 1)
        labels = list(combos)
        for i in range(repeat):
            for label in labels[i % len(labels) :] + labels[: i % len(labels)]:  # a new order each round
                results[label]["warm_s"].append(bundle(combos[label], 100 + i))
    seed_median = statistics.median(results["seed engines"]["warm_s"])
    for r in results.values():
        r["warm_median_s"] = statistics.median(r["warm_s"])
        r["ratio"] = r["warm_median_s"] / seed_median
    return results


def markdown(results: dict, command: str) -> str:
    lines = [
        f"Command: `{command}`. Medians of warm bundles in one process; the ratio is against the seed engines.",
        "",
        "| combination | cover | sound | video | first bundle s (new loads) | warm bundle s (median) | ratio |",
        "|---|---|---|---|---:|---:|---:|",
    ]
    for label, r in results.items():
        e = r["engines"]
        lines.append(
            f"| {label} | {e['cover']} | {e['sound']} | {e['video']} | {r['first_s']:.1f} "
            f"| {r['warm_median_s']:.2f} | {r['ratio']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="warm bundles per combination")
    parser.add_argument("--no-update", action="store_true", help="leave BENCHMARKS.md as it is")
    args = parser.parse_args()
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    sys.path.insert(0, str(ROOT))
    from benchmarks.cpu_bundle import machine, update_benchmarks_md

    results = measure(args.repeat, Path(tempfile.mkdtemp(prefix="genbundle-engines-")))
    command = "python -m benchmarks.engine_combinations " + " ".join(sys.argv[1:])
    table = markdown(results, command.strip())
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    record = {"command": command.strip(), "machine": machine(), "date": time.strftime("%Y-%m-%d"), "results": results}
    (out / "cpu-tiny-engines.json").write_text(json.dumps(record, indent=2) + "\n")
    print(table)
    if not args.no_update:
        update_benchmarks_md("cpu-tiny-engines", f"Machine: {record['machine']}. Date: {record['date']}.\n\n{table}")


if __name__ == "__main__":
    main()
