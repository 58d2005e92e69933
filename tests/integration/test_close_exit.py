"""Connections that end without close(): the process exits with them open.

Many short-lived command-line clients connect, talk and exit without ever
closing (redis-cli does: connect, PING, PONG, exit_group). The kernel closes
such a socket after the process is gone — a normal close, a TIME_WAIT entry
— too late for any policy. tcpfix's destructor runs in exit(), after the
application's own atexit handlers, and applies TCPFIX_CLOSE to every matched
connection still open, with the same rules as close(), waiting at most
50 ms in all for ACKs still due.

Each test runs 3 x the namespace's port range of such processes: without
tcpfix the range runs out (EADDRNOTAVAIL after exactly range_size), with it
every one succeeds and no TIME_WAIT is left. The peer's view (sink_server,
redis) and `ss` are the witnesses; the stats only a second one.

Also the limits, as measured: _exit() and death by a signal run no exit
handler; a socket wrapped in a stdio FILE is left to the kernel (stdio
flushes after every exit handler); socat half-closes and receives the
peer's FIN before it exits, so its TIME_WAIT exists before tcpfix could act
— TCPFIX_SOURCE_ADDRS reaches it instead.
"""

from __future__ import annotations

import json
import statistics
import time

import pytest

from conftest import tcpfix_env
from deadline_env import nft, start_redis
from helpers import json_lines, read_stats, settled_time_wait, show

PORT = 6000
REDIS_CLI = "/usr/bin/redis-cli"
SOCAT = "/usr/bin/socat"


def run_loop(ns, argv: list[str], runs: int, env: dict | None = None, stdin: str | None = None,
             timeout: float = 60):
    """Runs argv `runs` times, one process after the other, inside ns (one
    shell loop: one `ip netns exec` for all of them). Returns the
    CompletedProcess; each run's own output is followed by a line
    `rc=<exit status>`."""
    quoted = " ".join("'" + a.replace("'", "'\\''") + "'" for a in argv)
    feed = f"printf %s '{stdin}' | " if stdin is not None else ""
    script = f"i=0; while [ $i -lt {runs} ]; do {feed}{quoted}; echo rc=$?; i=$((i+1)); done"
    return ns.run(["/bin/sh", "-c", script], env=env, timeout=timeout)


def exit_codes(stdout: str) -> list[int]:
    return [int(l[3:]) for l in stdout.splitlines() if l.startswith("rc=")]


def stats_files(stats_dir, pattern="*.json") -> list[dict]:
    """Every stats file of a run whose process made a socket (the shell running
    the loop writes one too)."""
    return [st for st in (read_stats(p) for p in sorted(stats_dir.glob(pattern))) if st["sockets"] > 0]


def total(stats: list[dict], key: str) -> int:
    return sum(st[key] for st in stats)


# -- the C client: exit(), return from main, the application's own atexit -------------------

@pytest.mark.parametrize("mode", ["exit", "return", "atexit"])
def test_exit_with_connections_open_ends_them_with_rst(make_netns, lib, program, stats_dir, mode):
    ns = make_netns()
    runs = 3 * ns.range_size
    sink = ns.start_sink(program("sink_server"), PORT)
    argv = [program("exit_client"), "-m", mode, "127.0.0.1", str(PORT)]
    env = tcpfix_env(lib, close="rst", stats=str(stats_dir / "exit-%p.json"))
    r = run_loop(ns, argv, runs, env=env)
    assert exit_codes(r.stdout) == [0] * runs, show(r)
    ends = sink.wait_ends(runs)
    want_tail = "bye\nlate\n" if mode == "atexit" else "bye\n"
    wrong = [e for e in ends if e["end"] != "ECONNRESET" or e["bytes"] != len(want_tail)
             or not want_tail.endswith(e["tail"])]
    assert not wrong, f"expected every connection whole, then RST: {wrong}"
    assert settled_time_wait(ns) == []
    st = stats_files(stats_dir)
    assert len(st) == runs
    assert total(st, "closes_at_exit") == runs and total(st, "closes_rst_at_exit") == runs, st[0]
    assert total(st, "closes_rst") == runs and total(st, "closes") == 0, st[0]

    # Without tcpfix, the same loop runs out of ports at the range.
    r = run_loop(ns, argv, runs)
    codes = exit_codes(r.stdout)
    assert codes.count(0) == ns.range_size and codes.count(1) == runs - ns.range_size, show(r)
    assert "EADDRNOTAVAIL" in r.stdout
    assert len(settled_time_wait(ns, PORT)) == ns.range_size


def test_exit_decides_every_connection_once_and_keeps_dups_alone(make_netns, lib, program, stats_dir):
    """Eight connections open at exit in one process: all eight end with RST,
    counted once each."""
    ns = make_netns()
    sink = ns.start_sink(program("sink_server"), PORT)
    env = tcpfix_env(lib, close="rst", stats=str(stats_dir / "many-%p.json"))
    r = ns.run([program("exit_client"), "-n", "8", "127.0.0.1", str(PORT)], env=env)
    assert r.returncode == 0, show(r)
    ends = sink.wait_ends(8)
    assert [e["end"] for e in ends] == ["ECONNRESET"] * 8 and all(e["bytes"] == 4 for e in ends), ends
    assert settled_time_wait(ns) == []
    (st,) = stats_files(stats_dir)
    assert st["closes_at_exit"] == 8 and st["closes_rst_at_exit"] == 8, st


def test_exit_waits_at_most_50ms_for_acks_that_never_come(make_netns, lib, program, stats_dir):
    """The server's ACKs are dropped (nftables, after the handshake): the
    final message stays unacknowledged. exit() waits its bound, 50 ms, then
    lets the kernel close normally: nothing is lost (the kernel keeps
    retransmitting), and exit is not held up for longer."""
    ns = make_netns((40000, 40099))
    sink = ns.start_sink(program("sink_server"), PORT)
    argv = [program("exit_client"), "127.0.0.1", str(PORT)]

    def wall(env) -> float:
        t0 = time.monotonic()
        r = ns.run(argv, env=env)
        assert r.returncode == 0, show(r)
        return time.monotonic() - t0

    rounds = 7
    acked = [wall(tcpfix_env(lib, close="rst")) for _ in range(rounds)]
    assert [e["end"] for e in sink.wait_ends(rounds)] == ["ECONNRESET"] * rounds
    # Every segment the server sends after its SYN-ACK is dropped: its ACKs never arrive.
    nft(ns, f"""table inet noack {{
  chain out {{
    type filter hook output priority 0;
    tcp sport {PORT} tcp flags & syn == 0 drop
  }}
}}""")
    env = tcpfix_env(lib, close="rst", stats=str(stats_dir / "noack-%p.json"))
    unacked = [wall(env) for _ in range(rounds)]
    extra_ms = (statistics.median(unacked) - statistics.median(acked)) * 1000
    assert extra_ms < 200, f"exit took {extra_ms:.0f} ms longer (bound: 50 ms + scheduling)"
    st = stats_files(stats_dir)
    assert total(st, "closes_graceful_unsent") == rounds and total(st, "closes_rst") == 0, st
    assert all(50_000 <= s["ack_wait_us"] < 200_000 for s in st), [s["ack_wait_us"] for s in st]
    nft(ns, "delete table inet noack")
    ends = sink.wait_ends(2 * rounds, timeout=20)
    assert all(e["bytes"] == 4 and e["end"] == "EOF" for e in ends[rounds:]), ends[rounds:]


# -- out of reach, as documented --------------------------------------------------------------

@pytest.mark.parametrize("mode", ["_exit", "signal", "stdio"])
def test_exits_that_run_no_handler_or_flush_late_keep_their_time_wait(make_netns, lib, program,
                                                                      stats_dir, mode):
    """_exit() and death by a signal run no exit handler: the kernel closes
    normally. A socket wrapped in a stdio FILE is left to the kernel on
    purpose: stdio flushes its buffer after every exit handler, and an RST
    armed before that could lose the flushed bytes. Either way the peer gets
    every byte, then FIN, and the TIME_WAIT stays."""
    ns = make_netns()
    sink = ns.start_sink(program("sink_server"), PORT)
    env = tcpfix_env(lib, close="rst", stats=str(stats_dir / "x-%p.json"))
    runs = 5
    r = run_loop(ns, [program("exit_client"), "-m", mode, "127.0.0.1", str(PORT)], runs, env=env)
    assert exit_codes(r.stdout) == [143 if mode == "signal" else 0] * runs, show(r)
    ends = sink.wait_ends(runs)
    assert all(e["end"] == "EOF" and e["bytes"] == 4 for e in ends), ends
    assert len(settled_time_wait(ns, PORT)) == runs
    if mode == "stdio":
        st = stats_files(stats_dir)
        assert total(st, "closes_at_exit") == runs and total(st, "closes_rst_at_exit") == 0, st


# -- a real client that exits without closing: redis-cli ---------------------------------------

def test_redis_cli_exits_without_closing_and_leaves_no_time_wait(make_netns, lib, stats_dir, tmp_path):
    """redis-cli (Debian's redis-tools) connects, sends PING, prints PONG and
    calls exit_group with the connection open. 3 x range invocations."""
    ns = make_netns()
    runs = 3 * ns.range_size
    with start_redis(ns, PORT, tmp_path / "redis"):
        argv = [REDIS_CLI, "-h", "127.0.0.1", "-p", str(PORT), "ping"]
        env = tcpfix_env(lib, close="rst", stats=str(stats_dir / "cli-%p.json"))
        r = run_loop(ns, argv, runs, env=env, timeout=90)
        assert exit_codes(r.stdout) == [0] * runs and r.stdout.count("PONG") == runs, show(r)
        assert settled_time_wait(ns) == []
        st = stats_files(stats_dir)
        assert len(st) == runs
        assert total(st, "closes") == 0, "redis-cli never closes: the exit handler is what acts"
        assert total(st, "closes_rst_at_exit") == runs, st[0]

        r = run_loop(ns, argv, runs, timeout=90)
        assert r.stdout.count("PONG") == ns.range_size, show(r)
        assert "Cannot assign requested address" in r.stdout + r.stderr, show(r)


# -- the half-closing client: socat -------------------------------------------------------------

def test_socat_half_close_holds_time_wait_that_source_addrs_reach(make_netns, lib, program, stats_dir):
    """socat sends stdin, half-closes (shutdown SHUT_WR), reads the peer's
    FIN and exits without close(): its TIME_WAIT exists before exit, and
    TCPFIX_CLOSE=rst cannot remove it (the limit, measured: exactly the
    control arm's range). TCPFIX_SOURCE_ADDRS reaches it instead: each
    source address brings its own range."""
    ns = make_netns()
    runs = 3 * ns.range_size
    ns.start_sink(program("sink_server"), PORT)
    argv = [SOCAT, "-", f"TCP:127.0.0.1:{PORT}"]

    r = run_loop(ns, argv, runs, env=tcpfix_env(lib, close="rst", stats=str(stats_dir / "socat-%p.json")),
                 stdin="bye\n")
    codes = exit_codes(r.stdout)
    assert codes.count(0) == ns.range_size, show(r)
    assert len(settled_time_wait(ns, PORT)) == ns.range_size
    st = stats_files(stats_dir)
    assert total(st, "closes_rst") == 0, "the TIME_WAIT came before tcpfix could act"

    # Source addresses: three ranges, every run succeeds (each leaving a TIME_WAIT).
    ns2 = make_netns()
    ns2.start_sink(program("sink_server"), PORT)
    env = tcpfix_env(lib, close="rst", source_addrs="127.0.0.2,127.0.0.3,127.0.0.4")
    r = run_loop(ns2, argv, runs, env=env, stdin="bye\n")
    assert exit_codes(r.stdout) == [0] * runs, show(r)
    assert len(settled_time_wait(ns2, PORT)) == runs
