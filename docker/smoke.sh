#!/usr/bin/env bash
# Smoke test of the image and the compose stack, on a machine with a Docker engine (no GPU needed).
#   bash docker/smoke.sh          (or: make docker-test)
# 1. builds genbundle:cpu from docker/Dockerfile;
# 2. makes a bundle in a container with --network=none, as a non-root uid, into a bind mount,
#    with the image's DejaVu font on the cover; checks every file belongs to that uid and
#    re-hashes the bundle with `genbundle verify`;
# 3. brings the stack up (project genbundle-smoke, random credentials, its own ports on
#    127.0.0.1) and waits for every health check, workers included; checks the published ports
#    listen on 127.0.0.1 only, that the Prefect API refuses a request without its auth string,
#    and that the UI is served, asks for a login and calls the published API address;
# 4. runs the nightly deployment on the cpu worker, then a dispatched bundle whose generations
#    run on warm workers (`genbundle worker --with-healthcheck`, as the GPU services run it) for
#    the three GPU pools, served from the CPU image, healthy by their /health endpoint;
# 5. verifies both bundles in the S3 store with `genbundle verify s3://...`;
# 6. tears everything down (containers, volumes, network) and checks nothing is left.
# Exits non-zero at the first failed check. Needs the images the compose file names
# (postgres:16, minio/minio, minio/mc) and about 4 GB of disk.
#
# Environment: DOCKER_BUILD_ARGS (extra `docker build` arguments, e.g. a torch index),
# SMOKE_SKIP_BUILD=1 (use the genbundle:cpu already built), SMOKE_UID (the uid for step 2 when run
# as root; default 4321), SMOKE_PORT_BASE (default 14200: the UI on it, S3 on +1, console on +2).
set -euo pipefail
cd "$(dirname "$0")/.."

T0=$(date +%s)
STEP_T=$T0
step() {
  local now; now=$(date +%s)
  printf '\n== [%4ss, previous step %ss] %s\n' "$((now - T0))" "$((now - STEP_T))" "$*"
  STEP_T=$now
}
fail() { echo "SMOKE FAILED: $*" >&2; exit 1; }

IMAGE=genbundle:cpu
PROJECT=genbundle-smoke
WORK=$(mktemp -d /tmp/genbundle-smoke.XXXXXX)
chmod 755 "$WORK"
ENV_FILE=$WORK/smoke.env
PORT_BASE=${SMOKE_PORT_BASE:-14200}
compose() { docker compose -p "$PROJECT" --env-file "$ENV_FILE" -f docker/compose.yaml "$@"; }

cleanup() {
  local rc=$?
  trap - EXIT
  if [ -f "$ENV_FILE" ]; then
    step "tear down"
    [ "$rc" -ne 0 ] && compose logs --no-color --tail 40 2>/dev/null | grep -v -i -E "auth|password|secret" || true
    compose down --volumes --remove-orphans --timeout 10 || rc=1
    left=$(docker ps -aq --filter "label=com.docker.compose.project=$PROJECT")
    vols=$(docker volume ls -q --filter "label=com.docker.compose.project=$PROJECT")
    # and no anonymous volume of the one-off workers
    vols="$vols $(docker volume ls -q | sort | comm -13 "$WORK/volumes.before" - | tr '\n' ' ')"
    vols=${vols// /}
    if [ -n "$left$vols" ]; then echo "SMOKE FAILED: left behind: $left $vols" >&2; rc=1; fi
  fi
  rm -rf "$WORK"
  printf '\n== smoke test %s in %ss\n' "$([ "$rc" -eq 0 ] && echo passed || echo FAILED)" "$(($(date +%s) - T0))"
  exit "$rc"
}
trap cleanup EXIT

# ---------------------------------------------------------------------------------------------
if [ "${SMOKE_SKIP_BUILD:-0}" != 1 ]; then
  step "build $IMAGE"
  # shellcheck disable=SC2086  # DOCKER_BUILD_ARGS is a list of arguments
  docker build ${DOCKER_BUILD_ARGS:-} -f docker/Dockerfile -t "$IMAGE" .
fi
docker image inspect "$IMAGE" --format "$IMAGE: {{.Size}} bytes, user {{.Config.User}}" \
  || fail "$IMAGE is not built"
[ "$(docker image inspect "$IMAGE" --format '{{.Config.User}}')" != "" ] || fail "the image runs as root"

# ---------------------------------------------------------------------------------------------
RUN_UID=$(id -u) RUN_GID=$(id -g)
if [ "$RUN_UID" = 0 ]; then RUN_UID=${SMOKE_UID:-4321} RUN_GID=${SMOKE_UID:-4321}; fi
step "a bundle in a container: --network=none, --user $RUN_UID:$RUN_GID, bind mount"
OUT=$WORK/out
mkdir "$OUT" && chown "$RUN_UID:$RUN_GID" "$OUT"
FONT=/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf
docker run --rm --network=none --user "$RUN_UID:$RUN_GID" -v "$OUT:/bundles" "$IMAGE" \
  run --models tiny --title "Smoke Ünïcode Заголовок" --set "cover.font=$FONT"
mapfile -t manifests < <(find "$OUT" -name bundle.json -not -path '*/.work/*')
[ "${#manifests[@]}" = 1 ] || fail "expected one bundle.json under the bind mount, found ${#manifests[@]}"
BUNDLE_DIR=$(dirname "${manifests[0]}")
not_owned=$(find "$OUT" \( -not -uid "$RUN_UID" -o -not -gid "$RUN_GID" \) -print | head -5)
[ -z "$not_owned" ] || fail "files not owned by $RUN_UID:$RUN_GID: $not_owned"
grep -q "DejaVuSans.ttf" "${manifests[0]}" || fail "the manifest does not name the font the cover was typeset with"
docker run --rm --network=none --user "$RUN_UID:$RUN_GID" -v "$OUT:/bundles:ro" "$IMAGE" \
  verify "/bundles/$(basename "$BUNDLE_DIR")"
echo "bundle $(basename "$BUNDLE_DIR"): $(find "$BUNDLE_DIR" -maxdepth 1 -type f | wc -l) files, all owned by $RUN_UID:$RUN_GID"

# ---------------------------------------------------------------------------------------------
step "stack up (project $PROJECT, ports $PORT_BASE-$((PORT_BASE + 2)) on 127.0.0.1)"
secret() { head -c 18 /dev/urandom | base64 | tr -d '/+='; }
docker volume ls -q | sort >"$WORK/volumes.before"
umask 077
cat >"$ENV_FILE" <<EOF
PREFECT_PORT=$PORT_BASE
S3_PORT=$((PORT_BASE + 1))
S3_CONSOLE_PORT=$((PORT_BASE + 2))
PREFECT_AUTH_STRING=smoke:$(secret)
POSTGRES_PASSWORD=$(secret)
MINIO_ROOT_USER=smoke
MINIO_ROOT_PASSWORD=$(secret)
GPU_SLOTS=3
EOF
umask 022
compose up -d --wait --wait-timeout 420 postgres prefect-server minio worker-cpu
compose ps --format 'table {{.Service}}\t{{.Status}}'
[ "$(compose ps -q worker-cpu | xargs docker inspect --format '{{.State.Health.Status}}')" = healthy ] \
  || fail "worker-cpu is not healthy"

step "published ports: 127.0.0.1 only; the API wants its auth string; the UI is served"
for spec in "prefect-server 4200" "minio 9000" "minio 9001"; do
  # shellcheck disable=SC2086
  addr=$(compose port $spec)
  echo "$spec -> $addr"
  case "$addr" in 127.0.0.1:*) ;; *) fail "$spec is published on $addr, not 127.0.0.1" ;; esac
done
API=http://127.0.0.1:$PORT_BASE/api
code=$(curl -s -o /dev/null -w '%{http_code}' "$API/health")
[ "$code" = 200 ] || fail "GET /api/health gave $code"
code=$(curl -s -o /dev/null -w '%{http_code}' -X POST -H 'Content-Type: application/json' -d '{}' "$API/deployments/filter")
[ "$code" = 401 ] || fail "the API answered $code without the auth string (want 401)"
AUTH=$(sed -n 's/^PREFECT_AUTH_STRING=//p' "$ENV_FILE")
code=$(printf 'user = "%s"\n' "$AUTH" | curl -s -o /dev/null -w '%{http_code}' -K - -X POST \
  -H 'Content-Type: application/json' -d '{}' "$API/deployments/filter")
[ "$code" = 200 ] || fail "the API answered $code with the auth string (want 200)"
echo "unauthenticated: 401, authenticated: 200"
ui=$(curl -s -w '\n%{http_code}' "http://127.0.0.1:$PORT_BASE/")
[ "$(echo "$ui" | tail -1)" = 200 ] && echo "$ui" | grep -q -i "<html" || fail "the Prefect UI is not served at /"
settings=$(curl -s "http://127.0.0.1:$PORT_BASE/ui-settings")
echo "$settings" | grep -q '"auth":"BASIC"' || fail "the UI does not ask for the auth string: $settings"
echo "$settings" | grep -q "\"api_url\":\"http://127.0.0.1:$PORT_BASE/api\"" || fail "the UI calls the wrong API: $settings"
echo "UI served at http://127.0.0.1:$PORT_BASE with a login (basic auth)"

# ---------------------------------------------------------------------------------------------
step "nightly deployment on the cpu worker"
compose exec -T worker-cpu prefect deployment run asset-bundle/nightly --watch --watch-timeout 600

step "dispatched bundle: GPU pools served by warm workers on the CPU image"
# The GPU services' command (compose.yaml, x-gpu-worker) on the CPU image: their device
# reservations need a GPU. Each with a /bundles of its own, as the GPU workers have: generations
# reach the bundle flow only through the S3 store's work area. worker-cpu's health check (GET
# 127.0.0.1:8080/health) applies: the warm worker serves it with --with-healthcheck.
gpu_worker=$(compose --profile gpu config --format json | python3 -c \
  'import json, sys; print(" ".join(json.load(sys.stdin)["services"]["worker-gpu-image"]["entrypoint"][1:]))')
case "$gpu_worker" in "worker "*"--with-healthcheck"*"--pool") ;; *) fail "unexpected GPU worker command: $gpu_worker" ;; esac
for pool in gpu-image gpu-audio gpu-video; do
  # shellcheck disable=SC2086  # $gpu_worker is the argument list
  compose run -d --no-deps --name "$PROJECT-$pool" -v /bundles --entrypoint genbundle worker-cpu \
    $gpu_worker "$pool" >/dev/null
done
for pool in gpu-image gpu-audio gpu-video; do
  for _ in $(seq 90); do
    health=$(docker inspect --format '{{.State.Health.Status}}' "$PROJECT-$pool")
    [ "$health" = healthy ] && break
    sleep 1
  done
  [ "$health" = healthy ] || fail "the $pool worker is $health"
done
echo "gpu-image, gpu-audio and gpu-video warm workers healthy ($gpu_worker <pool>)"
DISPATCHED='{"title": "Smoke Dispatched", "author": "genbundle smoke test", "tagline": "Made across four workers"}'
compose exec -T worker-cpu prefect deployment run asset-bundle/dispatched \
  --param "brief=$DISPATCHED" --watch --watch-timeout 900

# ---------------------------------------------------------------------------------------------
step "genbundle verify against the S3 store"
listing=$(compose exec -T worker-cpu genbundle ls s3://genbundle/bundles)
echo "$listing"
for title in "The Glowing Forest" "Smoke Dispatched"; do
  url=$(echo "$listing" | grep -F "$title" | grep -o 's3://[^ ]*' | head -1)
  [ -n "$url" ] || fail "no bundle titled '$title' in s3://genbundle/bundles"
  compose exec -T worker-cpu genbundle verify "$url"
done
dispatched_url=$(echo "$listing" | grep -F "Smoke Dispatched" | grep -o 's3://[^ ]*' | head -1)
for pool in gpu-image gpu-audio gpu-video; do
  # Read whole first: `docker logs | grep -q` under pipefail fails when grep stops reading early.
  worker_log=$(docker logs "$PROJECT-$pool" 2>&1)
  grep -q "submitting flow run" <<<"$worker_log" \
    || fail "the $pool worker ran no flow run: the dispatched bundle did not go through it"
  # A warm worker (its default name says so) ran it in its own process; the generations themselves
  # may be the nightly bundle's, found finished in the S3 work area (same prompts and seed).
  grep -q "Worker 'WarmWorker [^']*' submitting flow run" <<<"$worker_log" \
    || { tail -40 <<<"$worker_log"; fail "the $pool runs did not go through a warm worker (genbundle worker)"; }
done
echo "verified: the nightly bundle and $dispatched_url"
