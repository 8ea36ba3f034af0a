"""Upload throughput of one large asset against a loopback S3 endpoint (moto's threaded server).

    .venv/bin/python benchmarks/upload_throughput.py [--mb 50] [--repeat 3]

Prints one JSON line per configuration. The loopback endpoint is moto, a Python server: its
own speed bounds these figures, so they measure our upload path's overhead (hashing, checksums,
verification, multipart) more than any real store's bandwidth.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=50, help="asset size in MiB (2**20 bytes)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's server logs every request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ |= {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_REGION": "us-east-1",
    }
    from tasks.manifest import describe_asset
    from tasks.s3 import parse_s3_url, upload_bundle_dir
    from tasks.settings import get_settings

    client = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    folder = Path(tempfile.mkdtemp()) / "bundle"
    folder.mkdir()
    asset = folder / "asset.bin"  # random bytes: a stand-in for a large video
    asset.write_bytes(os.urandom(args.mb * 2**20))
    manifest = {"bundle_id": "bench", "brief": {"title": "bench"}, "assets": [describe_asset(asset, "data")]}
    (folder / "bundle.json").write_text(json.dumps(manifest))

    for checksums in ("sha256", "off"):
        os.environ["GENBUNDLE_S3_CHECKSUMS"] = checksums
        get_settings.cache_clear()
        times = []
        for i in range(args.repeat):
            bucket = f"bench-{checksums}-{i}"
            client.create_bucket(Bucket=bucket)
            report = upload_bundle_dir(folder, parse_s3_url(f"s3://{bucket}/p"))
            times.append(report.seconds)
        start = time.perf_counter()
        again = upload_bundle_dir(folder, parse_s3_url(f"s3://{bucket}/p"))
        skip_seconds = time.perf_counter() - start
        best = min(times)
        print(
            json.dumps(
                {
                    "asset_mib": args.mb,
                    "checksums": checksums,
                    "verified_by": report.verified_by["asset.bin"],
                    "part_mib": get_settings().s3_part_mb,
                    "concurrency": get_settings().s3_concurrency,
                    "seconds_best": round(best, 3),
                    "seconds_median": round(statistics.median(times), 3),
                    "mib_per_s_best": round(args.mb / best, 1),  # MiB: the asset is args.mb * 2**20 bytes
                    "second_upload_bytes_sent": again.bytes_sent,
                    "second_upload_seconds": round(skip_seconds, 3),
                }
            )
        )
    server.stop()


if __name__ == "__main__":
    main()
