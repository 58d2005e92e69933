#!/usr/bin/env bash
# Fuzzes tcpfix's configuration parser (every TCPFIX_* variable) for a bounded
# time: tests/fuzz/config_fuzz.cpp, a libFuzzer target built with clang and
# ASan + UBSan into <repo>/build-fuzz, started from the seed corpus kept in
# the repository (tests/fuzz/corpus/config, read only) and the dictionary
# tests/fuzz/config.dict.
#
# usage: scripts/fuzz.sh [--seconds N | --hours N] [--merge] [--standalone]
#   --seconds N   run for N seconds (default 60: the CI budget)
#   --hours N     a long run, by hand
#   --merge       afterwards, add the inputs that found new coverage to the
#                 repository's corpus (libFuzzer -merge=1; commit them by hand)
#   --standalone  use the plain replay-and-mutate driver instead of libFuzzer
#                 (by hand, where clang's libFuzzer cannot be had; never
#                 chosen silently)
# Exit status 0 when nothing broke; 1 when an input crashed the target or
# broke one of its checks (the input is kept and shown, with the command that
# replays it); 2 when the target could not be built.
#
# Installs clang and libclang-rt-14-dev (Debian 12) when missing and running
# as root. FUZZ_BUILD_DIR overrides the build directory.
set -uo pipefail

REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${FUZZ_BUILD_DIR:-$REPO_DIR/build-fuzz}
CORPUS=$REPO_DIR/tests/fuzz/corpus/config
DICT=$REPO_DIR/tests/fuzz/config.dict

seconds=60
merge=0
standalone=0
while [[ $# -gt 0 ]]; do
    case $1 in
        --seconds) seconds=$2; shift 2 ;;
        --hours) seconds=$(( $2 * 3600 )); shift 2 ;;
        --merge) merge=1; shift ;;
        --standalone) standalone=1; shift ;;
        -h|--help) sed -n '2,/^set -u/p' "$0" | sed '$d'; exit 0 ;;
        *) echo "fuzz.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
[[ $seconds =~ ^[0-9]+$ && $seconds -gt 0 ]] || { echo "fuzz.sh: bad duration" >&2; exit 2; }

have_libfuzzer() {
    command -v clang++ >/dev/null || return 1
    local t
    t=$(mktemp -d)
    printf '#include <cstddef>\n#include <cstdint>\nextern "C" int LLVMFuzzerTestOneInput(const uint8_t*, size_t) { return 0; }\n' >"$t/f.cpp"
    clang++ -fsanitize=fuzzer,address "$t/f.cpp" -o "$t/f" >/dev/null 2>&1
    local rc=$?
    rm -rf "$t"
    return $rc
}

if [[ $standalone -eq 0 ]] && ! have_libfuzzer; then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        echo "== fuzz: installing clang and libclang-rt-14-dev"
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y --no-install-recommends clang libclang-rt-14-dev >/dev/null 2>&1 ||
            { apt-get update >/dev/null 2>&1 && apt-get install -y --no-install-recommends clang libclang-rt-14-dev >/dev/null 2>&1; }
    fi
    if ! have_libfuzzer; then
        # Never a quiet downgrade: the standalone driver finds less, so it is
        # only ever chosen by hand.
        echo "fuzz.sh: no libFuzzer here (clang and libclang-rt-14-dev); install them, or pass --standalone" >&2
        exit 2
    fi
fi

compilers=()
if command -v clang++ >/dev/null; then
    compilers=(-DCMAKE_CXX_COMPILER=clang++)
fi
target=config_fuzz
[[ $standalone -eq 1 ]] && target=config_fuzz_standalone

echo "== fuzz: building $target in $BUILD"
mkdir -p "$(dirname "$BUILD")"
if ! cmake -S "$REPO_DIR/tests/fuzz" -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo "${compilers[@]}" >"$BUILD.cmake.log" 2>&1 ||
        ! cmake --build "$BUILD" -j"$(nproc)" --target "$target" >>"$BUILD.cmake.log" 2>&1; then
    tail -30 "$BUILD.cmake.log" >&2
    echo "fuzz.sh: building $target failed (log: $BUILD.cmake.log)" >&2
    exit 2
fi
if [[ ! -x $BUILD/$target ]]; then
    echo "fuzz.sh: $BUILD/$target was not built (no libFuzzer in this compiler? try --standalone)" >&2
    exit 2
fi

work=$(mktemp -d /tmp/tcpfix-fuzz.XXXXXX)
mkdir -p "$work/new"
echo "== fuzz: $target for ${seconds} s; corpus $CORPUS ($(ls "$CORPUS" | wc -l) seeds), scratch $work"
started=$SECONDS
rc=0
if [[ $standalone -eq 0 ]]; then
    # The first corpus directory receives new inputs: the scratch one, so the
    # repository's corpus is only read.
    ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=1} \
    "$BUILD/config_fuzz" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=4096 -max_len=4096 \
        -print_final_stats=1 -dict="$DICT" -artifact_prefix="$work/" "$work/new" "$CORPUS" \
        >"$work/fuzz.log" 2>&1
    rc=$?
    grep -E '^#[0-9]+ +(INITED|DONE)|^stat::(number_of_executed_units|average_exec_per_sec|new_units_added)' "$work/fuzz.log"
else
    # Rounds of 20,000 mutations with fresh seeds until the time is up.
    seed=1
    while (( SECONDS - started < seconds )); do
        "$BUILD/config_fuzz_standalone" -runs=20000 -seed=$seed -dict="$DICT" "$CORPUS" >>"$work/fuzz.log" 2>&1 || {
            rc=$?
            break
        }
        seed=$((seed + 1))
    done
    [[ $rc -eq 0 ]] && echo "standalone: $((seed - 1)) rounds of 20,000 mutations, seeds 1..$((seed - 1))"
fi

if [[ $rc -ne 0 ]]; then
    echo "FAIL fuzz: the target failed (exit $rc) after $((SECONDS - started)) s"
    grep -E 'config_fuzz:|ERROR: |SUMMARY: |runtime error' "$work/fuzz.log" | head -20
    for f in "$work"/crash-* "$work"/timeout-* "$work"/oom-* "$work"/leak-*; do
        [[ -e $f ]] || continue
        echo "-- input $f:"
        od -c "$f" | head -20
        echo "   replay: $BUILD/config_fuzz $f"
    done
    if [[ $standalone -eq 1 ]]; then
        echo "   replay: $BUILD/config_fuzz_standalone -runs=20000 -seed=$seed -dict=$DICT $CORPUS"
    fi
    echo "(log and inputs kept in $work)"
    exit 1
fi

if [[ $merge -eq 1 && $standalone -eq 0 ]]; then
    echo "== fuzz: merging new coverage into $CORPUS"
    "$BUILD/config_fuzz" -merge=1 "$CORPUS" "$work/new" >"$work/merge.log" 2>&1 ||
        { tail -5 "$work/merge.log"; exit 1; }
    grep -E 'MERGE-OUTER: [0-9]+ new files' "$work/merge.log"
fi
rm -rf "$work"
echo "PASS fuzz: no failure in $((SECONDS - started)) s"
exit 0
