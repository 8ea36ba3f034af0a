#!/usr/bin/env bash
# benchmarks.gpu_models (real architectures, random weights) on the lent GPU machine, in one call.
#
# Here, once, with network:  bash benchmarks/device/fetch_wheels.sh   (fills the ignored .whl/, ~48 MiB)
# Then, through the device tool, from the repo root:
#     run(command="bash benchmarks/device/run_gpu_benchmark.sh", carry=[".whl"], timeout_s=600)
#
# That machine (nvidia-h200) has python3 3.12 with torch, transformers, accelerate, huggingface-hub, ...
# but no diffusers, prefect, pydantic, soundfile or imageio-ffmpeg, and no network: those come as the
# wheels in .whl (benchmarks/device/wheels.txt), installed into /tmp/site as /work/.library/device/README.md says.
#
# What it runs, within TOTAL_BUDGET_S (default 480 s, started at the first line; the tool allows 600):
#   1. python3 -m benchmarks.gpu_models --arch real --engine sd15 --repeat 2 --no-update --out $OUT
#      (sd15 is a seed engine, so only the three seed engines sd15, audioldm and zeroscope-v2-576w are
#      measured, then the bundle and the baseline)  ->  $OUT/gpu-real-cuda.json
#   2. if at least MIN_EXTRA_S (default 150 s) is left: the same with the EXTRA_ENGINES too (default
#      "sdxl stable-audio-open-1.0"; the seed engines again, their saved folders reused)
#      ->  $OUT/extra/gpu-real-cuda.json.  EXTRA_ENGINES="" skips it. wan2.1-1.3b is left out by default:
#      81 frames at 832x480, 50 steps, three times, plus its 5.7 B-parameter text encoder, would not fit.
#   Arguments given to this script replace step 1's and skip step 2 (e.g. `--arch real --engine wan2.1-1.3b
#   --repeat 1 --no-update`; --models-dir and --out are added).
# The whole log is $OUT/run.log; the tables are printed in it. BENCHMARKS.md is not touched on the
# machine (its copy does not come back); to put a result in, here:
#     python -c "import json; from benchmarks.gpu_models import markdown; from benchmarks.cpu_bundle import \
#       update_benchmarks_md as u; r = json.load(open('RESULT.json')); \
#       u('gpu', f\"Machine: {r['machine']}. Date: {r['date']}.\n\n{markdown(r)}\")"
# A dry run of this script without a GPU (what was checked before it was first used, with a Python 3.12
# venv standing in for the machine's python3):
#     GENBUNDLE_DEVICE=cpu OUT=/tmp/out bash benchmarks/device/run_gpu_benchmark.sh --arch tiny --engine sd15 --repeat 1
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.." || exit 1

OUT=${OUT:-/tmp/gpu-benchmark-out}
mkdir -p "$OUT" || exit 1
TOTAL_BUDGET_S=${TOTAL_BUDGET_S:-480}
MIN_EXTRA_S=${MIN_EXTRA_S:-150}
EXTRA_ENGINES=${EXTRA_ENGINES-sdxl stable-audio-open-1.0}
MODELS_DIR=/tmp/genbundle-gpu-models # random-weight pipelines, saved once, reused by step 2

left() { echo $((TOTAL_BUDGET_S - SECONDS)); }

main() {
    echo "== $(date -u +%FT%TZ) $(uname -m) $(hostname 2>/dev/null)"
    timeout 30 nvidia-smi || echo "warning: nvidia-smi failed"

    # The wheels: /work/.library/device/README.md's command, verbatim.
    ls .whl/*.whl >/dev/null 2>&1 || { echo "error: no .whl/*.whl here: run fetch_wheels.sh here and carry .whl"; return 1; }
    timeout 180 python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || { echo "error: installing .whl failed"; return 1; }

    # No network there: nothing may try it.
    export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
    export HF_HUB_DISABLE_PROGRESS_BARS=1 DISABLE_TELEMETRY=1 DO_NOT_TRACK=1 TOKENIZERS_PARALLELISM=false
    export HF_HOME=/tmp/hf-home XDG_CACHE_HOME=/tmp/xdg-cache
    export PREFECT_HOME=/tmp/prefect-home PREFECT_SERVER_ANALYTICS_ENABLED=false
    unset PREFECT_API_URL PREFECT_API_KEY
    # genbundle: the GPU or nothing (no silent CPU run of the real sizes), fp16, no safety checker (not timed).
    export GENBUNDLE_DEVICE=${GENBUNDLE_DEVICE:-cuda} GENBUNDLE_DTYPE=float16 GENBUNDLE_MEMORY=auto GENBUNDLE_SAFETY=off
    export GENBUNDLE_MODEL_CACHE=/tmp/genbundle-model-cache GENBUNDLE_OUT=/tmp/genbundle-bundles
    export PYTHONUNBUFFERED=1

    # Versions, the carried packages' declared needs, ffmpeg, the GPU: a broken setup ends here, in seconds.
    timeout 120 python3 - <<'EOF' || { echo "error: preflight failed"; return 1; }
import os, re, subprocess, sys
from importlib import metadata

from packaging.requirements import Requirement

print("python", sys.version.split()[0], sys.executable)
for d in ("torch", "diffusers", "transformers", "huggingface-hub", "tokenizers", "accelerate", "safetensors",
          "peft", "numpy", "scipy", "pillow", "prefect", "pydantic", "pydantic-settings", "typing-extensions",
          "soundfile", "torchsde", "imageio-ffmpeg", "nvidia-ml-py"):
    try:
        print(f"  {d} {metadata.version(d)}")
    except metadata.PackageNotFoundError:
        print(f"  {d} -")

# Needs of the carried packages: prefect's server, CLI and deployment dependencies are not carried (the
# gpu_models path never imports them); anything else missing, or a version outside a range, is shown.
norm = lambda s: re.sub(r"[-_.]+", "-", s).lower()
SERVER_ONLY = {"aiosqlite", "alembic", "apprise", "asyncpg", "cryptography", "cyclopts", "dateparser", "docker",
               "fastapi", "graphviz", "griffe", "jinja2-humanize-extension", "jsonpatch", "pydocket", "pytz",
               "readchar", "ruamel-yaml", "semver", "sqlalchemy", "uvicorn", "whenever"}
for dist in metadata.distributions(path=["/tmp/site"]):
    for r in dist.requires or []:
        req = Requirement(r)
        if req.marker and not req.marker.evaluate({"extra": ""}):
            continue
        try:
            have = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            if not (dist.metadata["Name"] == "prefect" and norm(req.name) in SERVER_ONLY):
                print(f"  warning: {dist.metadata['Name']} needs {req}: not installed")
            continue
        if req.specifier and not req.specifier.contains(have, prereleases=True):
            print(f"  warning: {dist.metadata['Name']} needs {req}, found {have}")

import imageio_ffmpeg  # noqa: E402  tasks/media.py runs this binary (libx264 for the video engines)

exe = imageio_ffmpeg.get_ffmpeg_exe()
encoders = subprocess.run([exe, "-hide_banner", "-encoders"], capture_output=True, text=True, check=True).stdout
print("ffmpeg", exe, "libx264" if "libx264" in encoders else "WITHOUT libx264")
assert "libx264" in encoders, "the ffmpeg binary has no libx264"

import torch  # noqa: E402

print(f"torch {torch.__version__} CUDA {torch.version.cuda}, cuda available: {torch.cuda.is_available()}")
if torch.cuda.is_available():
    print("  ", torch.cuda.get_device_name(0), f"{torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB")
else:
    assert os.environ["GENBUNDLE_DEVICE"] == "cpu", "no CUDA device visible to torch"

import benchmarks.gpu_models, tasks.engines, tasks.generation, tasks.models  # noqa: E402,F401

print("imports ok; engines:", ", ".join(e.name for e in benchmarks.gpu_models.measured_engines()))
EOF

    local args=(--arch real --engine sd15 --repeat 2 --no-update)
    [ $# -gt 0 ] && args=("$@")
    local t=$(($(left) - 10)) rc
    [ "$t" -lt 60 ] && t=60
    echo "== step 1: python3 -m benchmarks.gpu_models ${args[*]} --out $OUT  (at most ${t} s; $(date -u +%T))"
    timeout -k 15 "$t" python3 -m benchmarks.gpu_models "${args[@]}" --models-dir "$MODELS_DIR" --out "$OUT"
    rc=$?
    echo "== step 1 ended: exit $rc after ${SECONDS} s in all"
    [ "$rc" -eq 124 ] && echo "error: step 1 ran out of time (TOTAL_BUDGET_S=$TOTAL_BUDGET_S)"
    [ "$rc" -ne 0 ] && return "$rc"

    if [ $# -eq 0 ] && [ -n "$EXTRA_ENGINES" ] && [ "$(left)" -ge "$MIN_EXTRA_S" ]; then
        local extra=(--arch real --repeat 2 --no-update)
        for e in $EXTRA_ENGINES; do extra+=(--engine "$e"); done
        t=$(($(left) - 10))
        echo "== step 2: python3 -m benchmarks.gpu_models ${extra[*]} --out $OUT/extra  (at most ${t} s; $(date -u +%T))"
        timeout -k 15 "$t" python3 -m benchmarks.gpu_models "${extra[@]}" --models-dir "$MODELS_DIR" --out "$OUT/extra"
        rc=$?
        echo "== step 2 ended: exit $rc after ${SECONDS} s in all$([ "$rc" -eq 124 ] && echo ' (out of time: step 1 stands)')"
    elif [ $# -eq 0 ] && [ -n "$EXTRA_ENGINES" ]; then
        echo "== step 2 skipped: $(left) s left, under MIN_EXTRA_S=$MIN_EXTRA_S"
    fi
    timeout 30 nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv || true
    ls -la "$OUT" "$OUT/extra" 2>/dev/null
    return 0 # step 1's figures are in; a failed step 2 is in the log
}

main "$@" 2>&1 | tee "$OUT/run.log"
