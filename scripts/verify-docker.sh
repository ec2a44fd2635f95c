#!/usr/bin/env bash
# Verifies the Dockerfile where no image can be pulled: the shared verify-dockerfile.sh builds
# it with podman on stand-ins for the official base images and calls RL.TOKEN in the module's
# container; then this script runs the module image's HEALTHCHECK, builds the gateway's stage
# (target `gateway`) and starts it against the module's image, as a user that is not root,
# until GET /healthz answers 200. Needs root. Base images, layers and cargo's caches stay
# between runs (podman's storage, buildah's cache mounts in /var/tmp, and WORK for the
# debootstrapped root), so a later run only rebuilds what changed.
# The shared script is looked for where CI puts it, ../shared/verify-dockerfile.sh from the
# repository's root, then at /work/shared/verify-dockerfile.sh (VERIFY_DOCKERFILE= names
# another). Without it, CI (CI=true) fails, saying what is missing; elsewhere the check is
# skipped, loudly, and succeeds: a machine that cannot build images still runs the rest.
set -euo pipefail
cd "$(dirname "$0")/.."

verify=${VERIFY_DOCKERFILE:-}
if [ -z "$verify" ]; then
    for candidate in ../shared/verify-dockerfile.sh /work/shared/verify-dockerfile.sh; do
        if [ -f "$candidate" ]; then
            verify=$(realpath "$candidate")
            break
        fi
    done
fi
if [ -z "$verify" ] || [ ! -f "$verify" ]; then
    where="${VERIFY_DOCKERFILE:-../shared/verify-dockerfile.sh (from $(pwd)) or /work/shared/verify-dockerfile.sh}"
    if [ "${CI:-}" = true ]; then
        echo "docker: FAILED, the Dockerfile was NOT built or run: verify-dockerfile.sh is missing, looked for $where" >&2
        exit 1
    fi
    echo "==================================================================" >&2
    echo "docker: SKIPPED, the Dockerfile was NOT built or run: no $where" >&2
    echo "==================================================================" >&2
    exit 0
fi

scripts/install-deps.sh    # redis-cli, curl and rustup, which the verification uses on the host
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
export WORK=${WORK:-${XDG_CACHE_HOME:-$HOME/.cache}/redis-ratelimit/dockerfile-verify}
# podman builds OCI images by default, and OCI images drop HEALTHCHECK.
export BUILDAH_FORMAT=docker
bash "$verify"

podman="podman --runtime /usr/sbin/runc"
containers=()
cleanup() {
    for cid in "${containers[@]}"; do
        $podman rm -f "$cid" >/dev/null 2>&1 || true
    done
}
trap cleanup EXIT

# The health check, in a container with only a loopback interface, where the server listens on
# its default port as the check expects. Without systemd, podman logs that it cannot time health
# checks ("unable to get systemd connection"): harmless, the check is run here by hand.
# (The image's tag is the one the shared script gives; a verification run at the same moment
# from another tree on this machine would retag it.)
cid=$($podman run -d --network none localhost/redis-ratelimit:verify)
containers+=("$cid")
healthy=""
for _ in $(seq 50); do
    if $podman healthcheck run "$cid" >/dev/null 2>&1; then
        healthy=yes
        break
    fi
    sleep 0.2
done
if [ -z "$healthy" ]; then
    $podman logs "$cid" 2>&1 | tail -20
    echo "docker: healthcheck never healthy"
    exit 1
fi
echo "docker: ok, healthcheck healthy"

# The gateway's image, under a tag of its own.
gateway_image=localhost/ratelimit-gateway:verify
DOCKER_TARGET=gateway IMAGE_TAG=$gateway_image SKIP_RUN=1 bash "$verify"
user=$($podman image inspect -f '{{.Config.User}}' "$gateway_image")
case "${user%%:*}" in
    "" | 0 | root)
        echo "docker: the gateway's image runs as root ('$user')"
        exit 1
        ;;
esac

# A port nothing answers on (the host's network is shared with the containers).
free_port() {
    local port
    while true; do
        port=$((20000 + RANDOM % 20000))
        if ! (: >"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return
        fi
    done
}

# The module's image with its own CMD on a free port, and the gateway, on the host's network,
# configured by its environment as a deployment would be.
redis_port=$(free_port)
mapfile -t cmd < <($podman image inspect -f '{{range .Config.Cmd}}{{println .}}{{end}}' localhost/redis-ratelimit:verify | sed '/^$/d')
cid=$($podman run -d --network host localhost/redis-ratelimit:verify "${cmd[@]}" --port "$redis_port" --bind 127.0.0.1)
containers+=("$cid")
for _ in $(seq 50); do
    redis-cli -p "$redis_port" PING >/dev/null 2>&1 && break
    sleep 0.2
done
gateway_port=$(free_port)
gid=$($podman run -d --network host \
    -e GATEWAY_LISTEN="127.0.0.1:$gateway_port" \
    -e GATEWAY_REDIS="redis://127.0.0.1:$redis_port" \
    "$gateway_image")
containers+=("$gid")
status=""
for _ in $(seq 100); do
    status=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$gateway_port/healthz" || true)
    [ "$status" = 200 ] && break
    sleep 0.2
done
if [ "$status" != 200 ]; then
    $podman logs "$gid" 2>&1 | tail -20
    echo "docker: the gateway's /healthz answered '$status', not 200"
    exit 1
fi
uid=$($podman exec "$gid" id -u)
if [ "$uid" = 0 ]; then
    echo "docker: the gateway runs as root"
    exit 1
fi
echo "docker: ok, the gateway (uid $uid) answers /healthz 200 on the module's Redis"
