#!/usr/bin/env bash
# Installs what building and testing the module needs, if it is missing (Debian/Ubuntu):
# redis-server and redis-tools, a C compiler, clang/libclang (bindgen), and a Rust toolchain.
set -euo pipefail

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"

packages=()
command -v redis-server >/dev/null || packages+=(redis-server)
command -v redis-cli >/dev/null || packages+=(redis-tools)
command -v cc >/dev/null || packages+=(build-essential)
command -v curl >/dev/null || packages+=(curl ca-certificates)
ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 || packages+=(clang libclang-dev)

if [ ${#packages[@]} -gt 0 ]; then
    echo "Installing: ${packages[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${packages[@]}" >/dev/null
    # Debian starts its own redis service on install: stop it, we run our own servers.
    if [[ " ${packages[*]} " == *" redis-server "* ]]; then
        $sudo systemctl stop redis-server 2>/dev/null || $sudo service redis-server stop 2>/dev/null || true
    fi
fi

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
