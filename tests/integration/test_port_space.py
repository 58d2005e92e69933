"""Incident 002: the port space of one source address, and how tcpfix widens
it -- on real, unmodified programs, in namespaces the tests make themselves.

A client (or proxy) that closes first keeps one TIME_WAIT entry per
connection for 60 s, and one source address has only the namespace's
ephemeral range of ports per destination. The tests give each namespace a
narrow range (100 ports) and tcp_tw_reuse=0, so the ceiling is reached in a
few hundred connections and is exact: nothing else in the namespace uses
ports. Every test asserts what the kernel saw (`ss` in the namespace, the
peer's view), not only tcpfix's counters.

  * TCPFIX_SOURCE_ADDRS: a plain client runs out after range-size
    connections; with four source addresses, after four times as many, and
    every connection came from one of the four; a non-local address is
    refused before main.
  * haproxy (Debian's, unmodified) in TCP mode: its backend connects run out
    of ports; with N source addresses it carries N times the load with zero
    backend errors; TCPFIX_CLOSE=rst does not help it (it half-closes).
  * TCPFIX_BIND_NO_PORT: two sockets bound to ADDR:0 share the namespace's
    only port when they connect to different destinations.
  * Threads: 8 threads connecting through TCPFIX_SOURCE_ADDRS never get the
    same 4-tuple twice and never EADDRINUSE.
  * TCPFIX_PORT_RANGE: local ports stay within LO-HI.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from conftest import tcpfix_env
from helpers import only_stats_file, run_prober, settled_time_wait, show
from port_space_env import (BACK_PORT, FRONT_PORT, GREETING, HAPROXY_IP, REQUEST,
                            PortSpaceEnvError, four_tuples, link_namespaces, local_addrs,
                            local_ports, run_client, start_haproxy)

RANGE = (40000, 40099)  # 100 ephemeral ports in the namespace under test

SOURCES = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"]  # local on lo (127/8)
PORT = 5432


def first_failure(stdout: str) -> int | None:
    """Index of the first failed probe in port_probe's output."""
    m = re.search(r"^probe (\d+): ", stdout, re.M)
    return int(m.group(1)) if m else None


def stats_env(lib, stats_dir: Path, **variables: str) -> dict[str, str]:
    return tcpfix_env(lib, stats=str(stats_dir / "stats-%p.json"), **variables)


def assert_ranges_used(by_addr: Counter, sources: list[str], n: int) -> None:
    """TIME_WAIT entries by local address after a run past the ceiling: only
    the given sources, each with its whole range of n ports (the kernel holds
    one entry per 4-tuple)."""
    assert set(by_addr) == set(sources), by_addr
    assert all(v == n for v in by_addr.values()), by_addr


def assert_roughly_even(counts: dict[str, int], what: str, tolerance: float = 0.10) -> None:
    values = list(counts.values())
    assert min(values) > 0 and (max(values) - min(values)) <= tolerance * max(values), (
        f"{what} not spread evenly over the source addresses: {counts}")


# -- 1. a plain client: one source address vs four -------------------------------------------

def test_source_addrs_multiply_a_clients_connections(make_netns, lib, program, stats_dir):
    """port_probe (socket, connect, close: the client closes first and keeps
    the TIME_WAIT) to one destination: range-size connections without
    tcpfix, four times as many with four source addresses. Each arm in a
    fresh namespace with the same range, so neither sees the other's
    TIME_WAIT entries."""
    count = 5 * (RANGE[1] - RANGE[0] + 1)

    # Without tcpfix: the incident.
    plain = make_netns(port_range=RANGE)
    n = plain.range_size
    plain.start_sink(program("sink_server"), PORT, timeout_ms=55000)
    summary, r = run_prober(plain, program, "c", "127.0.0.1", PORT, count)
    assert summary == {"ok": n, "eaddrnotavail": count - n, "other": 0}, show(r)
    assert first_failure(r.stdout) == n, r.stdout[:2000]
    assert "EADDRNOTAVAIL" in r.stdout.splitlines()[0], r.stdout[:2000]
    tw = settled_time_wait(plain, PORT)
    assert local_addrs(tw) == {"127.0.0.1": n}, tw

    # With four source addresses: four times as many before the first failure.
    ns = make_netns(port_range=RANGE)
    sink = ns.start_sink(program("sink_server"), PORT, timeout_ms=55000)
    summary, r = run_prober(ns, program, "c", "127.0.0.1", PORT, count,
                            env=stats_env(lib, stats_dir, source_addrs=",".join(SOURCES)))
    ok = 4 * n
    assert summary == {"ok": ok, "eaddrnotavail": count - ok, "other": 0}, show(r)
    assert first_failure(r.stdout) == ok, r.stdout[:2000]

    # The kernel's view: every TIME_WAIT entry is from one of the four
    # addresses, and each address's whole range is used.
    tw = settled_time_wait(ns, PORT)
    assert_ranges_used(local_addrs(tw), SOURCES, n)
    assert len(set(four_tuples(tw))) == len(tw)
    # The peer's view: every successful probe reached it, from one of the
    # four, and ended with FIN.
    ends = sink.wait_ends(ok)
    assert len(ends) == ok
    assert {e["peer"].rsplit(":", 1)[0] for e in ends} == set(SOURCES)
    assert all(e["end"] == "EOF" for e in ends), [e for e in ends if e["end"] != "EOF"][:5]

    # tcpfix's own account agrees.
    _, st = only_stats_file(stats_dir)
    per = st["source_addrs"]
    assert set(per) == set(SOURCES), per
    binds = {a: per[a]["binds"] for a in SOURCES}
    assert_roughly_even(binds, "binds")
    assert st["source_addr_binds"] == sum(binds.values()), st
    assert st["source_addr_binds"] >= 4 * n, st
    # Each probe past the ceiling tried every address before failing.
    assert all(per[a]["eaddrnotavail"] >= count - ok for a in SOURCES), per
    assert st["connect_errors"].get("EADDRNOTAVAIL") == count - ok, st["connect_errors"]


@pytest.mark.parametrize("value", ["10.99.99.99", "127.0.0.2,10.99.99.99"])
def test_source_addrs_refuses_a_non_local_address(netns, lib, program, value):
    """A source address this host does not have would make every connect
    fail: refused before main, exit 2, one line in the SPEC's format."""
    r = netns.run([program("port_probe"), "127.0.0.1", str(PORT), "1"],
                  env=tcpfix_env(lib, source_addrs=value))
    assert r.returncode == 2, show(r)
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, show(r)
    assert lines[0].startswith("tcpfix: TCPFIX_SOURCE_ADDRS="), show(r)
    assert "10.99.99.99" in lines[0], show(r)
    assert r.stdout == "", f"the program ran although its policy was refused:\n{show(r)}"


# -- 2. haproxy, unmodified ------------------------------------------------------------------

CLIENT_RANGE = (20000, 29999)  # the clients' namespace: never the one that runs out


@pytest.fixture
def haproxy_site(make_netns, program, tmp_path):
    """A haproxy namespace (100-port range, the backend sink_server on
    127.0.0.1:BACK_PORT greeting every connection) and a client namespace
    with a wide range, joined by a veth pair. Returns (client_ns, haproxy_ns,
    sink, start) where start(env) starts haproxy in the haproxy namespace."""
    client_ns = make_netns(port_range=CLIENT_RANGE)
    hp_ns = make_netns(port_range=RANGE)
    link_namespaces(client_ns, hp_ns)
    sink = hp_ns.start_sink(program("sink_server"), BACK_PORT, greeting=GREETING, timeout_ms=55000)
    started = []

    def start(env=None):
        try:
            hp = start_haproxy(hp_ns, tmp_path / f"haproxy-{len(started)}", env=env)
        except PortSpaceEnvError as e:
            pytest.fail(f"haproxy could not be started: {e}", pytrace=False)
        started.append(hp)
        return hp

    try:
        yield client_ns, hp_ns, sink, start
    finally:
        for hp in started:
            hp.stop()


def load(client_ns, program, count: int) -> dict:
    """count short connections through haproxy: connect, PING, wait for the
    backend's greeting, close (gracefully: the client closes first)."""
    return run_client(client_ns, program, HAPROXY_IP, FRONT_PORT, count)


def assert_clients_never_ran_out(summary: dict) -> None:
    bad = {k: v for k, v in summary["failures"].items() if k.startswith(("socket:", "connect:"))}
    assert not bad, f"the clients' own side failed, the measurement is not about haproxy: {summary}"


def test_haproxy_runs_out_of_backend_ports_without_tcpfix(haproxy_site, program):
    client_ns, hp_ns, sink, start = haproxy_site
    n = hp_ns.range_size
    hp = start()
    summary = load(client_ns, program, 2 * n)

    # The client reached the frontend every time; the backend only range-size times.
    assert_clients_never_ran_out(summary)
    assert summary["ok"] == n, summary
    assert summary["first_failure"] == n, summary
    assert sum(summary["failures"].values()) == n, summary
    # haproxy says why, in its own words and counters.
    assert hp.no_free_ports_lines(), hp.output()
    counters = hp.backend_counters()
    assert counters["econ"] > 0, counters
    # The kernel's view: haproxy's backend connections hold the whole range in TIME_WAIT.
    tw = settled_time_wait(hp_ns, BACK_PORT)
    assert local_addrs(tw) == {"127.0.0.1": n}, tw[:10]
    ends = sink.wait_ends(n)
    assert all(e["tail"] == REQUEST + "\n" and e["end"] == "EOF" for e in ends), ends[:5]
    assert hp.alive()


@pytest.mark.parametrize("nsources", [2, 4])
def test_haproxy_with_source_addrs_carries_n_times_the_load(haproxy_site, program, lib, stats_dir,
                                                            nsources):
    client_ns, hp_ns, sink, start = haproxy_site
    n = hp_ns.range_size
    sources = SOURCES[:nsources]
    hp = start(stats_env(lib, stats_dir, source_addrs=",".join(sources)))
    count = nsources * n
    summary = load(client_ns, program, count)

    # N times the load the plain haproxy carried, every connection answered by the backend.
    assert summary["ok"] == count and summary["failures"] == {}, summary
    counters = hp.backend_counters()
    assert counters["econ"] == 0 and counters["srv_stot"] == count, counters
    assert not hp.no_free_ports_lines(), hp.output()
    ends = sink.wait_ends(count)
    assert len(ends) == count
    assert all(e["tail"] == REQUEST + "\n" and e["end"] == "EOF" for e in ends), ends[:5]
    # The kernel's view: haproxy's backend connections left one TIME_WAIT
    # entry each, from the N addresses only, the whole range each.
    tw = settled_time_wait(hp_ns, BACK_PORT)
    assert_ranges_used(local_addrs(tw), sources, n)

    # The ceiling is real: past N x range, haproxy's connects fail again, and
    # the error haproxy sees is the kernel's EADDRNOTAVAIL ("no free ports"),
    # once tcpfix has tried every source address.
    extra = run_client(client_ns, program, HAPROXY_IP, FRONT_PORT, n)
    assert_clients_never_ran_out(extra)
    assert extra["ok"] == 0, extra
    assert hp.no_free_ports_lines(), hp.output()
    assert hp.alive()

    assert hp.stop() == 0, hp.output()
    _, st = only_stats_file(stats_dir)
    binds = {a: st["source_addrs"][a]["binds"] for a in sources}
    assert sum(binds.values()) == st["source_addr_binds"] >= count, st
    assert_roughly_even(binds, "haproxy's binds")
    assert all(st["source_addrs"][a]["eaddrnotavail"] > 0 for a in sources), st


def test_haproxy_close_rst_leaves_its_backend_time_wait(haproxy_site, program, lib, stats_dir):
    """Observation (KERNEL-FACTS 3): haproxy half-closes its backend side and
    has its TIME_WAIT entry before close(), so TCPFIX_CLOSE=rst on haproxy
    leaves the ceiling where it was: source addresses are the cure."""
    client_ns, hp_ns, sink, start = haproxy_site
    n = hp_ns.range_size
    hp = start(stats_env(lib, stats_dir, close="rst"))
    summary = load(client_ns, program, 2 * n)
    assert_clients_never_ran_out(summary)
    assert summary["ok"] == n, summary
    assert hp.no_free_ports_lines(), hp.output()
    tw = settled_time_wait(hp_ns, BACK_PORT)
    assert local_addrs(tw) == {"127.0.0.1": n}, tw[:10]
    assert hp.stop() == 0, hp.output()
    _, st = only_stats_file(stats_dir)
    assert st["closes_rst"] == 0, (
        f"tcpfix reset {st['closes_rst']} backend connections, yet all {n} left TIME_WAIT: {st}")


# -- 3. TCPFIX_BIND_NO_PORT ------------------------------------------------------------------

ONE_PORT = (40000, 40000)


def bind_two_dest(make_netns, program, env=None, sequential=False):
    """bind_two_dest in a fresh namespace whose range is one port, against
    two listeners; returns (its two JSON lines, the namespace, the sinks)."""
    ns = make_netns(port_range=ONE_PORT)
    sinks = [ns.start_sink(program("sink_server"), p) for p in (5001, 5002)]
    argv = [program("bind_two_dest")] + (["-s"] if sequential else []) + [
        "127.0.0.1", "127.0.0.1", "5001", "5002"]
    r = ns.run(argv, env=env)
    lines = [json.loads(l) for l in r.stdout.splitlines() if l.startswith("{")]
    assert r.returncode == 0 and len(lines) == 2, show(r)
    return lines, ns, sinks


@pytest.mark.parametrize("sequential", [False, True], ids=["bind-bind-connect", "bind-connect"])
def test_bind_no_port_shares_one_port_across_destinations(make_netns, program, lib, sequential):
    # Without the option (unpreloaded, and preloaded with the option off):
    # bind(port 0) reserves the only port, the second bind finds none.
    for env in (None, tcpfix_env(lib, bind_no_port="0")):
        (s1, s2), _, _ = bind_two_dest(make_netns, program, env, sequential)
        assert s1 == {"sock": 1, "bind": "OK", "connect": "OK", "local_port": ONE_PORT[0]}, (env, s1)
        assert s2["bind"] == "EADDRINUSE" and s2["connect"] == "SKIPPED", (env, s2)

    # With it: the port is chosen per 4-tuple at connect, both get the same one.
    (s1, s2), ns, sinks = bind_two_dest(make_netns, program, tcpfix_env(lib, bind_no_port="1"),
                                        sequential)
    assert s1 == {"sock": 1, "bind": "OK", "connect": "OK", "local_port": ONE_PORT[0]}, s1
    assert s2 == {"sock": 2, "bind": "OK", "connect": "OK", "local_port": ONE_PORT[0]}, s2
    # Both really reached their listener from that port.
    for sink in sinks:
        assert sink.wait_ends(1)[0]["peer"] == f"127.0.0.1:{ONE_PORT[0]}"
    tw = settled_time_wait(ns)
    assert sorted(four_tuples(tw)) == [(f"127.0.0.1:{ONE_PORT[0]}", "127.0.0.1:5001"),
                                       (f"127.0.0.1:{ONE_PORT[0]}", "127.0.0.1:5002")], tw


# -- 4. threads ------------------------------------------------------------------------------

def test_concurrent_connects_through_source_addrs(make_netns, cli, lib, program, stats_dir):
    """`tcpfix churn --concurrency 8` (8 threads, non-blocking connects)
    preloaded with four source addresses, 1.5 x the capacity of 4 x 100
    4-tuples: the first 400 succeed, the rest fail with EADDRNOTAVAIL only,
    no EADDRINUSE, no 4-tuple twice, no crash."""
    ns = make_netns(port_range=RANGE)
    n = ns.range_size
    capacity = len(SOURCES) * n
    count = capacity + capacity // 2
    sink = ns.start_sink(program("sink_server"), PORT, timeout_ms=55000)
    r = ns.run([str(cli), "churn", "127.0.0.1", str(PORT), "--count", str(count),
                "--concurrency", "8", "--duration", "40s", "--json"],
               env=stats_env(lib, stats_dir, source_addrs=",".join(SOURCES), log="error"),
               timeout=50)
    # Exit 1 is churn's "some attempt failed" (those past the ceiling); a
    # crash would be a negative status (a signal) or no report.
    assert r.returncode == 1, f"churn under the preload did not exit as expected:\n{show(r)}"
    report = json.loads([l for l in r.stdout.splitlines() if l.startswith("{")][-1])
    assert report["attempts"] == count, report
    assert "EADDRINUSE" not in json.dumps(report["errors"]), report
    ok = report["ok"]
    # No thread failed before the ceiling (a 4-tuple handed out twice would
    # fail one of them with EADDRINUSE, or cost a connection).
    assert ok == capacity, report
    assert report["errors"] == {"EADDRNOTAVAIL": count - ok}, report

    # The kernel's view: every connection a distinct 4-tuple from one of the
    # four, each address's whole range in use; the peer saw every one.
    ends = sink.wait_ends(ok)
    assert len(ends) == ok and all(e["end"] == "EOF" for e in ends), ends[:5]
    entries = settled_time_wait(ns, PORT)
    assert len(set(four_tuples(entries))) == len(entries)
    assert_ranges_used(local_addrs(entries), SOURCES, n)

    _, st = only_stats_file(stats_dir)
    assert "EADDRINUSE" not in st["connect_errors"], st["connect_errors"]
    assert st["connect_errors"].get("EADDRNOTAVAIL") == count - ok, st["connect_errors"]
    assert st["connects"] == count, st


# -- 5. TCPFIX_PORT_RANGE --------------------------------------------------------------------

WIDE = (40000, 40999)


def test_port_range_narrows_each_sockets_ports(make_netns, program, lib, cli):
    ns = make_netns(port_range=WIDE)
    ns.start_sink(program("sink_server"), PORT, timeout_ms=55000)

    # A blocking client: 10 ports in its range, so exactly 10 connections.
    summary, r = run_prober(ns, program, "c", "127.0.0.1", PORT, 30,
                            env=tcpfix_env(lib, port_range="40100-40109"))
    assert summary == {"ok": 10, "eaddrnotavail": 20, "other": 0}, show(r)
    ports = local_ports(settled_time_wait(ns, PORT))
    assert sorted(ports) == list(range(40100, 40110)), ports

    # A non-blocking client (churn), another sub-range.
    r = ns.run([str(cli), "churn", "127.0.0.1", str(PORT), "--count", "20", "--concurrency", "2",
                "--duration", "20s", "--json"], env=tcpfix_env(lib, port_range="40300-40309"))
    assert r.returncode == 1, show(r)  # churn: "some attempt failed"
    report = json.loads([l for l in r.stdout.splitlines() if l.startswith("{")][-1])
    assert report["ok"] == 10 and report["errors"] == {"EADDRNOTAVAIL": 10}, report
    ports = [p for p in local_ports(settled_time_wait(ns, PORT)) if not 40100 <= p <= 40109]
    assert sorted(ports) == list(range(40300, 40310)), ports

    # An application's own bind(port 0) takes its port from the range too.
    ns.start_sink(program("sink_server"), 5001)
    ns.start_sink(program("sink_server"), 5002)
    r = ns.run([program("bind_two_dest"), "127.0.0.1", "127.0.0.1", "5001", "5002"],
               env=tcpfix_env(lib, port_range="40500-40509"))
    lines = [json.loads(l) for l in r.stdout.splitlines() if l.startswith("{")]
    assert len(lines) == 2 and all(l["bind"] == "OK" and l["connect"] == "OK" for l in lines), show(r)
    assert all(40500 <= l["local_port"] <= 40509 for l in lines), lines

    # With source addresses: 4 addresses x 10 ports.
    summary, r = run_prober(ns, program, "c", "127.0.0.1", PORT, 60,
                            env=tcpfix_env(lib, port_range="40700-40709",
                                           source_addrs=",".join(SOURCES)))
    assert summary == {"ok": 40, "eaddrnotavail": 20, "other": 0}, show(r)
    tw = [l for l in settled_time_wait(ns, PORT) if 40700 <= local_ports([l])[0] <= 40709]
    assert_ranges_used(local_addrs(tw), SOURCES, 10)
    outside = [l for l in settled_time_wait(ns, PORT)
               if not any(lo <= local_ports([l])[0] <= lo + 9 for lo in (40100, 40300, 40700))]
    assert outside == [], outside
