"""TCPFIX_CLOSE on real, unmodified programs, in a namespace of their own.

Incident 000: a prober loop (socket, connect, close) leaves one TIME_WAIT
entry per probe and, probing fast enough, runs out of ephemeral ports
(EADDRNOTAVAIL). Every test here asserts both arms in the same conditions:
without tcpfix the failure reproduces; with it, it does not. And it checks
the policy's fate on the wire from the PEER's side (FIN = EOF, RST =
ECONNRESET, every byte received) and in `ss`, not only in counters.
"""

from __future__ import annotations

import json
import time

import pytest

from conftest import tcpfix_env
from helpers import (MiB, PROBERS, json_lines, only_stats_file, prober_argv, run_prober,
                     settled_time_wait, show)

PORT = 5432


def assert_exhausts(ns, summary, r, count):
    """The control arm: exactly range_size probes succeed, the rest fail with
    EADDRNOTAVAIL (exact because the namespace has tcp_rfc1337=1: see
    conftest)."""
    assert summary["eaddrnotavail"] > 0, f"the control arm did not run out of ports: {r.stdout}"
    assert summary == {"ok": ns.range_size, "eaddrnotavail": count - ns.range_size, "other": 0}, r.stdout


def assert_time_wait_left(ns, dport=None):
    """The control arm leaves every port of the range in TIME_WAIT."""
    left = len(settled_time_wait(ns, dport))
    assert left == ns.range_size, left


# -- incident 000: the prober loop ------------------------------------------------------------

@pytest.mark.parametrize("mode", ["rst", "rst-always"])
@pytest.mark.parametrize("prober", PROBERS)
def test_prober_loop_never_runs_out_of_ports(netns, lib, program, prober, mode):
    count = 3 * netns.range_size
    sink = netns.start_sink(program("sink_server"), PORT)

    # With tcpfix: every probe succeeds and leaves nothing behind.
    summary, r = run_prober(netns, program, prober, "127.0.0.1", PORT, count,
                            env=tcpfix_env(lib, close=mode))
    assert summary == {"ok": count, "eaddrnotavail": 0, "other": 0}, show(r)
    ends = sink.wait_ends(count)
    fins = [e for e in ends if e["end"] != "ECONNRESET"]
    assert not fins, f"the peer saw these probes end without RST: {fins}"
    assert settled_time_wait(netns) == []

    # Without tcpfix, same namespace, same loop: the incident reproduces.
    summary, r = run_prober(netns, program, prober, "127.0.0.1", PORT, count)
    assert_exhausts(netns, summary, r, count)
    ends = sink.wait_ends(count + summary["ok"])
    assert all(e["end"] == "EOF" for e in ends[count:]), ends[count:]
    assert_time_wait_left(netns, PORT)


def test_tcpfix_run_cli_fixes_the_prober(netns, cli, lib, program):
    """`tcpfix run --close rst -- port_probe ...` finds the library itself."""
    count = 3 * netns.range_size
    sink = netns.start_sink(program("sink_server"), PORT)
    r = netns.run([str(cli), "run", "--close", "rst", "--", program("port_probe"), "127.0.0.1",
                   str(PORT), str(count)], timeout=30)
    assert r.returncode == 0, show(r)
    assert r.stdout.strip().splitlines()[-1] == f"ok={count} eaddrnotavail=0 other=0", show(r)
    assert all(e["end"] == "ECONNRESET" for e in sink.wait_ends(count))
    assert settled_time_wait(netns) == []

    summary, r = run_prober(netns, program, "c", "127.0.0.1", PORT, count)
    assert_exhausts(netns, summary, r, count)


@pytest.mark.parametrize("variables", [
    {"TCPFIX_DISABLE": "1", "TCPFIX_CLOSE": "rst"},
    {},
], ids=["TCPFIX_DISABLE=1", "no-variables"])
def test_pass_through_behaves_like_no_preload(netns, lib, program, variables):
    """TCPFIX_DISABLE=1 (the control arm of an experiment), or the library
    preloaded with no TCPFIX_* variable at all: exactly the unpreloaded
    program, TIME_WAIT entries and EADDRNOTAVAIL included."""
    count = 3 * netns.range_size
    sink = netns.start_sink(program("sink_server"), PORT)
    env = {"LD_PRELOAD": str(lib), **variables}
    summary, r = run_prober(netns, program, "c", "127.0.0.1", PORT, count, env=env)
    assert_exhausts(netns, summary, r, count)
    assert r.stderr == "", show(r)
    assert all(e["end"] == "EOF" for e in sink.wait_ends(summary["ok"]))
    assert_time_wait_left(netns, PORT)


# -- data is never lost by `rst` --------------------------------------------------------------

@pytest.mark.parametrize("sndbuf", [0, 32768], ids=["default-sndbuf", "small-sndbuf"])
def test_bulk_write_then_close_loses_nothing(make_netns, lib, program, stats_dir, sndbuf):
    """A client writes 8 MiB and closes at once while a slow peer still has
    most of it to read: with `rst` the peer must still get every byte, every
    time (the close waits for the ACK or falls back to FIN)."""
    ns = make_netns((40000, 40099))
    reps, size = 20, 8 * MiB
    sink = ns.start_sink(program("sink_server"), PORT, read_delay_us=500, chunk=65536,
                         rcvbuf=65536, timeout_ms=60000)
    argv = [program("rst_writer"), "-b", str(size), "-n", str(reps)]
    if sndbuf:
        argv += ["-s", str(sndbuf)]
    argv += ["127.0.0.1", str(PORT)]
    env = tcpfix_env(lib, close="rst", stats=str(stats_dir / "writer-%p.json"))
    r = ns.run(argv, env=env, timeout=60)
    assert r.returncode == 0, show(r)
    sent = json_lines(r.stdout)
    assert len(sent) == reps and all(c["sent"] == size and c["close_rc"] == 0 for c in sent), show(r)
    assert all(c["errno_kept"] for c in sent), "close() changed errno on success"

    ends = sink.wait_ends(reps, timeout=40)
    short = [e for e in ends if e["bytes"] != size or e["fnv1a"] != sent[0]["fnv1a"]]
    assert not short, f"the peer lost data on {len(short)} of {reps} connections: {short}"
    assert all(e["end"] in ("EOF", "ECONNRESET") for e in ends), ends

    _, st = only_stats_file(stats_dir)
    assert st["closes"] == reps, st
    if not sndbuf:
        # Megabytes still queued at close(): too much to wait for, so FIN.
        assert st["closes_graceful_unsent"] > 0, st
    else:
        # A small queue drains while close() waits: RST after the last ACK,
        # and the peer above still read every byte before the reset.
        assert st["closes_rst_after_wait"] > 0, st
    assert st["closes_rst"] + st["closes_graceful_unsent"] == reps, st


def test_rst_always_drops_queued_data(make_netns, lib, program):
    """The contrast: `rst-always` is the hand-patched prober's SO_LINGER {1,0}
    and discards what is still queued, which is why `rst` checks first."""
    ns = make_netns((40000, 40099))
    reps, size = 3, 8 * MiB
    sink = ns.start_sink(program("sink_server"), PORT, read_delay_us=500, chunk=65536,
                         rcvbuf=65536)
    r = ns.run([program("rst_writer"), "-b", str(size), "-n", str(reps), "127.0.0.1", str(PORT)],
               env=tcpfix_env(lib, close="rst-always"), timeout=30)
    assert r.returncode == 0, show(r)
    ends = sink.wait_ends(reps, timeout=20)
    assert all(e["end"] == "ECONNRESET" and e["bytes"] < size for e in ends), ends
    assert settled_time_wait(ns) == []


def test_final_message_then_close_is_reset(netns, lib, program, stats_dir):
    """A client that writes its last message (QUIT) and closes at once: the
    bytes are sent but not yet acknowledged at close(). With `rst` the peer
    reads the whole message, then ECONNRESET; no TIME_WAIT is left."""
    reps = 10
    sink = netns.start_sink(program("sink_server"), PORT)
    env = tcpfix_env(lib, close="rst", stats=str(stats_dir / "quit-%p.json"))
    r = netns.run([program("rst_writer"), "-f", "QUIT\r\n", "-n", str(reps), "127.0.0.1",
                   str(PORT)], env=env)
    assert r.returncode == 0, show(r)
    ends = sink.wait_ends(reps)
    for e in ends:
        assert e["bytes"] == 6 and e["tail"] == "QUIT\r\n", e
        assert e["end"] == "ECONNRESET", f"peer saw {e['end']}, not RST: {e}"
    assert settled_time_wait(netns) == []
    _, st = only_stats_file(stats_dir)
    assert st["closes_rst"] == reps and st["closes_graceful_unsent"] == 0, st

    # Control: the same client unpreloaded leaves one TIME_WAIT per connection.
    r = netns.run([program("rst_writer"), "-f", "QUIT\r\n", "-n", "5", "127.0.0.1", str(PORT)])
    assert r.returncode == 0, show(r)
    assert all(e["end"] == "EOF" for e in sink.wait_ends(reps + 5)[reps:])
    assert 1 <= len(settled_time_wait(netns)) <= 5


# -- TCPFIX_MATCH -----------------------------------------------------------------------------

DESTS = [("127.0.0.1", 5000), ("127.0.0.1", 5001), ("::1", 5000), ("::1", 5001)]


def dest_name(host, port):
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@pytest.mark.parametrize("match, matched", [
    ("127.0.0.1:5000", {"127.0.0.1:5000"}),
    (":5000", {"127.0.0.1:5000", "[::1]:5000"}),
    ("[::1]:5001", {"[::1]:5001"}),
    ("[::1/128]:5000", {"[::1]:5000"}),
    ("127.0.0.0/8", {"127.0.0.1:5000", "127.0.0.1:5001"}),
    ("::1/128", {"[::1]:5000", "[::1]:5001"}),
    ("127.0.0.1:5001,[::1]:5000", {"127.0.0.1:5001", "[::1]:5000"}),
    ("10.0.0.0/8", set()),
])
def test_match_restricts_rst_to_matched_destinations(netns, lib, program, stats_dir, match,
                                                     matched):
    probes = 4
    sinks = {dest_name(h, p): netns.start_sink(program("sink_server"), p, addr=h)
             for h, p in DESTS}
    for i, (host, port) in enumerate(DESTS):
        env = tcpfix_env(lib, close="rst", match=match,
                         stats=str(stats_dir / f"match{i}-%p.json"))
        summary, r = run_prober(netns, program, "c", host, port, probes, env=env)
        assert summary == {"ok": probes, "eaddrnotavail": 0, "other": 0}, show(r)

    tw_peers = settled_time_wait(netns)
    tw_peers = [line.split()[-1] for line in tw_peers]
    for name, sink in sinks.items():
        ends = [e["end"] for e in sink.wait_ends(probes)]
        left = tw_peers.count(name)
        if name in matched:
            assert ends == ["ECONNRESET"] * probes and left == 0, (name, ends, left)
        else:
            # FIN every time; every TIME_WAIT entry stays.
            assert ends == ["EOF"] * probes and left == probes, (name, ends, left)

    for i, (host, port) in enumerate(DESTS):
        _, st = only_stats_file(stats_dir, f"match{i}-*.json")
        want = probes if dest_name(host, port) in matched else 0
        assert st["connects"] == probes and st["connects_matched"] == want, (i, st)
        assert st["closes_rst"] == want, (i, st)


# -- TCPFIX_STATS -----------------------------------------------------------------------------

STATS_KEYS = {"tag", "pid", "sockets", "connects", "connects_matched", "connect_errors",
              "connect_timeouts", "connect_retries", "closes", "closes_rst",
              "closes_rst_after_wait", "closes_graceful_unsent", "closes_graceful_shared",
              "ack_wait_us", "throttled_ms", "close_wait_reaped", "source_addr_binds", "policy"}


def test_stats_json_counts_what_happened(netns, lib, program, stats_dir):
    n = 10
    netns.start_sink(program("sink_server"), PORT)

    # N probes under rst: one file, named by %p, with exact counts.
    run_dir = stats_dir / "rst"
    run_dir.mkdir()
    env = tcpfix_env(lib, close="rst", stats=str(run_dir / "probe-%p.json"), tag="arm-a")
    summary, r = run_prober(netns, program, "c", "127.0.0.1", PORT, n, env=env)
    assert summary["ok"] == n, show(r)
    files = list(run_dir.iterdir())
    assert len(files) == 1, f"stats dir holds {files} (temporary files left behind?)"
    pid, st = only_stats_file(run_dir)
    assert STATS_KEYS <= set(st), f"missing keys: {STATS_KEYS - set(st)}"
    assert st["pid"] == pid and st["tag"] == "arm-a", st
    for key in ("sockets", "connects", "connects_matched", "closes", "closes_rst"):
        assert st[key] == n, (key, st)
    for key in ("connect_timeouts", "connect_retries", "closes_graceful_unsent",
                "closes_graceful_shared", "close_wait_reaped", "source_addr_binds"):
        assert st[key] == 0, (key, st)
    assert st["connect_errors"] == {}, st
    assert any("CLOSE" in k.upper() and v == "rst" for k, v in st["policy"].items()), st["policy"]

    # Refused connects: counted by errno name; nothing to reset.
    run_dir = stats_dir / "refused"
    run_dir.mkdir()
    env = tcpfix_env(lib, close="rst", stats=str(run_dir / "probe-%p.json"))
    summary, r = run_prober(netns, program, "c", "127.0.0.1", 5999, 5, env=env)
    assert summary == {"ok": 0, "eaddrnotavail": 0, "other": 5}, show(r)
    _, st = only_stats_file(run_dir)
    assert st["sockets"] == 5 and st["connects"] == 5, st
    assert st["connect_errors"] == {"ECONNREFUSED": 5}, st
    assert st["closes_rst"] == 0, st

    # TCPFIX_CLOSE=keep: the policy changes nothing, the counters still see
    # the exhaustion.
    run_dir = stats_dir / "keep"
    run_dir.mkdir()
    count = 3 * netns.range_size
    env = tcpfix_env(lib, close="keep", stats=str(run_dir / "probe-%p.json"))
    summary, r = run_prober(netns, program, "c", "127.0.0.1", PORT, count, env=env)
    assert_exhausts(netns, summary, r, count)
    _, st = only_stats_file(run_dir)
    assert st["connects"] == count and st["closes_rst"] == 0, st
    assert st["connect_errors"] == {"EADDRNOTAVAIL": summary["eaddrnotavail"]}, st
    assert_time_wait_left(netns, PORT)


def test_stats_written_by_python_prober(netns, lib, program, stats_dir):
    """A Python client (connect with a timeout: non-blocking connect + poll)
    is counted like the C one."""
    n = 8
    netns.start_sink(program("sink_server"), PORT)
    env = tcpfix_env(lib, close="rst", stats=str(stats_dir / "py-%p.json"))
    r = netns.run(prober_argv(program, "python-timeout", "127.0.0.1", PORT, n), env=env)
    assert r.stdout.strip().splitlines()[-1] == f"ok={n} eaddrnotavail=0 other=0", show(r)
    _, st = only_stats_file(stats_dir)
    assert st["connects"] == n and st["closes_rst"] == n, st
    assert st["connect_errors"] == {}, st
    assert settled_time_wait(netns) == []


def test_ipv4_rule_matches_v4_mapped_ipv6_socket(netns, lib, program):
    """Dual-stack clients (the JVM) reach 127.0.0.1 through an AF_INET6
    socket as ::ffff:127.0.0.1; an IPv4 rule must match it, and a rule for
    another port must not."""
    probes = 4
    sink = netns.start_sink(program("sink_server"), 5000)
    env = tcpfix_env(lib, close="rst", match="127.0.0.1:5000")
    summary, r = run_prober(netns, program, "c", "::ffff:127.0.0.1", 5000, probes, env=env)
    assert summary == {"ok": probes, "eaddrnotavail": 0, "other": 0}, show(r)
    assert [e["end"] for e in sink.wait_ends(probes)] == ["ECONNRESET"] * probes
    assert settled_time_wait(netns) == []

    env = tcpfix_env(lib, close="rst", match="127.0.0.1:5001")
    summary, r = run_prober(netns, program, "c", "::ffff:127.0.0.1", 5000, probes, env=env)
    assert summary == {"ok": probes, "eaddrnotavail": 0, "other": 0}, show(r)
    assert [e["end"] for e in sink.wait_ends(2 * probes)[probes:]] == ["EOF"] * probes
    assert len(settled_time_wait(netns)) == probes


# -- logging ----------------------------------------------------------------------------------

def test_debug_log_names_each_decision(netns, lib, program, tmp_path):
    """TCPFIX_LOG=debug: one line per event on stderr, each prefixed
    tcpfix[PID] and carrying the tag; TCPFIX_LOG_FILE moves them to a file."""
    probes = 3
    netns.start_sink(program("sink_server"), PORT)
    env = tcpfix_env(lib, close="rst", log="debug", tag="arm-b",
                     stats=str(tmp_path / "log-%p.json"))
    summary, r = run_prober(netns, program, "c", "127.0.0.1", PORT, probes, env=env)
    assert summary["ok"] == probes, show(r)
    pid, _ = only_stats_file(tmp_path, "log-*.json")
    lines = r.stderr.splitlines()
    assert len(lines) >= probes, show(r)
    assert all(l.startswith(f"tcpfix[{pid}]") for l in lines), lines
    assert all("arm-b" in l for l in lines), lines
    assert sum("RST" in l for l in lines) >= probes, lines

    log_file = tmp_path / "tcpfix.log"
    env = tcpfix_env(lib, close="rst", log="debug", log_file=str(log_file))
    summary, r = run_prober(netns, program, "c", "127.0.0.1", PORT, probes, env=env)
    assert summary["ok"] == probes and r.stderr == "", show(r)
    logged = log_file.read_text().splitlines()
    assert len(logged) >= probes and all(l.startswith("tcpfix[") for l in logged), logged


def test_stats_refreshed_while_running(netns, lib, program, stats_dir):
    """A process killed by a signal still leaves recent counters: the stats
    file is refreshed while the process runs (about every 2 s)."""
    netns.start_sink(program("sink_server"), PORT)
    env = tcpfix_env(lib, close="rst", stats=str(stats_dir / "live-%p.json"))
    # 40 probes 250 ms apart: ~10 s if left alone; killed after 5 s, when
    # ~20 have run. A file refreshed every ~2 s holds at least 8 of them.
    proc = netns.popen([program("port_probe"), "127.0.0.1", str(PORT), "40", "250000"], env=env)
    try:
        time.sleep(5)
        assert proc.poll() is None, "the prober ended early"
        proc.kill()
        proc.wait(5)
    finally:
        if proc.poll() is None:
            proc.kill()
    files = list(stats_dir.glob("live-*.json"))
    assert len(files) == 1, "no stats file left by a process killed after 5 s"
    st = json.loads(files[0].read_text())
    assert st["pid"] == proc.pid == int(files[0].stem.split("-")[1]), st
    assert 8 <= st["connects"] < 40 and st["closes_rst"] >= 7, st
