# shellcheck shell=bash
# Shared by scripts/demo.sh and scripts/test.sh (source it; it sets no shell
# options of its own). On Debian 12 as root:
#   tcpfix_require_root   refuses to go on as another user
#   tcpfix_setup_deps     installs the packages below that dpkg says are
#                         missing (apt-get update first, only if one is)
#   tcpfix_build          configures and builds into $BUILD_DIR
#                         (default <repo>/build)
# Run directly (bash scripts/setup-deps.sh) it does all three.
#
# No variable here is named TCPFIX_*: the library refuses unknown TCPFIX_*
# names in the environment of every program it is preloaded into.

REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD_DIR=${BUILD_DIR:-$REPO_DIR/build}

# What building and testing need: compilers and libraries for the build;
# iproute2/procps/nftables/strace for the namespace tests and the demo; the
# real programs the integration tests run under the preload (haproxy,
# redis-server + php-redis, MariaDB + sysbench, php-fpm + cgi-fcgi from
# libfcgi-bin for the shared pool); tmux to drive `tcpfix top` in a terminal;
# matplotlib for ab --plot and
# the benchmark chart; man-db/groff for the manuals; dpkg-dev/file for the
# package; prometheus for promtool's check of the .prom output.
DEPS_PACKAGES=(cmake make g++ libfmt-dev libcli11-dev libgtest-dev python3 python3-pytest
                 iproute2 nftables procps strace
                 haproxy redis-server php-cli php-redis php-fpm libfcgi-bin mariadb-server mariadb-client sysbench tmux
                 python3-matplotlib valgrind man-db groff-base dpkg-dev file prometheus
                 clang libclang-rt-14-dev)

tcpfix_require_root() {
    if [[ $(id -u) -ne 0 ]]; then
        echo "${0##*/}: must run as root (installs packages, creates network namespaces)" >&2
        return 1
    fi
}

tcpfix_missing_packages() {
    local pkg
    for pkg in "${DEPS_PACKAGES[@]}"; do
        if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
            printf '%s\n' "$pkg"
        fi
    done
}

tcpfix_setup_deps() {
    local missing
    mapfile -t missing < <(tcpfix_missing_packages)
    if [[ ${#missing[@]} -eq 0 ]]; then
        echo "== packages: all present (${DEPS_PACKAGES[*]})"
        return 0
    fi
    echo "== packages: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update || return 1
    apt-get install -y --no-install-recommends "${missing[@]}" || return 1
}

tcpfix_build() {
    echo "== build: $BUILD_DIR"
    cmake -S "$REPO_DIR" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=RelWithDebInfo || return 1
    cmake --build "$BUILD_DIR" -j"$(nproc)" || return 1
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    set -euo pipefail
    tcpfix_require_root
    tcpfix_setup_deps
    tcpfix_build
fi
