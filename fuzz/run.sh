#!/usr/bin/env bash
# Fuzzes every target for SECONDS_PER_TARGET (default 60), one at a time at the lowest CPU
# priority, and prints one table: target | executions | exec/s | crashes. Each run starts
# from a temporary copy of fuzz/corpus/<target>/ and fuzz/regressions/<target>/, so what the
# fuzzer adds stays out of git; crashes are copied to fuzz/regressions/<target>/ and each
# run's libFuzzer output is kept in fuzz/logs/<target>.log (ignored by git).
#
#   fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]
#   FUZZ_RUNS=10000000 fuzz/run.sh 3600   # each target until 10M executions, at most an hour
#
# Needs a nightly toolchain (libFuzzer's instrumentation); installs cargo-fuzz if missing.
set -euo pipefail

seconds=${1:-60}
shift || true
limit=()
[ -z "${FUZZ_RUNS:-}" ] || limit=(-runs="$FUZZ_RUNS")
fuzz_dir=$(cd "$(dirname "$0")" && pwd)
cd "$fuzz_dir"

if ! rustup toolchain list | grep -q '^nightly'; then
    echo "fuzz/run.sh: no nightly toolchain; install it with: rustup toolchain install nightly" >&2
    exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
# The same dependency versions as the main workspace, rather than whatever is newest today.
[ -f Cargo.lock ] || cp ../Cargo.lock Cargo.lock

# No sanitizer (-s none): credgate is #![forbid(unsafe_code)], so ASan would mostly watch
# well-fuzzed dependencies at half the speed. --debug-assertions turns on overflow checks,
# so arithmetic that would wrap in a release build panics here as it does in the tests.
build_flags=(-s none --release --debug-assertions)
cargo +nightly fuzz build "${build_flags[@]}"

targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo +nightly fuzz list)
host=$(rustc +nightly -vV | sed -n 's/^host: //p')
bin_dir=${CARGO_TARGET_DIR:-$fuzz_dir/target}/$host/release
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

rows=()
for target in "${targets[@]}"; do
    corpus=$work/$target/corpus
    artifacts=$work/$target/artifacts/
    mkdir -p "$corpus" "$artifacts"
    for seeds in corpus regressions; do
        [ -d "$seeds/$target" ] && cp "$seeds/$target"/* "$corpus/" 2>/dev/null || true
    done
    dict=()
    [ -f "dictionaries/$target.dict" ] && dict=(-dict="dictionaries/$target.dict")
    echo "== $target: ${seconds}s" >&2
    # A crash ends the run (non-zero exit); the table counts it instead.
    nice -n 19 "$bin_dir/$target" "$corpus" "${dict[@]}" "${limit[@]}" \
        -max_total_time="$seconds" -print_final_stats=1 -timeout=10 \
        -artifact_prefix="$artifacts" >"$work/$target.log" 2>&1 || true
    executions=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/$target.log" | tail -1)
    per_second=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$work/$target.log" | tail -1)
    crashes=0
    for artifact in "$artifacts"*; do
        [ -f "$artifact" ] || continue
        crashes=$((crashes + 1))
        mkdir -p "regressions/$target"
        cp "$artifact" "regressions/$target/"
        echo "$target: $(basename "$artifact") copied to fuzz/regressions/$target/ (see fuzz/logs/$target.log)" >&2
    done
    mkdir -p logs && cp "$work/$target.log" "logs/$target.log"
    rows+=("$(printf '| %-17s | %12s | %7s | %7s |' "$target" "${executions:-?}" "${per_second:-?}" "$crashes")")
done

printf '| %-17s | %12s | %7s | %7s |\n' target executions exec/s crashes
printf '|%s|%s|%s|%s|\n' "-------------------" "--------------" "---------" "---------"
printf '%s\n' "${rows[@]}"
