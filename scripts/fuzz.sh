#!/usr/bin/env bash
# Runs the fuzz targets (fuzz/, see CONTRIBUTING.md "Fuzzing") for a bounded time each, one after
# another, and fails if any of them finds a crash:
#
#   scripts/fuzz.sh [seconds_per_target] [target ...]     # default: 20 s, every target
#   FUZZ_RUNS=10000000 scripts/fuzz.sh 0 codec           # a number of executions instead
#
# Needs the nightly toolchain (`cargo +nightly`); installs what building and testing need
# (scripts/install-deps.sh) and cargo-fuzz if they are missing, and builds the module, which
# the `restore` target loads into a redis-server of its own (a Unix socket in a temporary
# directory; no TCP port). Each target writes its seeds into fuzz/corpus/<target> at start
# (not committed; the corpus grows there); crashes land in fuzz/artifacts/<target>, each
# target's output in fuzz/logs/<target>.log. Runs at nice 10. FUZZ_TARGET_DIR puts the
# instrumented build elsewhere than fuzz/target (CI keeps it outside the clone).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"

seconds=${1:-20}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(args codec restore)

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz.sh: the nightly toolchain is missing (cargo +nightly fails); cargo fuzz needs it:" >&2
    echo "  rustup toolchain install nightly --profile minimal" >&2
    exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== Installing cargo-fuzz"
    start=$SECONDS
    cargo install cargo-fuzz --locked
    echo "== cargo-fuzz installed in $((SECONDS - start)) s"
fi

start=$SECONDS
if [[ " ${targets[*]} " == *" restore "* ]]; then
    cargo build --release --lib
fi
# Debug assertions on (-a): an arithmetic overflow is a crash, as it is a bug.
build=(-a)
[ -n "${FUZZ_TARGET_DIR:-}" ] && build+=(--target-dir "$FUZZ_TARGET_DIR")
cargo +nightly fuzz build "${build[@]}"
echo "== Fuzz targets built in $((SECONDS - start)) s"

limits=(-print_final_stats=1)
[ "$seconds" -gt 0 ] && limits+=("-max_total_time=$seconds")
[ -n "${FUZZ_RUNS:-}" ] && limits+=("-runs=$FUZZ_RUNS")
mkdir -p fuzz/logs
failed=()
for target in "${targets[@]}"; do
    extra=()
    [ -f "fuzz/dicts/$target.dict" ] && extra+=("-dict=fuzz/dicts/$target.dict")
    log="fuzz/logs/$target.log"
    echo "== Fuzzing $target (${limits[*]})"
    start=$SECONDS
    if RL_FUZZ_SEED_DIR="fuzz/corpus/$target" RL_FUZZ_MODULE="$PWD/target/release/libredis_ratelimit.so" \
        nice -n 10 cargo +nightly fuzz run "${build[@]}" "$target" -- "${limits[@]}" "${extra[@]}" >"$log" 2>&1; then
        stat() { grep -Eo "stat::$1:[[:space:]]*[0-9]+" "$log" | grep -Eo '[0-9]+$' || echo '?'; }
        runs=$(stat number_of_executed_units)
        speed=$(stat average_exec_per_sec)
        coverage=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | grep -Eo 'cov: [0-9]+ ft: [0-9]+' || echo '?')
        echo "== $target: $runs executions in $((SECONDS - start)) s ($speed/s), $coverage, no crash"
    else
        echo "== $target FAILED after $((SECONDS - start)) s; the end of $log:" >&2
        # The panic and the failing input, without libFuzzer's dictionary and backtraces.
        grep -Ev '^".*# Uses: [0-9]+$|^[[:space:]]+([0-9]+: |at |#[0-9]+ )' "$log" | tail -40 >&2
        failed+=("$target")
    fi
done

if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz.sh: crashes in: ${failed[*]} (inputs in fuzz/artifacts/<target>)" >&2
    exit 1
fi
