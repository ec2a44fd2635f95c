#!/usr/bin/env bash
# Runs every test: the pure algorithms (unit and property tests) and the integration tests,
# which build the module and start their own redis-server processes on free ports.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
cargo test --workspace
