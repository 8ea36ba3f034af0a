#!/usr/bin/env bash
# Downloads the wheels that benchmarks/device/run_gpu_benchmark.sh installs on the GPU machine
# (Python 3.12, x86-64, no network there) into <repo>/.whl, which the device call carries:
#
#     bash benchmarks/device/fetch_wheels.sh        # here, once, with network
#     run(command="bash benchmarks/device/run_gpu_benchmark.sh", carry=[".whl"], timeout_s=600)
#
# benchmarks/device/wheels.txt names them: one NAME==VERSION a line, every package the
# benchmarks.gpu_models path imports that the machine's image lacks (/work/.library/device/KINDS.md),
# at the versions of constraints.txt, with these exceptions:
# - imageio-ffmpeg 0.7.0 (constraints: 0.8.1): tasks/h264.py runs the ffmpeg binary that imageio-ffmpeg
#   ships (libx264). 0.8.1's wheel is 68 MB (ffmpeg 9.0.2, 172 MB unpacked), over the 64 MiB a device
#   call can carry; 0.7.0's is 29.5 MB (ffmpeg 7.0.2) with the same Python API (get_ffmpeg_exe).
# - python-dateutil 2.9.0.post0: the image has python-dateutil, but prefect 3.9.1 requires <3.0 and
#   newer releases are 4.x; carried so that prefect gets the version it declares.
# - not carried, though constraints.txt pins other versions: torch (image 2.11.0, ours 2.13.0),
#   transformers (5.17.0 / 5.23.0), huggingface-hub (1.33.0 / 2.4.0: transformers 5.17 needs <2, and
#   hub 2.x would drag transformers 5.23, 12 MB, along), tokenizers, accelerate, safetensors, numpy,
#   peft, pillow, scipy, ...: the image's own are used (checked with a CPU stand-in of the image).
# - av (PyAV, 36 MB) is not carried: only tasks/media.probe imports it, which the gpu_models path
#   never calls; pyloudnorm, c2pa-python, cryptography, boto3 likewise (loudness, signing, S3: other steps).
#   prefect's server, CLI and deployment dependencies (sqlalchemy, fastapi, uvicorn, alembic, docker,
#   apprise, cyclopts, ...) are not carried either: `import prefect` and the tasks' `.fn` calls never
#   import them. The small declared needs of carried wheels are (pycparser for cffi; importlib_metadata
#   and lazy-importer for diffusers), though Python 3.12 never imports them on this path.
#
# Fails (exit 1) if any wheel cannot be found for cp312 manylinux x86_64, or if .whl ends up
# holding anything but exactly one wheel per line of wheels.txt.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
LIST=benchmarks/device/wheels.txt
DEST=.whl
PYTHON=${PYTHON:-python3}

# Ignored by git (the device tool sends ignored paths only when `carry` names them).
EXCLUDE=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$EXCLUDE")"
grep -qxF '/.whl/' "$EXCLUDE" 2>/dev/null || echo '/.whl/' >>"$EXCLUDE"

mapfile -t REQS < <(sed -e 's/#.*//' -e 's/[[:space:]]//g' "$LIST" | grep -v '^$')
[ "${#REQS[@]}" -gt 0 ] || { echo "error: $LIST names no wheels" >&2; exit 1; }

# The platform flags of /work/.library/device/README.md; a wheel tagged only for a newer glibc is
# retried with manylinux_2_N for N up to 39 (pip matches N exactly). The image is Ubuntu 24.04 (glibc 2.39).
BASE=(--no-deps --only-binary=:all: --python-version 3.12 --implementation cp
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
MORE=()
for n in 24 31 34 35 39; do MORE+=(--platform "manylinux_2_${n}_x86_64"); done

TMP=$(mktemp -d)  # outside the checkout: an interrupted run leaves nothing there to travel
trap 'rm -rf "$TMP"' EXIT
failed=()
for req in "${REQS[@]}"; do
    if ! "$PYTHON" -m pip download -q "${BASE[@]}" -d "$TMP" "$req" 2>"$TMP/.err"; then
        if ! "$PYTHON" -m pip download -q "${BASE[@]}" "${MORE[@]}" -d "$TMP" "$req" 2>"$TMP/.err"; then
            grep -v '^WARNING: Location' "$TMP/.err" >&2 || true
            failed+=("$req")
        fi
    fi
done
rm -f "$TMP/.err"
if [ "${#failed[@]}" -gt 0 ]; then
    echo "error: no cp312 manylinux x86_64 wheel for: ${failed[*]}" >&2
    exit 1
fi

# Exactly one wheel per requirement, at its version (two versions of one package stop the install there).
"$PYTHON" - "$TMP" "${REQS[@]}" <<'EOF'
import re, sys
from pathlib import Path

folder, reqs = Path(sys.argv[1]), sys.argv[2:]
norm = lambda s: re.sub(r"[-_.]+", "_", s).lower()
wheels = {}
for w in folder.glob("*.whl"):
    name, version = w.name.split("-")[:2]
    wheels.setdefault(norm(name), []).append((version, w.name))
bad = []
for req in reqs:
    name, _, version = req.partition("==")
    found = wheels.pop(norm(name), [])
    if [v for v, _ in found] != [version]:
        bad.append(f"{req}: found {[w for _, w in found] or 'nothing'}")
bad += [f"not in the list: {w}" for found in wheels.values() for _, w in found]
if bad:
    sys.exit("error: " + "\n       ".join(bad))
EOF

rm -rf "$DEST"
mv "$TMP" "$DEST"
trap - EXIT
count=$(ls "$DEST"/*.whl | wc -l)
size=$(du -sm "$DEST" | cut -f1)
echo "$count wheels in $DEST, $(du -sh "$DEST" | cut -f1) (the device call carries 64 MiB at most, working tree included)"
if [ "$size" -gt 60 ]; then
    echo "error: $DEST is ${size} MiB: too close to the 64 MiB a device call can carry" >&2
    exit 1
fi
