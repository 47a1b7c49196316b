#!/usr/bin/env bash
# `make docker-smoke`: the compose stack for real, on a machine that reaches no image registry.
#
#  1. installs docker.io, docker-compose (1.29) and debootstrap with apt when missing (needs root)
#  2. starts dockerd when no engine answers, and stops it (by its PID) at the end
#  3. builds a local Debian base image (debootstrap -> docker import) unless it exists already
#  4. builds the project image with `docker-compose build` and this machine's extra build
#     arguments: that base image, the CPU torch wheel from local disk and the machine's CA bundle
#     for pip (both through docker/local/, removed again at the end)
#  5. `docker-compose up -d`: the trainer trains the tiny model and fills the demo knowledge base,
#     then the api starts; waits (bounded) until the api is healthy
#  6. docker/smoke_client.py: chat through the official openai client (plain and streamed),
#     upload a GBK document into a new knowledge base and ask about it (sources must name it)
#  7. checks: the port is bound to 127.0.0.1, the services run as a non-root user, and a second
#     trainer run finds the checkpoint and exits at once
#  8. `docker-compose down -v`, always, also on failure or Ctrl-C; prints the figures
#
# Settings (environment):
#   XIAOPHI_SMOKE_PORT (18000)            host port for the api
#   XIAOPHI_SMOKE_FRESH=1                 remove the images first: figures for a cold build
#   XIAOPHI_SMOKE_BUILDKIT=1              build with BuildKit (the 20.10 client) instead of the
#                                         classic builder
#   XIAOPHI_SMOKE_BASE_IMAGE              (local/xiaophi-smoke-base:bookworm)
#   XIAOPHI_SMOKE_TORCH_WHEEL             (/opt/wheels/torch-2.13.0+cpu-cp311-*.whl when present)
#   XIAOPHI_SMOKE_CA_BUNDLE               (/etc/ssl/certs/ca-certificates.crt when present)
#   XIAOPHI_SMOKE_DEBIAN_MIRROR           (the mirror apt uses here)
#   XIAOPHI_SMOKE_BUILD_TIMEOUT (2400) XIAOPHI_SMOKE_TRAIN_TIMEOUT (2400)
#   XIAOPHI_SMOKE_HEALTH_TIMEOUT (600)    seconds
#   XIAOPHI_SMOKE_POSTGRES=1              the stack with compose.postgres.yaml: KBs in PostgreSQL;
#                                         needs its image (XIAOPHI_POSTGRES_IMAGE, pgvector/
#                                         pgvector:pg18) already loaded or pullable
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
PROJECT=xiaophi-smoke
PORT=${XIAOPHI_SMOKE_PORT:-18000}
IMAGE=xiaophi:smoke
BASE_IMAGE=${XIAOPHI_SMOKE_BASE_IMAGE:-local/xiaophi-smoke-base:bookworm}
BUILD_TIMEOUT=${XIAOPHI_SMOKE_BUILD_TIMEOUT:-2400}
TRAIN_TIMEOUT=${XIAOPHI_SMOKE_TRAIN_TIMEOUT:-2400}
HEALTH_TIMEOUT=${XIAOPHI_SMOKE_HEALTH_TIMEOUT:-600}
LOCAL=docker/local
WORK=$(mktemp -d /tmp/xiaophi-docker-smoke.XXXXXX)

# The Debian package's 20.10 client matches its daemon (and is the one BuildKit works with);
# docker-compose 1.29 builds through the `docker` it finds first on PATH.
export PATH=/usr/bin:/usr/sbin:$PATH
export XIAOPHI_IMAGE=$IMAGE XIAOPHI_HOST_PORT=$PORT XIAOPHI_BIND_ADDRESS=127.0.0.1
unset XIAOPHI_MODELS XIAOPHI_KBS XIAOPHI_DATA XIAOPHI_MODEL XIAOPHI_TRAIN_ARGS XIAOPHI_API_KEYS
if [ "${XIAOPHI_SMOKE_BUILDKIT:-0}" = 1 ]; then
    export DOCKER_BUILDKIT=1 COMPOSE_DOCKER_CLI_BUILD=1
else
    export DOCKER_BUILDKIT=0
fi
FILES=(-f compose.yaml)
KB_BACKEND=local
if [ "${XIAOPHI_SMOKE_POSTGRES:-0}" = 1 ]; then
    FILES+=(-f compose.postgres.yaml)
    KB_BACKEND=postgres
fi
compose() { docker-compose -p "$PROJECT" "${FILES[@]}" "$@"; }

T0=$(date +%s)
DOCKERD_PID=""
COPIED=()
FIGURES=()
STATUS=failed

say() { printf '\n==> [%4ds] %s\n' "$(( $(date +%s) - T0 ))" "$*"; }
figure() { FIGURES+=("$(printf '%-34s %s' "$1" "$2")"); printf '    %s: %s\n' "$1" "$2"; }
fail() { echo "docker-smoke: FAILED: $*" >&2; exit 1; }

cleanup() {
    local rc=$?
    set +e
    if [ "$STATUS" != passed ] && docker info >/dev/null 2>&1; then
        echo "---- trainer log (tail) ----"; compose logs --no-color --tail 40 trainer 2>/dev/null
        echo "---- api log (tail) ----"; compose logs --no-color --tail 60 api 2>/dev/null
    fi
    if docker info >/dev/null 2>&1; then
        say "docker-compose down -v"
        compose down -v --remove-orphans >/dev/null 2>&1
    fi
    for f in "${COPIED[@]}"; do rm -f "$f"; done
    if [ -n "$DOCKERD_PID" ]; then
        say "stopping dockerd (pid $DOCKERD_PID)"
        kill "$DOCKERD_PID" 2>/dev/null
        for _ in $(seq 60); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 0.5; done
        kill -0 "$DOCKERD_PID" 2>/dev/null && kill -9 "$DOCKERD_PID"
    fi
    rm -rf "$WORK"
    if [ ${#FIGURES[@]} -gt 0 ]; then
        echo; echo "docker-smoke figures:"; printf '  %s\n' "${FIGURES[@]}"
    fi
    echo "docker-smoke: $STATUS after $(( $(date +%s) - T0 )) s"
    [ "$STATUS" = passed ] || [ $rc -ne 0 ] || rc=1
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM
trap 'echo "docker-smoke: failed at line $LINENO: $BASH_COMMAND" >&2' ERR

# 1. tools ------------------------------------------------------------------------------------
missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v docker-compose >/dev/null || missing+=(docker-compose)
command -v debootstrap >/dev/null || missing+=(debootstrap)
if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    [ "$(id -u)" = 0 ] || fail "installing ${missing[*]} needs root"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
fi
[ -x "$PY" ] || fail "$PY is missing: run \`make install\` first"
docker-compose version --short | sed 's/^/    docker-compose /'

# 2. engine -----------------------------------------------------------------------------------
if docker info >/dev/null 2>&1; then
    say "using the running docker engine"
else
    say "starting dockerd"
    dockerd >"$WORK/dockerd.log" 2>&1 &
    DOCKERD_PID=$!
    for _ in $(seq 120); do
        docker info >/dev/null 2>&1 && break
        kill -0 "$DOCKERD_PID" 2>/dev/null || { tail -20 "$WORK/dockerd.log"; fail "dockerd exited"; }
        sleep 0.5
    done
    docker info >/dev/null 2>&1 || { tail -20 "$WORK/dockerd.log"; fail "dockerd did not answer in 60 s"; }
fi
docker version --format '    engine {{.Server.Version}}, client {{.Client.Version}}'
compose down -v --remove-orphans >/dev/null 2>&1 || true   # leftovers of an interrupted run

if [ "${XIAOPHI_SMOKE_FRESH:-0}" = 1 ]; then
    say "XIAOPHI_SMOKE_FRESH=1: removing $IMAGE, $BASE_IMAGE and the build cache"
    docker image rm -f "$IMAGE" "$BASE_IMAGE" >/dev/null 2>&1 || true
    docker image prune -f >/dev/null
    docker builder prune -af >/dev/null 2>&1 || true
fi

# 3. base image -------------------------------------------------------------------------------
if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    say "base image $BASE_IMAGE is there already"
    figure "base image build" "reused"
else
    mirror=${XIAOPHI_SMOKE_DEBIAN_MIRROR:-}
    if [ -z "$mirror" ]; then
        mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list 2>/dev/null \
            | grep -oE '(https?|file)://[^ ]+/debian/?( |$)' | grep -v security | head -1 | tr -d ' ' || true)
    fi
    mirror=${mirror:-http://deb.debian.org/debian}
    say "building the base image $BASE_IMAGE (debootstrap bookworm from $mirror)"
    started=$(date +%s)
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$WORK/rootfs" "$mirror" >"$WORK/debootstrap.log" 2>&1 \
        || { tail -20 "$WORK/debootstrap.log"; fail "debootstrap failed"; }
    rm -rf "$WORK"/rootfs/var/cache/apt/archives/*.deb "$WORK"/rootfs/var/lib/apt/lists/*
    tar -C "$WORK/rootfs" -c . | docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["/bin/bash"]' - "$BASE_IMAGE" >/dev/null
    rm -rf "$WORK/rootfs"
    figure "base image build" "$(( $(date +%s) - started )) s"
fi

# 4. project image ----------------------------------------------------------------------------
build_args=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
wheel=${XIAOPHI_SMOKE_TORCH_WHEEL:-$(ls /opt/wheels/torch-2.13.0+cpu-cp311-*.whl 2>/dev/null | head -1 || true)}
if [ -n "$wheel" ]; then
    cp "$wheel" "$LOCAL/" && COPIED+=("$LOCAL/$(basename "$wheel")")
    echo "    torch wheel: $wheel"
fi
ca=${XIAOPHI_SMOKE_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
if [ -f "$ca" ]; then
    cp "$ca" "$LOCAL/smoke-ca.crt" && COPIED+=("$LOCAL/smoke-ca.crt")
    build_args+=(--build-arg PIP_CERT=/tmp/local/smoke-ca.crt)
    echo "    CA bundle for pip: $ca"
fi
say "building $IMAGE (docker-compose build; DOCKER_BUILDKIT=$DOCKER_BUILDKIT)"
started=$(date +%s)
timeout "$BUILD_TIMEOUT" docker-compose -p "$PROJECT" "${FILES[@]}" build "${build_args[@]}" \
    >"$WORK/build.log" 2>&1 || { tail -40 "$WORK/build.log"; fail "the image build failed or timed out"; }
grep -E '^(torch [0-9]|built in)' "$WORK/build.log" | sed 's/^/    /' || true
figure "image build (docker-compose build)" "$(( $(date +%s) - started )) s"
size=$(docker image inspect -f '{{.Size}}' "$IMAGE")
figure "image size" "$(( size / 1000000 )) MB"

# 5. up ---------------------------------------------------------------------------------------
say "docker-compose up -d (the trainer runs first; the api starts when it succeeded)"
up_started=$(date +%s)
timeout "$TRAIN_TIMEOUT" docker-compose -p "$PROJECT" "${FILES[@]}" up -d >"$WORK/up.log" 2>&1 &
up_pid=$!
last=""
while kill -0 "$up_pid" 2>/dev/null; do
    sleep 15
    line=$(compose logs --no-color --tail 1 trainer 2>/dev/null | tail -1 | cut -c1-150)
    [ -n "$line" ] && [ "$line" != "$last" ] && echo "    [$(( $(date +%s) - up_started ))s] $line"
    last=$line
done
wait "$up_pid" || { cat "$WORK/up.log"; fail "docker-compose up failed or timed out (${TRAIN_TIMEOUT}s)"; }
trainer_id=$(compose ps -q trainer)
read -r t_start t_end t_code < <(docker inspect -f '{{.State.StartedAt}} {{.State.FinishedAt}} {{.State.ExitCode}}' "$trainer_id")
[ "$t_code" = 0 ] || fail "the trainer exited with $t_code"
compose logs --no-color trainer | grep -E 'trainer:|serving|ready|==>' | sed 's/^/    /' || true
figure "trainer (pipeline + demo KB)" "$(( $(date -d "$t_end" +%s) - $(date -d "$t_start" +%s) )) s"

api_id=$(compose ps -q api)
[ -n "$api_id" ] || fail "no api container"
say "waiting for the api to be healthy (at most ${HEALTH_TIMEOUT}s)"
deadline=$(( $(date +%s) + HEALTH_TIMEOUT ))
while :; do
    health=$(docker inspect -f '{{.State.Health.Status}}' "$api_id")
    [ "$health" = healthy ] && break
    [ "$(docker inspect -f '{{.State.Running}}' "$api_id")" = true ] || fail "the api container stopped"
    [ "$(date +%s)" -lt "$deadline" ] || fail "the api was not healthy within ${HEALTH_TIMEOUT}s (status: $health)"
    sleep 2
done
api_started=$(date -d "$(docker inspect -f '{{.State.StartedAt}}' "$api_id")" +%s)
figure "api start -> healthy" "$(( $(date +%s) - api_started )) s"
figure "docker-compose up -> api healthy" "$(( $(date +%s) - up_started )) s"

# 6. client -----------------------------------------------------------------------------------
say "client: chat, stream, upload, RAG (official openai client)"
"$PY" docker/smoke_client.py --url "http://127.0.0.1:$PORT" --kb-backend "$KB_BACKEND"

# 7. checks -----------------------------------------------------------------------------------
say "checks: bind address, user, a second trainer run"
binding=$(docker port "$api_id" 8000/tcp | head -1)
echo "    api published on $binding"
case "$binding" in 127.0.0.1:*) ;; *) fail "the api is published on $binding, not 127.0.0.1" ;; esac
uid=$(docker exec "$api_id" id -u)
echo "    api runs as uid $uid ($(docker exec "$api_id" id -un))"
[ "$uid" != 0 ] || fail "the api runs as root"
started=$(date +%s)
out=$(compose run -T --rm --no-deps trainer 2>&1) || { echo "$out"; fail "a second trainer run failed"; }
echo "$out" | grep -q "nothing to train" || { echo "$out"; fail "a second trainer run did not find the checkpoint"; }
echo "    second trainer run: $(echo "$out" | grep 'nothing to train') ($(( $(date +%s) - started )) s)"

STATUS=passed
figure "total (make docker-smoke)" "$(( $(date +%s) - T0 )) s (before down)"
