#!/usr/bin/env bash
# Installs what is missing, builds into <repo>/build, runs the unit, hook and
# stress tests (ctest), the same under ASan+UBSan and under TSan
# (scripts/sanitize.sh, into <repo>/build-asan and build-tsan), the config
# parser under libFuzzer for 60 s (scripts/fuzz.sh, <repo>/build-fuzz), then
# the integration tests (pytest, in network namespaces; needs root). Exits
# non-zero if any of them fails. BUILD_DIR overrides the build directory.
set -uo pipefail

# shellcheck source=setup-deps.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/setup-deps.sh"   # sets REPO_DIR, BUILD_DIR

tcpfix_require_root || exit 1
tcpfix_setup_deps || { echo "test.sh: installing packages failed" >&2; exit 1; }
tcpfix_build || { echo "test.sh: build failed" >&2; exit 1; }

cd "$REPO_DIR"
echo "== ctest"
ctest --test-dir "$BUILD_DIR" --output-on-failure
ctest_rc=$?
if [[ $ctest_rc -ne 0 ]]; then
    echo "== ctest FAILED (exit $ctest_rc); running the integration tests anyway"
fi

# Sanitizer builds (ASan+UBSan, then TSan) of the library, the unit and hook
# tests and a short stress: builds of their own beside BUILD_DIR.
echo "== sanitizers: scripts/sanitize.sh address thread"
SANITIZE_BUILD_ROOT=${SANITIZE_BUILD_ROOT:-$(dirname "$BUILD_DIR")} "$REPO_DIR/scripts/sanitize.sh" address thread
sanitize_rc=$?

# The configuration parser under libFuzzer, bounded (FUZZ_SECONDS, default 60).
echo "== fuzz: scripts/fuzz.sh --seconds ${FUZZ_SECONDS:-60}"
FUZZ_BUILD_DIR=${FUZZ_BUILD_DIR:-$(dirname "$BUILD_DIR")/build-fuzz} \
    "$REPO_DIR/scripts/fuzz.sh" --seconds "${FUZZ_SECONDS:-60}"
fuzz_rc=$?

echo "== pytest tests/integration"
TCPFIX_BUILD_DIR=$BUILD_DIR /usr/bin/python3 -m pytest -v -p no:cacheprovider tests/integration
pytest_rc=$?

echo "== summary: ctest exit $ctest_rc, sanitizers exit $sanitize_rc, fuzz exit $fuzz_rc, pytest exit $pytest_rc"
if [[ $ctest_rc -ne 0 || $sanitize_rc -ne 0 || $fuzz_rc -ne 0 || $pytest_rc -ne 0 ]]; then
    exit 1
fi
exit 0
