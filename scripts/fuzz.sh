#!/usr/bin/env bash
# Runs every fuzz target of fuzz/ for a short time (FUZZ_SECONDS, default 20)
# from its seed corpus in fuzz/corpus/<target>. New inputs go to a scratch
# directory, not the repository. A crash fails the run and names its input
# (under fuzz/artifacts/<target>/); make it a regression seed in the corpus
# once fixed.
#
#   scripts/fuzz.sh                 # every target
#   scripts/fuzz.sh qmp_reply 60    # one target, for 60 s
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "fuzz: $*"; }

if ! command -v cargo-fuzz > /dev/null; then
    log "cargo install --locked cargo-fuzz"
    cargo install --locked --quiet cargo-fuzz
fi
# libFuzzer's coverage needs nightly's flags; without a nightly toolchain,
# stable builds the targets uninstrumented by sanitizers (-s none) as well.
toolchain=()
if rustup run nightly rustc --version > /dev/null 2>&1; then
    toolchain=(+nightly)
fi

targets=("${1:-}")
[[ -n ${targets[0]} ]] || mapfile -t targets < <(cd fuzz && cargo "${toolchain[@]}" fuzz list)
seconds=${2:-${FUZZ_SECONDS:-20}}

log "building ${#targets[@]} targets"
(cd fuzz && cargo "${toolchain[@]}" fuzz build -s none -O)

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
failed=()
for t in "${targets[@]}"; do
    mkdir -p "$scratch/$t"
    if (cd fuzz && cargo "${toolchain[@]}" fuzz run -s none -O "$t" "$scratch/$t" "corpus/$t" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
        > "$scratch/$t.log" 2>&1); then
        log "$t: $(grep -E '^stat::number_of_executed_units' "$scratch/$t.log" | awk '{print $2}') runs in ${seconds}s, no crash"
    else
        log "$t: FAILED"
        tail -40 "$scratch/$t.log"
        failed+=("$t")
    fi
done
if ((${#failed[@]})); then
    log "crashes in: ${failed[*]} (inputs in fuzz/artifacts/)"
    exit 1
fi
log "ok"
