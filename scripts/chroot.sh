#!/usr/bin/env bash
# chroot.sh SUITE — prints the root of a cached Debian SUITE userland
# (bullseye, bookworm or trixie), building it first if needed.
#
# The portability tests run the library built here inside other Debian
# userlands (other glibc versions) and their own client programs. Each is a
# `debootstrap --variant=minbase` from Debian's registry plus the packages
# listed below for that suite, cached outside the source tree in
#   ${TCPFIX_CHROOT_CACHE:-/var/tmp/tcpfix-chroots}/SUITE-<key>
# where <key> is a hash of the suite, the package list and this script's
# format version: change the list and a fresh root is built on the next run
# (older roots of that suite are then removed). A root is built in a
# temporary directory under `unshare -m` (the /proc and /dev/pts debootstrap
# and apt mount vanish with that namespace, nothing stays mounted) and
# renamed into place only when complete, under a lock, so concurrent callers
# wait for one build and never see a half-built root.
#
# Callers must treat the root as read-only, except for scratch directories of
# their own under its /tmp, which they remove.
#
# About a minute for debootstrap and one or two for the packages, per suite,
# the first time; nothing after.
set -euo pipefail

suite=${1:?usage: chroot.sh bullseye|bookworm|trixie}
cache=${TCPFIX_CHROOT_CACHE:-/var/tmp/tcpfix-chroots}
mirror=${TCPFIX_DEBIAN_MIRROR:-http://deb.debian.org/debian}
format=1

# What each userland must hold for the tests: its own python3 and curl (real
# clients), gcc to build the test's small C clients against *its* glibc, and
# from Debian 11 incident 001's pair (sysbench 1.0.20 with Connector/C 3.1)
# and Java 11 (the JDK whose sockets end by dup2). procps for ps/kill.
case $suite in
bullseye) packages=(python3 curl ca-certificates gcc libc6-dev sysbench procps
                    openjdk-11-jre-headless) ;;
bookworm) packages=(python3 curl procps) ;;
trixie) packages=(python3 curl ca-certificates gcc libc6-dev procps) ;;
*) echo "chroot.sh: unknown suite '$suite' (bullseye, bookworm or trixie)" >&2; exit 2 ;;
esac

key=$(printf '%s\n' "$format" "$suite" "${packages[@]}" | sha256sum | cut -c1-12)
root=$cache/$suite-$key

if [[ -f $root/.tcpfix-ready ]]; then
    echo "$root"
    exit 0
fi

for tool in debootstrap unshare flock chroot; do
    command -v "$tool" >/dev/null || { echo "chroot.sh: $tool not found" >&2; exit 1; }
done
if [[ $(id -u) -ne 0 ]]; then
    echo "chroot.sh: must run as root (debootstrap, chroot)" >&2
    exit 1
fi

mkdir -p "$cache"
exec 9>"$cache/$suite.lock"
flock 9
if [[ -f $root/.tcpfix-ready ]]; then  # built while we waited
    echo "$root"
    exit 0
fi

work=$(mktemp -d "$cache/.build-$suite-XXXXXX")
trap 'rm -rf --one-file-system "$work"' EXIT
log=$work.log
echo "chroot.sh: building the $suite userland in $work (log: $log)" >&2

# One mount namespace for the whole build: debootstrap's and apt's mounts
# inside the target disappear with it, even if a step fails.
if ! unshare -m --propagation private bash -euo pipefail -c '
    suite=$1 dir=$2 mirror=$3; shift 3
    debootstrap --variant=minbase "$suite" "$dir" "$mirror"
    mountpoint -q "$dir/proc" || mount -t proc proc "$dir/proc"
    export DEBIAN_FRONTEND=noninteractive LC_ALL=C
    chroot "$dir" apt-get update
    chroot "$dir" apt-get install -y --no-install-recommends "$@"
    chroot "$dir" apt-get clean
    rm -rf "$dir"/var/lib/apt/lists/*
    umount "$dir/proc" 2>/dev/null || true
' chroot-build "$suite" "$work/root" "$mirror" "${packages[@]}" >"$log" 2>&1; then
    echo "chroot.sh: building the $suite userland failed; the last lines of $log:" >&2
    tail -n 20 "$log" >&2
    exit 1
fi

touch "$work/root/.tcpfix-ready"
# Older roots of this suite (another package list) are not used any more.
for old in "$cache/$suite"-*; do
    [[ -d $old && $old != "$root" ]] && rm -rf --one-file-system "$old"
done
mv "$work/root" "$root"
rm -f "$log"
echo "$root"
