#!/usr/bin/env bash
# Installs what is missing, builds into <repo>/build, runs the unit and hook
# tests (ctest), then the integration tests (pytest, in network namespaces;
# needs root). Exits non-zero if either fails. pytest runs last so its
# summary is the final line of the output. BUILD_DIR overrides the build
# directory.
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

echo "== pytest tests/integration"
TCPFIX_BUILD_DIR=$BUILD_DIR /usr/bin/python3 -m pytest -v -p no:cacheprovider tests/integration
pytest_rc=$?

if [[ $ctest_rc -ne 0 || $pytest_rc -ne 0 ]]; then
    exit 1
fi
exit 0
