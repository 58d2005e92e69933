#!/usr/bin/env bash
# Builds tcpfix with AddressSanitizer + UndefinedBehaviorSanitizer and with
# ThreadSanitizer (CMake option TCPFIX_SANITIZE), and runs under each the unit
# tests, the hook tests and the short stress runs (ctest in that build
# directory; tests/stress/CMakeLists.txt scales the stress down and preloads
# the sanitizer's runtime ahead of libtcpfix.so).
#
# usage: scripts/sanitize.sh [address] [thread]     (default: both)
#
# Every sanitizer report, from any process (the stress programs fork and
# exec), goes to a file (the *SAN_OPTIONS log_path); the script shows them.
# Exit status: 0 when every selected test passed and no sanitizer reported
# anything; 1 otherwise; 2 when a build failed.
#
# Environment:
#   SANITIZE_BUILD_ROOT  where build-asan/ and build-tsan/ go (default: the repository)
#   SANITIZE_TESTS       ctest -R regex of the tests to run (default below)
#   SANITIZE_EXCLUDE     ctest -E regex of tests left out (default: none)
set -uo pipefail

REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROOT=${SANITIZE_BUILD_ROOT:-$REPO_DIR}
TESTS=${SANITIZE_TESTS:-'^(unit|hooks\.|stress\.)'}
# Nothing is left out by default: every stress test has a scaled-down
# sanitizer variant (tests/stress/CMakeLists.txt).
EXCLUDE=${SANITIZE_EXCLUDE:-}

variants=("$@")
[[ ${#variants[@]} -eq 0 ]] && variants=(address thread)

targets=(tcpfix tcpfix_unit_tests tcpfix_hook_tests tcpfix_early_main tcpfix_stress tcpfix_big_tls_client)

mkdir -p "$ROOT"
status=0
summary=()
for variant in "${variants[@]}"; do
    case $variant in
        address) dir=$ROOT/build-asan; name="ASan+UBSan" ;;
        thread) dir=$ROOT/build-tsan; name="TSan" ;;
        *) echo "sanitize.sh: unknown variant $variant (address, thread)" >&2; exit 2 ;;
    esac
    started=$SECONDS
    echo "== $name: building into $dir"
    # -O1 -g1: a third of the compile time of -O2 -g, line numbers kept in reports.
    if ! cmake -S "$REPO_DIR" -B "$dir" -DTCPFIX_SANITIZE="$variant" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
            "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -g1" "-DCMAKE_C_FLAGS_RELWITHDEBINFO=-O1 -g1" >"$dir.cmake.log" 2>&1 ||
            ! cmake --build "$dir" -j"$(nproc)" --target "${targets[@]}" >>"$dir.cmake.log" 2>&1; then
        tail -30 "$dir.cmake.log" >&2
        echo "sanitize.sh: the $name build failed (log: $dir.cmake.log)" >&2
        exit 2
    fi
    built=$((SECONDS - started))

    logs=$(mktemp -d /tmp/tcpfix-sanitize.XXXXXX)
    # detect_leaks=0: programs under test (gtest, third-party code) are not
    # ours to keep leak-free; verify_asan_link_order=0: ctest preloads
    # libtcpfix.so (itself linked against the runtime) into the hook tests
    # without the runtime first.
    export ASAN_OPTIONS="detect_leaks=0:verify_asan_link_order=0:halt_on_error=1:log_path=$logs/asan"
    export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:log_path=$logs/ubsan"
    # die_after_fork=0: the fork stress's children start threads (tcpfix's
    # watchdog) after a multi-threaded fork, which TSan supports with care.
    export TSAN_OPTIONS="halt_on_error=0:exitcode=66:die_after_fork=0:second_deadlock_stack=1:log_path=$logs/tsan"
    select=(-R "$TESTS")
    [[ -n $EXCLUDE ]] && select+=(-E "$EXCLUDE")
    echo "== $name: ctest ${select[*]}"
    ctest --test-dir "$dir" "${select[@]}" --output-on-failure --timeout 900 2>&1 | tee "$logs/ctest.out"
    ctest_rc=${PIPESTATUS[0]}
    unset ASAN_OPTIONS UBSAN_OPTIONS TSAN_OPTIONS

    reports=()
    for f in "$logs"/asan.* "$logs"/ubsan.* "$logs"/tsan.*; do
        [[ -s $f ]] && reports+=("$f")
    done
    for f in "${reports[@]}"; do
        echo "---- $name report: $f"
        head -80 "$f"
    done
    took=$((SECONDS - started))
    line="$name: build ${built} s, total ${took} s; ctest exit $ctest_rc; ${#reports[@]} sanitizer report file(s)"
    if [[ $ctest_rc -ne 0 || ${#reports[@]} -ne 0 ]]; then
        status=1
        line="FAIL $line (logs kept in $logs)"
    else
        line="PASS $line"
        rm -rf "$logs"
    fi
    summary+=("$line")
done

printf '%s\n' "${summary[@]}"
exit $status
