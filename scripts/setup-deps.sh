# shellcheck shell=bash
# Shared by scripts/demo.sh and scripts/test.sh (source it; it sets no shell
# options of its own). On Debian 12 as root:
#   tcpfix_require_root   refuses to go on as another user
#   tcpfix_setup_deps [demo]
#                         installs the packages below that dpkg says are
#                         missing (apt-get update first, only if one is):
#                         DEPS_PACKAGES, or with `demo` only DEMO_PACKAGES
#   tcpfix_build [demo]   configures and builds into $BUILD_DIR (default
#                         <repo>/build): everything with the tests, or with
#                         `demo` only the library, the command and the
#                         demo's two programs
# Run directly (bash scripts/setup-deps.sh) it does all three, for the tests.
#
# No variable here is named TCPFIX_*: the library refuses unknown TCPFIX_*
# names in the environment of every program it is preloaded into.

REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD_DIR=${BUILD_DIR:-$REPO_DIR/build}

# What building and testing need: compilers and libraries for the build;
# iproute2/procps/nftables/strace for the namespace tests and the demo; the
# real programs the integration tests run under the preload (haproxy,
# redis-server + php-redis + redis-cli, MariaDB + sysbench, PostgreSQL +
# pgbench, the JDK 17, socat, php-fpm + cgi-fcgi from libfcgi-bin for the
# shared pool); tmux to drive `tcpfix top` in a terminal; matplotlib for ab --plot and
# the benchmark chart; man-db/groff for the manuals; dpkg-dev/file for the
# package; prometheus for promtool's check of the .prom output; clang (BPF
# target), bpftool and the static libbpf/libelf/zlib/zstd for `tcpfix attach`,
# golang-go for the static Go client its tests run.
#
# For the portability tests: debootstrap (Debian 11 and 13 userlands),
# libseccomp-dev and pkg-config (tests/oldkernel: a kernel made to look old),
# rpm, rpm2cpio and cpio (the .rpm), musl-tools (a musl program to refuse).
DEPS_PACKAGES=(cmake make g++ libfmt-dev libcli11-dev libgtest-dev python3 python3-pytest
                 iproute2 nftables procps strace
                 haproxy redis-server redis-tools php-cli php-redis php-fpm libfcgi-bin
                 mariadb-server mariadb-client sysbench tmux
                 postgresql postgresql-contrib openjdk-17-jdk-headless socat
                 python3-matplotlib valgrind man-db groff-base dpkg-dev file prometheus
                 clang libclang-rt-14-dev
                 bpftool libbpf-dev libelf-dev zlib1g-dev libzstd-dev golang-go
                 debootstrap libseccomp-dev pkg-config rpm rpm2cpio cpio musl-tools)

# What the demo needs and nothing more: the build of the library, the command
# and two small C programs, and the namespace tools it runs them with.
DEMO_PACKAGES=(cmake make g++ libfmt-dev libcli11-dev iproute2 procps)
DEMO_TARGETS=(tcpfix tcpfix_cli port_probe sink_server)

tcpfix_require_root() {
    if [[ $(id -u) -ne 0 ]]; then
        echo "${0##*/}: must run as root (installs packages, creates network namespaces)" >&2
        return 1
    fi
}

tcpfix_missing_packages() {
    local pkg
    for pkg in "$@"; do
        if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
            printf '%s\n' "$pkg"
        fi
    done
}

tcpfix_setup_deps() {
    local missing wanted=("${DEPS_PACKAGES[@]}")
    [[ ${1:-} == demo ]] && wanted=("${DEMO_PACKAGES[@]}")
    mapfile -t missing < <(tcpfix_missing_packages "${wanted[@]}")
    if [[ ${#missing[@]} -eq 0 ]]; then
        echo "== packages: all present (${wanted[*]})"
        return 0
    fi
    echo "== packages: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=600 update || return 1
    apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends "${missing[@]}" || return 1
}

tcpfix_build() {
    echo "== build: $BUILD_DIR${1:+ ($1)}"
    if [[ ${1:-} == demo ]]; then
        # A build tree the tests configured keeps its tests; a fresh one gets none.
        local testing=OFF
        [[ -f $BUILD_DIR/CMakeCache.txt ]] && grep -q '^BUILD_TESTING:BOOL=ON' "$BUILD_DIR/CMakeCache.txt" &&
            testing=ON
        cmake -S "$REPO_DIR" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DBUILD_TESTING=$testing ||
            return 1
        cmake --build "$BUILD_DIR" -j"$(nproc)" --target "${DEMO_TARGETS[@]}" || return 1
        return 0
    fi
    cmake -S "$REPO_DIR" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DBUILD_TESTING=ON || return 1
    cmake --build "$BUILD_DIR" -j"$(nproc)" || return 1
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    set -euo pipefail
    tcpfix_require_root
    tcpfix_setup_deps
    tcpfix_build
fi
