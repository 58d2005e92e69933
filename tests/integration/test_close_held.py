"""`rst` that holds when the server is slow: the decision leaves the
application's thread.

pgbench -C (libpq) writes Terminate and closes at once. PostgreSQL
acknowledges those 5 bytes only with its own FIN (its kernel delays the ACK
to send it with whatever comes next), so at close() the bytes are in
flight. A wait inside close() short enough not to slow every close (the
on-the-spot budget: 2 x srtt + 2 ms) misses a server that answers tens of
milliseconds late: every close is then graceful and the client's port range
fills with TIME_WAIT. tcpfix instead keeps its own descriptor of the socket
and decides in its background thread: RST once everything is acknowledged,
a normal close if the peer's FIN comes first (no TIME_WAIT on this side
then), a normal close after 250 ms + 2 x srtt.

The slow server: a real PostgreSQL behind tests/programs/delay_proxy, which
holds each client's Terminate for 30 ms before passing it on (the FIN, and
with it the ACK, come 30 ms late). One PostgreSQL for all arms; each arm its
own port range of 300 in the namespace, so no arm sees another's TIME_WAIT:
  1. tcpfix, rst: 900 of 900 connections, at most 10 TIME_WAIT;
  2. the same with four CPU hogs in the namespace beside server and client;
  3. the synchronous wait, as tcpfix decided before (a descriptor limit of 15
     leaves no room to hold a socket: every close decides on the spot):
     the range runs out, hundreds of TIME_WAIT.
"""

from __future__ import annotations

import glob
import json
import os
import pwd
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from conftest import tcpfix_env
from helpers import read_stats, show

PROXY_PORT = 6432
DELAY_MS = 30
CONNS = 900
RANGES = {"rst": (40000, 40299), "rst-hogs": (41000, 41299), "sync": (42000, 42299)}
HOGS = 4


def pg_bin() -> Path:
    """The newest PostgreSQL's binaries (Debian: /usr/lib/postgresql/N/bin)."""
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(d.split("/")[-2]))
    for d in reversed(dirs):
        if all(os.access(f"{d}/{t}", os.X_OK) for t in ("initdb", "postgres", "pgbench")):
            return Path(d)
    pytest.fail("PostgreSQL server and pgbench not found: apt-get install -y postgresql postgresql-contrib",
                pytrace=False)


@pytest.fixture
def pg_dir():
    """A directory the postgres user owns (initdb refuses root); removed after."""
    d = Path(tempfile.mkdtemp(prefix="tcpfix-pg-"))
    pw = pwd.getpwnam("postgres")
    os.chown(d, pw.pw_uid, pw.pw_gid)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def start_postgres(ns, bindir: Path, d: Path) -> Path:
    """initdb and postgres (Unix socket only: the relay reaches it without an
    ephemeral port) inside ns; returns the socket's path."""
    r = subprocess.run(["runuser", "-u", "postgres", "--", str(bindir / "initdb"), "-D", str(d / "data"),
                        "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, show(r)
    log = open(d / "postgres.log", "w")
    ns.popen(["runuser", "-u", "postgres", "--", str(bindir / "postgres"), "-D", str(d / "data"), "-k", str(d),
              "-h", "", "-p", "5432", "-c", "fsync=off", "-c", "max_connections=20", "-c", "shared_buffers=16MB"],
             stdout=log, stderr=subprocess.STDOUT)
    sock = d / ".s.PGSQL.5432"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if sock.exists() and "ready to accept connections" in (d / "postgres.log").read_text():
            return sock
        time.sleep(0.1)
    pytest.fail(f"PostgreSQL did not start:\n{(d / 'postgres.log').read_text()}", pytrace=False)


def time_wait_in(ns, lo: int, hi: int) -> int:
    out = ns.run(["ss", "-Htan", "state", "time-wait",
                  f"( dport = :{PROXY_PORT} and sport >= :{lo} and sport <= :{hi} )"], check=True).stdout
    return len([l for l in out.splitlines() if l.strip()])


def processed(out: str) -> int:
    m = re.search(r"number of transactions actually processed: (\d+)/", out)
    assert m, f"no pgbench summary in:\n{out}"
    return int(m.group(1))


def test_pgbench_with_a_slow_terminate_reply_leaves_no_time_wait(make_netns, lib, program, stats_dir, pg_dir):
    bindir = pg_bin()
    ns = make_netns(RANGES["rst"])
    sock = start_postgres(ns, bindir, pg_dir)
    proxy = ns.popen([program("delay_proxy"), "-l", str(PROXY_PORT), "-u", str(sock), "-d", str(DELAY_MS),
                      "-t", "600"])
    assert json.loads(proxy.stdout.readline())["event"] == "ready"
    script = pg_dir / "select1.sql"
    script.write_text("SELECT 1;\n")
    pgbench = [str(bindir / "pgbench"), "-n", "-C", "-c", "1", "-j", "1", "-t", str(CONNS), "-f", str(script),
               "-h", "127.0.0.1", "-p", str(PROXY_PORT), "-U", "postgres", "postgres"]

    def arm(name: str, limit_fds: int | None = None, hogs: int = 0):
        lo, hi = RANGES[name]
        ns.sysctl("net.ipv4.ip_local_port_range", f"{lo} {hi}")
        env = tcpfix_env(lib, close="rst", stats=str(stats_dir / f"{name}-%p.json"), log="debug",
                         log_file=str(stats_dir / f"{name}.log"))
        argv = pgbench if limit_fds is None else ["/bin/sh", "-c", f'ulimit -n {limit_fds} && exec "$@"', "sh",
                                                  *pgbench]
        burners = [ns.popen(["timeout", "120", "/bin/sh", "-c", "while :; do :; done"]) for _ in range(hogs)]
        try:
            r = ns.run(argv, env=env, timeout=180)
        finally:
            for b in burners:
                b.kill()
                b.wait(5)
        time.sleep(0.5)  # the last held sockets: decided within the budget
        st = read_stats(next(stats_dir.glob(f"{name}-*.json")))
        return r, processed(r.stdout + r.stderr), time_wait_in(ns, lo, hi), st

    def decision_ms(name: str) -> list[float]:
        text = (stats_dir / f"{name}.log").read_text()
        return sorted(int(us) / 1000 for us in re.findall(r"held socket to .*?; (\d+) us after the close", text))

    for name, hogs in (("rst", 0), ("rst-hogs", HOGS)):
        r, done, tw, st = arm(name, hogs=hogs)
        assert done == CONNS and r.returncode == 0, show(r)
        assert tw <= 10, f"{name}: {tw} TIME_WAIT\n{st}"
        # Most closes found the Terminate unacknowledged and were held; the
        # peer's FIN (carrying the ACK) usually came first.
        assert st["closes_held"] >= CONNS * 9 // 10, st
        assert st["closes_held_peer_closed"] + st["closes_rst_background"] >= st["closes_held"] - 10, st
        # Only the first close waited on the spot: the background thread starts
        # with the connect after it (never inside a close()).
        assert st["closes_held_full"] <= 1 and st["ack_wait_us"] <= 25_000, st
        # The budget (250 ms + 2 x srtt) ran out for hardly any: they are the
        # TIME_WAIT allowed above. How long decisions took is printed, not
        # asserted: under the hogs it is mostly this thread waiting for a core.
        assert st["closes_graceful_unsent"] <= 10, st
        times = decision_ms(name)
        assert len(times) >= st["closes_held"] - st["closes_graceful_unsent"] - 1, (len(times), st)
        print(f"{name}: decided {len(times)} held sockets; after the close p50 {times[len(times) // 2]:.1f} ms, "
              f"p99 {times[len(times) * 99 // 100]:.1f} ms, max {times[-1]:.1f} ms; TIME_WAIT {tw}")

    # The synchronous wait of before: no room to hold (RLIMIT_NOFILE 15 allows none).
    r, done, tw, st = arm("sync", limit_fds=15)
    assert st["closes_held"] == 0 and st["closes_held_full"] >= done, st
    assert done < RANGES["sync"][1] - RANGES["sync"][0] + 2, show(r)
    assert "Cannot assign requested address" in r.stderr, show(r)
    assert tw >= 250, f"the synchronous wait left only {tw} TIME_WAIT"
    print(f"sync: {done} of {CONNS} connections, {tw} TIME_WAIT")
