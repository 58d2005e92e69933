"""Pacing of real connect attempts (incident 001): TCPFIX_CONNECT_RATE spaces
connects to one destination 1/N apart, and TCPFIX_RECONNECT_BACKOFF spaces
connects to a failing destination by a delay that doubles from MIN to MAX
(times a jitter factor in [0.5, 1)).

An unmodified Python client, preloaded, records when each connect() returned;
the spacing of those times is what the library imposed (a loopback connect
or refusal itself takes microseconds)."""

import json
import socket

from conftest import tcpfix_env

CLIENT = r"""
import json, socket, sys, time
port, count = int(sys.argv[1]), int(sys.argv[2])
times, results = [], []
start = time.monotonic()  # before the first connect reserves its slot
for _ in range(count):
    s = socket.socket()
    try:
        s.connect(("127.0.0.1", port))
        results.append("ok")
    except OSError as e:
        results.append(e.__class__.__name__)
    times.append(time.monotonic())
    s.close()
print(json.dumps({"start": start, "times": times, "results": results}))
"""


def run_client(netns, lib, port, count, **variables):
    env = tcpfix_env(lib, **variables)
    r = netns.run(["/usr/bin/python3", "-c", CLIENT, str(port), str(count)], env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def gaps_ms(times):
    return [(b - a) * 1000 for a, b in zip(times, times[1:])]


def test_connect_rate_spaces_real_connects(make_netns, lib):
    netns = make_netns((20000, 60000))  # 42 connects whose server closes first: TIME_WAIT holds 4-tuples
    listener = netns.popen(["/usr/bin/python3", "-c", """
import socket, time
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("127.0.0.1", 7301)); l.listen(512); print("ready", flush=True)
l.settimeout(30)
while True:
    c, _ = l.accept(); c.close()
"""])
    try:
        assert listener.stdout.readline().strip() == "ready"
        rate, count = 20, 21  # 20 gaps of 50 ms: one second
        out = run_client(netns, lib, 7301, count, connect_rate="20/s")
        assert out["results"] == ["ok"] * count
        interval = 1000 / rate
        # The schedule is absolute (a late wake-up does not push later slots),
        # so connect k never returns before k intervals after the loop began;
        # on a loaded 2-core machine it may return somewhat later.
        since_start = [(t - out["start"]) * 1000 for t in out["times"]]
        for k, at in enumerate(since_start):
            assert at >= k * interval, (k, since_start)
        total = out["times"][-1] - out["times"][0]
        assert interval * (count - 1) / 1000 * 0.95 <= total <= interval * (count - 1) / 1000 * 1.5, total
        # Without the variable the same loop runs flat out.
        free = run_client(netns, lib, 7301, count, log="warn")
        assert free["times"][-1] - free["times"][0] < total / 4
    finally:
        listener.kill()
        listener.wait()


def test_backoff_doubles_between_real_attempts_to_a_failing_destination(netns, lib):
    # Nothing listens on the port: every connect is refused at once.
    out = run_client(netns, lib, 7302, 8, reconnect_backoff="40ms:320ms")
    assert set(out["results"]) == {"ConnectionRefusedError"}
    gaps = gaps_ms(out["times"])
    # After failure k the next connect waits delay(k) = min(40ms * 2^(k-1), 320ms)
    # times a jitter factor in [0.5, 1).
    for k, gap in enumerate(gaps, start=1):
        delay = min(40 * 2 ** (k - 1), 320)
        assert delay * 0.5 * 0.9 <= gap <= delay * 1.0 + 60, (k, gap, gaps)
    # The doubling is visible through the jitter: the capped tail waits far longer than the start.
    assert sum(gaps[-3:]) > 3 * sum(gaps[:2]) / 2, gaps


def test_backoff_resets_after_a_connection_that_carries_data(make_netns, lib):
    """Failures, then a healthy server: once a connection has carried data
    the destination is healthy and connects run unpaced again. (A wide port
    range: the server closes first, and its TIME_WAIT entries hold 4-tuples.)"""
    netns = make_netns((20000, 60000))
    server = netns.popen(["/usr/bin/python3", "-c", """
import socket, time, sys
time.sleep(1.0)  # refused for the first second
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("127.0.0.1", 7303)); l.listen(512)
l.settimeout(30)
while True:
    c, _ = l.accept(); c.sendall(b"hello"); c.close()
"""])
    try:
        client = r"""
import json, socket, sys, time
times, results = [], []
t0 = time.monotonic()
while time.monotonic() - t0 < 8 and len(results) < 60:
    s = socket.socket()
    try:
        s.connect(("127.0.0.1", 7303)); s.recv(16); results.append("ok")
    except OSError as e:
        results.append("err:" + e.__class__.__name__)
    times.append(time.monotonic()); s.close()
    if results[-5:] == ["ok"] * 5 and any(r != "ok" for r in results):
        # 25 more after the recovery, to see the pace
        if sum(1 for r in results if r == "ok") >= 30: break
print(json.dumps({"times": times, "results": results}))
"""
        env = tcpfix_env(lib, reconnect_backoff="20ms:200ms")
        r = netns.run(["/usr/bin/python3", "-c", client], env=env, timeout=60)
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert out["results"][0].startswith("err") and out["results"][-1] == "ok", out["results"]
        first_ok = out["results"].index("ok")
        # The scan that sees data carried runs every 50 ms; allow a few paced
        # connects after recovery, then the pace must be the server's, not the backoff's.
        tail = gaps_ms(out["times"][first_ok + 10:])
        assert tail and max(tail) < 20, tail
    finally:
        server.kill()
        server.wait()
