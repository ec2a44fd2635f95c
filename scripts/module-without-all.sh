#!/usr/bin/env bash
# Builds the module as it was just before RL.ALL (commit 04a3b71, the parent of the commit
# that added it) and prints the path of its .so. The client's tests load it
# (RL_MODULE_WITHOUT_ALL) to check what the client promises on such a build: check_all falls
# back to single calls. Redis cannot hide one command of a module (rename-command is applied
# before modules load), so an older build is the real way to get a module without RL.ALL.
# The .so is kept under ~/.cache/redis-ratelimit, so the build (a few minutes, in a target
# directory of its own under target/) happens once per machine.
set -euo pipefail
cd "$(dirname "$0")/.."
commit=04a3b7168c862d0f0a04c932191dfd5ef8d2792a
out="${XDG_CACHE_HOME:-$HOME/.cache}/redis-ratelimit/module-${commit:0:7}.so"
if [ ! -f "$out" ]; then
    if ! git cat-file -e "$commit^{commit}" 2>/dev/null; then
        echo "module-without-all: commit ${commit:0:7} is not in this clone (git fetch --unshallow)" >&2
        exit 1
    fi
    src="target/module-${commit:0:7}"
    rm -rf "$src/src"
    mkdir -p "$src/src"
    git archive "$commit" | tar -x -C "$src/src"
    echo "module-without-all: building ${commit:0:7} in $src" >&2
    cargo build -q --release --lib -p redis-ratelimit --manifest-path "$src/src/Cargo.toml" \
        --target-dir "$src/target" >&2
    mkdir -p "$(dirname "$out")"
    cp "$src/target/release/libredis_ratelimit.so" "$out.tmp"
    mv "$out.tmp" "$out"
fi
echo "$out"
