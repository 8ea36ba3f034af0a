"""A long batch on the tiny profile: does memory stay flat, and is every bundle whole?

    .venv/bin/python -m benchmarks.batch_memory [--briefs 50] [--max-concurrency 2]

Runs the batch flow over N briefs (each its own seed: nothing reused) in this process, with
its own temporary Prefect server as `genbundle batch` has. As each bundle finishes it records
the process's resident memory now (VmRSS) and its peak so far (ru_maxrss); at the end it
verifies every stored bundle against its manifest. Prints the peak after the 10th bundle and
after the last, and their ratio (target: the last within 10% of the 10th). JSON in
benchmarks/results/batch-memory.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def resident_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(briefs: int, max_concurrency: int, folder: Path) -> dict:
    from flows.batch import asset_bundle_batch, batch_report
    from flows.local_prefect import local_prefect
    from tasks import progress
    from tasks.progress import BRIEF_STAGE
    from tasks.verify import verify_bundle

    samples: list[dict] = []

    def on_bundle(stage: progress.Stage) -> None:
        if stage.name.startswith(BRIEF_STAGE) and stage.status != "running":
            samples.append({"bundle": len(samples) + 1, "rss_mib": resident_mib(), "peak_mib": peak_mib()})

    briefs_file = folder / "briefs.jsonl"
    rows = [{"title": f"Batch {i}", "author": "G. Bundle", "seed": 50_000 + i} for i in range(briefs)]
    briefs_file.write_text("".join(json.dumps(row) + "\n" for row in rows))
    progress.add_listener(on_bundle)
    started = time.perf_counter()
    with local_prefect() as server:
        if server:
            server.wait_ready()
        state = asset_bundle_batch(
            str(briefs_file), out=str(folder / "bundles"), max_concurrency=max_concurrency, return_state=True
        )
    seconds = time.perf_counter() - started
    progress.remove_listener(on_bundle)
    report = batch_report(state) or []
    stored = [row["detail"] for row in report if row["status"] == "done"]
    verified = sum(verify_bundle(location).ok for location in stored)
    tenth, last = samples[min(9, len(samples) - 1)], samples[-1]
    return {
        "briefs": briefs,
        "max_concurrency": max_concurrency,
        "made": len(stored),
        "verified": verified,
        "seconds": seconds,
        "peak_mib_at_10th": tenth["peak_mib"],
        "peak_mib_at_last": last["peak_mib"],
        "peak_ratio_last_to_10th": last["peak_mib"] / tenth["peak_mib"],
        "rss_mib_at_10th": tenth["rss_mib"],
        "rss_mib_at_last": last["rss_mib"],
        "samples": samples,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--briefs", type=int, default=50)
    parser.add_argument("--max-concurrency", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="genbundle-batch-memory-") as folder:
        result = measure(args.briefs, args.max_concurrency, Path(folder))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "batch-memory.json").write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"{result['made']}/{result['briefs']} bundles made, {result['verified']} verified, in {result['seconds']:.0f} s; "
        f"peak RSS after the 10th {result['peak_mib_at_10th']:.0f} MiB, after the last {result['peak_mib_at_last']:.0f} MiB "
        f"(x{result['peak_ratio_last_to_10th']:.3f}); RSS now {result['rss_mib_at_10th']:.0f} -> {result['rss_mib_at_last']:.0f} MiB"
    )


if __name__ == "__main__":
    main()
