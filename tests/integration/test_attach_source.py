"""`tcpfix attach --source-addrs`: incident 002's cure for a static Go
client. The cgroup/connect4/6 programs bind each matched connect from an
unbound socket to the next source address with port 0 (the port is chosen
at connect time, per 4-tuple), so each address brings its own port range:
three addresses hold three times the connections of a 100-port range, to
one destination. A client outside the cgroup, a destination outside
--match and a socket the application bound itself keep their own source.
"""

from __future__ import annotations

import json

from attach_env import Attach, bpf_attached, go_run, run_in, start_server
from conftest import PYTHON

RANGE = (40000, 40099)
MAX = 1000

BOUND_CLIENT = """
import socket, sys
s = socket.socket()
s.bind(("127.0.0.5", 0))
s.connect(("127.0.0.1", 5000))
print(s.getsockname()[0])
"""


def test_source_addrs_multiply_the_go_clients_connections(
        make_netns, make_cgroup, program, go_client, attach_cli, stats_dir):
    ns = make_netns(RANGE)
    run_in(ns, ["ip", "-6", "addr", "add", "::2/128", "dev", "lo", "nodad"])
    run_in(ns, ["ip", "-6", "addr", "add", "::3/128", "dev", "lo", "nodad"])
    cg = make_cgroup()
    for port in (5000, 5001):
        start_server(ns, program, port, addr="0.0.0.0")
    start_server(ns, program, 5000, addr="::")  # IPV6_V6ONLY: a listener of its own

    stats = stats_dir / "source.json"
    daemon = Attach(ns, attach_cli, [
        "--cgroup", str(cg.path), "--source-addrs", "127.0.0.2,127.0.0.3,127.0.0.4,::2,::3",
        "--match", "127.0.0.1:5000,[::1]:5000", "--stats", str(stats)])

    r = go_run(ns, go_client, "hold", "127.0.0.1", "5000", str(MAX), cgroup=cg)
    assert r["sources"] == {"127.0.0.2": 100, "127.0.0.3": 100, "127.0.0.4": 100}, r
    assert r["ok"] == 300 and r["eaddrnotavail"] == 1, r

    r6 = go_run(ns, go_client, "hold", "::1", "5000", str(MAX), cgroup=cg)
    assert r6["sources"] == {"::2": 100, "::3": 100}, r6

    # Not matched: the destination keeps the application's (unbound) source.
    other = go_run(ns, go_client, "hold", "127.0.0.1", "5001", str(MAX), cgroup=cg)
    assert other["sources"] == {"127.0.0.1": 100}, other
    # Not in the cgroup.
    outside = go_run(ns, go_client, "hold", "127.0.0.1", "5000", "50")
    assert outside["sources"] == {"127.0.0.1": 50}, outside
    # Bound by the application itself: left alone.
    bound = run_in(ns, [PYTHON, "-c", BOUND_CLIENT], cgroup=cg)
    assert bound.returncode == 0 and bound.stdout.strip() == "127.0.0.5", bound

    assert daemon.stop() == 0
    assert bpf_attached(cg.path) == []
    s = json.loads(stats.read_text())
    # Each address bound once per connection it holds, plus the failing
    # dial: Go's dialer tries EADDRNOTAVAIL twice more on fresh sockets
    # (net/tcpsock_posix.go, spuriousENOTAVAIL), and each try is bound to
    # the next address in turn.
    binds = {k: v["binds"] for k, v in s["source_addrs"].items()}
    assert sum(binds[a] for a in ("127.0.0.2", "127.0.0.3", "127.0.0.4")) == 300 + 3, binds
    assert sum(binds[a] for a in ("::2", "::3")) == 200 + 3, binds
    assert all(100 <= n <= 102 for n in binds.values()), binds
    assert s["source_addr_binds"] == 506, s
    assert s["attach"]["source_skipped"] == 1 and s["attach"]["source_bind_failed"] == 0, s


def test_source_addrs_must_be_local(make_netns, attach_cli, make_cgroup):
    ns = make_netns()
    cg = make_cgroup()
    r = run_in(ns, [str(attach_cli), "attach", "--cgroup", str(cg.path), "--source-addrs",
                    "127.0.0.2,10.9.9.9"])
    assert r.returncode == 2, r
    assert r.stderr.strip() == ('tcpfix: TCPFIX_SOURCE_ADDRS="127.0.0.2,10.9.9.9": expected '
                                'addresses of this host; 10.9.9.9 is not one'), r.stderr
    assert bpf_attached(cg.path) == []
