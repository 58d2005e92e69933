"""Old kernels degrade, never break (README "Old kernels").

Each test runs a client under the library as if on a kernel that lacks one
facility: tests/oldkernel/oldkernel.c installs a seccomp filter that answers
those calls with the errno such a kernel gives (ENOPROTOOPT for an unknown
socket option, ENOSYS for a missing system call, EINVAL for an unknown
ioctl), shortens TCP_INFO to Linux 3.10's 104 bytes, or refuses
connect(AF_UNSPEC). Each must show
  * exactly one warning from the library naming the facility and the
    kernel that has it (policy/facilities.cpp), and none without the filter;
  * the documented fallback, observed (the peer's view, `ss`, timings);
  * no connect failing that would have worked without tcpfix.
Last, everything a 3.10 kernel (CentOS 7's) lacks at once.
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from conftest import PYTHON, parse_summary
from deadline_env import nft
from helpers import MiB, json_lines, settled_time_wait, show
from storm_env import Drain, leak_client_summary, raise_nofile, tcp_count
from test_storm import NOFILE, PORT_RANGE as STORM_RANGE, STORM_POLICY, leak_lines

PORT = 5432
RANGE = (40000, 40019)
DROP_PORT = 6000


def under(ns, program, flags: list[str], argv: list[str], env: dict[str, str], timeout: float = 60,
          popen: bool = False, **kwargs):
    """argv in the namespace under `oldkernel FLAGS`; the preload and TCPFIX_*
    go to argv only (not to the supervisor)."""
    pairs = [f"{k}={v}" for k, v in env.items()]
    inner = [program("oldkernel"), *flags, "--", "/usr/bin/env", *pairs, *map(str, argv)]
    if popen:
        return ns.popen(inner, **kwargs)
    return ns.run(inner, timeout=timeout, **kwargs)


def warnings_about(stderr: str, facility: str) -> list[str]:
    return [l for l in stderr.splitlines()
            if l.startswith("tcpfix[") and " warn: " in l and f"this kernel lacks {facility}" in l]


def info_lines_about(stderr: str, facility: str) -> list[str]:
    return [l for l in stderr.splitlines()
            if l.startswith("tcpfix[") and " info: " in l and f"this kernel lacks {facility}" in l]


def one_warning(stderr: str, facility: str, minimum: str) -> str:
    lines = warnings_about(stderr, facility)
    assert len(lines) == 1, f"want one warning about {facility}, got:\n{stderr[-3000:]}"
    assert f"(Linux {minimum}" in lines[0], lines[0]
    return lines[0]


def drop_all_syns(ns, port: int) -> None:
    nft(ns, f"""table inet drop{port} {{
  chain input {{
    type filter hook input priority 0; policy accept;
    tcp dport {port} tcp flags & (syn|ack) == syn counter drop
  }}
}}""")


# -- one facility at a time ----------------------------------------------------------------------

def test_no_bind_address_no_port(make_netns, program, lib):
    """TCPFIX_SOURCE_ADDRS with 2 addresses: each still brings its own range,
    so 2 x range probes succeed to one destination, exactly as with the
    option; one warning says what is lost (a port reserved per address for
    every destination)."""
    size = RANGE[1] - RANGE[0] + 1
    env = {"LD_PRELOAD": str(lib), "TCPFIX_SOURCE_ADDRS": "127.0.0.2,127.0.0.3"}
    for flags, want_warning in (([], False), (["--no-bind-address-no-port"], True)):
        ns = make_netns(RANGE)
        ns.start_sink(program("sink_server"), PORT)
        r = under(ns, program, flags, [program("port_probe"), "127.0.0.1", PORT, 3 * size], env)
        assert r.returncode == 0, show(r)
        assert parse_summary(r.stdout)["ok"] == 2 * size, show(r)
        if want_warning:
            one_warning(r.stderr, "IP_BIND_ADDRESS_NO_PORT", "4.2+")
        else:
            assert warnings_about(r.stderr, "") == [], show(r)


def test_no_local_port_range(make_netns, program, lib):
    """TCPFIX_PORT_RANGE=40005-40009 narrows to 5 ports; without
    IP_LOCAL_PORT_RANGE the system's 20 are used, and said once."""
    env = {"LD_PRELOAD": str(lib), "TCPFIX_PORT_RANGE": "40005-40009"}
    got = {}
    for flags in ([], ["--no-local-port-range"]):
        ns = make_netns(RANGE)
        ns.start_sink(program("sink_server"), PORT)
        r = under(ns, program, flags, [program("port_probe"), "127.0.0.1", PORT, 20], env)
        assert r.returncode == 0, show(r)
        got[bool(flags)] = (parse_summary(r.stdout), r.stderr)
    assert got[False][0]["ok"] == 5, got[False]
    assert got[True][0] == {"ok": 20, "eaddrnotavail": 0, "other": 0}, got[True]
    one_warning(got[True][1], "IP_LOCAL_PORT_RANGE", "6.3+")


CLOSE_RANGE_APP = r"""
import os, socket, sys
port = int(sys.argv[1])
socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
for i, s in enumerate(socks):
    s.sendall(b"DATA%d" % i)
fds = [s.detach() for s in socks]
os.closerange(min(fds), max(fds) + 1)  # close_range(2), or close() one by one where it fails
for fd in fds:
    try:
        os.fstat(fd)
        print("still open", fd)
    except OSError:
        pass
print("done")
"""


def test_no_close_range(make_netns, program, lib, stats_dir):
    """Python's os.closerange() calls close_range(); where the kernel lacks it
    (ENOSYS) Python closes one by one. tcpfix passes the ENOSYS through
    without touching its table, so each close() gets the policy: every
    connection ends with RST, nothing left in TIME_WAIT, and the counts add
    up."""
    ns = make_netns((40000, 40199))
    sink = ns.start_sink(program("sink_server"), PORT)
    env = {"LD_PRELOAD": str(lib), "TCPFIX_CLOSE": "rst", "TCPFIX_STATS": str(stats_dir / "s-%p.json")}
    r = under(ns, program, ["--no-close-range"], [PYTHON, "-c", CLOSE_RANGE_APP, PORT], env)
    assert r.returncode == 0 and r.stdout.strip().endswith("done"), show(r)
    assert "still open" not in r.stdout, show(r)
    ends = sink.wait_ends(3)
    assert sorted((e["bytes"], e["end"]) for e in ends) == [(5, "ECONNRESET")] * 3, ends
    assert settled_time_wait(ns) == []
    one_warning(r.stderr, "close_range", "5.9+")
    stats = [p for p in stats_dir.glob("s-*.json")]
    assert len(stats) == 1, stats
    st = json.loads(stats[0].read_text())
    assert st["closes_rst"] == 3 and st["closes"] == 3, st


def rst_writer_under(make_netns, program, lib, oldkernel_flags, writer_args, final, extra_env):
    """rst_writer under TCPFIX_CLOSE=rst and the old-kernel supervisor, in a
    fresh namespace, into a sink (a slow one for "bulk"). Checks that the
    peer got every byte and, for a final message, an RST and no TIME_WAIT.
    Returns the run and what the writer says it sent."""
    ns = make_netns((40000, 40199))
    sink = ns.start_sink(program("sink_server"), PORT, read_delay_us=200 if final == "bulk" else 0)
    env = {"LD_PRELOAD": str(lib), "TCPFIX_CLOSE": "rst", **extra_env}
    r = under(ns, program, oldkernel_flags, [program("rst_writer"), *writer_args, "127.0.0.1", PORT], env)
    assert r.returncode == 0, show(r)
    sent = json_lines(r.stdout)
    ends = sink.wait_ends(len(sent), timeout=60)
    assert sorted((e["bytes"], e["fnv1a"]) for e in ends) == sorted((s["sent"], s["fnv1a"]) for s in sent)
    if final == "quit":
        assert all(e["end"] == "ECONNRESET" for e in ends), ends
        assert settled_time_wait(ns) == []
    return r, sent


@pytest.mark.parametrize("final", ["quit", "bulk"])
def test_no_siocoutqnsd(make_netns, program, lib, final):
    """Without SIOCOUTQNSD every queued byte counts as unacknowledged: a final
    QUIT is waited for and then RST (as on a new kernel), a bulk write into a
    slow reader arrives whole; one warning. A kernel that old (before 2.6.36)
    has no tcpi_notsent_bytes in TCP_INFO either, without which the ioctl is
    never asked: TCP_INFO is shortened too."""
    args = ["-b", str(8 * MiB)] if final == "bulk" else ["-b", "1000", "-f", "QUIT\r\n", "-n", "5"]
    r, _ = rst_writer_under(make_netns, program, lib, ["--no-siocoutqnsd", "--tcp-info-len", "104"], args,
                            final, {})
    one_warning(r.stderr, "SIOCOUTQNSD", "2.6.36+")


def leak_run(ns, program, flags, env, seconds=6):
    server = ns.popen([program("greeting_server"), "-p", "3306", "-g", "132", "-d", "200",
                       "-t", str(seconds * 1000 + 10000)])
    assert server.stdout.readline().startswith("ready"), "greeting_server did not start"
    proc = under(ns, program, flags, [program("leak_client"), "127.0.0.1", "3306", "100000",
                                      str(seconds * 1000)], env, popen=True,
                 preexec_fn=raise_nofile(NOFILE))
    out = Drain(proc)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, tcp_count(ns, "close-wait", 3306))
        time.sleep(0.5)
    out.join()
    return leak_client_summary(out.stdout), peak, out.stderr


def test_short_tcp_info(make_netns, program, lib):
    """TCP_INFO of Linux 3.10 (104 bytes, no byte counters): the leaking
    client is still recognised (the peer closed, its greeting sits unread),
    backed off and reaped — no connect fails for lack of ports, CLOSE_WAIT
    stays bounded; one warning. And the rst close decision, which then asks
    the ioctls (test_rst_close_with_short_tcp_info), still leaves no
    TIME_WAIT."""
    size = STORM_RANGE[1] - STORM_RANGE[0] + 1
    ns = make_netns(STORM_RANGE)
    env = {"LD_PRELOAD": str(lib), **STORM_POLICY}
    leak, peak, stderr = leak_run(ns, program, ["--tcp-info-len", "104"], env)
    assert leak["eaddrnotavail"] == 0 and leak["other"] == 0, (leak, peak)
    assert peak <= size // 4, (leak, peak)
    assert leak_lines(stderr, "127.0.0.1:3306"), stderr[-2000:]
    one_warning(stderr, "TCP_INFO byte counters", "4.1+")

    ns2 = make_netns(RANGE)
    ns2.start_sink(program("sink_server"), PORT)
    r = under(ns2, program, ["--tcp-info-len", "104"], [program("port_probe"), "127.0.0.1", PORT, 60],
              {"LD_PRELOAD": str(lib), "TCPFIX_CLOSE": "rst"})
    assert parse_summary(r.stdout) == {"ok": 60, "eaddrnotavail": 0, "other": 0}, show(r)
    assert settled_time_wait(ns2) == []


RST_WRITER_ARGS = {
    # A final message closed at once: its ACK is due, the close waits for it
    # (on the spot or held), then RST.
    "quit": ["-b", "1000", "-f", "QUIT\r\n", "-n", "10"],
    # Half-closed first (FIN_WAIT1): where TCP_INFO shows segments in flight,
    # SIOCOUTQ tells a lone FIN from data. The peer reads the FIN first, and
    # its own close may race the RST: only the bytes are checked.
    "half-close": ["-b", "1000", "-f", "QUIT\r\n", "-S", "-n", "10"],
    # Megabytes into a slow reader: unsent at close(), never cut off.
    "bulk": ["-b", str(8 * MiB)],
}


@pytest.mark.parametrize("final", list(RST_WRITER_ARGS))
def test_rst_close_with_short_tcp_info(make_netns, program, lib, tmp_path, final):
    """The rst close decision reads TCP_INFO alone where it holds
    tcpi_notsent_bytes (Linux 4.6+), and asks SIOCOUTQ and SIOCOUTQNSD as
    before where it is shorter (Linux 3.10's 104 bytes here). Both ways the
    peer gets every byte, a final message still ends with RST and leaves no
    TIME_WAIT. The supervisor counts the calls: no SIOCOUTQNSD with the full
    TCP_INFO (and no ioctl at all for a connection that was not
    half-closed); both ioctls with every TCP_INFO with the short one. That
    fallback costs only system calls, so it is said once at info level, never
    as a warning."""
    facility = "TCP_INFO tcpi_notsent_bytes"
    for short in (False, True):
        counted = tmp_path / f"calls-{final}-{'short' if short else 'full'}.json"
        flags = ["--count-calls", str(counted), *(["--tcp-info-len", "104"] if short else [])]
        r, sent = rst_writer_under(make_netns, program, lib, flags, RST_WRITER_ARGS[final], final,
                                   {"TCPFIX_LOG": "info"})
        calls = json.loads(counted.read_text())
        assert calls["tcp_info"] >= len(sent), calls
        assert warnings_about(r.stderr, facility) == [], show(r)
        if short:
            # Every decision: TCP_INFO, SIOCOUTQ, SIOCOUTQNSD.
            assert calls["siocoutq"] == calls["siocoutqnsd"] == calls["tcp_info"], calls
            (line,) = info_lines_about(r.stderr, facility)
            assert "(Linux 4.6+" in line, line
        else:
            assert calls["siocoutqnsd"] == 0, calls
            assert calls["siocoutq"] <= (calls["tcp_info"] if final == "half-close" else 0), calls
            assert info_lines_about(r.stderr, facility) == [], show(r)


@pytest.mark.parametrize("mode", ["nonblocking", "blocking"])
def test_no_unspec_connect(make_netns, program, lib, mode):
    """Where connect(AF_UNSPEC) is refused, the deadline still cuts a lost
    handshake short (shutdown() wakes the poller the same way): ETIMEDOUT at
    about the deadline, the descriptor the application's; one warning."""
    ns = make_netns(RANGE)
    drop_all_syns(ns, DROP_PORT)
    env = {"LD_PRELOAD": str(lib), "TCPFIX_CONNECT_TIMEOUT": "100ms", "TCPFIX_CONNECT_RETRIES": "1"}
    r = under(ns, program, ["--no-unspec-connect"],
              [program("timed_client"), "-m", mode, "-w", "5000", "127.0.0.1", DROP_PORT], env)
    assert r.returncode == 0, show(r)
    res = json_lines(r.stdout)[-1]
    assert res["result"] == "ETIMEDOUT", show(r)
    assert 180 <= res["elapsed_ms"] <= 900, show(r)  # two attempts of 100 ms
    assert res["fd_after"] == res["fd_before"] and res["nonblock_after"] == res["nonblock_before"], show(r)
    one_warning(r.stderr, "connect(AF_UNSPEC)", "any")


@pytest.mark.parametrize("case", ["syscall-clone:close", "inline-clone:exit", "syscall-fork:dup2", "vfork:dup2"])
def test_no_wipeonfork(make_netns, program, lib, case):
    """Without MADV_WIPEONFORK a child with a copy of the memory (a raw clone
    or fork system call, however made) is told from its parent by its process
    ID instead: what it does with the parent's socket still leaves it alone,
    so the parent's 8 MiB into a slow reader arrive whole after its close
    (tests/integration/test_descriptors.py has the rest). Only the cost
    changes, so it is said once, at info level, never as a warning."""
    creator, action = case.split(":")
    size = 8 * MiB
    ns = make_netns((40000, 40199))
    sink = ns.start_sink(program("sink_server"), PORT, read_delay_us=500, chunk=65536, rcvbuf=65536)
    env = {"LD_PRELOAD": str(lib), "TCPFIX_CLOSE": "rst", "TCPFIX_LOG": "info"}
    for flags in ([], ["--no-wipeonfork"]):
        r = under(ns, program, flags, [program("fd_exerciser"), "unannounced-child", "127.0.0.1", PORT,
                                       "-c", creator, "-m", action, "-b", size], env, timeout=30)
        out = json_lines(r.stdout)
        assert r.returncode == 0 and out[-1] == {"result": "ok"}, show(r)
        port = next(o["local_port"] for o in out if o.get("conn") == "A")
        end = sink.by_port(port, timeout=20)
        assert end["bytes"] == size, f"peer received {end['bytes']} of {size} bytes, then {end['end']}"
        pid = out[0]["pid"]
        said = [l for l in r.stderr.splitlines()
                if l.startswith(f"tcpfix[{pid}]") and "this kernel lacks MADV_WIPEONFORK" in l]
        if flags:
            assert len(said) == 1 and " info: " in said[0] and "(Linux 4.14+" in said[0], show(r)
        else:
            assert said == [], show(r)
        assert warnings_about(r.stderr, "MADV_WIPEONFORK") == [], show(r)


# -- everything Linux 3.10 lacks at once --------------------------------------------------------

def test_kernel_3_10(make_netns, program, lib):
    """CentOS 7's kernel, as far as tcpfix is concerned: no close_range,
    IP_BIND_ADDRESS_NO_PORT, IP_LOCAL_PORT_RANGE, getrandom, MADV_WIPEONFORK
    or TCP_INFO byte counters. The prober under rst with two source
    addresses and a port range, a deadline on a lost SYN, and a leaking
    client under the storm policy all behave as documented, and no warning
    repeats."""
    flags = ["--kernel", "3.10"]
    size = RANGE[1] - RANGE[0] + 1
    ns = make_netns(RANGE)
    ns.start_sink(program("sink_server"), PORT)
    env = {"LD_PRELOAD": str(lib), "TCPFIX_CLOSE": "rst", "TCPFIX_SOURCE_ADDRS": "127.0.0.2,127.0.0.3",
           "TCPFIX_PORT_RANGE": "40005-40009", "TCPFIX_CONNECT_TIMEOUT": "2s"}
    r = under(ns, program, flags, [program("port_probe"), "127.0.0.1", PORT, 3 * size], env)
    assert parse_summary(r.stdout) == {"ok": 3 * size, "eaddrnotavail": 0, "other": 0}, show(r)
    assert settled_time_wait(ns) == []
    one_warning(r.stderr, "IP_BIND_ADDRESS_NO_PORT", "4.2+")
    one_warning(r.stderr, "IP_LOCAL_PORT_RANGE", "6.3+")
    assert warnings_about(r.stderr, "TCP_INFO tcpi_notsent_bytes") == [], show(r)  # a cost, not a warning

    drop_all_syns(ns, DROP_PORT)
    r = under(ns, program, flags, [program("timed_client"), "-m", "nonblocking", "127.0.0.1", DROP_PORT],
              {"LD_PRELOAD": str(lib), "TCPFIX_CONNECT_TIMEOUT": "100ms"})
    res = json_lines(r.stdout)[-1]
    assert res["result"] == "ETIMEDOUT" and res["elapsed_ms"] <= 600, show(r)

    ns2 = make_netns(STORM_RANGE)
    leak, peak, stderr = leak_run(ns2, program, flags, {"LD_PRELOAD": str(lib), **STORM_POLICY}, seconds=5)
    assert leak["eaddrnotavail"] == 0 and leak["other"] == 0, (leak, peak)
    assert peak <= (STORM_RANGE[1] - STORM_RANGE[0] + 1) // 4, (leak, peak)
    one_warning(stderr, "TCP_INFO byte counters", "4.1+")


# -- a RHEL 8 box: kernel 4.18, a Java client whose sockets end by dup2 -------------------------

def test_rhel8_like_java_client(make_netns, program, lib, stats_dir, tmp_path):
    """What an SRE on RHEL 8 runs: kernel 4.18 (no IP_LOCAL_PORT_RANGE, no
    close_range) and a Java client of the PlainSocketImpl kind (every Java 8
    and 11 client; here JDK 17 with -Djdk.net.usePlainSocketImpl=true), whose
    connections end by dup2. Under rst with a port range: 3 x the range of
    connections succeed (the range is the system's, said once), every one
    ends with RST after its bytes, no TIME_WAIT is left."""
    from test_close_jvm import JAVA17, JAVAC17, JVM_FLAGS, SOURCE

    classes = tmp_path / "classes"
    r = subprocess.run([JAVAC17, "--release", "11", "-d", str(classes), str(SOURCE)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, show(r)
    ns = make_netns(RANGE)
    sink = ns.start_sink(program("sink_server"), PORT, timeout_ms=120000)
    count = 3 * ns.range_size
    env = {"LD_PRELOAD": str(lib), "TCPFIX_CLOSE": "rst", "TCPFIX_PORT_RANGE": "40005-40009",
           "TCPFIX_STATS": str(stats_dir / "jvm-%p.json")}
    r = under(ns, program, ["--kernel", "4.18"],
              [JAVA17, *JVM_FLAGS, "-Djdk.net.usePlainSocketImpl=true", "-cp", str(classes), "CloseClient",
               "socket", "127.0.0.1", PORT, count], env, timeout=120)
    assert r.returncode == 0, show(r)
    assert parse_summary(r.stdout) == {"ok": count, "eaddrnotavail": 0, "other": 0}, show(r)
    ends = sink.wait_ends(count)
    assert all(e["end"] == "ECONNRESET" and e["bytes"] == 4 for e in ends), ends[:5]
    assert settled_time_wait(ns) == []
    one_warning(r.stderr, "IP_LOCAL_PORT_RANGE", "6.3+")
    (st,) = [json.loads(p.read_text()) for p in stats_dir.glob("jvm-*.json")]
    assert st["closes_rst_dup2"] >= count, st
