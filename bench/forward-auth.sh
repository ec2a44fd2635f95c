#!/usr/bin/env bash
# Latency of forward auth: what Caddy's forward_auth to the gateway's /auth adds to a proxied
# request. Redis with the module and the gateway run from the images scripts/verify-docker.sh
# builds (localhost/redis-ratelimit:verify, localhost/ratelimit-gateway:verify; run it first,
# as root), on the host's network and free ports; Caddy (Debian's, scripts/install-deps.sh)
# runs three sites: an upstream answering "ok", a plain reverse_proxy to it, and the
# docs/forward-auth.md Caddyfile in front of it. One curl connection per case sends N requests
# one after another (keep-alive); the first 10 are left out. The user's limit is too big to
# deny, so every subrequest does the whole work (block, key, policy, limit, history, counts).
#
#   [N=1000] bench/forward-auth.sh
set -euo pipefail
n=${N:-1000}
podman="podman --runtime /usr/sbin/runc"
command -v caddy >/dev/null || { echo "needs caddy: run scripts/install-deps.sh" >&2; exit 1; }
for image in localhost/redis-ratelimit:verify localhost/ratelimit-gateway:verify; do
    $podman image exists "$image" || { echo "needs $image: run scripts/verify-docker.sh" >&2; exit 1; }
done
dir=$(mktemp -d)
containers=()
caddy_pid=""
cleanup() {
    for cid in "${containers[@]}"; do $podman rm -f "$cid" >/dev/null 2>&1 || true; done
    [ -n "$caddy_pid" ] && kill "$caddy_pid" 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
redis_port=$(free_port)
gateway_port=$(free_port)
upstream_port=$(free_port)
plain_port=$(free_port)
auth_port=$(free_port)
admin=bench-admin-key-0123456789abcdef0123456789
big=token:1000000000000:1000000000:1s

containers+=("$($podman run -d --network host localhost/redis-ratelimit:verify \
    redis-server --loadmodule /usr/local/lib/redis/modules/libredis_ratelimit.so \
    --port "$redis_port" --bind 127.0.0.1 --save '')")
containers+=("$($podman run -d --network host -e RUST_LOG=warn \
    -e GATEWAY_LISTEN="127.0.0.1:$gateway_port" -e GATEWAY_REDIS="redis://127.0.0.1:$redis_port" \
    -e RATELIMIT_ADMIN_KEY=$admin -e GATEWAY_DEFAULT_LIMIT=$big -e GATEWAY_IP_LIMIT=off \
    -e GATEWAY_TRUSTED_PROXIES=127.0.0.1 localhost/ratelimit-gateway:verify)")
for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$gateway_port/healthz" && break; sleep 0.1; done
key=$(curl -s -X POST "http://127.0.0.1:$gateway_port/users" -H "Authorization: Bearer $admin" \
    -d '{"username": "bench"}' | python3 -c 'import json, sys; print(json.load(sys.stdin)["api_key"])')

cat >"$dir/Caddyfile" <<CADDY
{
	admin off
	auto_https off
}
http://:$upstream_port {
	bind 127.0.0.1
	respond "ok" 200
}
http://:$plain_port {
	bind 127.0.0.1
	reverse_proxy 127.0.0.1:$upstream_port
}
http://:$auth_port {
	bind 127.0.0.1
	forward_auth 127.0.0.1:$gateway_port {
		uri /auth
		copy_headers X-User-Id RateLimit RateLimit-Policy
	}
	reverse_proxy 127.0.0.1:$upstream_port
}
CADDY
HOME=$dir XDG_CONFIG_HOME=$dir/config XDG_DATA_HOME=$dir/data \
    caddy run --adapter caddyfile --config "$dir/Caddyfile" >"$dir/caddy.log" 2>&1 &
caddy_pid=$!
for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$upstream_port/" && break; sleep 0.1; done

# N requests on one connection: each one's status and time; fails on any status but 200.
measure() { # name, url, curl options...
    local name=$1 url=$2
    shift 2
    for _ in $(seq "$n"); do printf 'url = "%s"\noutput = "/dev/null"\n' "$url"; done >"$dir/curl.cfg"
    curl -s -w '%{http_code} %{time_total}\n' "$@" -K "$dir/curl.cfg" | tail -n +11 >"$dir/times"
    if grep -qv '^200 ' "$dir/times"; then
        echo "$name: not every answer was 200:" >&2
        cut -d' ' -f1 "$dir/times" | sort | uniq -c >&2
        exit 1
    fi
    cut -d' ' -f2 "$dir/times" | sort -n | awk -v name="$name" \
        '{t[NR] = $1} END {printf "%-28s %6d %9.2fms %9.2fms\n", name, NR, t[int(NR / 2)] * 1000, t[int(NR * 0.99)] * 1000}'
}
echo "$(caddy version | cut -d' ' -f1) and the gateway's image, $(nproc) cores, load $(cut -d' ' -f1 /proc/loadavg)"
printf '%-28s %6s %11s %11s\n' case requests p50 p99
measure "caddy reverse_proxy" "http://127.0.0.1:$plain_port/api/items"
measure "GET /auth (direct)" "http://127.0.0.1:$gateway_port/auth" -H "Authorization: Bearer $key" \
    -H "X-Forwarded-Method: GET" -H "X-Forwarded-Uri: /api/items"
measure "caddy forward_auth + proxy" "http://127.0.0.1:$auth_port/api/items" -H "Authorization: Bearer $key"
# Every subrequest was a limit check (2 N of them: direct and through Caddy).
echo "limit checks in Redis: $(redis-cli -p "$redis_port" INFO ratelimit | grep -m1 '^ratelimit_all:' | tr -d '\r')"
