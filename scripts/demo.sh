#!/usr/bin/env bash
# Incident 000, before and after, on this machine.
#
# An HA arbiter probes a database port with a tiny C program (socket,
# connect with a 2 s SO_SNDTIMEO, close) in a loop. Every probe leaves a
# TIME_WAIT entry for 60 s; probing fast enough exhausts the ephemeral port
# range and the probe fails with EADDRNOTAVAIL ("Cannot assign requested
# address"), which the arbiter takes for a dead master.
#
# This script, as root on Debian 12: installs what is missing for it alone
# (DEMO_PACKAGES in setup-deps.sh: the compiler, CMake, fmt, CLI11, iproute2,
# procps), builds into <repo>/build the library, the command and the two
# programs it runs (nothing of the tests), then in a throw-away network namespace (tcp_tw_reuse=0, a
# 100-port ephemeral range, a listener on 127.0.0.1:5432) runs the same,
# unmodified prober loop of 3x the range twice:
#   1. as is                                   -> runs out of ports
#   2. under `tcpfix run --close rst --`       -> every probe succeeds
# and prints: run | probes ok | EADDRNOTAVAIL | TIME_WAIT left.
# Exit status 0 if the demonstration came out as it should, 1 if not.
# Each run gets a namespace of its own; all of them are removed on exit.
# BUILD_DIR overrides the build directory.
set -euo pipefail

# shellcheck source=setup-deps.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/setup-deps.sh"   # sets REPO_DIR, BUILD_DIR

tcpfix_require_root
tcpfix_setup_deps demo
tcpfix_build demo

BUILD=$BUILD_DIR
PROBE=$BUILD/tests/programs/port_probe
SINK=$BUILD/tests/programs/sink_server
TCPFIX=$BUILD/tcpfix
for f in "$PROBE" "$SINK" "$TCPFIX"; do
    [[ -x $f ]] || { echo "demo.sh: $f was not built" >&2; exit 1; }
done

RANGE_LO=40000
RANGE_HI=40099
RANGE=$((RANGE_HI - RANGE_LO + 1))
PROBES=$((3 * RANGE))
PORT=5432
NAMESPACES=()

# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
    local ns pid
    for ns in "${NAMESPACES[@]}"; do
        for pid in $(ip netns pids "$ns" 2>/dev/null); do
            kill -9 "$pid" 2>/dev/null || true
        done
        ip netns del "$ns" 2>/dev/null || true
    done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# new_namespace NAME: lo up, TIME_WAIT reuse off (the host loopback has it on,
# which hides the incident), stray RSTs unable to end a TIME_WAIT early
# (tcp_rfc1337=1, so the ceiling is exactly the range), a narrow port range,
# a listener on PORT.
new_namespace() {
    local ns=$1 _
    ip netns add "$ns"
    NAMESPACES+=("$ns")
    ip -n "$ns" link set lo up
    ip netns exec "$ns" sysctl -qw net.ipv4.tcp_tw_reuse=0 net.ipv4.tcp_rfc1337=1 \
        "net.ipv4.ip_local_port_range=$RANGE_LO $RANGE_HI"
    ip netns exec "$ns" "$SINK" -p "$PORT" -t 120000 >/dev/null &
    disown
    for _ in $(seq 50); do
        if [[ -n $(ip netns exec "$ns" ss -Htln "( sport = :$PORT )") ]]; then
            return 0
        fi
        sleep 0.1
    done
    echo "demo.sh: the listener in $ns did not start" >&2
    return 1
}

ROWS=()
# arm LABEL CMD...: runs the prober loop through CMD in a fresh namespace.
arm() {
    local label=$1 ns out summary ok ena tw
    shift
    ns=tcpfix-demo-$$-${#ROWS[@]}
    new_namespace "$ns"
    echo
    echo "== $label"
    echo "   ip netns exec $ns ${*:+$* }$PROBE 127.0.0.1 $PORT $PROBES"
    # A clean environment: no LD_PRELOAD or TCPFIX_* of the caller's.
    out=$(ip netns exec "$ns" env -i PATH="$PATH" "$@" "$PROBE" 127.0.0.1 "$PORT" "$PROBES" 2>&1) ||
        true
    # The incident's symptom, as the prober reported it (first and count).
    if grep -q EADDRNOTAVAIL <<<"$out"; then
        echo "   $(grep -m1 EADDRNOTAVAIL <<<"$out")"
        echo "   ... $(grep -c EADDRNOTAVAIL <<<"$out") such failures"
    fi
    summary=$(tail -n1 <<<"$out")
    echo "   $summary"
    if [[ ! $summary =~ ^ok=([0-9]+)\ eaddrnotavail=([0-9]+)\ other=([0-9]+)$ ]]; then
        echo "demo.sh: the prober did not finish; its output:" >&2
        echo "$out" >&2
        exit 1
    fi
    ok=${BASH_REMATCH[1]}
    ena=${BASH_REMATCH[2]}
    sleep 0.3
    tw=$(ip netns exec "$ns" ss -Htan state time-wait | wc -l)
    ROWS+=("$label|$ok/$PROBES|$ena|$tw")
}

echo
echo "Incident 000: $PROBES probes of 127.0.0.1:$PORT, ephemeral range $RANGE_LO-$RANGE_HI ($RANGE ports), tcp_tw_reuse=0"
arm "port_probe, unmodified"
arm "tcpfix run --close rst -- port_probe" "$TCPFIX" run --close rst --

echo
printf '%-40s | %-10s | %-13s | %s\n' "run" "probes ok" "EADDRNOTAVAIL" "TIME_WAIT left"
printf '%-40s-+-%-10s-+-%-13s-+-%s\n' "----------------------------------------" "----------" \
    "-------------" "--------------"
for row in "${ROWS[@]}"; do
    IFS='|' read -r label ok ena tw <<<"$row"
    printf '%-40s | %-10s | %-13s | %s\n' "$label" "$ok" "$ena" "$tw"
done

IFS='|' read -r _ before_ok before_ena _ <<<"${ROWS[0]}"
IFS='|' read -r _ after_ok after_ena after_tw <<<"${ROWS[1]}"
echo
if [[ $before_ena -gt 0 && $after_ok == "$PROBES/$PROBES" && $after_ena -eq 0 && $after_tw -eq 0 ]]; then
    echo "Without tcpfix the prober ran out of ports ($before_ok probes ok, $before_ena EADDRNOTAVAIL); with TCPFIX_CLOSE=rst"
    echo "every probe ended with RST, left no TIME_WAIT entry, and all $PROBES succeeded."
    exit 0
fi
echo "demo.sh: the demonstration did not come out as expected (see the table)" >&2
exit 1
