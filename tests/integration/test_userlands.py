"""The library built here (Debian 12, glibc 2.36) in other userlands: Debian 11
(glibc 2.31: older than the build machine's, with dlsym in libdl and
pthread_* in libpthread) and Debian 13 (glibc 2.41: newer, where new internal
close paths or new versions of hooked functions would show). Each userland
is a debootstrap root (userland.py, scripts/chroot.sh) and every program runs
chrooted into it, inside a network namespace of the test's own.

They must show what they show on Debian 12:
  * `rst` leaves no TIME_WAIT and loses no byte — the userland's own C
    clients (compiled there), its python3 and its curl;
  * the descriptor edge cases (dup, close_range, closefrom, syscall(SYS_close))
    end each connection as on Debian 12;
  * a connect deadline bounds a lost SYN (blocking and non-blocking callers,
    python3, curl);
  * reaping frees leaked CLOSE_WAIT ports;
  * from Debian 11, incident 001's pair: sysbench 1.0.20 with its own
    libmariadb3 (Connector/C 3.1), against a MariaDB server, contained.
Without the library, the same namespace reproduces each incident (control
arms), so the cures are the library's doing.
"""

from __future__ import annotations

import re
import time

import pytest

from conftest import PYTHON, parse_summary
from deadline_env import nft
from helpers import MiB, json_lines, settled_time_wait, show
from storm_env import Drain, leak_client_summary, mariadb_server, raise_nofile, tcp_count
from test_storm import NOFILE, PORT_RANGE as STORM_RANGE, STORM_POLICY, SysbenchStorm, leak_lines
from userland import prepare

SUITES = {"bullseye": "2.31", "trixie": "2.41"}
PORT = 5432
RANGE = (40000, 40019)  # 20 ports
DROP_PORT = 6000


@pytest.fixture(scope="module")
def userlands():
    """suite -> its prepared Userland, made on first use, removed at the end."""
    made = {}

    def get(suite):
        if suite not in made:
            made[suite] = prepare(suite)
            assert made[suite].glibc == SUITES[suite], (
                f"{suite} has glibc {made[suite].glibc}, not {SUITES[suite]}")
        return made[suite]

    try:
        yield get
    finally:
        for userland in made.values():
            userland.cleanup()


@pytest.fixture(params=sorted(SUITES))
def u(request, userlands):
    return userlands(request.param)


def drop_all_syns(ns, port: int) -> None:
    nft(ns, f"""table inet drop{port} {{
  chain input {{
    type filter hook input priority 0; policy accept;
    tcp dport {port} tcp flags & (syn|ack) == syn counter drop
  }}
}}""")


# -- loading ------------------------------------------------------------------------------------

def test_library_loads_and_refuses_as_on_debian12(u, make_netns):
    ns = make_netns(RANGE)
    r = u.run(ns, ["python3", "-c", "import platform; print(platform.libc_ver()[1])"],
              env=u.env(close="rst", log="debug"))
    assert r.returncode == 0, show(r)
    assert r.stdout.strip() == SUITES[u.suite], show(r)
    assert f"tcpfix[" in r.stderr and "loaded: close=rst" in r.stderr, show(r)
    bad = u.run(ns, ["python3", "-c", "print('ran')"], env=u.env(connect_timeout="fast"))
    assert bad.returncode == 2 and "ran" not in bad.stdout, show(bad)
    assert bad.stderr.strip() == ('tcpfix: TCPFIX_CONNECT_TIMEOUT="fast": '
                                  "expected a duration such as 250ms or 2s"), show(bad)


def test_command_start_up_and_shutdown(u):
    """An executable built like the command (libstdc++ inside, glibc
    references redirected by tools/glibc_compat.cpp): constructors run exactly
    once before main (Debian 11's loader takes the old __libc_start_main, its
    only one), then a thread, an exception (the unwinder's _dl_find_object),
    atexit handlers and destructors."""
    r = u.chroot([f"{u.scratch}/startprobe", "one", "two"])
    assert r.returncode == 7, show(r)
    assert r.stdout == ("constructors 1 1; argc 3 argv0 set; thread ran; exception caught\n"
                        "atexit handler\nglobal destructor\n"), show(r)


def test_command_runs_there(u, make_netns, program):
    """The tcpfix command (static) in that userland: run, probe, churn and
    doctor do their work, as on Debian 12."""
    ns = make_netns((40000, 40999))
    sink = ns.start_sink(program("sink_server"), PORT)
    r = u.run(ns, [u.cli, "run", "--close", "rst", "--log", "debug", "--", "python3", "-c",
                   f"import socket; s = socket.create_connection(('127.0.0.1', {PORT})); s.close()"])
    assert r.returncode == 0 and ": RST (" in r.stderr, show(r)
    r = u.run(ns, [u.cli, "probe", "127.0.0.1", PORT, "--count", "3", "--interval", "10ms"])
    assert r.returncode == 0 and r.stdout.count("open 127.0.0.1:5432") == 3, show(r)
    r = u.run(ns, [u.cli, "churn", "127.0.0.1", PORT, "--duration", "1s", "--rate", "100/s"])
    assert r.returncode == 0 and "errors           none" in r.stdout, show(r)
    assert re.search(r"^connects ok +100 ", r.stdout, re.M), show(r)
    r = u.run(ns, [u.cli, "doctor", f"127.0.0.1:{PORT}"])
    assert r.returncode in (0, 1) and "read with sock_diag" in r.stdout, show(r)
    assert "TIME_WAIT 100" in r.stdout, show(r)  # churn's 100, seen through the netlink socket
    assert sink.proc.poll() is None


# -- rst: no TIME_WAIT, nothing lost -------------------------------------------------------------

def test_prober_rst_leaves_no_time_wait(u, make_netns, program):
    size = RANGE[1] - RANGE[0] + 1
    base_ns = make_netns(RANGE)
    base_ns.start_sink(program("sink_server"), PORT)
    base = u.run(base_ns, [u.program("port_probe"), "127.0.0.1", PORT, 3 * size])
    assert base.returncode == 0, show(base)
    assert parse_summary(base.stdout)["eaddrnotavail"] >= size, show(base)

    ns = make_netns(RANGE)
    ns.start_sink(program("sink_server"), PORT)
    r = u.run(ns, [u.program("port_probe"), "127.0.0.1", PORT, 3 * size], env=u.env(close="rst"))
    assert r.returncode == 0, show(r)
    assert parse_summary(r.stdout) == {"ok": 3 * size, "eaddrnotavail": 0, "other": 0}, show(r)
    assert settled_time_wait(ns) == []


def test_python_prober_rst(u, make_netns, program):
    size = RANGE[1] - RANGE[0] + 1
    ns = make_netns(RANGE)
    ns.start_sink(program("sink_server"), PORT)
    for mode in ("blocking", "timeout"):  # non-blocking connect + poll
        r = u.run(ns, ["python3", f"{u.scratch}/py_prober.py", "127.0.0.1", PORT, 3 * size, mode],
                  env=u.env(close="rst"))
        assert r.returncode == 0, show(r)
        assert parse_summary(r.stdout) == {"ok": 3 * size, "eaddrnotavail": 0, "other": 0}, show(r)
    assert settled_time_wait(ns) == []


@pytest.mark.parametrize("final", ["bulk", "quit"])
def test_rst_loses_nothing(u, make_netns, program, final):
    """A bulk write then close (8 MiB into a slow reader) and a final QUIT then
    close: the peer gets every byte; QUIT ends with RST (acknowledged in
    time), the bulk write gracefully or by RST once all of it was acked."""
    ns = make_netns(RANGE)
    args = ["-b", str(8 * MiB)] if final == "bulk" else ["-b", "1000", "-f", "QUIT\r\n", "-n", "5"]
    sink = ns.start_sink(program("sink_server"), PORT, read_delay_us=200 if final == "bulk" else 0)
    r = u.run(ns, [u.program("rst_writer"), *args, "127.0.0.1", PORT], env=u.env(close="rst"))
    assert r.returncode == 0, show(r)
    sent = json_lines(r.stdout)
    assert sent and all("error" not in s for s in sent), show(r)
    # An RST frees the port at once, so the next connection may reuse it:
    # compare what was sent with what arrived as multisets, not by port.
    ends = sink.wait_ends(len(sent), timeout=60)
    assert sorted((e["bytes"], e["fnv1a"]) for e in ends) == sorted((s["sent"], s["fnv1a"]) for s in sent), (
        sent, ends)
    if final == "quit":
        assert all(e["tail"].endswith("QUIT\r\n") and e["end"] == "ECONNRESET" for e in ends), ends
    if final == "quit":
        assert settled_time_wait(ns) == []


DESCRIPTOR_CASES = [
    ("dup-close-orig", ["-m", "dup2"], {"A": (5, "ALIVE", "ECONNRESET")}),
    ("close-range", [], {c: (0, "", "ECONNRESET") for c in "ABCD"}),
    ("closefrom", [], {c: (0, "", "ECONNRESET") for c in "ABCD"}),
    ("syscall-close", [], {"A": (0, "", "ECONNRESET")}),
    ("fork-child-close", [], {"A": (6, "PARENT", "EOF")}),
]


@pytest.mark.parametrize("case", DESCRIPTOR_CASES, ids=lambda c: c[0])
def test_descriptor_paths(u, make_netns, program, case):
    """The close paths the hooks must see in that glibc: dup2 then close,
    close_range and closefrom (system calls there on Debian 11, whose glibc
    has neither), syscall(SYS_close), a socket shared with a forked child."""
    scenario, args, want = case
    ns = make_netns((40000, 40199))
    sink = ns.start_sink(program("sink_server"), PORT)
    r = u.run(ns, [u.program("fd_exerciser"), scenario, "127.0.0.1", PORT, *args],
              env=u.env(close="rst"))
    out = json_lines(r.stdout)
    bad = [o for o in out if o.get("ok") is False or "error" in o]
    assert r.returncode == 0 and not bad and out and out[-1] == {"result": "ok"}, show(r)
    conns = {o["conn"]: o["local_port"] for o in out if "conn" in o and "local_port" in o}
    seen = {}
    for label in want:
        e = sink.by_port(conns[label])
        seen[label] = (e["bytes"], e["tail"], e["end"])
    assert seen == want, show(r)


HAPROXY_HTTP = """global
  maxconn 2000
defaults
  mode http
  timeout client 30s
  timeout connect 5s
  timeout server 30s
  timeout http-keep-alive 30s
frontend web
  bind 127.0.0.1:8080
  http-request return status 200 content-type text/plain string "hello from haproxy\\n"
"""


def test_curl_keepalive_rst(u, make_netns, tmp_path):
    """curl against an HTTP/1.1 server that keeps the connection open
    (haproxy answering itself): curl closes first, so the TIME_WAIT is
    curl's; 3 x the range of transfers, each a new curl process. Without
    tcpfix the range runs out (curl exit 7, "couldn't connect"); with rst
    every transfer completes and no TIME_WAIT is left."""
    size = RANGE[1] - RANGE[0] + 1
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(HAPROXY_HTTP)

    def transfers(ns, env):
        server = ns.popen(["/usr/sbin/haproxy", "-db", "-f", str(cfg)])
        deadline = time.monotonic() + 10
        while not any(":8080 " in line for line in ns.sockets("listening")):
            assert server.poll() is None and time.monotonic() < deadline, (
                f"haproxy did not start: {server.stderr.read() if server.poll() is not None else ''}")
            time.sleep(0.1)
        loop = (f"ok=0; refused=0; other=0; for i in $(seq {3 * size}); do "
                "curl -sS -o /dev/null --max-time 5 http://127.0.0.1:8080/; rc=$?; "
                "if [ $rc = 0 ]; then ok=$((ok+1)); elif [ $rc = 7 ]; then refused=$((refused+1)); "
                "else other=$((other+1)); fi; done; echo ok=$ok refused=$refused other=$other")
        r = u.run(ns, ["/bin/sh", "-c", loop], env=env, timeout=120)
        assert r.returncode == 0, show(r)
        fields = dict(p.split("=") for p in r.stdout.strip().splitlines()[-1].split())
        return {k: int(v) for k, v in fields.items()}, r

    base, r = transfers(make_netns(RANGE), {})
    assert base["refused"] >= size and base["other"] == 0, show(r)
    ns = make_netns(RANGE)
    got, r = transfers(ns, u.env(close="rst"))
    assert got == {"ok": 3 * size, "refused": 0, "other": 0}, show(r)
    assert settled_time_wait(ns) == []


# -- connect deadlines --------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["blocking", "nonblocking"])
def test_deadline_bounds_lost_syn_c_client(u, make_netns, mode):
    ns = make_netns(RANGE)
    drop_all_syns(ns, DROP_PORT)
    r = u.run(ns, [u.program("timed_client"), "-m", mode, "-w", "5000", "127.0.0.1", DROP_PORT],
              env=u.env(connect_timeout="100ms"), timeout=30)
    assert r.returncode == 0, show(r)
    res = json_lines(r.stdout)[-1]
    assert res["result"] == "ETIMEDOUT", show(r)
    assert 90 <= res["elapsed_ms"] <= 600, show(r)
    assert res["nonblock_after"] == res["nonblock_before"] and res["fd_after"] == res["fd_before"], show(r)


def test_deadline_bounds_lost_syn_python_and_curl(u, make_netns):
    ns = make_netns(RANGE)
    drop_all_syns(ns, DROP_PORT)
    code = ("import socket, time; t = time.monotonic(); s = socket.socket()\n"
            "try:\n    s.connect(('127.0.0.1', %d)); print('connected')\n"
            "except OSError as e:\n    print(type(e).__name__, e.errno)\n"
            "print(round((time.monotonic() - t) * 1000))" % DROP_PORT)
    r = u.run(ns, ["python3", "-c", code], env=u.env(connect_timeout="100ms", connect_retries="1"),
              timeout=30)
    assert r.returncode == 0, show(r)
    what, ms = r.stdout.strip().splitlines()
    assert what == "TimeoutError 110", show(r)
    assert 180 <= int(ms) <= 900, show(r)  # two attempts of 100 ms

    t = time.monotonic()
    r = u.run(ns, ["curl", "-sS", "-o", "/dev/null", "--connect-timeout", "20",
                   f"http://127.0.0.1:{DROP_PORT}/"], env=u.env(connect_timeout="200ms"), timeout=30)
    took = time.monotonic() - t
    assert r.returncode in (7, 28), show(r)  # failed to connect / timed out
    assert took < 5, f"curl took {took:.1f} s\n{show(r)}"


# -- reaping ------------------------------------------------------------------------------------

def test_reaping_frees_leaked_ports(u, make_netns, program):
    """leak_client (compiled in the userland) against greeting_server for 6 s,
    2000 ports: without tcpfix every port ends in CLOSE_WAIT and connects fail
    with EADDRNOTAVAIL; with TCPFIX_REAP_CLOSE_WAIT=1s and the backoff the
    ports come back and not one connect fails for lack of them."""
    results = {}
    for arm, env in (("plain", {}), ("tcpfix", u.env(**STORM_POLICY))):
        ns = make_netns(STORM_RANGE)
        server = ns.popen([program("greeting_server"), "-p", "3306", "-g", "132", "-d", "200",
                           "-t", "20000"])
        assert server.stdout.readline().startswith("ready"), "greeting_server did not start"
        proc = u.popen(ns, [u.program("leak_client"), "127.0.0.1", "3306", "100000", "6000"],
                       env=env, preexec_fn=raise_nofile(NOFILE))
        out = Drain(proc)
        peak = 0
        while proc.poll() is None:
            peak = max(peak, tcp_count(ns, "close-wait", 3306))
            time.sleep(0.5)
        out.join()
        results[arm] = (leak_client_summary(out.stdout), peak, out.stderr)
    size = STORM_RANGE[1] - STORM_RANGE[0] + 1
    plain, plain_peak, _ = results["plain"]
    assert plain["eaddrnotavail"] > 0 and plain_peak >= size * 0.95, results["plain"][:2]
    fixed, fixed_peak, stderr = results["tcpfix"]
    assert fixed["eaddrnotavail"] == 0 and fixed["other"] == 0, results["tcpfix"][:2]
    assert fixed_peak <= size // 4, results["tcpfix"][:2]
    assert leak_lines(stderr, "127.0.0.1:3306"), stderr[-2000:]


def test_sysbench_bullseye_own_connector_contained(userlands, make_netns, tmp_path):
    """Incident 001's pair as Debian 11 ships it: sysbench 1.0.20 and its own
    libmariadb3 (Connector/C 3.1), unmodified, against MariaDB (Debian 12's
    server, in the namespace), sessions KILLed mid-run: with the reaping and
    backoff policy the ports survive (a `mariadb` CLI never gets error 99),
    CLOSE_WAIT stays bounded, sysbench's CPU stays low, the log names the
    leak."""
    u = userlands("bullseye")
    ver = u.chroot(["sh", "-c", "sysbench --version; "
                    "strings /usr/lib/x86_64-linux-gnu/libmariadb.so.3 | grep -m1 -E '^3\\.1\\.'"])
    assert "sysbench 1.0.20" in ver.stdout and "\n3.1." in ver.stdout, show(ver)
    ns = make_netns(STORM_RANGE)
    stats_inside = f"{u.scratch}/stats"
    u.host_path(stats_inside).mkdir(exist_ok=True)
    env = u.env(**STORM_POLICY, TCPFIX_STATS=f"{stats_inside}/sysbench-%p.json")
    with mariadb_server(ns, tmp_path) as db:
        run = SysbenchStorm(ns, db, env, window=20, stats_dir=u.host_path(stats_inside),
                            stats_keys=("close_wait_reaped", "throttled_ms"),
                            popen=lambda argv, **kw: u.popen(ns, argv, **kw))
    detail = run.show()
    print(detail)
    assert run.exit_after_kill is None, f"sysbench died\n{detail}"
    assert any(tps > 0 for _, tps, _ in run.reports[:2]), f"no load before the KILL\n{detail}"
    assert "eaddrnotavail" not in run.cli_kinds(), detail
    assert max(s["close_wait"] for s in run.samples) <= ns.range_size // 4, detail
    assert max((s["close_wait"] for s in run.samples if s["t"] >= 10), default=0) <= 100, detail
    assert run.cpu_fraction < 0.05, detail
    assert leak_lines(run.stderr, "127.0.0.1:3306"), detail
    assert run.stats.get("close_wait_reaped", 0) >= 1, detail
