#!/usr/bin/env bash
# Fuzzes, each for a bounded time, two libFuzzer targets built with clang and
# ASan + UBSan into <repo>/build-fuzz, each started from its seed corpus kept
# in the repository (read only):
#   config  tcpfix's configuration parser, every TCPFIX_* variable
#           (tests/fuzz/config_fuzz.cpp, corpus/config, config.dict)
#   share   a share's segment as a process finds it in /dev/shm, and all
#           that processes and `tcpfix top` do with it (share_fuzz.cpp,
#           corpus/share)
#
# usage: scripts/fuzz.sh [--seconds N | --hours N] [--target T] [--merge] [--standalone]
#   --seconds N   run config for N seconds and share for N/2 (default 60:
#                 the CI budget, 90 s in all)
#   --hours N     a long run, by hand (both targets N hours)
#   --target T    config, share or all (default all)
#   --merge       afterwards, add the inputs that found new coverage to the
#                 repository's corpora (libFuzzer -merge=1; commit them by hand)
#   --standalone  use the plain replay-and-mutate drivers instead of libFuzzer
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
DICT=$REPO_DIR/tests/fuzz/config.dict

seconds=60
hours=0
which=all
merge=0
standalone=0
while [[ $# -gt 0 ]]; do
    case $1 in
        --seconds) seconds=$2; shift 2 ;;
        --hours) seconds=$(( $2 * 3600 )); hours=1; shift 2 ;;
        --target) which=$2; shift 2 ;;
        --merge) merge=1; shift ;;
        --standalone) standalone=1; shift ;;
        -h|--help) sed -n '2,/^set -u/p' "$0" | sed '$d'; exit 0 ;;
        *) echo "fuzz.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
[[ $seconds =~ ^[0-9]+$ && $seconds -gt 0 ]] || { echo "fuzz.sh: bad duration" >&2; exit 2; }
case $which in
    config) targets=(config) ;;
    share) targets=(share) ;;
    all) targets=(config share) ;;
    *) echo "fuzz.sh: --target must be config, share or all" >&2; exit 2 ;;
esac

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
suffix=""
[[ $standalone -eq 1 ]] && suffix=_standalone
build_targets=()
for t in "${targets[@]}"; do build_targets+=("${t}_fuzz$suffix"); done

echo "== fuzz: building ${build_targets[*]} in $BUILD"
mkdir -p "$(dirname "$BUILD")"
if ! cmake -S "$REPO_DIR/tests/fuzz" -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo "${compilers[@]}" >"$BUILD.cmake.log" 2>&1 ||
        ! cmake --build "$BUILD" -j"$(nproc)" --target "${build_targets[@]}" >>"$BUILD.cmake.log" 2>&1; then
    tail -30 "$BUILD.cmake.log" >&2
    echo "fuzz.sh: building ${build_targets[*]} failed (log: $BUILD.cmake.log)" >&2
    exit 2
fi
for t in "${build_targets[@]}"; do
    if [[ ! -x $BUILD/$t ]]; then
        echo "fuzz.sh: $BUILD/$t was not built (no libFuzzer in this compiler? try --standalone)" >&2
        exit 2
    fi
done

# Runs one target; 0 when nothing broke.
fuzz_one() {
    local name=$1 secs=$2
    local target=${name}_fuzz$suffix
    local corpus=$REPO_DIR/tests/fuzz/corpus/$name
    local work
    work=$(mktemp -d /tmp/tcpfix-fuzz-$name.XXXXXX)
    mkdir -p "$work/new"
    local extra=()
    if [[ $name == config ]]; then
        extra=(-dict="$DICT" -max_len=4096)
    else
        extra=(-max_len=16384)
    fi
    echo "== fuzz: $target for ${secs} s; corpus $corpus ($(ls "$corpus" | wc -l) seeds), scratch $work"
    local started=$SECONDS rc=0 seed=1
    if [[ $standalone -eq 0 ]]; then
        # The first corpus directory receives new inputs: the scratch one, so
        # the repository's corpus is only read.
        ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=1} \
        "$BUILD/$target" -max_total_time="$secs" -timeout=10 -rss_limit_mb=4096 "${extra[@]}" \
            -print_final_stats=1 -artifact_prefix="$work/" "$work/new" "$corpus" \
            >"$work/fuzz.log" 2>&1
        rc=$?
        grep -E '^#[0-9]+ +(INITED|DONE)|^stat::(number_of_executed_units|average_exec_per_sec|new_units_added)' "$work/fuzz.log"
    else
        # Rounds of 20,000 mutations with fresh seeds until the time is up.
        local dict=()
        [[ $name == config ]] && dict=(-dict="$DICT")
        while (( SECONDS - started < secs )); do
            "$BUILD/$target" -runs=20000 -seed=$seed "${dict[@]}" "$corpus" >>"$work/fuzz.log" 2>&1 || {
                rc=$?
                break
            }
            seed=$((seed + 1))
        done
        [[ $rc -eq 0 ]] && echo "standalone: $((seed - 1)) rounds of 20,000 mutations, seeds 1..$((seed - 1))"
    fi

    if [[ $rc -ne 0 ]]; then
        echo "FAIL fuzz $name: the target failed (exit $rc) after $((SECONDS - started)) s"
        grep -E '(config|share)_fuzz:|ERROR: |SUMMARY: |runtime error' "$work/fuzz.log" | head -20
        local f
        for f in "$work"/crash-* "$work"/timeout-* "$work"/oom-* "$work"/leak-*; do
            [[ -e $f ]] || continue
            echo "-- input $f:"
            od -c "$f" | head -20
            echo "   replay: $BUILD/$target $f"
        done
        if [[ $standalone -eq 1 ]]; then
            echo "   replay: $BUILD/$target -runs=20000 -seed=$seed ${dict[*]} $corpus"
        fi
        echo "(log and inputs kept in $work)"
        return 1
    fi

    if [[ $merge -eq 1 && $standalone -eq 0 ]]; then
        echo "== fuzz: merging new coverage into $corpus"
        "$BUILD/$target" -merge=1 "${extra[@]}" "$corpus" "$work/new" >"$work/merge.log" 2>&1 ||
            { tail -5 "$work/merge.log"; return 1; }
        grep -E 'MERGE-OUTER: [0-9]+ new files' "$work/merge.log"
    fi
    rm -rf "$work"
    echo "PASS fuzz $name: no failure in $((SECONDS - started)) s"
    return 0
}

overall=0
for t in "${targets[@]}"; do
    secs=$seconds
    [[ $t == share && $hours -eq 0 ]] && secs=$(( seconds / 2 > 0 ? seconds / 2 : 1 ))
    fuzz_one "$t" "$secs" || overall=1
done
exit $overall
