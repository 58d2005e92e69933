#!/usr/bin/env bash
# Runs tcpfix's benchmarks: installs what is missing (the test dependencies,
# plus valgrind and python3-matplotlib), builds into $BUILD_DIR (default
# <repo>/build) if anything changed, and runs bench/run_bench.py, which
# writes bench/results/report.json, bench/results/chart.png and
# bench/results/summary.md (the tables the README quotes). About five
# minutes on 2 cores. Arguments go to the driver:
#   scripts/bench.sh --quick               the smoke pass (~40 s, figures not for quoting)
#   scripts/bench.sh --only hooks,callgrind
#   scripts/bench.sh --out /tmp/bench
# Needs root (network namespaces, sysctl inside them).
set -euo pipefail

# shellcheck source=scripts/setup-deps.sh
source "$(dirname "${BASH_SOURCE[0]}")/setup-deps.sh"   # sets REPO_DIR, BUILD_DIR

tcpfix_require_root
tcpfix_setup_deps

bench_missing=()
for pkg in valgrind python3-matplotlib; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
        bench_missing+=("$pkg")
    fi
done
if [[ ${#bench_missing[@]} -gt 0 ]]; then
    echo "== packages: installing ${bench_missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y --no-install-recommends "${bench_missing[@]}"
fi

tcpfix_build
exec /usr/bin/python3 "$REPO_DIR/bench/run_bench.py" --build-dir "$BUILD_DIR" "$@"
